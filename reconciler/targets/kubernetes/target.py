"""The Kubernetes target: the loop's steps over a cluster, each in its own module (as Flux
splits its reconcilers), this class holding what passes between them.

    observe   `observe`: one LIST per kind, and the inventory (`inventory`)
    plan      `desired` builds the objects a DesiredState calls for; `plan` compares them with
              the live ones (`compare`) and fails whole on any conflict
    apply     `identities` issues the Secrets, then `apply` applies in dependency order
    prune     `prune` releases injections and deletes what left, by the inventory
    report    `report` publishes the status ConfigMap and Events
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.allocation import without_gc_pauses
from reconciler.compiler import DesiredState, gateways
from reconciler.identity import secretstore
from reconciler.targets import Plan
from reconciler.targets.kubernetes import apply as apply_step
from reconciler.targets.kubernetes import desired as desired_step
from reconciler.targets.kubernetes import identities, objects
from reconciler.targets.kubernetes import observe as observe_step
from reconciler.targets.kubernetes import plan as plan_step
from reconciler.targets.kubernetes import prune as prune_step
from reconciler.targets.kubernetes.api import Api, Object
from reconciler.targets.kubernetes.identities import SecretBackend
from reconciler.targets.kubernetes.observe import Observed
from reconciler.targets.kubernetes.report import Reporter


class KubernetesTarget:
    name = "kubernetes"

    def __init__(
        self,
        api: Api,
        *,
        image: str,
        system_namespace: str = objects.SYSTEM_NAMESPACE,
        ca_secret: tuple[str, str] | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self.api = api
        self.ca_secret = ca_secret  # (namespace, name) of the user's CA, used on first start
        self.image = image
        self.system_namespace = system_namespace
        self.store = secretstore.SecretStore(SecretBackend(api), system_namespace)
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._observed: Observed | None = None
        self._planned: dict[str, plan_step.Planned] = {}
        self._desired: DesiredState | None = None
        self._reporter = Reporter(api, system_namespace, self._clock)

    # Decoding and comparing thousands of objects allocates heavily and makes no cycles: the
    # cyclic collector only adds pauses (see reconciler.allocation).
    @without_gc_pauses
    def observe(self) -> Mapping[str, str]:
        self._observed = observe_step.observe(self.api, self.system_namespace)
        return self._observed.fingerprints()

    def desired_objects(self, desired: DesiredState) -> tuple[dict[str, Object], list[str]]:
        """Every object (and injection) `desired` calls for, by ref; and the problems that
        keep it from being applied (`desired.build`)."""
        seen = self._need_observed()
        observe_step.gateway_secrets(
            self.api,
            seen,
            [ref for c in desired.gateway_configs.values() for ref in gateways.secrets(c)],
        )
        return desired_step.build(
            desired,
            seen,
            image=self.image,
            system_namespace=self.system_namespace,
        )

    @without_gc_pauses
    def plan(self, desired: DesiredState, observed: Mapping[str, str]) -> Plan:
        del observed  # the fingerprints are for the loop; the objects are kept from observe
        wanted, problems = self.desired_objects(desired)
        plan, planned = plan_step.plan(self.api, desired, self._need_observed(), wanted, problems)
        # Only the latest plan is kept: a plan whose apply failed is never applied later.
        self._planned = {desired.revision: planned}
        self._desired = desired
        return plan

    def _need_observed(self) -> Observed:
        if self._observed is None:
            self.observe()
        assert self._observed is not None
        return self._observed

    def apply(self, plan: Plan) -> list[str]:
        planned = self._planned[plan.revision]
        self._ensure_identities(planned.desired)
        applied = apply_step.apply(
            self.api, planned, self._need_observed().inventory, self.system_namespace
        )
        self._observed = None
        return applied

    def dry_run(self, plan: Plan) -> dict[str, str]:
        """What the API server would reject of a plan's creates and updates, by ref."""
        return apply_step.dry_run(self.api, self._planned[plan.revision])

    def prune(self, plan: Plan) -> list[str]:
        planned = self._planned.pop(plan.revision, None)
        if planned is None:
            return []
        removed = prune_step.prune(self.api, planned, self.system_namespace)
        self._observed = None
        return removed

    @without_gc_pauses
    def _ensure_identities(self, desired: DesiredState) -> None:
        identities.ensure(self.store, desired, self._clock(), self.ca_secret)

    def maintain(self) -> None:
        """Renew certificates that are due; kubelets refresh mounted Secrets themselves."""
        if self._desired is not None:
            self._ensure_identities(self._desired)

    def report(self, status: Mapping[str, Any]) -> None:
        """Publish the loop's status as ConfigMap weft-system/weft-status, and an Event when
        the outcome changed (`report`)."""
        self._reporter.report(status)

    def close(self) -> None:
        self.api.client.close()  # type: ignore[no-untyped-call]
