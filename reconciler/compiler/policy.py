"""Access semantics at the level of intent: may service S call port P of service D, and why.

The rules, in order:
1. an AccessPolicy with `action: deny` that governs (D, P), admits S and has no `when` denies;
2. otherwise an allow policy that governs (D, P) and admits S allows — fully, or for some
   requests only ("conditional") when it has `when` conditions or a conditional deny also applies;
3. otherwise the Mesh's `defaultPolicy` decides.

Unlike Istio, an allow policy never turns its service into an allow-list: under
`defaultPolicy: allow` allow policies change nothing (validation warns), and under `deny` they
only add. So adding an allow can never take reachability away — a property tests check — and
what a policy does never depends on which other policies exist.

This module decides from the intent directly. `authz` lowers the same policies into sidecar
rules independently; tests check that the two agree on every pair, which is what makes
`weft reach` a proof of what the sidecars will enforce.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator
from typing import Literal

from reconciler import intent as intent_
from reconciler.intent import model

Decision = Literal["allow", "deny", "conditional"]
PortKey = tuple[tuple[str, str], str]  # ((namespace, service), port name)


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    policies: tuple[str, ...]  # what decided: policy refs, or the mesh default


@dataclasses.dataclass(frozen=True, slots=True)
class Governing:
    """A policy governing a port, with its ref and resolved peers computed once."""

    policy: model.AccessPolicy
    ref: str
    peers: intent_.Peers


class Selection:
    """Which policies govern each (service, port), and whom each admits; built once per compile."""

    def __init__(self, mesh: intent_.Intent) -> None:
        self.intent = mesh
        self.governing: dict[PortKey, list[Governing]] = collections.defaultdict(list)
        self.peers: dict[str, intent_.Peers] = {}
        self.targets: dict[str, list[tuple[model.Service, model.ServicePort]]] = {}
        # Allow policies by whom they admit, so a source's candidates come from an index lookup
        # rather than a scan of every policy.
        self.allows_by_namespace: dict[str, list[str]] = collections.defaultdict(list)
        self.allows_by_identity: dict[str, list[str]] = collections.defaultdict(list)
        self.allows_for_any: list[str] = []
        # Unconditional denies indexed the same way: what a caller-side refusal names.
        self.denies: dict[str, list[str]] = collections.defaultdict(list)
        for policy in mesh.policies:
            ref = policy.ref
            peers = mesh.peers(policy.spec.from_, policy.metadata.namespace)
            self.peers[ref] = peers
            pairs = mesh.targets(policy)
            self.targets[ref] = pairs
            for svc, port in pairs:
                self.governing[(svc.key, port.name)].append(Governing(policy, ref, peers))
            if policy.spec.action == "allow":
                if peers.any_identity:
                    self.allows_for_any.append(ref)
                for ns in peers.namespaces:
                    self.allows_by_namespace[ns].append(ref)
                for spiffe in peers.identities:
                    self.allows_by_identity[spiffe].append(ref)
            elif policy.spec.when is None:
                for who in ["*"] if peers.any_identity else [*peers.namespaces, *peers.identities]:
                    self.denies[who].append(ref)
        mesh_name = mesh.mesh.metadata.name
        self.default_deny = f"Mesh/{mesh_name} defaultPolicy: deny"
        self.default_allow = f"Mesh/{mesh_name} defaultPolicy: allow"

    def default(self) -> Verdict:
        if self.intent.spec.default_policy == "deny":
            return Verdict("deny", (self.default_deny,))
        return Verdict("allow", (self.default_allow,))

    def decide(
        self,
        source: model.Service | model.Gateway,
        dest: model.Service,
        port: model.ServicePort,
    ) -> Verdict:
        spiffe, ns = self.intent.identity_of(source), source.metadata.namespace
        admitting = [
            g for g in self.governing.get((dest.key, port.name), ()) if g.peers.admits(spiffe, ns)
        ]
        denies = [g for g in admitting if g.policy.spec.action == "deny"]
        for g in denies:
            if g.policy.spec.when is None:
                return Verdict("deny", (g.ref,))
        conditional_denies = tuple(g.ref for g in denies)
        default = self.default()
        if default.decision == "allow":
            # Allows add nothing to a default allow; only conditional denies can narrow it.
            return (
                Verdict("conditional", default.policies + conditional_denies) if denies else default
            )
        allows = [g for g in admitting if g.policy.spec.action == "allow"]
        if not allows:
            return default
        full = tuple(g.ref for g in allows if g.policy.spec.when is None)
        if full and not denies:
            return Verdict("allow", full)
        return Verdict("conditional", tuple(g.ref for g in allows) + conditional_denies)

    def candidates(
        self, source: model.Service
    ) -> Iterator[tuple[model.Service, model.ServicePort]]:
        """Every (service, port) the source might reach: a superset, to be decided one by one.

        Under default deny only ports an allow policy admits the source to are candidates, so
        compiling a mesh costs in proportion to its edges, not to the square of its services.
        """
        spiffe, ns = self.intent.identity_of(source), source.metadata.namespace
        seen: set[PortKey] = set()
        refs = [
            *self.allows_for_any,
            *self.allows_by_namespace.get(ns, ()),
            *self.allows_by_identity.get(spiffe, ()),
        ]
        for ref in dict.fromkeys(refs):
            for svc, port in self.targets[ref]:
                if (svc.key, port.name) not in seen:
                    seen.add((svc.key, port.name))
                    yield svc, port
        if self.intent.spec.default_policy == "allow":
            for svc in self.intent.services.values():
                for port in svc.spec.ports:
                    if (svc.key, port.name) not in seen:
                        seen.add((svc.key, port.name))
                        yield svc, port


def denied(selection: Selection, source: model.Service) -> list[Edge]:
    """The (service, port)s an unconditional deny policy refuses `source`, with that policy:
    what the caller's sidecar names when it refuses a call. Everything else it has no route
    to was left out by the Mesh default (or is not in the mesh at all)."""
    spiffe, ns = selection.intent.identity_of(source), source.metadata.namespace
    refs = dict.fromkeys(
        [*selection.denies.get("*", ()), *selection.denies.get(ns, ()),
         *selection.denies.get(spiffe, ())]
    )  # fmt: skip
    seen: set[PortKey] = set()
    found = []
    for ref in refs:
        for dest, port in selection.targets[ref]:
            if (dest.key, port.name) in seen or dest.key == source.key:
                continue
            seen.add((dest.key, port.name))
            verdict = selection.decide(source, dest, port)
            if verdict.decision == "deny":
                found.append(Edge(source, dest, port, verdict))
    found.sort(key=lambda e: (e.dest.key, e.port.port))
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class Edge:
    source: model.Service
    dest: model.Service
    port: model.ServicePort
    verdict: Verdict


def edges(selection: Selection) -> dict[tuple[str, str], list[Edge]]:
    """For each source service, every (service, port) it may reach at all, sorted."""
    result: dict[tuple[str, str], list[Edge]] = {}
    for source in selection.intent.services.values():
        found = [
            Edge(source, dest, port, verdict)
            for dest, port in selection.candidates(source)
            if (verdict := selection.decide(source, dest, port)).decision != "deny"
        ]
        found.sort(key=lambda e: (e.dest.key, e.port.port))
        result[source.key] = found
    return result
