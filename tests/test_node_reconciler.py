"""deploy/ on the real node: the reconciler runs as pods of its Deployment, from the image
deploy/Dockerfile builds, follows a git daemon through the pod network, and reconciles; the
template's workloads, applied as an application team would, run with the sidecars it injects.

The API server and the git daemon listen on 127.0.0.1; the node reaches them from pods at the
kubernetes Service's ClusterIP and at the node's address (tests/node.py's `expose`). The apps
are `weft demo-app` from the same image; those the tests do not call are scaled to zero.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.targets.kubernetes.api import ApiError
from tests.kubeapps import TEMPLATE_NAMESPACES
from tests.node import RELEASED_IMAGE, Node
from tests.nodemesh import (
    PROBES,
    Deployed,
    deploy,
    live_pods,
    meshed_pod,
    netns_of,
    ready,
    wait,
    wait_meshed,
)


@pytest.fixture(scope="module")
def deployed(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    with deploy(node, tmp_path_factory.mktemp("mesh")) as d:
        yield d


def test_the_reconciler_runs_as_its_deployment_and_applies_the_repository(
    node: Node, deployed: Deployed
) -> None:
    api = node.cp.admin()
    pods = live_pods(node, "weft-system", "app.kubernetes.io/name=weft-reconciler")
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
    wait_meshed(node)
    (web,) = [
        p
        for p in live_pods(node, "a", "app=web")
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
    # replaces leave the discovery Service's EndpointSlice a moment later): each call is retried
    # for up to 60 s.
    netns = netns_of(web["status"]["podIP"])
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


def _bypass_connect(netns: str, ip: str, port: int) -> str:
    """How a TCP connection to ip:port goes from a process in a pod's network namespace that
    runs as the sidecar's UID, which capture lets by: a process that bypasses the sidecar."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "setpriv", "--reuid=1337", "--regid=1337",
         "--clear-groups", "timeout", "5", "/bin/bash", "-c", f"exec 3<>/dev/tcp/{ip}/{port}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    outcomes = {0: "connected", 124: "timed out"}
    return outcomes.get(done.returncode, f"failed ({done.returncode}): {done.stderr.strip()}")


