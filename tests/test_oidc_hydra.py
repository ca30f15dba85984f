"""End-user authentication against a real OpenID Connect provider: ORY Hydra (built in
tools/hydra) issues JWT access tokens through the real client-credentials grant; the intent
names only the issuer, so the `weft sidecar` agent finds the keys through Hydra's discovery
document; requests go through a real sidecar pair with curl.

b/api's AccessPolicy lets namespace a POST /orders only with a token carrying the scope
`orders.write`; b/api accepts tokens for the audience `orders`.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import hydra as idp
from tests import sidecars
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
