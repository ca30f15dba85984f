"""End-user authentication through a real sidecar pair: JWTs signed at test time, the JWKS
served over HTTPS on loopback and fetched by the `weft sidecar` agent, requests sent with curl.

a/web's sidecar (in-process) sends to b/api's sidecar (a real agent process); b/api accepts
tokens from one issuer, and its AccessPolicy lets namespace a POST /orders only for users of
group `buyers`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.targets.local.binding import to_json
from tests import jwts, sidecars
from tests.pki import CA

TD = "jwt.local"
ISSUER = "https://idp.test"


def intent(jwks_uri: str) -> dict[str, str]:
    return {
        "mesh.yaml": sidecars.mesh_yaml(TD),
        "services.yaml": sidecars.WEB_AND_API,
        "authn.yaml": f"""\
            apiVersion: weft.dev/v1alpha1
            kind: RequestAuthentication
            metadata: {{name: users, namespace: b}}
            spec:
              issuers:
                - issuer: {ISSUER}
                  audiences: [orders]
                  jwksUri: {jwks_uri}
                  forwardClaims: [{{claim: groups, header: x-user-groups}}]
                  clockSkew: 1s  # so a token kept in the cache can be seen to expire
            """,
        "policy.yaml": """\
            apiVersion: weft.dev/v1alpha1
            kind: AccessPolicy
            metadata: {name: buyers-order, namespace: b}
            spec:
              from: [{namespaces: [a]}]
              when:
                methods: [POST]
                paths: [/orders]
                claims: [{claim: groups, values: [buyers]}]
            """,
    }


class Pair:
    """a/web's sidecar in-process, b/api's a real agent process trusting `trust` for its
    identity provider's HTTPS."""

    def __init__(self, tmp: Path, intent_files: dict[str, str], trust: Path) -> None:
        configs = sidecars.compiled(tmp / "intent", intent_files)
        ca = CA.create()
        self.app = sidecars.EchoServer("api")
        files = tmp / "api-sidecar"
        (files / "certs").mkdir(parents=True)
        api = sidecars.identity(ca, TD, "b", "api")
        for name, data in (("tls.crt", api.chain), ("tls.key", api.key), ("ca.crt", api.bundle)):
            (files / "certs" / name).write_bytes(data)
        (files / "config.json").write_text(to_json(configs[("b", "api")]))
        self.api = sidecars.AgentProcess(
            files / "config.json",
            files / "certs",
            {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": self.app.addr}},
            poll=0.2,
            args=("--jwks-refresh", "0.5"),
            env={**os.environ, "SSL_CERT_FILE": str(trust)},
        )
        self.configs, self.ca = configs, ca

    def start(self) -> None:
        self.api.start()
        self.web = sidecars.start(
            self.configs[("a", "web")],
            sidecars.identity(self.ca, TD, "a", "web"),
            {"outboundHttp": "127.0.0.1:0"},
            {"b/api": [self.api.bound["inbound:http"]]},
        )
        self.outbound = self.web.bound()["outbound:http"]

    def curl(self, token: str | None, method: str = "POST") -> tuple[int, dict[str, str], str]:
        """Status, response headers (lower-cased) and body of one request through the pair."""
        auth = ["-H", f"Authorization: Bearer {token}"] if token is not None else []
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "-D",
                "-",
                "-X",
                method,
                "-H",
                "Host: api.b:8080",
                *auth,
                f"http://{self.outbound}/orders",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        head, _, body = out.partition("\n\n")  # text mode: curl's CRLFs read as newlines
        lines = head.split("\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(lines[0].split()[1]), headers, body

    def stop(self) -> None:
        if hasattr(self, "web"):
            self.web.shutdown(1.0)
        self.api.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Pair, jwts.JwksServer, list[jwts.SigningKey]]]:
    keys = [jwts.SigningKey("rsa-1"), jwts.SigningKey("ec-1", "ES256")]
    with jwts.JwksServer(tmp_path, list(keys)) as idp, sidecars.serving(sidecars.EchoServer("x")):
        pair = Pair(tmp_path, intent(idp.uri), idp.trust)
        with sidecars.serving(pair.app):
            pair.start()
            try:
                yield pair, idp, keys
            finally:
                pair.stop()


