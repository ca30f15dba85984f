"""Apply: server-side apply as field manager `weft`, in an order that never starts a pod whose
sidecar config or certificate is missing — sidecar ConfigMaps → discovery Services →
NetworkPolicies → injections, the PodTemplates of Jobs' first (identities, the Secrets, come
first of all: the target issues them before calling `apply`). The inventory is written before
anything new.

Drift: a field Weft applied and someone then changed with an imperative update (`kubectl edit`,
`patch`, `replace`) conflicts on the next apply; Weft takes it back (`force`) and logs it. A field
another manager *applies* is a declared claim: that conflict is reported, never overridden.
"""

from __future__ import annotations

import collections
import logging
import re

from opentelemetry import trace

from reconciler.targets.kubernetes import inventory, objects
from reconciler.targets.kubernetes.api import Api, ApiError, Object, ref_of, split_ref
from reconciler.targets.kubernetes.plan import ConflictError, Planned
from reconciler.targets.kubernetes.workers import each

log = logging.getLogger("weft.target.kubernetes")

# A Job's injection (its PodTemplate) goes with the workloads': after what its pods mount.
APPLY_ORDER = (
    "ConfigMap",
    "ServiceAccount",
    "Service",
    "NetworkPolicy",
    "PodTemplate",
    *objects.WORKLOAD_KINDS,
)
_CONFLICT_WITH = re.compile(r'conflict with "([^"]+)"')


def apply(api: Api, planned: Planned, recorded: set[str], system_namespace: str) -> list[str]:
    """Create and update what `planned` holds; returns the refs applied. `recorded` is the
    inventory as observed."""
    # Record first what is about to exist, so a crash part-way never forgets an object.
    if not planned.inventory <= recorded:
        inventory.write(api, system_namespace, recorded | planned.inventory)
    applied: list[str] = []
    tracer = trace.get_tracer("weft.target.kubernetes")
    by_kind: dict[str, list[str]] = collections.defaultdict(list)
    for ref in planned.bodies:
        by_kind[split_ref(ref)[0]].append(ref)
    for kind in APPLY_ORDER:
        refs = sorted(by_kind.get(kind, []))

        def one(ref: str) -> str:
            with tracer.start_as_current_span(f"apply {ref}"):
                _apply(api, planned.bodies[ref])
            return ref

        applied += each(one, refs)
    return applied


def dry_run(api: Api, planned: Planned) -> dict[str, str]:
    """Server-side dry-run applies of a plan's creates and updates: what the API server
    would reject, by ref (empty when it would accept everything). Writes nothing."""
    rejected: dict[str, str] = {}

    def one(ref: str) -> str:
        try:
            api.apply(planned.bodies[ref], dry_run=True)
        except ApiError as e:
            if not (e.conflict and _drift_only(api, planned.bodies[ref], e)):
                rejected[ref] = e.message
        return ref

    each(one, sorted(planned.bodies))
    return rejected


def _apply(api: Api, body: Object) -> Object:
    try:
        return api.apply(body)
    except ApiError as e:
        if not e.conflict:
            raise
        if not _drift_only(api, body, e):
            raise ConflictError(_conflict_message(body, e)) from None
        log.warning(
            "%s: %s changed by %s; reverting to the desired state",
            ref_of(body),
            ", ".join(sorted({str(c.get("field", "")) for c in e.causes})),
            ", ".join(sorted(_managers(e))),
        )
        return api.apply(body, force=True)


def _drift_only(api: Api, body: Object, e: ApiError) -> bool:
    """Whether every manager a conflict names changed the fields imperatively (an
    `Update`: kubectl edit, patch, replace), so the fields are Weft's to take back. A
    manager that *applies* them declared a claim: that is a conflict to report."""
    managers = _managers(e)
    if not managers:
        return False
    kind, ns, name = split_ref(ref_of(body))
    live = api.get(kind, ns, name) or {}
    return not any(
        m.get("manager") in managers and m.get("operation") == "Apply"
        for m in live.get("metadata", {}).get("managedFields", [])
    )


def _conflict_message(body: Object, e: ApiError) -> str:
    fields = ", ".join(sorted({str(c.get("field", "")) for c in e.causes}))
    who = ", ".join(sorted(_managers(e))) or "another manager"
    return (
        f"{ref_of(body)}: {fields} applied by {who}; Weft does not take over fields"
        " another manager declares"
    )


def _managers(e: ApiError) -> set[str]:
    """The field managers a 409 from server-side apply names."""
    return {m.group(1) for c in e.causes if (m := _CONFLICT_WITH.search(c.get("message", "")))}
