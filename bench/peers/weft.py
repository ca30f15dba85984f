"""Weft's ProxyConfigs for the benchmarks, compiled from a two-service intent (a/web may call
b/api through one AccessPolicy), and the listener bindings that place them on loopback ports.
Both `weft sidecar` (agent + fastpath) and the standalone `fastpath-proxy` run these.

The resilient variant (issue 12) gives b/api subsets v1 and v2, a Route sending everything to
v1 and mirroring 100 % of it to v2, and `outlierDetection` with Istio's defaults spelled out,
the settings bench/peers/envoy.py gives Envoy."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path
from typing import Any

from peers.pki import TRUST_DOMAIN
from reconciler import compiler, intent
from reconciler.targets.local.binding import bind_endpoints, to_json
from tests import sidecars

# The tests' web/api pair and their policy, so the benchmarks measure the mesh the tests prove.
INTENT = {
    "mesh.yaml": sidecars.mesh_yaml(TRUST_DOMAIN),
    "services.yaml": f"{sidecars.WEB_AND_API}---\n{sidecars.ALLOW_A_TO_B}",
}


RESILIENT_API = """\
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: a}
spec: {ports: [{name: http, port: 8080}]}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: api, namespace: b}
spec:
  ports: [{name: http, port: 8080}]
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
  outlierDetection:
    consecutive5xx: 5
    interval: 10s
    baseEjectionTime: 30s
    maxEjectionPercent: 10
"""

RESILIENT_ROUTE = """\
apiVersion: weft.dev/v1alpha1
kind: Route
metadata: {name: api, namespace: b}
spec:
  host: api.b
  rules:
    - backends: [{subset: v1}]
      mirror: {subset: v2, percent: 100}
"""

RESILIENT_INTENT = {
    "mesh.yaml": INTENT["mesh.yaml"],
    "services.yaml": f"{RESILIENT_API}---\n{sidecars.ALLOW_A_TO_B}",
    "routes.yaml": RESILIENT_ROUTE,
}


def compile_intent(
    root: Path, resilient: bool = False, files: dict[str, str] | None = None
) -> dict[tuple[str, str], dict[str, Any]]:
    """ProxyConfig dicts by (namespace, service); `resilient` compiles the mirror + outlier
    detection variant, `files` an intent of the caller's own."""
    for rel, text in (files or (RESILIENT_INTENT if resilient else INTENT)).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    desired = compiler.compile(intent.load(intent.files.from_directory(root)))
    return {key: c.as_dict() for key, c in desired.proxy_configs.items()}


def caller(configs: dict[tuple[str, str], dict[str, Any]], b_port: int) -> dict[str, Any]:
    """a/web's config with b/api's endpoint bound to B's inbound port."""
    return bind_endpoints(configs[("a", "web")], {"b/api": [f"127.0.0.1:{b_port}"]})


def reverse_proxy(configs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """b/api's inbound as a plain HTTP reverse proxy: PERMISSIVE mTLS (a plaintext connection
    is served as plaintext) and every request allowed, for the one-proxy scenario."""
    config = copy.deepcopy(configs[("b", "api")])
    config["mtls"] = "PERMISSIVE"
    for port in config["inbound"]:
        port["rules"] = []
        port["defaultAction"] = "ALLOW"
        port["defaultPolicy"] = "bench-allow-all"
    return config


def outbound_listeners(port: int) -> dict[str, Any]:
    return {"outboundHttp": f"127.0.0.1:{port}"}


def inbound_listeners(port: int, app: int) -> dict[str, Any]:
    return {"inbound": {"http": f"127.0.0.1:{port}"}, "app": {"http": f"127.0.0.1:{app}"}}


def write(root: Path, name: str, config: dict[str, Any], listeners: dict[str, Any]) -> Path:
    """Write `<name>.json` (the ProxyConfig) and `<name>-listeners.json`; return the first."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.json"
    path.write_text(to_json(config))
    (root / f"{name}-listeners.json").write_text(json.dumps(listeners))
    return path


def sidecar_argv(weft: Path, config: Path, certs: Path, admin: int, workers: int = 1) -> list[str]:
    """`weft sidecar` as users run it, with one fastpath worker thread unless told otherwise."""
    listeners = config.with_name(config.stem + "-listeners.json")
    return [
        str(weft),
        "sidecar",
        *("--config", str(config), "--certs", str(certs), "--listeners", str(listeners)),
        *("--admin", f"127.0.0.1:{admin}", "--workers", str(workers), "--drain-timeout", "1"),
    ]


def fastpath_argv(binary: Path, config: Path, certs: Path, workers: int = 1) -> list[str]:
    """The standalone `fastpath-proxy` on the same config, certificates and listeners."""
    listeners = config.with_name(config.stem + "-listeners.json")
    return [
        str(binary),
        *("--config", str(config), "--listeners", str(listeners)),
        *("--cert-chain", str(certs / "tls.crt"), "--key", str(certs / "tls.key")),
        *("--bundle", str(certs / "ca.crt"), "--workers", str(workers), "--drain-timeout", "1"),
    ]
