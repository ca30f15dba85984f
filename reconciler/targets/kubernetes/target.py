"""The Kubernetes target: server-side apply as field manager `weft`, an inventory, and pruning.

    observe   one LIST per kind: Weft's labelled objects, workloads, namespaces, the inventory
    plan      desired objects vs live ones by structural subset (`compare`); a name taken by an
              object that is not Weft's, or a workload two Services claim, fails the plan, so
              nothing of a revision is applied when any part of it cannot be
    apply     identities (Secrets) → sidecar ConfigMaps → discovery Services → NetworkPolicies →
              workload injections, so a pod never starts with a sidecar whose config or
              certificate does not exist yet; then the inventory
    prune     release injections, then delete what left the desired state — only objects that
              carry Weft's label AND are in the inventory, by uid

Drift: a field Weft applied and someone then changed with an imperative update (`kubectl edit`,
`patch`, `replace`) conflicts on the next apply; Weft takes it back (`force`) and logs it. A field
another manager *applies* is a declared claim: that conflict is reported, never overridden.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import dataclasses
import datetime
import gzip
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import trace

from reconciler import identity
from reconciler.allocation import without_gc_pauses
from reconciler.compiler import DesiredState
from reconciler.identity import secretstore
from reconciler.targets import Change, Plan
from reconciler.targets.kubernetes import api as api_mod
from reconciler.targets.kubernetes import compare, objects
from reconciler.targets.kubernetes.api import Api, ApiError, Object, ref_of, split_ref

log = logging.getLogger("weft.target.kubernetes")

WORKERS = 8
OWNED_KINDS = ("ConfigMap", "Service", "NetworkPolicy")
APPLY_ORDER = ("ConfigMap", "Service", "NetworkPolicy", *objects.WORKLOAD_KINDS)
_CONFLICT_WITH = re.compile(r'conflict with "([^"]+)"')
RELEASE = "release the sidecar injection"


class ConflictError(Exception):
    """Part of the desired state cannot be applied without taking something that is not Weft's."""


@dataclasses.dataclass
class Observed:
    owned: dict[str, Object]  # Weft-labelled objects of OWNED_KINDS, by ref
    workloads: dict[str, Object]  # every Deployment/StatefulSet/DaemonSet, by ref
    namespaces: dict[str, Object]  # by name
    inventory: set[str]
    cluster_ips: dict[tuple[str, str], str]  # (namespace, name) → ClusterIP of every Service


