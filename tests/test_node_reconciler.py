"""deploy/ on the real node: the reconciler runs as pods of its Deployment, from the image
deploy/Dockerfile builds, follows a git daemon through the pod network, and reconciles; the
template's workloads, applied as an application team would, run with the sidecars it injects.

The API server and the git daemon listen on 127.0.0.1; the node reaches them from pods at the
kubernetes Service's ClusterIP and at the node's address (tests/node.py's `expose`). The apps
are `weft demo-app` from the same image; those the tests do not call are scaled to zero.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gitservers import GitDaemon, Upstream
from tests.kubeapps import DEPLOY, TEMPLATE, TEMPLATE_NAMESPACES, WORKLOADS, workload
from tests.node import RELEASED_IMAGE, Node

SAMPLE_REPO = "https://git.example.com/platform/mesh.git"  # what deploy/ says to replace
# The workloads that run (namespace, name) -> (the instance their demo app reports, the port it
# listens on: the intent's targetPort, where the sidecar delivers).
RUNNING = {
    ("a", "web"): ("web", 8080),
    ("b", "api-v1"): ("v1", 8081),
    ("b", "api-v2"): ("v2", 8081),
    ("c", "ledger"): ("ledger", 8080),
}
# The app teams' ClusterIP Services that clients call by name: (namespace, name, targetPort).
APP_SERVICES = [("a", "web", 8080), ("b", "api", 8081), ("c", "ledger", 8080)]


def _pods(node: Node, namespace: str, selector: str) -> list[dict[str, Any]]:
    pods = node.cp.admin().request(
        "GET", f"/api/v1/namespaces/{namespace}/pods", query=[("labelSelector", selector)]
    )
    return [p for p in pods.get("items", []) if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def _wait(
    what: str, predicate: Any, node: Node, namespaces: tuple[str, ...], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            report = "\n".join(node.diagnose(ns) for ns in namespaces)
            raise AssertionError(f"{what}: not so after {timeout:.0f} s\n{report}")
        time.sleep(1)


@dataclasses.dataclass
class Deployed:
    up: Upstream
    files: dict[str, str]
    head: str  # the revision applied


@pytest.fixture(scope="module")
def deployed(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """deploy/ applied as a user applies it, the template's workloads as its app teams would,
    and the reconciler converged on the repository's head; yields that revision."""
    tmp = tmp_path_factory.mktemp("mesh")
    up = Upstream(tmp / "git", "mesh.git")
    files = {str(p.relative_to(TEMPLATE)): p.read_text() for p in TEMPLATE.rglob("*.yaml")}
    sha = up.commit(files, "seed")
    api = node.cp.admin()
    with GitDaemon(tmp / "git") as daemon:
        node.expose(node.node_ip, daemon.port, daemon.port)
        url = f"git://{node.node_ip}:{daemon.port}/mesh.git"
        for ns in TEMPLATE_NAMESPACES:
            api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for ns, sa in sorted({(w[1], w[4]) for w in WORKLOADS}):
            api.request(
                "POST",
                f"/api/v1/namespaces/{ns}/serviceaccounts",
                body={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}},
            )
        for ns, name, target_port in APP_SERVICES:
            api.request(
                "POST",
                f"/api/v1/namespaces/{ns}/services",
                body={
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": name},
                    "spec": {
                        "selector": {"app": name},
                        "ports": [{"name": "http", "port": 8080, "targetPort": target_port}],
                    },
                },
            )
        for kind, ns, name, labels, sa in WORKLOADS:
            obj = workload(kind, ns, name, labels, sa)
            pod = obj["spec"]["template"]["spec"]
            if (ns, name) in RUNNING:
                pod["containers"][0].update(
                    image=RELEASED_IMAGE,
                    command=["weft", "demo-app"],
                    env=[
                        {"name": "WEFT_SERVICE", "value": f"{ns}/{labels['app']}"},
                        {"name": "WEFT_INSTANCE", "value": RUNNING[(ns, name)][0]},
                        {"name": "PORT", "value": str(RUNNING[(ns, name)][1])},
                    ],
                )
            else:
                obj["spec"]["replicas"] = 0
            api.apply(obj, manager="app-team")
        # The namespace, RBAC and probes policy as they are; the Deployment with WEFT_REPO
        # set, as its comment says to.
        node.cp.kubectl(
            "apply",
            *("-f", str(DEPLOY / "00-namespace.yaml"), "-f", str(DEPLOY / "10-rbac.yaml")),
            *("-f", str(DEPLOY / "30-probes.yaml")),
        )
        manifest = (DEPLOY / "20-reconciler.yaml").read_text()
        assert SAMPLE_REPO in manifest
        node.cp.kubectl("apply", "-f", "-", stdin=manifest.replace(SAMPLE_REPO, url))
        head = f"main@sha1:{sha}"

        def converged() -> bool:
            pods = _pods(node, "weft-system", "app.kubernetes.io/name=weft-reconciler")
            if len(pods) != 2 or not all(_ready(p) for p in pods):
                return False
            cm = api.get("ConfigMap", "weft-system", "weft-status")
            status = json.loads(cm["data"]["status.json"]) if cm else {}
            return bool(status.get("lastAppliedRevision") == head)

        _wait(f"converged on {head}", converged, node, ("weft-system",), 150)
        yield Deployed(up, files, head)


