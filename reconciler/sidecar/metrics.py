"""Prometheus text for a sidecar, with Istio's metric names and labels so dashboards work.

fastpath keeps the counters (in Rust, no GIL on a request); this module only renders a
snapshot: `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
`istio_response_bytes`, `istio_tcp_*`, plus the agent's own `weft_sidecar_*` series.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

# fastpath's histogram bounds (telemetry.rs BUCKETS_MS), Istio's defaults.
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)
# fastpath's body-size bounds (telemetry.rs BUCKETS_BYTES): Istio's, powers of ten to 10 MB.
BUCKETS_BYTES = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _namespace_of(principal: str) -> str:
    parts = principal.split("/")
    return parts[parts.index("ns") + 1] if "ns" in parts[:-1] else "unknown"


# Istio's standard labels, in its order (https://istio.io/latest/docs/reference/config/metrics/);
# Weft's own (destination_port, weft_decided_by) follow them.
ISTIO_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
# Istio's cluster ID when none is configured; Weft runs one cluster.
CLUSTER = "Kubernetes"
_UNKNOWN = {
    "workload": "unknown",
    "app": "unknown",
    "version": "unknown",
    "canonicalService": "unknown",
    "canonicalRevision": "unknown",
}


class Peers:
    """The labels of this workload and its peers (ProxyConfig `telemetry.peers`), by service
    and by SPIFFE ID; an identity several Services share names none of them."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        peers = config.get("telemetry", {}).get("peers", [])
        self.by_service: dict[str, Mapping[str, str]] = {p["service"]: p for p in peers}
        by_spiffe: dict[str, list[Mapping[str, str]]] = {}
        for p in peers:
            by_spiffe.setdefault(p["spiffeId"], []).append(p)
        self.by_spiffe = {k: v[0] for k, v in by_spiffe.items() if len(v) == 1}
        self.egress = {e["name"]: e["host"] for e in config.get("outbound", {}).get("egress", [])}


def _end(side: str, peer: Mapping[str, str] | None, namespace: str) -> dict[str, str]:
    p = peer or _UNKNOWN
    return {
        f"{side}_workload": p["workload"],
        f"{side}_workload_namespace": namespace,
        f"{side}_app": p["app"],
        f"{side}_version": p["version"],
        f"{side}_canonical_service": p["canonicalService"],
        f"{side}_canonical_revision": p["canonicalRevision"],
        f"{side}_cluster": CLUSTER if peer else "unknown",
    }


def _request_labels(
    key: Mapping[str, Any], workload: Mapping[str, str], peers: Peers
) -> dict[str, str]:
    inbound = key["direction"] == "inbound"
    destination = str(key["destination"])
    dest_ns, _, dest_name = destination.partition("/")
    if not dest_name:  # a refused authority ("ledger.c:8080"): no service was chosen
        dest_ns, dest_name = "unknown", destination.rsplit(":", 1)[0] or "unknown"
    source = str(key["source"])
    if inbound:
        src_peer, dst_peer = peers.by_spiffe.get(source), peers.by_service.get(destination)
        dest_principal = workload["spiffeId"]
        # mTLS names the caller; a plaintext caller (PERMISSIVE) has no identity.
        security = "mutual_tls" if source != "unknown" else "none"
    else:
        src_peer, dst_peer = (
            peers.by_service.get(f"{workload['namespace']}/{workload['service']}"),
            peers.by_service.get(destination),
        )
        # The identity this sidecar pinned for the upstream: the only one it accepts.
        dest_principal = dst_peer["spiffeId"] if dst_peer else "unknown"
        security = "unknown"  # Istio's value on reporter=source
    host = dst_peer["host"] if dst_peer else peers.egress.get(destination, dest_name or "unknown")
    src_ns = _namespace_of(source) if source != "unknown" else "unknown"
    labels = {
        "reporter": "destination" if inbound else "source",
        **_end("source", src_peer, src_ns),
        "source_principal": source,
        **_end("destination", dst_peer, dest_ns if dst_peer else "unknown"),
        "destination_principal": dest_principal,
        "destination_service": host,
        "destination_service_name": dest_name,
        "destination_service_namespace": dest_ns,
        "request_protocol": str(key.get("protocol", "http")),
        "response_code": str(key["code"]),
        # A gRPC call's outcome (its HTTP code is 200 whatever happened); empty for plain HTTP.
        "grpc_response_status": "" if key.get("grpc_status") is None else str(key["grpc_status"]),
        # Envoy's NR for a destination with no route; what the sidecar did itself (UO circuit
        # breaker overflow, FI/DI injected faults, UT a route's timeout) as fastpath reports
        # it; "-" is Istio's value for a request with none. Other flags (UF, ...) are not told
        # apart yet.
        "response_flags": "NR"
        if key["policy"] == "outbound: no route"
        else str(key.get("response_flags") or "-"),
        "connection_security_policy": security,
    }
    ordered = {name: labels[name] for name in ISTIO_LABELS}
    ordered["destination_port"] = str(key["port"])
    ordered["weft_decided_by"] = str(key["policy"])
    return ordered


