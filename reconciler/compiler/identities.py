"""The workload identities a revision needs: one per service account that runs a Service."""

from __future__ import annotations

import dataclasses

from reconciler.intent import Intent


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    spiffe_id: str
    namespace: str
    service_account: str
    services: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "spiffeId": self.spiffe_id,
            "namespace": self.namespace,
            "serviceAccount": self.service_account,
            "services": list(self.services),
        }


def required(mesh: Intent) -> list[Identity]:
    by_account: dict[tuple[str, str], list[str]] = {}
    for svc in mesh.services.values():
        by_account.setdefault((svc.metadata.namespace, svc.service_account), []).append(svc.ref)
    for gw in mesh.gateways.values():
        by_account.setdefault((gw.metadata.namespace, gw.service_account), []).append(
            f"Gateway {gw.ref}"
        )
    return [
        Identity(mesh.spiffe_id(ns, sa), ns, sa, tuple(sorted(refs)))
        for (ns, sa), refs in sorted(by_account.items())
    ]
