"""Meshed CronJobs and Jobs, against a real kube-apiserver and kube-controller-manager with
deploy/ applied as the docs say.

A CronJob's job template is mutable: the injection is applied into it like a Deployment's, shown
by `weft diff`, and released when its Service leaves the intent; a Job made from it (`kubectl
create job --from`, as the CronJob controller would) gets pods with the sidecar. A Job's
template is immutable: the target writes a PodTemplate, and deploy/40-jobs.yaml's admission
policy injects its contents into the pods of the Jobs the Service selects, and into no others;
the Job is never written. The tests' job controller creates the pods for real (no node runs
them: they stay Pending), so what is asserted is the pod spec admission really stored.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler import compiler
from reconciler.targets import Plan
from reconciler.targets.kubernetes import KubernetesTarget, compare
from reconciler.targets.kubernetes import objects as kobjects
from tests.conftest import TEMPLATE, load, write_repo
from tests.kube import ControlPlane, wait_for
from tests.kubeapps import APP_MANAGER

IMAGE = "registry.example/weft:test"
NS = "c"

CRONJOB_SERVICE = """\
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: report, namespace: c}
spec:
  ports: [{name: http, port: 8080}]
  workload: {kind: CronJob}
"""


def intent(tmp: Path, files: dict[str, str]) -> Path:
    """The template's intent with `files` added."""
    root = tmp / "intent"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(TEMPLATE, root)
    return write_repo(root, files)


def reconcile(target: KubernetesTarget, root: Path) -> Plan:
    plan = target.plan(compiler.compile(load(root)), target.observe())
    target.apply(plan)
    target.prune(plan)
    return plan


def diff(cluster: ControlPlane, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "diff", "--target", "kubernetes",
         "--kubeconfig", str(cluster.admin_kubeconfig), "--image", IMAGE, str(root)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def service_account(cluster: ControlPlane, name: str) -> None:
    """The app team's ServiceAccount: pods naming one that does not exist are refused."""
    cluster.admin().apply(
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": name, "namespace": NS}},
        manager=APP_MANAGER,
    )  # fmt: skip


APP = {"name": "app", "image": "registry.example/report:1.0", "command": ["report"]}


def pod_spec(labels: dict[str, str], account: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": labels},
        "spec": {
            "serviceAccountName": account,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [APP],
        },
    }


def cronjob(name: str = "report", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {"spec": {"template": pod_spec(labels or {"app": name}, "report")}},
        },
    }


def pods_of(cluster: ControlPlane, job: str) -> list[dict[str, Any]]:
    """The pods the job controller created for Job `job`."""
    out = cluster.kubectl("-n", NS, "get", "pods", "-l", f"{kobjects.JOB_NAME_LABEL}={job}",
                          "-o", "json")  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def names(items: list[dict[str, Any]] | None) -> list[str]:
    return [i["name"] for i in items or []]