def _drops(node: Node) -> float:
    """How many packets kube-network-policies has dropped, from its own metrics."""
    with urllib.request.urlopen(f"http://{node.netpol_metrics}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("kube_network_policies_packet_count{") and 'verdict="drop"' in line
    )


def test_network_policy_stops_a_pod_that_bypasses_its_sidecar(
    node: Node, deployed: Deployed
) -> None:
    """The NetworkPolicies Weft applies are enforced on the node (kube-network-policies): a
    process in a/web's pod that escapes capture cannot open a TCP connection to c/ledger's
    pod, which admits only namespace b, while the same bypass from b/api's pod connects; and
    a/web's own calls to b/api through its sidecar are answered."""
    wait_meshed(node)
    ledger = meshed_pod(node, "c", "ledger")["status"]["podIP"]
    web_ns = _web_netns(node)
    api_ns = netns_of(meshed_pod(node, "b", "api-v1")["status"]["podIP"])
    # Allowed at L3: the connection opens (the ledger's sidecar then wants mTLS).
    assert _bypass_connect(api_ns, ledger, 8080) == "connected"
    drops = _drops(node)
    # Not allowed: the agent drops the first packet, so the connection never opens.
    assert _bypass_connect(web_ns, ledger, 8080) == "timed out"
    assert _drops(node) > drops
    # And the mesh still works through it: a/web -> b/api over mTLS is answered.
    answers = _call_until(web_ns, "api.b.svc.cluster.local:8080/hello", 200)
    assert answers[-1]["status"] == 200, answers


def test_the_apps_probes_on_meshed_ports_are_run_by_the_sidecar(
    node: Node, deployed: Deployed
) -> None:
    """Each pod's HTTP, TCP and gRPC probes of meshed ports point at the sidecar's admin port (the
    admission policy rewrote them in the Pod; the Deployment still holds what its team wrote),
    and the real kubelet finds the apps Ready and alive through them."""
    api = node.cp.admin()
    wait(
        "meshed pods Ready through their probes",
        lambda: all(ready(meshed_pod(node, ns, name)) for ns, name in PROBES),
        node,
        ("a", "b", "c"),
        180,
    )
    for (ns, name), probes in PROBES.items():
        pod = meshed_pod(node, ns, name)
        app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
        template = api.get("Deployment", ns, name)
        assert template is not None
        written = template["spec"]["template"]["spec"]["containers"][0]
        for kind, original in probes.items():
            assert app[kind]["httpGet"] == {
                "path": f"/app-health/app/{kind}",
                "port": 15020,
                "scheme": "HTTP",
            }, (ns, name, app[kind])
            assert "tcpSocket" not in app[kind], app[kind]
            assert "grpc" not in app[kind], app[kind]
            assert app[kind]["periodSeconds"] == original.get("periodSeconds", 2)  # app's timing
            # The template is the team's: never rewritten, so their next apply finds it as is.
            # (The API server adds defaults, such as an httpGet's scheme.)
            for check, value in original.items():
                kept = written[kind][check]
                same = value.items() <= kept.items() if isinstance(value, dict) else kept == value
                assert same, (ns, name, kind, written[kind])
        statuses = {s["name"]: s for s in pod["status"]["containerStatuses"]}
        assert statuses["app"]["ready"] is True
        assert statuses["app"]["restartCount"] == 0, statuses["app"]  # liveness held too
    # The sidecar's answer is the app's own: an unknown probe is not found, not passed.
    web = meshed_pod(node, "a", "web")
    base = f"http://{web['status']['podIP']}:15020/app-health/app"
    for path, expected in (("readinessProbe", "200"), ("startupProbe", "404")):
        done = subprocess.run(
            ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/{path}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.stdout == expected, (path, done.stdout, done.stderr)


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
        for p in live_pods(node, "a", "app=web")
        if "weft-sidecar" in [c["name"] for c in p["spec"].get("initContainers", [])]
    ]
    return netns_of(web["status"]["podIP"])


def test_a_broken_commit_is_refused_and_the_last_good_one_keeps_serving(
    node: Node, deployed: Deployed
) -> None:
    broken = deployed.files["a/services.yaml"].replace("  name: web", "  nmae: web", 1)
    sha = deployed.up.commit({"a/services.yaml": broken}, "a typo")

    def refused() -> bool:
        return bool(_status(node).get("lastAttemptedRevision") == f"main@sha1:{sha}")

    wait("the broken revision attempted", refused, node, ("weft-system",), 90)
    status = _status(node)
    assert status["lastAppliedRevision"] == deployed.head, status
    assert "a/services.yaml:5:3" in json.dumps(status["errors"]), status
    # The mesh the last good revision made still carries a/web -> b/api.
    answers = _call_until(_web_netns(node), "api.b.svc.cluster.local:8080/hello", 200)
    assert answers[-1]["status"] == 200, answers
    # The fix is applied, so the module's later tests start from a good head.
    fixed = deployed.up.commit({"a/services.yaml": deployed.files["a/services.yaml"]}, "fix")
    deployed.head = f"main@sha1:{fixed}"
    wait(
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


# A one-shot app: it calls b/api by name, as an app would, and succeeds only if api's sidecar
# verified the caller as a/report. It retries for a while, as a batch job should: the
# NetworkPolicy agent learns a new pod's address from the API server, a moment after the pod
# starts (containerd 1.6 has no NRI to tell it sooner), and drops what it cannot place.
REPORT = """
import json, sys, time, urllib.request
for attempt in range(30):
    try:
        with urllib.request.urlopen("http://api.b.svc.cluster.local:8080/hello", timeout=10) as r:
            body = json.load(r)
        break
    except OSError as e:
        print(f"attempt {attempt}: {e}", flush=True)
        time.sleep(2)
else:
    sys.exit(2)
print(json.dumps(body))
sys.exit(0 if body.get("caller") == "spiffe://weft.local/ns/a/sa/report" else 1)
"""
REPORT_SERVICE = """
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata:
  name: report
  namespace: a
spec:
  ports:
    - name: http
      port: 8080
  workload:
    kind: Job
"""


def test_a_meshed_job_gets_its_sidecar_at_admission_and_completes(
    node: Node, deployed: Deployed
) -> None:
    """A Service whose workload is a Job: the reconciler writes its PodTemplate, the admission
    policy of deploy/40-jobs.yaml injects the Job's pod (its template is immutable, so there is
    nothing to patch), the app's call to b/api goes over mTLS as a/report, and the Job
    completes: the kubelet stops the native sidecar once the app has exited."""
    api = node.cp.admin()
    original = deployed.files["a/services.yaml"]
    deployed.up.commit({"a/services.yaml": original + REPORT_SERVICE}, "a: a report Job")
    template = "/api/v1/namespaces/a/podtemplates/report-weft-job"

    def written() -> bool:
        try:
            api.request("GET", template)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    wait("the report Job's PodTemplate written", written, node, ("a", "weft-system"), 90)
    api.request(
        "POST",
        "/api/v1/namespaces/a/serviceaccounts",
        body={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "report"}},
    )
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "report", "namespace": "a"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "report"}},
                "spec": {
                    "serviceAccountName": "report",
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "report",
                            "image": RELEASED_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": ["python3", "-c", REPORT],
                        }
                    ],
                },
            },
        },
    }
    api.request("POST", "/apis/batch/v1/namespaces/a/jobs", body=job)

    def finished() -> bool:
        status = api.request("GET", "/apis/batch/v1/namespaces/a/jobs/report").get("status", {})
        return any(
            c["type"] in ("Complete", "Failed") and c["status"] == "True"
            for c in status.get("conditions", [])
        )

    wait("the report Job finished", finished, node, ("a",), 180)
    status = api.request("GET", "/apis/batch/v1/namespaces/a/jobs/report")["status"]
    (pod,) = live_pods(node, "a", "app=report")
    assert status.get("succeeded") == 1, f"{status}\n{node.diagnose('a')}"
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "weft-sidecar")
    assert sidecar["restartPolicy"] == "Always"
    # The Job as its team wrote it: nothing of Weft's in its template.
    written_job = api.request("GET", "/apis/batch/v1/namespaces/a/jobs/report")
    assert "initContainers" not in written_job["spec"]["template"]["spec"]
    # Every container stopped: the app by itself, the sidecar by the kubelet.
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    api.request(
        "DELETE",
        "/apis/batch/v1/namespaces/a/jobs/report",
        query=[("propagationPolicy", "Background")],
    )
    restored = deployed.up.commit({"a/services.yaml": original}, "a: no report Job")
    deployed.head = f"main@sha1:{restored}"


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
        pods = live_pods(node, "weft-system", "app.kubernetes.io/name=weft-reconciler")
        names = {p["metadata"]["name"] for p in pods if ready(p)}
        return bool(holder and holder != leader and holder in names and len(names) == 2)

    wait("a new leader", taken_over, node, ("weft-system",), 120)
    # The new leader reconciles the same head (its first pass runs at once on taking the Lease).
    status = _status(node)
    assert status["lastAppliedRevision"] == deployed.head, status
    time.sleep(5)  # a pass that would re-issue writes within it; nothing is to be written
    assert secrets() == before
    answers = _call_until(_web_netns(node), "api.b.svc.cluster.local:8080/hello", 200)
    assert answers[-1]["status"] == 200, answers
