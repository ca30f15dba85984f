"""End-user authentication against a real OpenID Connect provider: ORY Hydra (built in
tools/hydra) issues JWT access tokens through the real client-credentials grant; the intent
names only the issuer, so the `weft sidecar` agent finds the keys through Hydra's discovery
document; requests go through a real sidecar pair with curl.

b/api's AccessPolicy lets namespace a POST /orders only with a token carrying the scope
`orders.write`; b/api accepts tokens for the audience `orders`.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import compiler
from reconciler.targets.local.binding import bind_endpoints, to_json
from tests import hydra as idp
from tests import sidecars, test_gateway
from tests.conftest import load, write_repo
from tests.pki import CA
from tests.test_jwt_sidecars import TD, Pair


def intent(issuer: str) -> dict[str, str]:
    return {
        "mesh.yaml": sidecars.mesh_yaml(TD),
        "services.yaml": sidecars.WEB_AND_API,
        "authn.yaml": f"""\
            apiVersion: weft.dev/v1alpha1
            kind: RequestAuthentication
            metadata: {{name: users, namespace: b}}
            spec:
              issuers:
                - issuer: {issuer}
                  audiences: [orders]
                  forwardClaims: [{{claim: client_id, header: x-client-id}}]
            """,
        "policy.yaml": """\
            apiVersion: weft.dev/v1alpha1
            kind: AccessPolicy
            metadata: {name: order-writers, namespace: b}
            spec:
              from: [{namespaces: [a]}]
              when:
                methods: [POST]
                paths: [/orders]
                scopes: [orders.write]
            """,
    }


@pytest.fixture
def pair(tmp_path: Path, hydra: idp.Hydra) -> Iterator[Pair]:
    p = Pair(tmp_path, intent(hydra.issuer), hydra.trust)
    with sidecars.serving(p.app):
        p.start()
        try:
            yield p
        finally:
            p.stop()


def test_hydra_publishes_discovery_for_the_issuer_it_signs_as(hydra: idp.Hydra) -> None:
    ctx = hydra._context()
    url = hydra.issuer + "/.well-known/openid-configuration"
    with urllib.request.urlopen(url, timeout=10, context=ctx) as resp:
        discovery = json.loads(resp.read())
    assert discovery["issuer"] == hydra.issuer
    assert discovery["jwks_uri"].startswith(hydra.issuer + "/")


def test_tokens_from_the_real_grant_decide_401_403_and_200(pair: Pair, hydra: idp.Hydra) -> None:
    writer = hydra.client("orders.write orders.read", ["orders", "billing"])
    reader = hydra.client("orders.read", ["orders"])

    status, headers, body = pair.curl(None)
    assert status == 401, body
    assert "no token" in body

    token = hydra.token(writer, "orders.write", "orders")
    status, _, body = pair.curl(token)
    assert status == 200, body
    assert json.loads(body)["headers"]["x-client-id"] == writer.client_id
    assert "authorization" not in json.loads(body)["headers"]

    status, _, body = pair.curl(token, method="GET")
    assert status == 403, "the scope may POST /orders, nothing else"
    status, _, body = pair.curl(hydra.token(reader, "orders.read", "orders"))
    assert status == 403, body
    assert "defaultPolicy: deny" in body

    refused = {
        "wrong audience": hydra.token(writer, "orders.write", "billing"),
        "bad signature": token[:-8]
        + ("AAAAAAAA" if not token.endswith("AAAAAAAA") else "BBBBBBBB"),
    }
    for reason, bad in refused.items():
        status, headers, body = pair.curl(bad)
        assert status == 401, (reason, body)
        assert reason in headers["www-authenticate"], (reason, headers)

    # The agent found the keys through discovery, not through a jwksUri in the intent.
    jwks = pair.api.dump()["jwks"]
    assert list(jwks) == [f"issuer:{hydra.issuer}"]
    assert jwks[f"issuer:{hydra.issuer}"]["stale"] is False


def test_a_key_hydra_rotates_in_is_accepted_without_restart_and_outlives_hydra(
    pair: Pair, hydra: idp.Hydra
) -> None:
    writer = hydra.client("orders.write", ["orders"])
    before = hydra.token(writer, "orders.write", "orders")
    assert pair.curl(before)[0] == 200
    agent_pid = pair.api.proc.pid

    new_kid = hydra.rotate()
    after = hydra.token(writer, "orders.write", "orders")
    assert idp.kid(after) == new_kid != idp.kid(before), "Hydra signs with the rotated-in key"
    sidecars.wait_until(lambda: pair.curl(after)[0] == 200, timeout=20)
    assert pair.api.proc.pid == agent_pid
    assert pair.api.proc.poll() is None
    assert pair.curl(before)[0] == 200, "the older key is still published, so still accepted"

    source = f"issuer:{hydra.issuer}"
    hydra.stop()
    sidecars.wait_until(lambda: pair.api.dump()["jwks"][source]["stale"], timeout=20)
    status, _, _ = pair.curl(after)
    assert status == 200, "keys already fetched keep working while the IdP is away"
    metrics = sidecars.http_get(f"{pair.api.admin}/metrics")[1]
    assert f'weft_sidecar_jwks_stale{{source="{source}"}} 1' in metrics
    assert f'weft_sidecar_jwks_fetches_total{{source="{source}",result="failed"}}' in metrics


def test_a_discovery_document_for_another_issuer_gives_no_keys(
    tmp_path: Path, hydra: idp.Hydra
) -> None:
    """The intent spells the issuer with a trailing slash; Hydra's document names it without:
    the agent takes no keys from it (OIDC Discovery §4.3) and says why."""
    issuer = hydra.issuer + "/"
    p = Pair(tmp_path, intent(issuer), hydra.trust)
    with sidecars.serving(p.app):
        p.start()
        try:
            source = f"issuer:{issuer}"
            sidecars.wait_until(lambda: source in p.api.dump()["jwks"], timeout=20)
            state = p.api.dump()["jwks"][source]
            assert state["stale"] is True
            assert state["keys"] == 0
            assert f"names issuer {hydra.issuer!r}, not {issuer!r}" in state["error"]
            writer = hydra.client("orders.write", ["orders"])
            status, _, body = p.curl(hydra.token(writer, "orders.write", "orders"))
            assert status == 401, body
        finally:
            p.stop()


def test_an_ingress_gateway_checks_tokens_at_the_edge(tmp_path: Path, hydra: idp.Hydra) -> None:
    """RequestAuthentication `to: gateways`: the gateway (a real `weft sidecar` process that
    discovers Hydra's keys) answers 401 itself and forwards verified claims into the mesh."""
    site_ca = CA.create("public web CA")
    site = site_ca.issue_server(test_gateway.HOST)
    tls_dir = tmp_path / "edge-tls"
    tls_dir.mkdir()
    (tls_dir / "tls.crt").write_bytes(site.chain)
    (tls_dir / "tls.key").write_bytes(site.key)
    (tmp_path / "site-ca.pem").write_bytes(site_ca.pem)
    files = {
        **test_gateway.mesh_intent(tls_dir),
        "authn.yaml": f"""\
            apiVersion: weft.dev/v1alpha1
            kind: RequestAuthentication
            metadata: {{name: edge-users, namespace: edge}}
            spec:
              to: {{gateways: [public]}}
              issuers:
                - issuer: {hydra.issuer}
                  audiences: [orders]
                  forwardClaims: [{{claim: client_id, header: x-client-id}}]
            """,
    }
    root = write_repo(tmp_path / "intent", files)
    desired = compiler.compile(load(root))
    mesh_ca = CA.create()
    app = sidecars.EchoServer("api")
    with sidecars.serving(app):
        api = sidecars.start(
            desired.proxy_configs[("b", "api")].as_dict(),
            sidecars.identity(mesh_ca, test_gateway.TD, "b", "api"),
            {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": app.addr}},
        )
        gw_files = tmp_path / "gateway"
        (gw_files / "certs").mkdir(parents=True)
        gw = sidecars.identity(mesh_ca, test_gateway.TD, "edge", "public")
        for name, data in (("tls.crt", gw.chain), ("tls.key", gw.key), ("ca.crt", gw.bundle)):
            (gw_files / "certs" / name).write_bytes(data)
        config = bind_endpoints(
            desired.gateway_configs[("edge", "public")].as_dict(),
            {"b/api": [api.bound()["inbound:http"]]},
        )
        (gw_files / "config.json").write_text(to_json(config))
        gateway = sidecars.AgentProcess(
            gw_files / "config.json",
            gw_files / "certs",
            {"gateway": {"https": "127.0.0.1:0"}},
            poll=0.2,
            args=("--jwks-refresh", "0.5"),
            env={**os.environ, "SSL_CERT_FILE": str(hydra.trust)},
        ).start()
        try:
            port = int(gateway.bound["gateway:https"].rsplit(":", 1)[1])

            def curl(token: str | None) -> tuple[int, dict[str, str], str]:
                auth = ["-H", f"Authorization: Bearer {token}"] if token else []
                out = subprocess.run(
                    [
                        *("curl", "-sS", "-D", "-", "--cacert", str(tmp_path / "site-ca.pem")),
                        *("--resolve", f"{test_gateway.HOST}:{port}:127.0.0.1", *auth),
                        f"https://{test_gateway.HOST}:{port}/public/items",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    check=True,
                ).stdout
                head, _, body = out.partition("\n\n")
                lines = head.split("\n")
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                return int(lines[0].split()[1]), headers, body

            status, headers, body = curl(None)
            assert status == 401, body
            assert headers["www-authenticate"] == 'Bearer realm="edge/public"'
            client = hydra.client("orders.read", ["orders"])
            token = hydra.token(client, "orders.read", "orders")
            sidecars.wait_until(lambda: curl(token)[0] == 200, timeout=20)
            seen = json.loads(curl(token)[2])["headers"]
            assert seen["x-client-id"] == client.client_id
            assert seen["x-weft-peer"] == f"spiffe://{test_gateway.TD}/ns/edge/sa/public"
            assert "authorization" not in seen, "the token stops at the edge"
            stray = hydra.token(client, "orders.read", None)
            status, headers, _ = curl(stray)
            assert status == 401
            assert "wrong audience" in headers["www-authenticate"]
            # The edge's access log names the reason, never the token.
            sidecars.wait_until(
                lambda: any(
                    e.get("decided_by") == "RequestAuthentication edge/edge-users: wrong audience"
                    for e in gateway.lines
                )
            )
            logged = json.dumps(gateway.lines)
            assert stray.split(".")[2] not in logged
            assert token.split(".")[2] not in logged
        finally:
            gateway.stop()
            api.shutdown(1.0)
