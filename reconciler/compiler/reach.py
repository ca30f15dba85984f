"""The reachability matrix: every source service against every destination port, and why.

This is what a reviewer reads in a pull request: `weft reach` prints it as a table (or JSON),
naming the policy that decided each cell. It is computed from intent semantics (`policy`), and
tests prove it equal to what the compiled sidecar rules enforce.
"""

from __future__ import annotations

import dataclasses
import json

from reconciler.compiler.policy import Selection, Verdict
from reconciler.intent import Intent

SYMBOLS = {"allow": "ALLOW", "deny": "deny", "conditional": "L7"}


@dataclasses.dataclass(frozen=True, slots=True)
class Cell:
    source: str
    destination: str
    port: str
    port_number: int
    verdict: Verdict

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "destination": self.destination,
            "port": self.port,
            "portNumber": self.port_number,
            "decision": self.verdict.decision,
            "policies": list(self.verdict.policies),
        }


def matrix(
    mesh: Intent,
    selection: Selection | None = None,
    sources: set[str] | None = None,
    destinations: set[str] | None = None,
) -> list[Cell]:
    """Every (source, destination port) pair, optionally filtered by service refs."""
    selection = selection or Selection(mesh)
    cells = []
    for src in mesh.services.values():
        if sources and src.ref not in sources:
            continue
        for dst in mesh.services.values():
            if destinations and dst.ref not in destinations:
                continue
            for port in sorted(dst.spec.ports, key=lambda p: p.port):
                cells.append(
                    Cell(src.ref, dst.ref, port.name, port.port, selection.decide(src, dst, port))
                )
    return cells


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """Outside → gateway → service: what a Route bound to a Gateway lets clients reach, and
    whether the destination's policies admit the gateway's identity."""

    gateway: str
    hostnames: tuple[str, ...]
    destination: str
    port: str
    port_number: int
    verdict: Verdict
    app_port: int = 0  # the pod port the sidecar forwards to, for NetworkPolicies

    def as_json(self) -> dict[str, object]:
        return {
            "gateway": self.gateway,
            "hostnames": list(self.hostnames),
            "destination": self.destination,
            "port": self.port,
            "portNumber": self.port_number,
            "decision": self.verdict.decision,
            "policies": list(self.verdict.policies),
        }


def entries(
    mesh: Intent, selection: Selection | None = None, destinations: set[str] | None = None
) -> list[Entry]:
    """Every (gateway, Route) pair: the service port the Route sends the gateway's clients to."""
    selection = selection or Selection(mesh)
    found = []
    for route in mesh.routes:
        ns = route.metadata.namespace
        svc = mesh.resolve_host(route.spec.host, ns)
        ports = mesh.route_ports(route, svc) if svc is not None else []
        if svc is None or not ports or (destinations and svc.ref not in destinations):
            continue
        for ref in route.spec.gateways:
            gw = mesh.gateway(ref, ns)
            if gw is not None:
                verdict = selection.decide(gw, svc, ports[0])
                found.append(
                    Entry(
                        gw.ref,
                        tuple(route.spec.hostnames),
                        svc.ref,
                        ports[0].name,
                        ports[0].port,
                        verdict,
                        ports[0].app_port,
                    )
                )
    return sorted(found, key=lambda e: (e.gateway, e.destination, e.port_number, e.hostnames))


def to_json(mesh: Intent, cells: list[Cell], edge: list[Entry] | None = None) -> str:
    out: dict[str, object] = {"revision": mesh.revision, "cells": [c.as_json() for c in cells]}
    if edge:
        out["gateways"] = [e.as_json() for e in edge]
    return json.dumps(out, indent=2) + "\n"


def edge_table(edge: list[Entry]) -> list[str]:
    """The rows for traffic from outside the mesh, through each gateway."""
    if not edge:
        return []
    rows = [
        (f"outside -> {e.gateway} -> {e.destination}:{e.port}", e, ", ".join(e.hostnames))
        for e in edge
    ]
    pad = max(len(text) for text, _, _ in rows)
    lines = ["", "from outside, through gateways:"]
    for text, e, hosts in rows:
        lines.append(
            f"  {text:<{pad}}  {e.verdict.decision:<11} {', '.join(e.verdict.policies)}"
            f"  (hosts {hosts})"
        )
    return lines


def to_table(mesh: Intent, cells: list[Cell], edge: list[Entry] | None = None) -> str:
    """Sources down, destination ports across; a legend names the deciding policies."""
    sources = list(dict.fromkeys(c.source for c in cells))
    columns = list(dict.fromkeys(f"{c.destination}:{c.port}" for c in cells))
    by_key = {(c.source, f"{c.destination}:{c.port}"): c for c in cells}
    width = max([len(s) for s in sources] + [len("from \\ to")])
    lines = [f"reachability at {mesh.revision}", ""]
    header = "from \\ to".ljust(width) + " | " + " | ".join(columns)
    lines += [header, "-" * len(header)]
    for src in sources:
        row = [SYMBOLS[by_key[(src, col)].verdict.decision].center(len(col)) for col in columns]
        lines.append(src.ljust(width) + " | " + " | ".join(row))
    lines += [
        "",
        "ALLOW: every request allowed · L7: only requests matching `when` conditions"
        " · deny: refused",
        "",
    ]
    lines.append("decided by:")
    pairs = [(f"{c.source} -> {c.destination}:{c.port}", c) for c in cells]
    pairs = [(text, c) for text, c in pairs if c.source != c.destination]
    # Pad the pair to the longest one, so decisions and policies line up in columns.
    pad = max((len(text) for text, _ in pairs), default=0)
    for text, c in pairs:
        lines.append(
            f"  {text:<{pad}}  {c.verdict.decision:<11} {', '.join(c.verdict.policies)}".rstrip()
        )
    lines += edge_table(edge or [])
    return "\n".join(lines) + "\n"