def test_tokens_decide_401_403_and_200(
    rig: tuple[Pair, jwts.JwksServer, list[jwts.SigningKey]],
) -> None:
    pair, _idp, (rsa_key, ec_key) = rig
    buyer = jwts.claims(ISSUER, groups=["buyers", "staff"])

    status, headers, body = pair.curl(None)
    assert status == 401, body
    assert headers["www-authenticate"] == 'Bearer realm="b/api"'
    assert "no token" in body

    refused = {
        "expired": rsa_key.sign({**buyer, "exp": int(buyer["iat"]) - 3600}),
        "wrong audience": rsa_key.sign({**buyer, "aud": "billing"}),
        "wrong issuer": rsa_key.sign({**buyer, "iss": "https://other.test"}),
        "unknown signing key": jwts.SigningKey("rsa-9").sign(buyer),
        "bad signature": jwts.SigningKey("rsa-1").sign(buyer),  # the kid, not the key
    }
    for reason, token in refused.items():
        status, headers, body = pair.curl(token)
        assert status == 401, (reason, body)
        assert 'error="invalid_token"' in headers["www-authenticate"], reason
        assert reason in headers["www-authenticate"], (reason, headers)

    status, _, body = pair.curl(rsa_key.sign(jwts.claims(ISSUER, groups=["sellers"])))
    assert status == 403, body
    assert "defaultPolicy: deny" in body
    status, _, body = pair.curl(rsa_key.sign(buyer), method="GET")
    assert status == 403, "the group may POST /orders, nothing else"

    for key in (rsa_key, ec_key):
        status, _, body = pair.curl(key.sign(buyer))
        assert status == 200, body
        seen: dict[str, Any] = json.loads(body)["headers"]
        assert seen["x-user-groups"] == "buyers,staff"
        assert "authorization" not in seen, "the token is not passed to the app"

    # The access log names the reason, never a token.
    sidecars.wait_until(lambda: any("expired" in e.get("decided_by", "") for e in pair.api.lines))
    logged = json.dumps(pair.api.lines)
    assert all(token.split(".")[2] not in logged for token in refused.values())
    assert rsa_key.sign(buyer).split(".")[0] not in logged


def test_a_rotated_key_is_picked_up_and_cached_keys_outlive_the_idp(
    rig: tuple[Pair, jwts.JwksServer, list[jwts.SigningKey]],
) -> None:
    pair, idp, (old, _ec) = rig
    buyer = jwts.claims(ISSUER, groups=["buyers"])
    new = jwts.SigningKey("rsa-2")
    status, headers, _ = pair.curl(new.sign(buyer))
    assert status == 401
    assert "unknown signing key" in headers["www-authenticate"]

    kept = old.sign(buyer)
    assert pair.curl(kept)[0] == 200  # verified, so now in the sidecar's token cache
    idp.keys[:] = [new]  # the IdP rotates: the old key is withdrawn
    sidecars.wait_until(lambda: pair.curl(new.sign(buyer))[0] == 200)
    for token in (kept, old.sign(buyer)):
        status, headers, _ = pair.curl(token)
        assert status == 401, "a token verified by a withdrawn key is not kept past the reload"
        assert "unknown signing key" in headers["www-authenticate"]

    idp.stop()
    sidecars.wait_until(lambda: all(s["stale"] for s in pair.api.dump()["jwks"].values()))
    status, _, _ = pair.curl(new.sign(buyer))
    assert status == 200, "keys already fetched keep working while the IdP is away"
    metrics = sidecars.http_get(f"{pair.api.admin}/metrics")[1]
    assert f'weft_sidecar_jwks_stale{{source="uri:{idp.uri}"}} 1' in metrics


def test_a_cached_token_is_refused_once_it_expires(
    rig: tuple[Pair, jwts.JwksServer, list[jwts.SigningKey]],
) -> None:
    pair, _idp, (rsa_key, _ec) = rig
    exp = int(time.time()) + 2
    token = rsa_key.sign(jwts.claims(ISSUER, groups=["buyers"], exp=exp))
    assert pair.curl(token)[0] == 200
    assert pair.curl(token)[0] == 200  # the second answered from the cache
    time.sleep(max(0.0, exp + 2.2 - time.time()))  # past `exp` and the 1 s of clock skew
    status, headers, _ = pair.curl(token)
    assert status == 401
    assert "token expired" in headers["www-authenticate"]
