"""The app's kubelet probes on meshed ports: pointed at the sidecar in each pod, never in the
template.

Pure tests of what the target applies, then the chain on a real kube-apiserver and
kube-controller-manager with deploy/ applied (its admission policy included): an app team's
`kubectl apply`, a reconcile, a pod made from the injected template (rewritten at
admission), and the team's next `kubectl apply` and server-side apply, which meet no Weft change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from reconciler.targets import Plan
from reconciler.targets.kubernetes import KubernetesTarget
from reconciler.targets.kubernetes import objects as kobjects
from tests.kube import ControlPlane, wait_for
from tests.kubeapps import APP_MANAGER, desired_template

IMAGE = "registry.example/weft:test"
LIVENESS = {
    "httpGet": {
        "path": "/healthz",
        "port": "postgres",
        "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}],
    },
    "initialDelaySeconds": 3,
    "periodSeconds": 7,
    "timeoutSeconds": 2,
    "failureThreshold": 4,
}
READINESS = {"tcpSocket": {"port": 5432}, "periodSeconds": 5}
STARTUP = {"exec": {"command": ["pg_isready"]}}
EXPORTER_LIVENESS = {"httpGet": {"path": "/metrics", "port": 9187}}


def _db(probes: bool = True) -> dict[str, Any]:
    """c/db as its team writes it: probes on the meshed port 5432 (one by name), an exec
    probe, and an exporter probed on a port the mesh does not serve."""
    app: dict[str, Any] = {
        "name": "app",
        "image": "registry.example/db:1.0",
        "ports": [{"name": "postgres", "containerPort": 5432, "protocol": "TCP"}],
    }
    exporter: dict[str, Any] = {"name": "exporter", "image": "registry.example/exporter:1.0"}
    if probes:
        app |= {"livenessProbe": LIVENESS, "readinessProbe": READINESS, "startupProbe": STARTUP}
        exporter |= {"livenessProbe": EXPORTER_LIVENESS}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "c"},
        "spec": {
            "serviceName": "db",
            "replicas": 1,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"serviceAccountName": "db", "containers": [app, exporter]},
            },
        },
    }


def _containers(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = obj["spec"]["template"]["spec"] if "template" in obj["spec"] else obj["spec"]
    return {c["name"]: c for c in spec["containers"]}


def _recorded(obj: dict[str, Any]) -> dict[str, Any]:
    """The probes recorded in the sidecar's env, from a template or a pod."""
    spec = obj["spec"]["template"]["spec"] if "template" in obj["spec"] else obj["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == kobjects.SIDECAR)
    env = {e["name"]: e["value"] for e in sidecar.get("env", [])}
    recorded: dict[str, Any] = json.loads(env[kobjects.APP_PROBES_ENV])
    return recorded


def _held(probe: dict[str, Any], written: dict[str, Any]) -> dict[str, Any]:
    """What the API server holds of the fields `written` names (it adds defaults: scheme,
    thresholds, timeouts), to compare with what was written."""
    return {
        k: {f: v[f] for f in written[k] if f in v} if isinstance(written[k], dict) else v
        for k, v in probe.items()
        if k in written
    }


# --- what the target applies -----------------------------------------------------------------


def test_probes_on_meshed_ports_are_found_with_their_ports_as_numbers() -> None:
    assert kobjects.app_probes(_db(), [5432]) == {
        "app/livenessProbe": {"probe": LIVENESS, "port": 5432},
        "app/readinessProbe": {"probe": READINESS, "port": 5432},
    }, "exec, and a port the mesh does not serve, are the kubelet's to run"
    assert kobjects.app_probes(_db(), [8080]) == {}


def test_a_probe_of_another_host_or_an_unknown_named_port_is_left() -> None:
    db = _db()
    app = _containers(db)["app"]
    app["livenessProbe"] = {"httpGet": {"path": "/", "port": 5432, "host": "10.0.0.9"}}
    app["readinessProbe"] = {"tcpSocket": {"port": "nosuchport"}}
    assert kobjects.app_probes(db, [5432]) == {}


def test_grpc_probes_are_found_too() -> None:
    db = _db(probes=False)
    _containers(db)["app"]["readinessProbe"] = {"grpc": {"port": 5432, "service": "db"}}
    assert kobjects.app_probes(db, [5432]) == {
        "app/readinessProbe": {"probe": {"grpc": {"port": 5432, "service": "db"}}, "port": 5432}
    }


def test_the_injection_hands_the_probes_over_and_leaves_the_app_containers() -> None:
    config = desired_template().proxy_configs[("c", "db")]
    found = kobjects.app_probes(_db(), [5432])
    body = kobjects.injection("StatefulSet", "c", "db", service="db", config=config,
                              image=IMAGE, probes=found)  # fmt: skip
    template = body["spec"]["template"]
    assert "containers" not in template["spec"], "the app team's containers stay theirs"
    assert template["metadata"]["annotations"] == {
        kobjects.REWRITE_PROBES: "app/livenessProbe,app/readinessProbe"
    }
    assert _recorded(body) == found
    plain = kobjects.injection("StatefulSet", "c", "db", service="db", config=config, image=IMAGE)
    assert "metadata" not in plain["spec"]["template"]
    assert "env" not in plain["spec"]["template"]["spec"]["initContainers"][1], (
        "no probes, no env: injections without probes do not change"
    )


# --- against a real API server ---------------------------------------------------------------


def reconcile(target: KubernetesTarget) -> Plan:
    plan = target.plan(desired_template(), target.observe())
    target.apply(plan)
    target.prune(plan)
    return plan


def _kubectl_apply(cluster: ControlPlane, tmp_path: Path, obj: dict[str, Any]) -> None:
    manifest = tmp_path / "db.yaml"
    manifest.write_text(yaml.safe_dump(obj))
    cluster.kubectl("apply", "-f", str(manifest))


def api_get(cluster: ControlPlane, kind: str, name: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = cluster.admin().get(kind, "c", name)
    return found


def _pod_of(
    cluster: ControlPlane, workload: dict[str, Any], name: str, dry_run: bool = False
) -> dict[str, Any]:
    """A pod made from the workload's template, as its controller would make it (this control
    plane runs no workload controllers without a node): what admission sees and stores."""
    template = workload["spec"]["template"]
    account = template["spec"]["serviceAccountName"]
    if api_get(cluster, "ServiceAccount", account) is None:  # the app team's, made first
        cluster.admin().create(
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": account, "namespace": "c"}}
        )  # fmt: skip
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": name, "namespace": "c"},
        "spec": {**template["spec"], "automountServiceAccountToken": False},
    }
    created: dict[str, Any] = json.loads(
        cluster.kubectl(
            "create",
            *(["--dry-run=server"] if dry_run else []),
            "-o",
            "json",
            "-f",
            "-",
            stdin=json.dumps(pod),
        )
    )
    return created


def test_pods_are_rewritten_at_admission_and_templates_never(
    template_cluster: ControlPlane, tmp_path: Path
) -> None:
    api = template_cluster.admin()
    target = KubernetesTarget(api, image=IMAGE)
    # The app team deploys c/db with kubectl apply (client-side), probes and all.
    api.delete("StatefulSet", "c", "db")
    _kubectl_apply(template_cluster, tmp_path, _db())
    reconcile(target)

    db = api.get("StatefulSet", "c", "db")
    assert db is not None
    app = _containers(db)["app"]
    assert _held(app["livenessProbe"], LIVENESS) == LIVENESS, "the template is the team's"
    assert _held(app["readinessProbe"], READINESS) == READINESS
    recorded = _recorded(db)
    assert sorted(recorded) == ["app/livenessProbe", "app/readinessProbe"]
    assert {k: v["port"] for k, v in recorded.items()} == {
        "app/livenessProbe": 5432,
        "app/readinessProbe": 5432,
    }
    assert _held(recorded["app/livenessProbe"]["probe"], LIVENESS) == LIVENESS
    assert not reconcile(target).changes, "a second reconcile writes nothing"

    # The pod the controller creates from the injected template: its probes ask the sidecar.
    # The API server loads admission policies in the background: wait until it runs ours.
    wait_for(lambda: "tcpSocket" not in _containers(
        _pod_of(template_cluster, db, "db-0", dry_run=True))["app"]["readinessProbe"])  # fmt: skip
    pod = _pod_of(template_cluster, db, "db-0")
    app, exporter = _containers(pod)["app"], _containers(pod)["exporter"]
    assert app["livenessProbe"]["httpGet"] == {
        "path": "/app-health/app/livenessProbe",
        "port": kobjects.ADMIN_PORT,
        "scheme": "HTTP",
    }, "replaced whole: the app's headers went with its check to the sidecar"
    assert {
        k: app["livenessProbe"][k]
        for k in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold")
    } == {
        "initialDelaySeconds": 3,
        "periodSeconds": 7,
        "timeoutSeconds": 2,
        "failureThreshold": 4,
    }, "the app's timing is kept"
    assert "tcpSocket" not in app["readinessProbe"]
    assert app["readinessProbe"]["httpGet"]["path"] == "/app-health/app/readinessProbe"
    assert app["readinessProbe"]["periodSeconds"] == 5
    assert _held(app["startupProbe"], STARTUP) == STARTUP, "exec is left to the kubelet"
    assert _held(exporter["livenessProbe"], EXPORTER_LIVENESS) == EXPORTER_LIVENESS
    assert _recorded(pod) == recorded, "the sidecar in the pod has what it must run"

    # The team's next kubectl apply and a server-side apply of the same manifest meet nothing
    # of Weft's in their fields: both are accepted, and nothing moves.
    _kubectl_apply(template_cluster, tmp_path, _db())
    api.apply(_db(), manager=APP_MANAGER, force=True)
    assert not reconcile(target).changes


def test_a_pod_without_the_annotation_is_not_touched(
    template_cluster: ControlPlane, tmp_path: Path
) -> None:
    # c/db as the team applies it, never reconciled: no annotation, no rewrite.
    api = template_cluster.admin()
    api.delete("StatefulSet", "c", "db")
    _kubectl_apply(template_cluster, tmp_path, _db())
    db = api.get("StatefulSet", "c", "db")
    assert db is not None
    pod = _pod_of(template_cluster, db, "db-0")
    app = _containers(pod)["app"]
    assert _held(app["readinessProbe"], READINESS) == READINESS
    assert _held(app["livenessProbe"], LIVENESS) == LIVENESS