def test_the_reconciler_runs_as_its_deployment_and_applies_the_repository(
    node: Node, deployed: Deployed
) -> None:
    api = node.cp.admin()
    pods = _pods(node, "weft-system", "app.kubernetes.io/name=weft-reconciler")
    # Both replicas Ready (readiness is the reconciler's own /healthz), one holds the Lease.
    assert len(pods) == 2
    lease = api.get("Lease", "weft-system", "weft-reconciler")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] in {p["metadata"]["name"] for p in pods}
    # And it wrote the mesh: a/web's Deployment carries the injected sidecar.
    web = api.get("Deployment", "a", "web")
    assert web is not None
    names = [c["name"] for c in web["spec"]["template"]["spec"].get("initContainers", [])]
    assert "weft-sidecar" in names, names


def _netns_of(ip: str) -> str:
    """The CNI network namespace holding a pod's address."""
    for ns in sorted(Path("/var/run/netns").glob("cni-*")):
        out = subprocess.run(
            ["ip", "-n", ns.name, "-4", "-o", "addr"], capture_output=True, text=True, check=False
        ).stdout
        if f"inet {ip}/" in out:
            return ns.name
    raise AssertionError(f"no network namespace holds {ip}")


def _curl_from(netns: str, url: str) -> tuple[int, str]:
    """curl as root in a pod's network namespace: like the app, captured by its sidecar."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "curl", "-sS", "-m", "10", "--noproxy", "*", "-o", "-",
         "-w", "\n%{http_code}", url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return -done.returncode, done.stderr
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def test_meshed_pods_run_with_injected_native_sidecars_and_talk_over_mtls(
    node: Node, deployed: Deployed
) -> None:
    def meshed_ready() -> bool:
        for (ns, name), _ in RUNNING.items():
            labels = next(w[3] for w in WORKLOADS if w[1] == ns and w[2] == name)
            selector = ",".join(f"{k}={v}" for k, v in labels.items())
            pods = [
                p
                for p in _pods(node, ns, selector)
                if "weft-sidecar" in [c["name"] for c in p["spec"].get("initContainers", [])]
            ]
            if not pods or not all(_ready(p) for p in pods):
                return False
        return True

    _wait("meshed pods Ready", meshed_ready, node, ("a", "b", "c"), 180)
    (web,) = [
        p
        for p in _pods(node, "a", "app=web")
        if "weft-sidecar" in [c["name"] for c in p["spec"].get("initContainers", [])]
    ]
    # A native sidecar: an init container that keeps running, Ready beside the app.
    sidecar = next(c for c in web["spec"]["initContainers"] if c["name"] == "weft-sidecar")
    assert sidecar.get("restartPolicy") == "Always"
    statuses = {s["name"]: s for s in web["status"]["initContainerStatuses"]}
    assert statuses["weft-sidecar"]["ready"] is True

    # web's own app calls api by its Service's name, as an app would: the pod's DNS answers the
    # ClusterIP, capture hands the connection to web's sidecar, which carries it over mTLS to an
    # api pod (found through the discovery Service's name) whose sidecar delivers it.
    # Ready pods are not yet every address DNS gives for them (the un-injected pods the rollout
    # replaces leave the discovery Service's EndpointSlice a moment later), nor is a Ready pod's
    # app always listening yet (no readiness probe): each call is retried for up to 60 s.
    netns = _netns_of(web["status"]["podIP"])
    answers = _call_until(netns, "api.b.svc.cluster.local:8080/hello", 200)
    answer = answers[-1]
    assert answer["status"] == 200, answers
    # The api pod's sidecar verified a/web's certificate and told the app who called.
    assert answer["response"]["caller"] == "spiffe://weft.local/ns/a/sa/web", answer
    assert answer["response"]["instance"] in {"v1", "v2"}, answer
    # a/web may not call c/ledger: refused, and never answered on the way there.
    answers = _call_until(netns, "ledger.c.svc.cluster.local:8080/", 403)
    assert answers[-1]["status"] == 403, answers
    assert all(a["status"] != 200 for a in answers), answers


def _call_until(netns: str, target: str, status: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Asks the demo app in a pod (on its loopback port 8080) to call `target` until the answer
    has `status` or `timeout` passes; every report, the last one last."""
    deadline = time.monotonic() + timeout
    answers: list[dict[str, Any]] = []
    while True:
        code, body = _curl_from(netns, f"http://127.0.0.1:8080/call/{target}")
        answers.append(json.loads(body) if code > 0 else {"status": code, "error": body})
        if answers[-1]["status"] == status or time.monotonic() > deadline:
            return answers
        time.sleep(1)