@dataclasses.dataclass
class _Planned:
    desired: DesiredState
    bodies: dict[str, Object]  # ref → what to apply, for creates and updates
    releases: dict[str, Object]  # ref → injection to release
    deletes: dict[str, str]  # ref → uid
    inventory: set[str]  # every ref Weft owns once this plan is applied


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
        self._planned: dict[str, _Planned] = {}
        self._desired: DesiredState | None = None
        self._reported: tuple[Any, ...] | None = None

    # ------------------------------------------------------------------ observe

    # Decoding and comparing thousands of objects allocates heavily and makes no cycles: the
    # cyclic collector only adds pauses (see reconciler.allocation).
    @without_gc_pauses
    def observe(self) -> Mapping[str, str]:
        api = self.api
        owned: dict[str, Object] = {}
        for kind in ("ConfigMap", "NetworkPolicy"):
            for obj in api.list(kind, selector=objects.MANAGED_SELECTOR):
                if obj["metadata"]["labels"].get(objects.PART) in ("inventory", "status"):
                    continue  # the target's own bookkeeping, not part of any desired state
                owned[ref_of(obj)] = obj
        # Every Service: Weft's discovery Services, and the ClusterIPs apps call, which the
        # sidecars' capture maps need.
        cluster_ips: dict[tuple[str, str], str] = {}
        for obj in api.list("Service"):
            meta = obj["metadata"]
            if (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") == "weft":
                owned[ref_of(obj)] = obj
            ip = obj.get("spec", {}).get("clusterIP")
            if ip and ip != "None":
                cluster_ips[(meta["namespace"], meta["name"])] = ip
        workloads = {ref_of(obj): obj for kind in objects.WORKLOAD_KINDS for obj in api.list(kind)}
        namespaces = {o["metadata"]["name"]: o for o in api.list("Namespace")}
        inventory = self._read_inventory()
        self._observed = Observed(owned, workloads, namespaces, inventory, cluster_ips)
        fingerprints = {ref: o["metadata"].get("resourceVersion", "") for ref, o in owned.items()}
        fingerprints.update(
            (ref, o["metadata"].get("resourceVersion", ""))
            for ref, o in workloads.items()
            if objects.INJECTED in (o["metadata"].get("annotations") or {})
        )
        return fingerprints

    def _read_inventory(self) -> set[str]:
        cm = self.api.get("ConfigMap", self.system_namespace, objects.INVENTORY)
        if cm is None:
            return set()
        packed = (cm.get("binaryData") or {}).get("objects.gz")
        text = (
            gzip.decompress(base64.b64decode(packed)).decode()
            if packed
            else cm.get("data", {}).get("objects", "")
        )
        return {line for line in text.splitlines() if line}

    # ------------------------------------------------------------------ plan

    def desired_objects(self, desired: DesiredState) -> tuple[dict[str, Object], list[str]]:
        """Every object (and injection) `desired` calls for, by ref, stamped with the digest
        of itself (`objects.stamped`); and the problems that keep it from being applied."""
        observed = self._need_observed()
        wanted: dict[str, Object] = {}
        problems: list[str] = []
        api_ip = observed.cluster_ips.get(("default", "kubernetes"))
        exclude = [f"{api_ip}/32"] if api_ip else []
        by_namespace: dict[str, list[tuple[str, Object]]] = collections.defaultdict(list)
        for ref, live in sorted(observed.workloads.items()):
            by_namespace[live["metadata"]["namespace"]].append((ref, live))
        claimed: dict[str, str] = {}
        for (ns, svc), config in sorted(desired.proxy_configs.items()):
            cm_ref = f"ConfigMap/{ns}/{objects.sidecar_configmap_name(svc)}"
            inbound = objects.inbound_ports(
                config, objects.live_inbound_ports(observed.owned.get(cm_ref))
            )
            wanted[cm_ref] = objects.sidecar_configmap(
                ns, svc, config, observed.cluster_ips, inbound
            )
            spec = desired.workloads[(ns, svc)]
            target_ports = [p.target_port for p in config.inbound]
            for ref, live in by_namespace.get(ns, []):
                if not objects.selects(spec, live):
                    continue
                if ref in claimed:
                    problems.append(
                        f"{ref} is selected by Service {claimed[ref]} and by Service {ns}/{svc};"
                        " a workload can belong to one meshed Service only"
                    )
                    continue
                claimed[ref] = f"{ns}/{svc}"
                account = objects.service_account_of(live)
                if account != config.workload.service_account:
                    problems.append(
                        f"{ref} runs as service account {account!r}, but Service {ns}/{svc}'s"
                        f" identity is {config.workload.spiffe_id}; set serviceAccountName"
                        f" to {config.workload.service_account!r} or the Service's"
                        " serviceAccount to match"
                    )
                    continue
                unsafe = objects.injection_problems(
                    live, observed.namespaces.get(ns), self.system_namespace
                )
                if unsafe:
                    problems += unsafe
                    continue
                for probe in objects.probes_on_ports(live, target_ports):
                    log.warning(
                        "%s: %s goes through inbound capture to the mTLS listener, which refuses"
                        " the kubelet's plaintext probe; probe another port or use exec",
                        ref,
                        probe,
                    )
                wanted[ref] = objects.injection(
                    live["kind"],
                    ns,
                    live["metadata"]["name"],
                    service=svc,
                    config=config,
                    image=self.image,
                    inbound=inbound,
                    exclude_cidrs=exclude,
                )
        for obj in [*desired.discovery_services, *desired.network_policies]:
            wanted[ref_of(obj)] = obj
        missing = sorted({split_ref(r)[1] or "" for r in wanted} - set(observed.namespaces) - {""})
        problems += [f"namespace {ns} does not exist" for ns in missing]
        if self.system_namespace not in observed.namespaces:
            problems.append(
                f"namespace {self.system_namespace} does not exist (apply deploy/ first)"
            )
        return {ref: objects.stamped(body) for ref, body in wanted.items()}, problems

    @without_gc_pauses
    def plan(self, desired: DesiredState, observed: Mapping[str, str]) -> Plan:
        del observed  # the fingerprints are for the loop; the objects are kept from observe
        seen = self._need_observed()
        wanted, problems = self.desired_objects(desired)
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
            found = self.api.get(kind, ns, name)
            if found is None:
                return ref
            managers = {m.get("manager") for m in found["metadata"].get("managedFields", [])}
            if ref in seen.inventory and api_mod.FIELD_MANAGER in managers:
                adopted[ref] = found
            else:
                namesakes.add(ref)
            return ref

        _each(look, sorted(missing))
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
        inventory = {r for r in wanted if split_ref(r)[0] in OWNED_KINDS}
        # Only the latest plan is kept: a plan whose apply failed is never applied later.
        self._planned = {desired.revision: _Planned(desired, bodies, releases, deletes, inventory)}
        self._desired = desired
        return Plan(desired.revision, tuple(sorted(changes, key=lambda c: c.key)))

    def _need_observed(self) -> Observed:
        if self._observed is None:
            self.observe()
        assert self._observed is not None
        return self._observed

    # ------------------------------------------------------------------ apply and prune

    def apply(self, plan: Plan) -> list[str]:
        planned = self._planned[plan.revision]
        self._ensure_identities(planned.desired)
        seen = self._need_observed()
        # Record first what is about to exist, so a crash part-way never forgets an object.
        if not planned.inventory <= seen.inventory:
            self._write_inventory(seen.inventory | planned.inventory)
        applied: list[str] = []
        tracer = trace.get_tracer("weft.target.kubernetes")
        by_kind: dict[str, list[str]] = collections.defaultdict(list)
        for ref in planned.bodies:
            by_kind[split_ref(ref)[0]].append(ref)
        for kind in APPLY_ORDER:
            refs = sorted(by_kind.get(kind, []))

            def one(ref: str) -> str:
                with tracer.start_as_current_span(f"apply {ref}"):
                    self._apply(planned.bodies[ref])
                return ref

            applied += _each(one, refs)
        self._observed = None
        return applied

    def dry_run(self, plan: Plan) -> dict[str, str]:
        """Server-side dry-run applies of a plan's creates and updates: what the API server
        would reject, by ref (empty when it would accept everything). Writes nothing."""
        planned = self._planned[plan.revision]
        rejected: dict[str, str] = {}

        def one(ref: str) -> str:
            try:
                self.api.apply(planned.bodies[ref], dry_run=True)
            except ApiError as e:
                if not (e.conflict and self._drift_only(planned.bodies[ref], e)):
                    rejected[ref] = e.message
            return ref

        _each(one, sorted(planned.bodies))
        return rejected

    def _apply(self, body: Object) -> Object:
        try:
            return self.api.apply(body)
        except ApiError as e:
            if not e.conflict:
                raise
            if not self._drift_only(body, e):
                raise ConflictError(self._conflict_message(body, e)) from None
            log.warning(
                "%s: %s changed by %s; reverting to the desired state",
                ref_of(body),
                ", ".join(sorted({str(c.get("field", "")) for c in e.causes})),
                ", ".join(sorted(_managers(e))),
            )
            return self.api.apply(body, force=True)

    def _drift_only(self, body: Object, e: ApiError) -> bool:
        """Whether every manager a conflict names changed the fields imperatively (an
        `Update`: kubectl edit, patch, replace), so the fields are Weft's to take back. A
        manager that *applies* them declared a claim: that is a conflict to report."""
        managers = _managers(e)
        if not managers:
            return False
        kind, ns, name = split_ref(ref_of(body))
        live = self.api.get(kind, ns, name) or {}
        return not any(
            m.get("manager") in managers and m.get("operation") == "Apply"
            for m in live.get("metadata", {}).get("managedFields", [])
        )

    def _conflict_message(self, body: Object, e: ApiError) -> str:
        fields = ", ".join(sorted({str(c.get("field", "")) for c in e.causes}))
        who = ", ".join(sorted(_managers(e))) or "another manager"
        return (
            f"{ref_of(body)}: {fields} applied by {who}; Weft does not take over fields"
            " another manager declares"
        )

    def _remove_leftovers(self, ref: str) -> None:
        """After releasing an injection, remove what server-side apply kept because another
        manager co-owned part of it (a `kubectl set image` on the sidecar leaves the container
        with a name and an image: a broken init container that blocks every new pod). Removed
        by JSON patch, each removal guarded by a test of the item's name."""
        kind, ns, name = split_ref(ref)
        live = self.api.get(kind, ns, name)
        if live is None:
            return
        pod = live.get("spec", {}).get("template", {}).get("spec", {})
        ops: list[Object] = []
        for field in ("initContainers", "volumes"):
            items = pod.get(field) or []
            for i in reversed(range(len(items))):
                item_name = items[i].get("name", "")
                if item_name in (objects.SIDECAR, objects.CAPTURE, *objects.VOLUMES):
                    path = f"/spec/template/spec/{field}/{i}"
                    ops += [
                        {"op": "test", "path": f"{path}/name", "value": item_name},
                        {"op": "remove", "path": path},
                    ]
        if ops:
            log.warning("%s: removing what other managers kept of Weft's injection", ref)
            self.api.request(
                "PATCH",
                api_mod.path_of(kind, ns, name),
                body=ops,
                content_type="application/json-patch+json",
            )

    def prune(self, plan: Plan) -> list[str]:
        planned = self._planned.pop(plan.revision, None)
        tracer = trace.get_tracer("weft.target.kubernetes")
        removed: list[str] = []
        if planned is None:
            return removed

        def release(ref: str) -> str:
            with tracer.start_as_current_span(f"release {ref}"):
                self.api.apply(planned.releases[ref], force=True)
                self._remove_leftovers(ref)
            return ref

        def delete(ref: str) -> str:
            kind, ns, name = split_ref(ref)
            with tracer.start_as_current_span(f"delete {ref}"):
                self.api.delete(kind, ns, name, uid=planned.deletes[ref])
            return ref

        removed += _each(release, sorted(planned.releases))
        for kind in reversed(OWNED_KINDS):
            removed += _each(delete, sorted(r for r in planned.deletes if r.startswith(f"{kind}/")))
        seen_inventory = self._read_inventory()
        if seen_inventory != planned.inventory:
            self._write_inventory(planned.inventory)
        self._observed = None
        return removed

    def _write_inventory(self, refs: Iterable[str]) -> None:
        """One ref per line, gzipped: a ConfigMap holds at most 1 MiB, which plain text would
        reach at a few thousand services; compressed, refs (alike but for names) take ~10x less."""
        text = "".join(f"{r}\n" for r in sorted(refs)).encode()
        self.api.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": objects.INVENTORY,
                    "namespace": self.system_namespace,
                    "labels": objects.labels("inventory"),
                },
                "binaryData": {
                    "objects.gz": base64.b64encode(gzip.compress(text, mtime=0)).decode()
                },
            },
            force=True,
        )

    @without_gc_pauses
    def _ensure_identities(self, desired: DesiredState) -> None:
        now = self._clock()
        if self.store.read_state() is None:
            provided = self.store.provided_ca(*self.ca_secret, now) if self.ca_secret else None
            identity.ca.init(self.store, desired.trust_domain, now, provided=provided)
        identity.ensure(
            self.store,
            desired.identities,
            trust_domain=desired.trust_domain,
            lifetime=datetime.timedelta(milliseconds=desired.certificate_lifetime_ms),
            now=now,
        )

    def maintain(self) -> None:
        """Renew certificates that are due; kubelets refresh mounted Secrets themselves."""
        if self._desired is not None:
            self._ensure_identities(self._desired)

    # ------------------------------------------------------------------ status

    def report(self, status: Mapping[str, Any]) -> None:
        """Publish the loop's status as ConfigMap weft-system/weft-status, and an Event when
        the outcome changed. A reconcile that changed nothing writes nothing here either."""
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        key = (
            status.get("lastAttemptedRevision"),
            status.get("lastAppliedRevision"),
            tuple(status.get("errors", [])),
            # Reconciling flips on and off around every reconcile: it is not worth two writes.
            tuple(
                (t, c.get("status"), c.get("reason"), c.get("message"))
                for t, c in sorted(conditions.items())
                if t != "Reconciling"
            ),
        )
        if key == self._reported:
            return
        self.api.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": objects.STATUS,
                    "namespace": self.system_namespace,
                    "labels": objects.labels("status"),
                },
                "data": {"status.json": json.dumps(status, indent=2, sort_keys=True) + "\n"},
            },
            force=True,
        )
        ready = conditions.get("Ready", {})
        stalled = conditions.get("Stalled", {})
        source = stalled if stalled.get("status") else ready
        reason = str(source.get("reason") or "Reconciled")
        message = str(source.get("message") or "")
        self._event(reason, message, warning=bool(stalled.get("status")))
        self._reported = key

    def _event(self, reason: str, message: str, *, warning: bool) -> None:
        now = self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        self.api.create(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "generateName": "weft-reconcile.",
                    "namespace": self.system_namespace,
                },
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": objects.STATUS,
                    "namespace": self.system_namespace,
                },
                "reason": reason,
                "message": message[:1024],
                "type": "Warning" if warning else "Normal",
                "source": {"component": "weft"},
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
        )

    def close(self) -> None:
        self.api.client.close()  # type: ignore[no-untyped-call]


