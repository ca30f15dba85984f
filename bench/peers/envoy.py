"""Envoy configurations: the sidecar pair (A: plaintext HTTP in, mTLS out pinned to b/api's
SPIFFE ID; B: mTLS in admitting only a/web, plaintext to the app) and a plain HTTP reverse
proxy. TLS 1.3 only, X25519 only; every listener writes a JSON access log to stdout, as Weft's
sidecar always writes one.

A's resilient variant (issue 12) is what Istio generates for a Route mirroring 100 % of v1's
traffic to v2 and a DestinationRule with outlier detection: the route's
`request_mirror_policies` at a 100 % `runtime_fraction`, and `outlier_detection` on both subset
clusters with Istio's defaults (5 consecutive 5xx, 10 s interval, 30 s base ejection, 10 % max
ejected, success-rate detection not enforced)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peers.pki import API_ID, WEB_ID


def _tls_common(certs: Path, peer_id: str) -> dict[str, Any]:
    return {
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
            "ecdh_curves": ["X25519"],
        },
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(certs / "tls.crt")},
                "private_key": {"filename": str(certs / "tls.key")},
            }
        ],
        "validation_context": {
            "trusted_ca": {"filename": str(certs / "ca.crt")},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer_id}}],
        },
    }


# Istio's outlier detection defaults as its DestinationRule translation writes them; Weft's
# `outlierDetection` with the same values (bench/peers/weft.py) is what the benchmark compares.
OUTLIER_DETECTION = {
    "consecutive_5xx": 5,
    "interval": "10s",
    "base_ejection_time": "30s",
    "max_ejection_percent": 10,
    "enforcing_consecutive_5xx": 100,
    "enforcing_success_rate": 0,
    "enforcing_consecutive_gateway_failure": 0,
}


def _http_manager(name: str, cluster: str, mirror: str | None = None) -> dict[str, Any]:
    fields = {
        "start_time": "%START_TIME%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        "duration_ms": "%DURATION%",
        "bytes_sent": "%BYTES_SENT%",
        "upstream": "%UPSTREAM_HOST%",
        "peer": "%DOWNSTREAM_PEER_URI_SAN%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "direction": name,
    }
    route: dict[str, Any] = {"cluster": cluster}
    if mirror is not None:
        route["request_mirror_policies"] = [
            {
                "cluster": mirror,
                "runtime_fraction": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            }
        ]
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "access_log": [
                {
                    "name": "envoy.access_loggers.stdout",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3."
                        "StdoutAccessLog",
                        "log_format": {"json_format": fields},
                    },
                }
            ],
            "route_config": {
                "name": name,
                "virtual_hosts": [
                    {
                        "name": cluster,
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": route}],
                    }
                ],
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3."
                        "Router"
                    },
                }
            ],
        },
    }


def _cluster(name: str, port: int, tls: dict[str, Any] | None) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if tls is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                "UpstreamTlsContext",
                "common_tls_context": tls,
            },
        }
    return cluster


def _admin(port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def _listener(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
    }


def envoy_a(
    admin: int, port: int, upstream: int, certs: Path, mirror: int | None = None
) -> dict[str, Any]:
    """Outbound: plaintext HTTP from the app, to B over mTLS expecting b/api's SPIFFE ID. With
    `mirror` (the port of b/api v2's proxy), every request is also copied there, and both
    clusters have outlier detection on."""
    clusters = [_cluster("api", upstream, _tls_common(certs, API_ID))]
    if mirror is not None:
        clusters.append(_cluster("api-v2", mirror, _tls_common(certs, API_ID)))
        for cluster in clusters:
            cluster["outlier_detection"] = dict(OUTLIER_DETECTION)
    manager = _http_manager("outbound", "api", "api-v2" if mirror is not None else None)
    return {
        "admin": _admin(admin),
        "static_resources": {
            "listeners": [
                {**_listener("outbound", port), "filter_chains": [{"filters": [manager]}]}
            ],
            "clusters": clusters,
        },
    }


def envoy_b(admin: int, port: int, app: int, certs: Path) -> dict[str, Any]:
    """Inbound: mTLS required, only a/web's SPIFFE ID admitted, then plaintext to the app."""
    return {
        "admin": _admin(admin),
        "static_resources": {
            "listeners": [
                {
                    **_listener("inbound", port),
                    "filter_chains": [
                        {
                            "filters": [_http_manager("inbound", "app")],
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions."
                                    "transport_sockets.tls.v3.DownstreamTlsContext",
                                    "require_client_certificate": True,
                                    "common_tls_context": _tls_common(certs, WEB_ID),
                                },
                            },
                        }
                    ],
                }
            ],
            "clusters": [_cluster("app", app, None)],
        },
    }


def reverse_proxy(admin: int, port: int, app: int) -> dict[str, Any]:
    """One proxy: plaintext HTTP in, plaintext keep-alive HTTP/1.1 to the app."""
    return {
        "admin": _admin(admin),
        "static_resources": {
            "listeners": [
                {
                    **_listener("ingress", port),
                    "filter_chains": [{"filters": [_http_manager("ingress", "app")]}],
                }
            ],
            "clusters": [_cluster("app", app, None)],
        },
    }


def argv(binary: Path, config: Path, concurrency: int = 1) -> list[str]:
    """One worker thread (`--concurrency 1`) unless told otherwise."""
    return [
        str(binary),
        *("-c", str(config), "--concurrency", str(concurrency)),
        *("--disable-hot-restart", "--log-level", "warn"),
    ]
