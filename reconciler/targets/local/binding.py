"""Binding a compiled ProxyConfig to real addresses.

The compiler emits logical endpoints (DNS names of discovery Services); a target that knows
where workloads actually listen (the local runtime, tests) rewrites them to static addresses.
The ProxyConfig contract allows exactly this rewrite and nothing else.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any


def bind_endpoints(
    config: Mapping[str, Any], endpoints: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """A copy of `config` whose clusters use static "host:port" lists from `endpoints`, keyed by
    cluster name ("ns/name:port/subset") or, failing that, by service ("ns/name"). A cluster
    found under neither keeps its DNS endpoints."""
    bound = copy.deepcopy(dict(config))
    for cluster in bound["outbound"]["clusters"]:
        addrs = endpoints.get(cluster["name"], endpoints.get(cluster["service"]))
        if addrs is not None:
            cluster["endpoints"] = {"static": list(addrs), "port": cluster["endpoints"]["port"]}
    return bound


def to_json(config: Mapping[str, Any]) -> str:
    return json.dumps(config, indent=2) + "\n"