def assert_injected(pod: dict[str, Any], service: str) -> None:
    """A pod spec (or template) holds the injection: capture, then the sidecar as a native
    sidecar, its volumes; the app's container untouched."""
    spec = pod["spec"]
    assert names(spec.get("initContainers")) == [kobjects.CAPTURE, kobjects.SIDECAR]
    sidecar = spec["initContainers"][1]
    assert sidecar["restartPolicy"] == "Always", "a native sidecar: it stops when the Job ends"
    assert sidecar["image"] == IMAGE
    assert [c["name"] for c in spec["containers"]] == ["app"]
    assert spec["containers"][0]["command"] == APP["command"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[kobjects.CONFIG_VOLUME]["configMap"]["name"] == f"{service}-weft-sidecar"
    assert kobjects.CERTS_VOLUME in volumes


# --- CronJobs -------------------------------------------------------------------------------


@pytest.fixture
def target(template_cluster: ControlPlane) -> KubernetesTarget:
    return KubernetesTarget(template_cluster.admin(), image=IMAGE)


def test_a_cronjob_is_injected_in_its_job_template_and_shown_by_diff(
    template_cluster: ControlPlane, target: KubernetesTarget, tmp_path: Path
) -> None:
    api = template_cluster.admin()
    service_account(template_cluster, "report")
    api.apply(cronjob(), manager=APP_MANAGER)
    root = intent(tmp_path, {"c/report.yaml": CRONJOB_SERVICE})

    before = diff(template_cluster, root)
    assert before.returncode == 1, before.stderr
    assert "create  ConfigMap/c/report-weft-sidecar" in before.stdout
    assert (
        "update  CronJob/c/report  (.metadata.annotations,"
        " .spec.jobTemplate.spec.template.spec.initContainers,"
        " .spec.jobTemplate.spec.template.spec.volumes)\n" in before.stdout
    ), before.stdout
    live = api.get("CronJob", NS, "report")
    assert live is not None
    assert "initContainers" not in live["spec"]["jobTemplate"]["spec"]["template"]["spec"]

    reconcile(target, root)
    live = api.get("CronJob", NS, "report")
    assert live is not None
    assert live["metadata"]["annotations"][kobjects.INJECTED] == "report"
    assert_injected(live["spec"]["jobTemplate"]["spec"]["template"], "report")
    assert live["spec"]["schedule"] == "0 3 * * *", "the team's fields stay the team's"
    after = diff(template_cluster, root)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "no changes" in after.stdout

    # A Job made from the CronJob, as the CronJob controller makes them: its pod is meshed.
    template_cluster.kubectl("-n", NS, "create", "job", "report-now", "--from=cronjob/report")
    [pod] = wait_for(lambda: pods_of(template_cluster, "report-now"))
    assert_injected(pod, "report")


def test_a_cronjob_leaving_the_intent_is_released(
    template_cluster: ControlPlane, target: KubernetesTarget, tmp_path: Path
) -> None:
    api = template_cluster.admin()
    service_account(template_cluster, "report")
    api.apply(cronjob(), manager=APP_MANAGER)
    reconcile(target, intent(tmp_path, {"c/report.yaml": CRONJOB_SERVICE}))
    # kubectl set image takes ownership of the sidecar's image: release must still remove it.
    template_cluster.kubectl(
        "-n", NS, "set", "image", "cronjob/report", "weft-sidecar=registry.example/other:1"
    )  # fmt: skip

    plan = reconcile(target, intent(tmp_path, {}))
    assert "CronJob/c/report" in [c.key for c in plan.of("delete")]
    live = api.get("CronJob", NS, "report")
    assert live is not None
    template = live["spec"]["jobTemplate"]["spec"]["template"]
    assert names(template["spec"].get("initContainers")) == []
    assert names(template["spec"].get("volumes")) == []
    assert template["spec"]["containers"][0]["command"] == APP["command"]
    assert kobjects.INJECTED not in (live["metadata"].get("annotations") or {})
    assert api.get("ConfigMap", NS, "report-weft-sidecar") is None


# --- Jobs -----------------------------------------------------------------------------------

JOB_SERVICES = """\
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: export, namespace: c}
spec:
  ports: [{name: http, port: 8080}]
  workload: {kind: Job}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: nightly, namespace: c}
spec:
  ports: [{name: http, port: 8080}]
  workload: {kind: Job, name: nightly-export, podSelector: {app: nightly}}
"""


def test_the_job_injection_is_the_pod_injection_and_says_which_pods(tmp_path: Path) -> None:
    desired = compiler.compile(load(intent(tmp_path, {"c/jobs.yaml": JOB_SERVICES})))
    config = desired.proxy_configs[(NS, "nightly")]
    body = kobjects.job_injection(
        NS, service="nightly", spec=desired.workloads[(NS, "nightly")], config=config, image=IMAGE
    )
    assert body["metadata"] == {
        "name": "nightly-weft-job",
        "namespace": NS,
        "labels": {
            "app.kubernetes.io/managed-by": "weft",
            "weft.dev/part": "job-injection",
            "weft.dev/service": "nightly",
        },
    }
    template = body["template"]
    assert template["metadata"] == {
        "labels": {"app": "nightly", kobjects.JOB_NAME_LABEL: "nightly-export"},
        "annotations": {kobjects.INJECTED: "nightly"},
    }
    injected = kobjects.pod_injection(service="nightly", config=config, image=IMAGE)["spec"]
    assert template["spec"] == {
        "serviceAccountName": "nightly",
        "containers": [{"name": kobjects.PLACEHOLDER, "image": IMAGE}],
        **injected,
    }
    unnamed = kobjects.job_injection(
        NS,
        service="export",
        spec=desired.workloads[(NS, "export")],
        config=desired.proxy_configs[(NS, "export")],
        image=IMAGE,
    )
    assert unnamed["template"]["metadata"]["labels"] == {"app": "export"}, "any Job's pods"


def job(name: str, labels: dict[str, str], account: str = "export") -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"backoffLimit": 0, "template": pod_spec(labels, account)},
    }


def apply_job(cluster: ControlPlane, body: dict[str, Any]) -> None:
    """As the app team applies it (the target's API client knows no Jobs: it never writes one)."""
    cluster.kubectl("apply", "--server-side", f"--field-manager={APP_MANAGER}", "-f", "-",
                    stdin=json.dumps(body))  # fmt: skip


def get_job(cluster: ControlPlane, name: str) -> dict[str, Any]:
    out = cluster.kubectl("-n", NS, "get", "job", name, "-o", "json", "--show-managed-fields")
    found: dict[str, Any] = json.loads(out)
    return found


def the_pod(cluster: ControlPlane, job_name: str) -> dict[str, Any]:
    [pod] = wait_for(lambda: pods_of(cluster, job_name))
    return pod


