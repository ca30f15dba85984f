"""A real OAuth 2.0 / OpenID Connect provider for tests: ORY Hydra v2, in-memory storage, HTTPS
on loopback, issuing JWT access tokens through the client-credentials grant.

The binary is built from `tools/hydra` by `tools/hydra/build.sh` (cached outside the repository;
the first build takes minutes). A test that asks for `hydra` never skips: a missing binary is
built, and a failed build or start fails the test with the reason. The public endpoint (token,
discovery, JWKS) is HTTPS for `localhost` from a CA made at test time (`trust` names the file a
client needs in SSL_CERT_FILE); the admin endpoint (clients, keys) is plain HTTP on 127.0.0.1.
Hydra's usage reporting is switched off: the tests reach nothing outside the machine.

`tests/conftest.py` registers the fixture for every test module. It is function-scoped: tests
rotate the provider's keys and stop it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness
from tests.pki import CA

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "tools" / "hydra" / "build.sh"
BUILD_TIMEOUT = 30 * 60  # a cold build is several minutes on 2 cores
START_TIMEOUT = 60.0
ACCESS_TOKEN_KEYS = "hydra.jwt.access-token"  # the key set Hydra signs JWT access tokens with

CONFIG = """\
dsn: memory
serve:
  public: {{host: 127.0.0.1, port: {public}}}
  admin:
    host: 127.0.0.1
    port: {admin}
    tls: {{enabled: false}}
  tls:
    enabled: true
    cert: {{path: {cert}}}
    key: {{path: {key}}}
urls:
  self: {{issuer: "{issuer}"}}
secrets:
  system: ["{secret}"]
strategies:
  access_token: jwt
  jwt: {{scope_claim: both}}
ttl:
  access_token: 1h
log: {{level: info, leak_sensitive_values: false}}
sqa: {{opt_out: true}}
"""


@dataclasses.dataclass
class Client:
    client_id: str
    client_secret: str


@dataclasses.dataclass
class Hydra:
    issuer: str  # as Hydra's discovery document names it
    admin: str  # base URL of the admin API
    trust: Path  # the CA of the public endpoint's certificate
    log: Path
    proc: subprocess.Popen[bytes]

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.trust))

    def admin_api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.admin + path,
            data=data,
            method=method,
            headers={"content-type": "application/json", "accept": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def client(self, scope: str, audience: list[str]) -> Client:
        """A confidential client that may use the client-credentials grant for `scope`."""
        made = self.admin_api(
            "POST",
            "/admin/clients",
            {
                "client_secret": secrets.token_urlsafe(24),
                "grant_types": ["client_credentials"],
                "response_types": ["token"],
                "scope": scope,
                "audience": audience,
                "token_endpoint_auth_method": "client_secret_basic",
                "access_token_strategy": "jwt",
            },
        )
        return Client(made["client_id"], made["client_secret"])

    def token(self, client: Client, scope: str, audience: str | None = None) -> str:
        """A JWT access token from the real client-credentials grant (RFC 6749 §4.4)."""
        form = {"grant_type": "client_credentials", "scope": scope}
        if audience is not None:
            form["audience"] = audience
        basic = base64.b64encode(
            f"{urllib.parse.quote(client.client_id)}:"
            f"{urllib.parse.quote(client.client_secret)}".encode()
        ).decode()
        req = urllib.request.Request(
            self.issuer.rstrip("/") + "/oauth2/token",
            data=urllib.parse.urlencode(form).encode(),
            headers={
                "authorization": f"Basic {basic}",
                "content-type": "application/x-www-form-urlencoded",
            },
        )
        with urllib.request.urlopen(req, timeout=10, context=self._context()) as resp:
            answer = json.loads(resp.read())
        assert answer["token_type"].lower() == "bearer", answer
        return str(answer["access_token"])

    def rotate(self) -> str:
        """A new signing key for access tokens; Hydra signs with the newest key of the set
        and keeps publishing the older ones. Returns the new key's kid."""
        made = self.admin_api(
            "POST", f"/admin/keys/{ACCESS_TOKEN_KEYS}", {"alg": "RS256", "use": "sig"}
        )
        return str(made["keys"][0]["kid"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def kid(token: str) -> str:
    """The `kid` in a JWT's header (read, not trusted: for the test's own assertions)."""
    head = token.split(".", maxsplit=1)[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


def binary() -> Path:
    """Build Hydra if it is not cached yet; its path."""
    return harness.build(BUILD, "Hydra", BUILD_TIMEOUT)


def start(exe: Path, workdir: Path) -> Hydra:
    """Hydra on fresh loopback ports, once its admin API says it is ready."""
    public, admin = harness.free_ports(2)
    ca = CA.create("test OIDC provider CA")
    site = ca.issue_server("localhost")
    (workdir / "tls.crt").write_bytes(site.chain)
    (workdir / "tls.key").write_bytes(site.key)
    trust = workdir / "idp-roots.pem"
    trust.write_bytes(ca.pem)
    issuer = f"https://localhost:{public}"
    config = workdir / "hydra.yaml"
    config.write_text(
        CONFIG.format(
            public=public,
            admin=admin,
            cert=workdir / "tls.crt",
            key=workdir / "tls.key",
            issuer=issuer,
            secret=secrets.token_hex(32),
        )
    )
    log = workdir / "hydra.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSN", "SERVE_", "URLS_"))}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "serve", "all", "--config", str(config), "--sqa-opt-out"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    hydra = Hydra(issuer, f"http://127.0.0.1:{admin}", trust, log, proc)
    deadline = time.monotonic() + START_TIMEOUT
    while not harness.http_ok(f"{hydra.admin}/health/ready"):
        if proc.poll() is not None or time.monotonic() > deadline:
            hydra.stop()
            tail = log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"Hydra did not become ready (exit {proc.poll()}):\n{tail}")
        time.sleep(0.2)
    return hydra


@pytest.fixture
def hydra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hydra]:
    exe = binary()
    for attempt in range(3):  # a picked port can be taken between picking and binding
        try:
            h = start(exe, tmp_path_factory.mktemp("hydra"))
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield h
    finally:
        h.stop()
