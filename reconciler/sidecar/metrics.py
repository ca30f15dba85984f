"""Prometheus text for a sidecar, with Istio's metric names and labels so dashboards work.

fastpath keeps the counters (in Rust, no GIL on a request); this module only renders a
snapshot: `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_tcp_*`, plus
the agent's own `weft_sidecar_*` series.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

# fastpath's histogram bounds (telemetry.rs BUCKETS_MS), Istio's defaults.
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _namespace_of(principal: str) -> str:
    parts = principal.split("/")
    return parts[parts.index("ns") + 1] if "ns" in parts[:-1] else "unknown"


def _request_labels(key: Mapping[str, Any], workload: Mapping[str, str]) -> dict[str, str]:
    inbound = key["direction"] == "inbound"
    dest_ns, _, dest_name = str(key["destination"]).partition("/")
    source = str(key["source"])
    return {
        "reporter": "destination" if inbound else "source",
        "source_principal": source,
        "source_workload_namespace": _namespace_of(source) if source != "unknown" else "unknown",
        "destination_principal": workload["spiffeId"] if inbound else "unknown",
        "destination_service_name": dest_name,
        "destination_service_namespace": dest_ns,
        "destination_port": str(key["port"]),
        "request_protocol": str(key.get("protocol", "http")),
        "response_code": str(key["code"]),
        # A gRPC call's outcome (its HTTP code is 200 whatever happened); empty for plain HTTP.
        "grpc_response_status": "" if key.get("grpc_status") is None else str(key["grpc_status"]),
        "connection_security_policy": "mutual_tls" if source != "unknown" else "none",
        "weft_decided_by": str(key["policy"]),
    }


def render(stats_json: str, workload: Mapping[str, str], extra: Iterable[str] = ()) -> str:
    """Prometheus exposition text for one fastpath stats snapshot."""
    stats = json.loads(stats_json)
    lines = [
        "# HELP istio_requests_total Requests handled by the sidecar.",
        "# TYPE istio_requests_total counter",
    ]
    hist = [
        "# HELP istio_request_duration_milliseconds Request duration in milliseconds.",
        "# TYPE istio_request_duration_milliseconds histogram",
    ]
    for key, value in stats["requests"]:
        labels = _request_labels(key, workload)
        lines.append(f"istio_requests_total{_labels(labels)} {value['count']}")
        name = "istio_request_duration_milliseconds"
        for bound, count in zip(BUCKETS_MS, value["buckets"], strict=True):
            hist.append(f"{name}_bucket{_labels({**labels, 'le': str(bound)})} {count}")
        hist.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {value['count']}")
        hist.append(f"istio_request_duration_milliseconds_sum{_labels(labels)} {value['sum_ms']}")
        hist.append(f"istio_request_duration_milliseconds_count{_labels(labels)} {value['count']}")
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
    out = [*lines, *hist, *(line for block in tcp.values() for line in block)]
    out += [
        "# TYPE weft_sidecar_spans_dropped_total counter",
        f"weft_sidecar_spans_dropped_total {stats['spans_dropped']}",
    ]
    out += list(extra)
    return "\n".join(out) + "\n"
