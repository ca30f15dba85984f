"""The mesh intent: Weft's YAML documents read, validated and indexed as one revision.

    from reconciler import intent
    snapshot = intent.files.from_directory(path)
    mesh, diagnostics = intent.check(snapshot)      # every problem, positioned
    mesh = intent.load(snapshot)                    # or IntentError with all of them

Nothing here knows about targets, sidecars or Kubernetes objects.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic

from reconciler.allocation import without_gc_pauses
from reconciler.intent import files, model, validate
from reconciler.intent.diagnostics import Diagnostic, IntentError, Severity, has_errors, sort_key
from reconciler.intent.loader import read
from reconciler.intent.mesh import Intent, Peers
from reconciler.intent.model import (
    AccessPolicy,
    ExternalService,
    Gateway,
    Mesh,
    RequestAuthentication,
    Route,
    Service,
)

__all__ = [
    "AccessPolicy",
    "Diagnostic",
    "ExternalService",
    "Gateway",
    "Intent",
    "IntentError",
    "Mesh",
    "Peers",
    "RequestAuthentication",
    "Route",
    "Service",
    "Severity",
    "check",
    "files",
    "has_errors",
    "load",
    "model",
]

T = TypeVar("T", bound=pydantic.BaseModel)


def _of(kind: type[T], objects: list[pydantic.BaseModel]) -> list[T]:
    found = [o for o in objects if isinstance(o, kind)]
    return sorted(found, key=_sort_name)


def _sort_name(obj: Any) -> tuple[str, str]:
    return (getattr(obj.metadata, "namespace", "") or "", obj.metadata.name)


@without_gc_pauses
def check(snapshot: files.Snapshot) -> tuple[Intent | None, list[Diagnostic]]:
    """Read and validate a revision; the Intent is None when any error was found."""
    broken: set[tuple[str, str, str]] = set()
    objects, diagnostics = read(snapshot.files, broken)
    diagnostics.extend(snapshot.refused)
    diagnostics.extend(validate.duplicates(objects))
    meshes = [o for o in objects if isinstance(o, Mesh)]
    # An invalid Mesh has its own error, and one may be in a file a syntax error left unread.
    if not any(kind in ("Mesh", "*") for kind, _, _ in broken):
        diagnostics.extend(validate.meshes(meshes, "<repository>"))
    # Later checks run even without a (valid) Mesh, against the defaults, so one run reports
    # every problem; the revision is refused anyway.
    mesh = (
        meshes[0]
        if meshes
        else Mesh.model_validate(
            {"apiVersion": model.API_VERSION, "kind": "Mesh", "metadata": {"name": "default"}}
        )
    )
    services: dict[tuple[str, str], Service] = {}
    for svc in _of(Service, objects):
        services.setdefault(svc.key, svc)
    intent = Intent(
        revision=snapshot.revision,
        mesh=mesh,
        services=services,
        policies=tuple(_of(AccessPolicy, objects)),
        routes=tuple(_of(Route, objects)),
        externals=tuple(_of(ExternalService, objects)),
        authentications=tuple(_of(RequestAuthentication, objects)),
        gateways={gw.key: gw for gw in _of(Gateway, objects)},
    )
    diagnostics.extend(validate.services(intent))
    diagnostics.extend(validate.discovery_names(intent))
    diagnostics.extend(validate.policies(intent, frozenset(broken)))
    diagnostics.extend(validate.routes(intent, frozenset(broken)))
    diagnostics.extend(validate.paths(intent))
    diagnostics.extend(validate.externals(intent, frozenset(broken)))
    diagnostics.extend(validate.egress_bypass(intent))
    diagnostics.extend(validate.authentications(intent, frozenset(broken)))
    diagnostics.extend(validate.gateways(intent))
    diagnostics.sort(key=sort_key)
    return (None if has_errors(diagnostics) else intent), diagnostics


def load(snapshot: files.Snapshot) -> Intent:
    """The validated Intent of a revision, or IntentError carrying every diagnostic."""
    intent, diagnostics = check(snapshot)
    if intent is None:
        raise IntentError(diagnostics)
    return intent
