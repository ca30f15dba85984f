"""Plan: desired objects against live ones by structural subset (`compare`). A name taken by
an object that is not Weft's, or any problem `desired` found, fails the whole plan, so nothing
of a revision is applied when any part of it cannot be. Objects that left the desired state
are released (injections) or deleted — only those carrying Weft's label AND in the inventory."""

from __future__ import annotations

import dataclasses
import logging

from reconciler.compiler import DesiredState
from reconciler.targets import Change, Plan
from reconciler.targets.kubernetes import api as api_mod
from reconciler.targets.kubernetes import compare, objects
from reconciler.targets.kubernetes.api import Api, Object, split_ref
from reconciler.targets.kubernetes.observe import Observed
from reconciler.targets.kubernetes.workers import each

log = logging.getLogger("weft.target.kubernetes")

# In apply order (prune deletes in reverse). Deployments are owned only as a Gateway's;
# PodTemplates are the injections of Jobs, which deploy/40-jobs.yaml copies into their pods.
OWNED_KINDS = (
    "ConfigMap",
    "ServiceAccount",
    "Service",
    "NetworkPolicy",
    "PodTemplate",
    "Deployment",
)
RELEASE = "release the sidecar injection"


class ConflictError(Exception):
    """Part of the desired state cannot be applied without taking something that is not Weft's."""


@dataclasses.dataclass
class Planned:
    """What `apply` and `prune` carry out for one plan."""

    desired: DesiredState
    bodies: dict[str, Object]  # ref → what to apply, for creates and updates
    releases: dict[str, Object]  # ref → injection to release
    deletes: dict[str, str]  # ref → uid
    inventory: set[str]  # every ref Weft owns once this plan is applied


def plan(
    api: Api,
    desired: DesiredState,
    seen: Observed,
    wanted: dict[str, Object],
    problems: list[str],
) -> tuple[Plan, Planned]:
    """The changes that make the cluster hold `wanted`; raises ConflictError with every
    problem found (those of `desired.build` included) instead of a partial plan."""
    problems = list(problems)
    changes: list[Change] = []
    bodies: dict[str, Object] = {}
    missing = {
        ref
        for ref, body in wanted.items()
        if ref not in seen.owned
        and not (body["kind"] in objects.WORKLOAD_KINDS and ref in seen.workloads)
    }
    # An object Weft would create may exist without Weft's label: look, a few at a time.
    # One Weft recorded and still manages (someone removed its label) is Weft's: its label
    # is drift like any other. Anything else is a namesake, never taken over.
    namesakes: set[str] = set()
    adopted: dict[str, Object] = {}

    def look(ref: str) -> str:
        kind, ns, name = split_ref(ref)
        found = api.get(kind, ns, name)
        if found is None:
            return ref
        managers = {m.get("manager") for m in found["metadata"].get("managedFields", [])}
        if ref in seen.inventory and api_mod.FIELD_MANAGER in managers:
            adopted[ref] = found
        else:
            namesakes.add(ref)
        return ref

    each(look, sorted(missing))
    for ref in sorted(missing):
        if ref in adopted:
            changes.append(Change("update", ref, "Weft's labels were removed"))
            bodies[ref] = wanted[ref]
        elif ref in namesakes:
            problems.append(
                f"{ref} exists and is not Weft's (no app.kubernetes.io/managed-by=weft"
                " label); Weft never takes over an object it did not create"
            )
        else:
            changes.append(Change("create", ref))
            bodies[ref] = wanted[ref]
    for ref, body in wanted.items():
        if ref in missing:
            continue
        live = seen.owned.get(ref) or seen.workloads[ref]
        diff = compare.differences(body, live)
        if diff:
            changes.append(Change("update", ref, ", ".join(diff[:5])))
            bodies[ref] = body
    if problems:
        raise ConflictError("; ".join(problems))
    releases: dict[str, Object] = {}
    for ref, live in seen.workloads.items():
        annotations = live["metadata"].get("annotations") or {}
        if objects.INJECTED in annotations and ref not in wanted:
            kind, ns, name = split_ref(ref)
            releases[ref] = objects.release(kind, ns or "", name)
            changes.append(Change("delete", ref, RELEASE))
    deletes: dict[str, str] = {}
    for ref, live in seen.owned.items():
        if ref in wanted:
            continue
        if ref not in seen.inventory:
            # Labelled but not recorded: made by hand, or by another installation. Leave it.
            log.warning("%s carries Weft's label but is not in the inventory; left alone", ref)
            continue
        deletes[ref] = live["metadata"]["uid"]
        changes.append(Change("delete", ref))
    # Weft's own objects carry its label; an injection into a team's workload does not.
    inventory = {
        r
        for r, body in wanted.items()
        if split_ref(r)[0] in OWNED_KINDS
        and objects.MANAGED_BY.items() <= (body["metadata"].get("labels") or {}).items()
    }
    return (
        Plan(desired.revision, tuple(sorted(changes, key=lambda c: c.key))),
        Planned(desired, bodies, releases, deletes, inventory),
    )
