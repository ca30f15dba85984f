"""Lowering AccessPolicies into the inbound authorization rules a sidecar evaluates.

Each inbound port gets its rules (denies first, then allows, each sorted by policy) and a
default, so the sidecar needs no knowledge of policy semantics beyond "first matching deny,
else any matching allow, else the default". `policy` decides the same questions from intent;
tests check the two agree.
"""

from __future__ import annotations

from reconciler.compiler import proxyconfig as pc
from reconciler.compiler.policy import Selection
from reconciler.intent import model


def _paths(patterns: list[str] | None) -> list[pc.PathPattern]:
    result = [
        pc.PathPattern(prefix=p[:-1]) if p.endswith("*") else pc.PathPattern(exact=p)
        for p in patterns or ()
    ]
    return sorted(result, key=lambda p: (p.exact is None, p.exact or p.prefix or ""))


def rule(selection: Selection, policy: model.AccessPolicy) -> pc.AuthzRule:
    peers = selection.peers[policy.ref]
    when = policy.spec.when
    return pc.AuthzRule(
        policy=policy.ref,
        action="ALLOW" if policy.spec.action == "allow" else "DENY",
        peers=pc.PeerMatch(
            identities=sorted(peers.identities),
            namespaces=sorted(peers.namespaces),
            any_identity=peers.any_identity,
        ),
        methods=sorted(when.methods or ()) if when else [],
        paths=_paths(when.paths) if when else [],
    )


def inbound(selection: Selection, service: model.Service) -> list[pc.InboundPort]:
    default = selection.default()
    ports = []
    for port in sorted(service.spec.ports, key=lambda p: p.port):
        governing = selection.governing.get((service.key, port.name), [])
        rules = sorted(
            (rule(selection, g.policy) for g in governing),
            key=lambda r: (r.action != "DENY", r.policy),
        )
        ports.append(
            pc.InboundPort(
                name=port.name,
                port=port.port,
                target_port=port.app_port,
                protocol=port.protocol,
                rules=rules,
                default_action="ALLOW" if default.decision == "allow" else "DENY",
                default_policy=default.policies[0],
            )
        )
    return ports