def _status(node: Node) -> dict[str, Any]:
    cm = node.cp.admin().get("ConfigMap", "weft-system", "weft-status")
    return dict(json.loads(cm["data"]["status.json"])) if cm else {}


def _web_netns(node: Node) -> str:
    (web,) = [
        p
        for p in _pods(node, "a", "app=web")
        if "weft-sidecar" in [c["name"] for c in p["spec"].get("initContainers", [])]
    ]
    return _netns_of(web["status"]["podIP"])


def test_a_broken_commit_is_refused_and_the_last_good_one_keeps_serving(
    node: Node, deployed: Deployed
) -> None:
    broken = deployed.files["a/services.yaml"].replace("  name: web", "  nmae: web", 1)
    sha = deployed.up.commit({"a/services.yaml": broken}, "a typo")

    def refused() -> bool:
        return bool(_status(node).get("lastAttemptedRevision") == f"main@sha1:{sha}")

    _wait("the broken revision attempted", refused, node, ("weft-system",), 90)
    status = _status(node)
    assert status["lastAppliedRevision"] == deployed.head, status
    assert "a/services.yaml:5:3" in json.dumps(status["errors"]), status
    # The mesh the last good revision made still carries a/web -> b/api.
    answers = _call_until(_web_netns(node), "api.b.svc.cluster.local:8080/hello", 200)
    assert answers[-1]["status"] == 200, answers
    # The fix is applied, so the module's later tests start from a good head.
    fixed = deployed.up.commit({"a/services.yaml": deployed.files["a/services.yaml"]}, "fix")
    deployed.head = f"main@sha1:{fixed}"
    _wait(
        "the fix applied",
        lambda: _status(node).get("lastAppliedRevision") == deployed.head,
        node,
        ("weft-system",),
        90,
    )


def test_a_pushed_policy_change_takes_effect_within_seconds(node: Node, deployed: Deployed) -> None:
    """b stops admitting a: the next look at the repository applies it, web's calls to api
    are refused from then on, and putting the policy back lets them through again."""
    netns = _web_netns(node)
    assert _call_until(netns, "api.b.svc.cluster.local:8080/hello", 200)[-1]["status"] == 200
    original = deployed.files["b/policies.yaml"]
    narrowed = original.replace("    - namespaces: [a, c]", "    - namespaces: [c]", 1)
    assert narrowed != original
    start = time.monotonic()
    deployed.up.commit({"b/policies.yaml": narrowed}, "b: only c may call api")
    answers = _call_until(netns, "api.b.svc.cluster.local:8080/hello", 403, timeout=90)
    elapsed = time.monotonic() - start
    assert answers[-1]["status"] == 403, answers
    # Bounded by _call_until's 90 s; deploy/ keeps `weft run`'s 15 s --poll, so most of this is
    # waiting for the next look at the repository. Printed, not asserted (no timed assertions).
    print(f"policy change effective after {elapsed:.1f} s")
    restored = deployed.up.commit({"b/policies.yaml": original}, "b: a may call api again")
    deployed.head = f"main@sha1:{restored}"
    assert _call_until(netns, "api.b.svc.cluster.local:8080/hello", 200, 90)[-1]["status"] == 200


def test_deleting_the_leading_pod_hands_over_without_reissuing(
    node: Node, deployed: Deployed
) -> None:
    """The Lease holder's pod is deleted: the other replica (or the Deployment's replacement)
    takes the Lease and converges on the same revision, issuing no certificate anew."""
    api = node.cp.admin()
    lease = api.get("Lease", "weft-system", "weft-reconciler")
    assert lease is not None
    leader = lease["spec"]["holderIdentity"]

    def secrets() -> dict[str, str]:
        return {
            f"{ns}/{s['metadata']['name']}": s["metadata"]["resourceVersion"]
            for ns in TEMPLATE_NAMESPACES
            for s in api.list("Secret", namespace=ns)
            if s["metadata"]["name"].startswith("weft-identity-")
        }

    before = secrets()
    assert before, "no identity Secrets to compare"
    api.request(
        "DELETE", f"/api/v1/namespaces/weft-system/pods/{leader}", body={"gracePeriodSeconds": 0}
    )

    def taken_over() -> bool:
        held = api.get("Lease", "weft-system", "weft-reconciler")
        holder = (held or {}).get("spec", {}).get("holderIdentity")
        pods = _pods(node, "weft-system", "app.kubernetes.io/name=weft-reconciler")
        names = {p["metadata"]["name"] for p in pods if _ready(p)}
        return bool(holder and holder != leader and holder in names and len(names) == 2)

    _wait("a new leader", taken_over, node, ("weft-system",), 120)
    # The new leader reconciles the same head (its first pass runs at once on taking the Lease).
    status = _status(node)
    assert status["lastAppliedRevision"] == deployed.head, status
    time.sleep(5)  # a pass that would re-issue writes within it; nothing is to be written
    assert secrets() == before
    answers = _call_until(_web_netns(node), "api.b.svc.cluster.local:8080/hello", 200)
    assert answers[-1]["status"] == 200, answers