def clusters(clusters_json: str) -> list[str]:
    """Outlier ejections, circuit breaker gauges and mirror counters from `Proxy.clusters()`."""
    report = json.loads(clusters_json)
    ejected = ["# TYPE weft_outlier_ejected gauge"]
    ejections = ["# TYPE weft_outlier_ejections_total counter"]
    open_ = ["# TYPE weft_circuit_breaker_open gauge"]
    overflows = ["# TYPE weft_circuit_breaker_overflows_total counter"]
    for c in report["clusters"]:
        cluster = {"cluster": c["name"]}
        outliers = c.get("outlier_detection")
        if outliers is not None:
            ejected.append(f"weft_outlier_ejected{_labels(cluster)} {outliers['ejected_now']}")
            for total in outliers["ejections_total"]:
                labels = _labels({**cluster, "reason": total["reason"]})
                ejections.append(f"weft_outlier_ejections_total{labels} {total['count']}")
        for gauge in c["circuit_breaker"]:
            labels = _labels({**cluster, "limit": gauge["limit"]})
            if gauge["max"] is not None or gauge["overflows"]:
                open_.append(f"weft_circuit_breaker_open{labels} {gauge['open']}")
                overflows.append(
                    f"weft_circuit_breaker_overflows_total{labels} {gauge['overflows']}"
                )
    mirrors = {
        name: [f"# TYPE {name} counter"]
        for name in (
            "weft_mirror_sent_total",
            "weft_mirror_dropped_total",
            "weft_mirror_too_large_total",
            "weft_mirror_failed_total",
        )
    }
    for m in report["mirrors"]:
        copies = m["copies"]
        labels = _labels({"route": m["route"], "cluster": copies["cluster"]})
        for field in ("sent", "dropped", "too_large", "failed"):
            mirrors[f"weft_mirror_{field}_total"].append(
                f"weft_mirror_{field}_total{labels} {copies[field]}"
            )
    return [*ejected, *ejections, *open_, *overflows, *(x for v in mirrors.values() for x in v)]


def render(stats_json: str, config: Mapping[str, Any], extra: Iterable[str] = ()) -> str:
    """Prometheus exposition text for one fastpath stats snapshot of the sidecar `config`."""
    stats = json.loads(stats_json)
    workload = config.get("workload", {})
    peers = Peers(config)
    lines = [
        "# HELP istio_requests_total Requests handled by the sidecar.",
        "# TYPE istio_requests_total counter",
    ]
    hist = [
        "# HELP istio_request_duration_milliseconds Request duration in milliseconds.",
        "# TYPE istio_request_duration_milliseconds histogram",
    ]
    for key, value in stats["requests"]:
        labels = _request_labels(key, workload, peers)
        lines.append(f"istio_requests_total{_labels(labels)} {value['count']}")
        name = "istio_request_duration_milliseconds"
        for bound, count in zip(BUCKETS_MS, value["buckets"], strict=True):
            hist.append(f"{name}_bucket{_labels({**labels, 'le': str(bound)})} {count}")
        hist.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {value['count']}")
        hist.append(f"istio_request_duration_milliseconds_sum{_labels(labels)} {value['sum_ms']}")
        hist.append(f"istio_request_duration_milliseconds_count{_labels(labels)} {value['count']}")
    sizes = {
        name: [f"# HELP {name} {what}", f"# TYPE {name} histogram"]
        for name, what in (
            ("istio_request_bytes", "HTTP request body sizes in bytes."),
            ("istio_response_bytes", "HTTP response body sizes in bytes."),
        )
    }
    for key, value in stats.get("sizes", []):
        labels = _request_labels(key, workload, peers)
        for name, side in (
            ("istio_request_bytes", "request"),
            ("istio_response_bytes", "response"),
        ):
            block = sizes[name]
            for bound, count in zip(BUCKETS_BYTES, value[f"{side}_buckets"], strict=True):
                block.append(f"{name}_bucket{_labels({**labels, 'le': str(bound)})} {count}")
            block.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {value['count']}")
            block.append(f"{name}_sum{_labels(labels)} {value[f'{side}_sum']}")
            block.append(f"{name}_count{_labels(labels)} {value['count']}")
    tcp: dict[str, list[str]] = {
        name: [f"# TYPE {name} counter"]
        for name in (
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
            "istio_tcp_sent_bytes_total",
            "istio_tcp_received_bytes_total",
            "weft_tcp_connections_denied_total",
        )
    }
    for key, value in stats["tcp"]:
        # Refused captured connections have no service, only a reason ("unregistered").
        dest_ns, _, dest_name = str(key["destination"]).rpartition("/")
        tcp_labels = _labels(
            {
                "reporter": "destination" if key["direction"] == "inbound" else "source",
                "source_principal": str(key["source"]),
                "destination_service_name": dest_name,
                "destination_service_namespace": dest_ns or "unknown",
                "destination_port": str(key["port"]),
            }
        )
        tcp["istio_tcp_connections_opened_total"].append(
            f"istio_tcp_connections_opened_total{tcp_labels} {value['opened']}"
        )
        tcp["istio_tcp_connections_closed_total"].append(
            f"istio_tcp_connections_closed_total{tcp_labels} {value['closed']}"
        )
        tcp["istio_tcp_sent_bytes_total"].append(
            f"istio_tcp_sent_bytes_total{tcp_labels} {value['bytes_sent']}"
        )
        tcp["istio_tcp_received_bytes_total"].append(
            f"istio_tcp_received_bytes_total{tcp_labels} {value['bytes_received']}"
        )
        tcp["weft_tcp_connections_denied_total"].append(
            f"weft_tcp_connections_denied_total{tcp_labels} {value['denied']}"
        )
    out = [*lines, *hist, *(line for block in (*sizes.values(), *tcp.values()) for line in block)]
    out += [
        "# TYPE weft_sidecar_spans_dropped_total counter",
        f"weft_sidecar_spans_dropped_total {stats['spans_dropped']}",
    ]
    out += list(extra)
    return "\n".join(out) + "\n"