def dry_run_pod(cluster: ControlPlane, labels: dict[str, str]) -> dict[str, Any]:
    """What admission makes of a pod of a Job (a made-up one: a dry run checks no owner)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "probe",
            "namespace": NS,
            "labels": {**labels, kobjects.JOB_NAME_LABEL: "probe"},
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "probe", "controller": True,
                 "uid": "6b1a4c6e-0000-4000-8000-000000000000"}
            ],
        },
        "spec": pod_spec(labels, "export")["spec"],
    }  # fmt: skip
    out = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                          stdin=json.dumps(pod))  # fmt: skip
    created: dict[str, Any] = json.loads(out)
    return created


def injected(pod: dict[str, Any]) -> bool:
    return kobjects.SIDECAR in names(pod["spec"].get("initContainers"))


def config_of(root: Path, service: str = "export") -> Any:
    return compiler.compile(load(root)).proxy_configs[(NS, service)]


def test_jobs_pods_are_injected_at_admission_and_the_jobs_never(
    template_cluster: ControlPlane, target: KubernetesTarget, tmp_path: Path
) -> None:
    api = template_cluster.admin()
    service_account(template_cluster, "export")
    root = intent(tmp_path, {"c/jobs.yaml": JOB_SERVICES})
    before = diff(template_cluster, root)
    assert before.returncode == 1, before.stderr
    assert "create  PodTemplate/c/export-weft-job\n" in before.stdout, before.stdout
    reconcile(target, root)
    after = diff(template_cluster, root)
    assert after.returncode == 0, after.stdout + after.stderr
    held = api.get("PodTemplate", NS, "export-weft-job")
    assert held is not None
    # The API server loads parameters in the background: wait until the policy sees this one.
    wait_for(lambda: injected(dry_run_pod(template_cluster, {"app": "export"})))

    apply_job(template_cluster, job("export-1", {"app": "export", "run": "1"}))
    pod = the_pod(template_cluster, "export-1")
    assert_injected(pod, "export")
    assert pod["metadata"]["annotations"][kobjects.INJECTED] == "export"
    # Everything the injection holds reached the pod: as the target builds it, and as the API
    # server stored it (with its defaults).
    wanted, _ = target.desired_objects(compiler.compile(load(root)))
    spec = wanted["PodTemplate/c/export-weft-job"]["template"]["spec"]
    injection = kobjects.pod_injection(service="export", config=config_of(root), image=IMAGE)
    assert set(injection["spec"]) == {"initContainers", "volumes"}, "all deploy/40-jobs copies"
    want = {k: v for k, v in spec.items() if k in injection["spec"]}
    assert compare.differences(want, pod["spec"]) == []
    assert compare.differences(held["template"]["spec"]["initContainers"],
                               pod["spec"]["initContainers"]) == []  # fmt: skip
    assert kobjects.PLACEHOLDER not in [c["name"] for c in pod["spec"]["containers"]]

    # The Job is the team's as it was: no field of Weft's, and no write by it.
    written = get_job(template_cluster, "export-1")
    assert "initContainers" not in written["spec"]["template"]["spec"]
    managers = {m["manager"] for m in written["metadata"]["managedFields"]}
    assert "weft" not in managers

    # A pod created again as it was stored (it carries the injection): not injected twice.
    again = {k: v for k, v in pod.items() if k != "status"}
    kept = ("labels", "annotations", "ownerReferences")
    again["metadata"] = {k: v for k, v in pod["metadata"].items() if k in kept} | {
        "name": "export-1-again",
        "namespace": NS,
    }
    stored = json.loads(template_cluster.kubectl("create", "-o", "json", "-f", "-",
                                                 stdin=json.dumps(again)))  # fmt: skip
    assert names(stored["spec"]["initContainers"]) == [kobjects.CAPTURE, kobjects.SIDECAR]
    assert names(stored["spec"]["volumes"]) == names(pod["spec"]["volumes"])

    # Not selected: other labels, another service account, the other Service's unnamed Job.
    service_account(template_cluster, "someone")
    service_account(template_cluster, "nightly")
    apply_job(template_cluster, job("other", {"app": "other"}))
    apply_job(template_cluster, job("as-someone", {"app": "export"}, account="someone"))
    apply_job(template_cluster, job("nightly-other", {"app": "nightly"}, account="nightly"))
    apply_job(template_cluster, job("nightly-export", {"app": "nightly"}, account="nightly"))
    for name in ("other", "as-someone", "nightly-other"):
        pod = the_pod(template_cluster, name)
        assert names(pod["spec"].get("initContainers")) == [], name
        assert kobjects.INJECTED not in (pod["metadata"].get("annotations") or {}), name
    assert_injected(the_pod(template_cluster, "nightly-export"), "nightly")


def test_a_job_service_leaving_the_intent_stops_the_injection(
    template_cluster: ControlPlane, target: KubernetesTarget, tmp_path: Path
) -> None:
    api = template_cluster.admin()
    service_account(template_cluster, "export")
    reconcile(target, intent(tmp_path, {"c/jobs.yaml": JOB_SERVICES}))
    wait_for(lambda: injected(dry_run_pod(template_cluster, {"app": "export"})))

    plan = reconcile(target, intent(tmp_path, {}))
    assert "PodTemplate/c/export-weft-job" in [c.key for c in plan.of("delete")]
    assert api.get("PodTemplate", NS, "export-weft-job") is None
    assert api.get("ConfigMap", NS, "export-weft-sidecar") is None
    wait_for(lambda: not injected(dry_run_pod(template_cluster, {"app": "export"})))
    apply_job(template_cluster, job("export-2", {"app": "export"}))
    assert names(the_pod(template_cluster, "export-2")["spec"].get("initContainers")) == []
