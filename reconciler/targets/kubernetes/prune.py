"""Prune, once apply succeeded: release injections first (the workloads stay, only Weft's
fields go), then delete what left the desired state, by uid, in the reverse of apply's order;
then the inventory forgets what is gone."""

from __future__ import annotations

import logging

from opentelemetry import trace

from reconciler.targets.kubernetes import api as api_mod
from reconciler.targets.kubernetes import inventory, objects
from reconciler.targets.kubernetes.api import Api, Object, split_ref
from reconciler.targets.kubernetes.plan import OWNED_KINDS, Planned
from reconciler.targets.kubernetes.workers import each

log = logging.getLogger("weft.target.kubernetes")


def prune(api: Api, planned: Planned, system_namespace: str) -> list[str]:
    """Release and delete what `planned` holds; returns the refs removed."""
    tracer = trace.get_tracer("weft.target.kubernetes")
    removed: list[str] = []

    def release(ref: str) -> str:
        with tracer.start_as_current_span(f"release {ref}"):
            api.apply(planned.releases[ref], force=True)
            _remove_leftovers(api, ref)
        return ref

    def delete(ref: str) -> str:
        kind, ns, name = split_ref(ref)
        with tracer.start_as_current_span(f"delete {ref}"):
            api.delete(kind, ns, name, uid=planned.deletes[ref])
        return ref

    removed += each(release, sorted(planned.releases))
    for kind in reversed(OWNED_KINDS):
        removed += each(delete, sorted(r for r in planned.deletes if r.startswith(f"{kind}/")))
    if inventory.read(api, system_namespace) != planned.inventory:
        inventory.write(api, system_namespace, planned.inventory)
    return removed


def _remove_leftovers(api: Api, ref: str) -> None:
    """After releasing an injection, remove what server-side apply kept because another
    manager co-owned part of it (a `kubectl set image` on the sidecar leaves the container
    with a name and an image: a broken init container that blocks every new pod). Removed
    by JSON patch, each removal guarded by a test of the item's name."""
    kind, ns, name = split_ref(ref)
    live = api.get(kind, ns, name)
    if live is None:
        return
    pod = objects.pod_template(live).get("spec", {})
    template = "/".join(objects.template_path(kind))
    ops: list[Object] = []
    for field in ("initContainers", "volumes"):
        items = pod.get(field) or []
        for i in reversed(range(len(items))):
            item_name = items[i].get("name", "")
            if item_name in (objects.SIDECAR, objects.CAPTURE, *objects.VOLUMES):
                path = f"/{template}/spec/{field}/{i}"
                ops += [
                    {"op": "test", "path": f"{path}/name", "value": item_name},
                    {"op": "remove", "path": path},
                ]
    if ops:
        log.warning("%s: removing what other managers kept of Weft's injection", ref)
        api.request(
            "PATCH",
            api_mod.path_of(kind, ns, name),
            body=ops,
            content_type="application/json-patch+json",
        )