class SecretBackend:
    """`secretstore.SecretBackend` over the API: whole Secrets, applied by `weft`."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def read_secret(self, namespace: str, name: str) -> secretstore.SecretData | None:
        obj = self.api.get("Secret", namespace, name)
        return None if obj is None else _decode(obj)

    def read_versioned(
        self, namespace: str, name: str
    ) -> tuple[secretstore.SecretData, str] | None:
        obj = self.api.get("Secret", namespace, name)
        return None if obj is None else (_decode(obj), obj["metadata"]["resourceVersion"])

    def list_secrets(self, selector: str) -> dict[tuple[str, str], secretstore.SecretData]:
        return {
            (o["metadata"]["namespace"], o["metadata"]["name"]): _decode(o)
            for o in self.api.list("Secret", selector=selector)
        }

    def write_secret(
        self,
        namespace: str,
        name: str,
        data: secretstore.SecretData,
        labels: Mapping[str, str],
        secret_type: str,
        *,
        resource_version: str | None = None,
    ) -> str:
        if resource_version is None:
            self._refuse_namesake(namespace, name)
        meta: Object = {"name": name, "namespace": namespace, "labels": dict(labels)}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version  # server-side apply's precondition
        try:
            written = self.api.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": secret_type,
                    "metadata": meta,
                    "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
                },
                force=True,  # these Secrets are the identity store's alone
            )
        except ApiError as e:
            if e.conflict and resource_version is not None:
                raise secretstore.ConcurrentChangeError(
                    f"Secret {namespace}/{name} changed while this step ran (another weft);"
                    " nothing was recorded, and the step runs again"
                ) from None
            raise
        return str(written["metadata"]["resourceVersion"])

    def _refuse_namesake(self, namespace: str, name: str) -> Object | None:
        live = self.api.get("Secret", namespace, name)
        if (
            live is not None
            and (live["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") != "weft"
        ):
            raise identity.IdentityError(
                f"Secret {namespace}/{name} exists and is not Weft's (no"
                " app.kubernetes.io/managed-by=weft label); Weft never takes over a Secret"
            )
        return live

    def delete_secret(self, namespace: str, name: str) -> None:
        live = self._refuse_namesake(namespace, name)
        if live is not None:
            self.api.delete("Secret", namespace, name, uid=live["metadata"]["uid"])


def _decode(obj: Mapping[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}


def _managers(e: ApiError) -> set[str]:
    """The field managers a 409 from server-side apply names."""
    return {m.group(1) for c in e.causes if (m := _CONFLICT_WITH.search(c.get("message", "")))}


def _each(work: Callable[[str], str], refs: list[str]) -> list[str]:
    """Run `work` over `refs` on a few threads; the first failure is raised after all finish,
    so a failed object never leaves its siblings half-started."""
    if len(refs) <= 1:
        return [work(r) for r in refs]
    done: list[str] = []
    errors: list[BaseException] = []
    with concurrent.futures.ThreadPoolExecutor(min(WORKERS, len(refs))) as pool:
        for future in [pool.submit(work, r) for r in refs]:
            try:
                done.append(future.result())
            except Exception as e:
                errors.append(e)
    if errors:
        raise errors[0]
    return done
