"""Envoy at the edge: an ingress gateway (TLS termination with the site's certificate, then mTLS
to the callee's Envoy sidecar with the gateway's SPIFFE identity), that sidecar admitting only
the gateway, and a sidecar B verifying end-user JWTs with `jwt_authn` from an inline JWKS.
Built on peers/envoy.py's pieces, so every Envoy of the benchmarks is configured one way."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from peers import envoy
from peers.pki import API_ID


def ingress(admin: int, port: int, upstream: int, site: Path, mesh: Path) -> dict[str, Any]:
    """HTTPS in with `site`'s certificate (no client certificate, TLS 1.2 or 1.3 as a public
    listener allows, ALPN h2 or http/1.1), HTTP/1.1 over mTLS on to b/api presenting the
    gateway's `mesh` identity."""
    manager = envoy._http_manager("ingress", "api")
    return {
        "admin": envoy._admin(admin),
        "static_resources": {
            "listeners": [
                {
                    **envoy._listener("ingress", port),
                    "filter_chains": [
                        {
                            "filters": [manager],
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions."
                                    "transport_sockets.tls.v3.DownstreamTlsContext",
                                    "common_tls_context": {
                                        # h2 too, as Weft's gateway offers: the
                                        # manager's codec is AUTO, so ALPN decides
                                        "alpn_protocols": ["h2", "http/1.1"],
                                        "tls_certificates": [
                                            {
                                                "certificate_chain": {
                                                    "filename": str(site / "tls.crt")
                                                },
                                                "private_key": {"filename": str(site / "tls.key")},
                                            }
                                        ],
                                    },
                                },
                            },
                        }
                    ],
                }
            ],
            "clusters": [envoy._cluster("api", upstream, envoy._tls_common(mesh, API_ID))],
        },
    }


def sidecar_b(admin: int, port: int, app: int, certs: Path, peer_id: str) -> dict[str, Any]:
    """peers/envoy.py's inbound sidecar, admitting `peer_id` instead of a/web."""
    config = envoy.envoy_b(admin, port, app, certs)
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            tls = chain["transport_socket"]["typed_config"]["common_tls_context"]
            tls["validation_context"]["match_typed_subject_alt_names"] = [
                {"san_type": "URI", "matcher": {"exact": peer_id}}
            ]
    return config


def with_jwt(
    config: dict[str, Any],
    issuer: str,
    audience: str,
    jwks: dict[str, Any],
    cache_size: int = 0,
) -> dict[str, Any]:
    """`config` (a sidecar B) with `jwt_authn` before the router: a token from `issuer` for
    `audience`, verified against the inline `jwks`, required on every request and removed
    before the app (`forward: false`, as Weft strips it by default). `cache_size` > 0 turns on
    Envoy's cache of verified tokens (`jwt_cache_config`, off by default), as Weft's
    `tokenCacheSize` does; 0 verifies a signature on every request."""
    config = copy.deepcopy(config)
    provider: dict[str, Any] = {
        "issuer": issuer,
        "audiences": [audience],
        "local_jwks": {"inline_string": json.dumps(jwks)},
        "forward": False,
    }
    if cache_size:
        provider["jwt_cache_config"] = {"jwt_cache_size": cache_size}
    jwt_filter = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3."
            "JwtAuthentication",
            "providers": {"bench": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                f["typed_config"]["http_filters"].insert(0, jwt_filter)
    return config
