"""A real sidecar pair, as Istio's tools see it: metric labels and caller-side refusals.

a/web calls b/api through two `weft sidecar` processes over real mTLS; c/ledger refuses a with
an explicit deny policy. The scrape of each sidecar's /metrics is parsed as Prometheus text and
held against Istio's documented standard labels, with the values Istio would give; a refused
call names the policy (or the Mesh default) that decided, and the revision, as `weft reach`
does. With Prometheus installed, it scrapes both and answers a query of Istio's dashboards.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.compiler import reach
from tests import sidecars
from tests.conftest import load, write_repo
from tests.pki import CA

TD = "istio.local"
REVISION = "main@sha1:" + "a" * 40
NEXT = "main@sha1:" + "b" * 40
SERVICES = """\
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: a}
spec:
  ports: [{name: http, port: 8080}]
  workload: {name: web-deployment}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: api, namespace: b}
spec:
  ports: [{name: http, port: 8080}]
  workload: {podSelector: {app: api, version: v3}}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: ledger, namespace: c}
spec: {ports: [{name: http, port: 8080}]}
"""
POLICIES = """\
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: from-a, namespace: b}
spec: {from: [{namespaces: [a]}]}
---
apiVersion: weft.dev/v1alpha1
kind: AccessPolicy
metadata: {name: never-from-a, namespace: c}
spec: {action: deny, from: [{namespaces: [a]}]}
"""
INTENT = {
    "mesh.yaml": sidecars.mesh_yaml(TD, defaultPolicy="deny"),
    "services.yaml": SERVICES,
    "policies.yaml": POLICIES,
}

# Istio's standard labels of istio_requests_total and istio_request_duration_milliseconds, from
# https://istio.io/latest/docs/reference/config/metrics/ ("Labels"), canonical-service labels
# and cluster labels included.
ISTIO_STANDARD_LABELS = {
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
}
WEB_ID = f"spiffe://{TD}/ns/a/sa/web"
API_ID = f"spiffe://{TD}/ns/b/sa/api"

SAMPLE = re.compile(r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` in Prometheus text format, labels unescaped."""
    found = []
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.fullmatch(line)
        assert m is not None, f"not Prometheus text: {line!r}"
        if m["name"] != name:
            continue
        body = m["labels"] or ""
        labels = {k: re.sub(r"\\(.)", r"\1", v) for k, v in LABEL.findall(body)}
        assert ",".join(f'{k}="{v}"' for k, v in LABEL.findall(body)) == body, line
        found.append((labels, float(m["value"])))
    return found


class Pair:
    """web's and api's sidecars as processes, api's app behind api's, on loopback."""

    def __init__(self, root: Path) -> None:
        self.root, self.ca = root, CA.create()
        self.configs = sidecars.compiled(root / "intent", INTENT, REVISION)
        self.app = sidecars.EchoServer("api")

    def _agent(self, name: str, ns: str, config: dict[str, Any], listeners: dict[str, Any]) -> Any:
        files = self.root / name
        (files / "certs").mkdir(parents=True)
        who = sidecars.identity(self.ca, TD, ns, name)
        for file, data in (("tls.crt", who.chain), ("tls.key", who.key), ("ca.crt", who.bundle)):
            (files / "certs" / file).write_bytes(data)
        (files / "config.json").write_text(sidecars.to_json(config))
        return sidecars.AgentProcess(files / "config.json", files / "certs", listeners).start()

    def start(self) -> None:
        self.api = self._agent(
            "api",
            "b",
            self.configs[("b", "api")],
            {"inbound": {"http": "127.0.0.1:0"}, "app": {"http": self.app.addr}},
        )
        self.web = self._agent(
            "web", "a", self.web_config(self.configs[("a", "web")]), {"outboundHttp": "127.0.0.1:0"}
        )
        self.outbound = self.web.bound["outbound:http"]

    def web_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return sidecars.bind_endpoints(config, {"b/api": [self.api.bound["inbound:http"]]})

    def get(self, host: str, path: str = "/") -> tuple[int, str]:
        return sidecars.http_get(f"http://{self.outbound}{path}", host)

    def stop(self) -> None:
        self.web.stop()
        self.api.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path)
    with sidecars.serving(p.app):
        p.start()
        try:
            yield p
        finally:
            p.stop()


def test_both_reporters_carry_istios_standard_labels_with_istios_values(pair: Pair) -> None:
    for _ in range(3):
        assert pair.get("api.b:8080", "/hello")[0] == 200
    assert pair.get("api.b:8080", "/status/503")[0] == 503

    _, web_text = sidecars.http_get(f"{pair.web.admin}/metrics")
    _, api_text = sidecars.http_get(f"{pair.api.admin}/metrics")
    source = samples(web_text, "istio_requests_total")
    destination = samples(api_text, "istio_requests_total")
    assert sorted(v for _, v in source) == sorted(v for _, v in destination) == [1, 3]
    for labels, _ in source + destination:
        assert labels.keys() >= ISTIO_STANDARD_LABELS, ISTIO_STANDARD_LABELS - labels.keys()
    for name in ("_bucket", "_sum", "_count"):
        series = samples(web_text, "istio_request_duration_milliseconds" + name)
        series += samples(api_text, "istio_request_duration_milliseconds" + name)
        assert series
        for labels, _ in series:
            assert labels.keys() >= ISTIO_STANDARD_LABELS, (name, labels)

    both_ends = {
        "source_workload": "web-deployment",  # the intent's workload name
        "source_workload_namespace": "a",
        "source_principal": WEB_ID,
        "source_app": "web",  # the default pod selector, app=<service>
        "source_version": "unknown",
        "source_canonical_service": "web",
        "source_canonical_revision": "latest",
        "source_cluster": "Kubernetes",
        "destination_workload": "api",
        "destination_workload_namespace": "b",
        "destination_principal": API_ID,
        "destination_app": "api",
        "destination_version": "v3",
        "destination_service": "api.b.svc.cluster.local",
        "destination_service_name": "api",
        "destination_service_namespace": "b",
        "destination_canonical_service": "api",
        "destination_canonical_revision": "v3",
        "destination_cluster": "Kubernetes",
        "request_protocol": "http",
        "grpc_response_status": "",
        "response_flags": "-",
    }
    ok = {"response_code": "200", **both_ends}
    by_code = {labels["response_code"]: labels for labels, _ in source}
    assert {k: by_code["200"][k] for k in ok} == ok
    # On the caller's side the destination is the identity it pinned, not "unknown".
    assert by_code["200"]["reporter"] == "source"
    assert by_code["200"]["connection_security_policy"] == "unknown"
    assert by_code["503"]["destination_principal"] == API_ID
    by_code = {labels["response_code"]: labels for labels, _ in destination}
    assert {k: by_code["200"][k] for k in ok} == ok
    assert by_code["200"]["reporter"] == "destination"
    assert by_code["200"]["connection_security_policy"] == "mutual_tls"


def test_body_sizes_are_istios_byte_histograms_on_both_reporters(pair: Pair) -> None:
    """A 10,000-byte POST lands in `le="10000"` (not `le="1000"`) of istio_request_bytes on both
    sidecars; istio_response_bytes holds the body the caller received; both carry the labels of
    istio_requests_total."""
    req = urllib.request.Request(
        f"http://{pair.outbound}/upload", data=b"x" * 10_000, headers={"Host": "api.b:8080"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer = resp.read()
    assert json.loads(answer)["received"] == 10_000

    def scrape(agent: Any) -> str:
        return sidecars.http_get(f"{agent.admin}/metrics")[1]

    def sized(agent: Any) -> bool:
        return bool(samples(scrape(agent), "istio_request_bytes_count"))

    for agent, reporter in ((pair.web, "source"), (pair.api, "destination")):
        sidecars.wait_until(functools.partial(sized, agent))
        text = scrape(agent)
        [(requests_labels, _)] = samples(text, "istio_requests_total")
        for name, size in (("istio_request_bytes", 10_000), ("istio_response_bytes", len(answer))):
            [(labels, count)] = samples(text, name + "_count")
            assert (count, labels) == (1, requests_labels), name
            assert labels["reporter"] == reporter
            assert samples(text, name + "_sum") == [(labels, size)]
            buckets = {b["le"]: n for b, n in samples(text, name + "_bucket")}
            assert list(buckets) == [*(str(10**i) for i in range(8)), "+Inf"]
            for le, n in buckets.items():
                assert n == (le == "+Inf" or size <= int(le)), (name, le, n)
        assert {b["le"]: n for b, n in samples(text, "istio_request_bytes_bucket")}["1000"] == 0
        assert {b["le"]: n for b, n in samples(text, "istio_request_bytes_bucket")}["10000"] == 1


def test_a_call_a_deny_policy_refuses_names_it_and_the_revision(pair: Pair) -> None:
    code, body = pair.get("ledger.c:8080", "/entries")
    assert code == 403
    assert body == (
        'weft: a/web has no route to "ledger.c:8080": it is not a destination this workload '
        f"may call: denied by c/never-from-a (revision {REVISION})\n"
    )
    # Counted as Envoy counts a request it has no route for.
    _, text = sidecars.http_get(f"{pair.web.admin}/metrics")
    [(labels, count)] = [
        (labels, n)
        for labels, n in samples(text, "istio_requests_total")
        if labels["response_code"] == "403"
    ]
    assert count == 1
    assert labels.keys() >= ISTIO_STANDARD_LABELS
    assert {k: labels[k] for k in ("response_flags", "destination_service", "reporter")} == {
        "response_flags": "NR",
        "destination_service": "ledger.c",
        "reporter": "source",
    }
    # The very name `weft reach` prints for the pair.
    mesh = load(write_repo(pair.root / "reach", INTENT))
    [cell] = [
        c
        for c in reach.matrix(mesh, sources={"a/web"}, destinations={"c/ledger"})
        if c.port == "http"
    ]
    assert cell.verdict.policies == ("c/never-from-a",)


def test_a_call_newly_denied_names_the_mesh_default_and_the_new_revision(pair: Pair) -> None:
    assert pair.get("api.b:8080")[0] == 200
    denied = sidecars.compiled(
        pair.root / "next", {**INTENT, "policies.yaml": POLICIES.split("---\n")[1]}, NEXT
    )
    config = pair.web.config
    temp = config.with_name(".config.json.tmp")
    temp.write_text(sidecars.to_json(pair.web_config(denied[("a", "web")])))
    os.replace(temp, config)
    sidecars.wait_until(lambda: pair.get("api.b:8080")[0] == 403)

    assert pair.get("api.b:8080") == (
        403,
        'weft: a/web has no route to "api.b:8080": it is not a destination this workload may '
        f"call: no policy allows it, so Mesh/mesh defaultPolicy: deny decided (revision {NEXT})\n",
    )


# ---------------------------------------------------------------- a real Prometheus


def prometheus() -> str:
    """The Prometheus binary, installed from Debian when missing (as the harness does)."""
    found = shutil.which("prometheus")
    if found is None and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
            check=True,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        found = shutil.which("prometheus")
    assert found is not None, "Prometheus is needed: apt-get install prometheus"
    return found


# From Istio's published "Istio Workload Dashboard" (samples/addons/grafana, panel "Incoming
# Requests By Source And Response Code"), with its template variables filled in.
WORKLOAD_DASHBOARD_QUERY = (
    'round(sum(irate(istio_requests_total{connection_security_policy="mutual_tls", '
    'destination_workload_namespace=~"b", destination_workload=~"api", reporter=~"destination"}'
    "[1m])) by (source_workload, source_workload_namespace, response_code), 0.001)"
)
# Kiali's graph reads the source reporter's edges by workload.
KIALI_QUERY = (
    'sum(istio_requests_total{reporter="source",source_workload_namespace="a"}) by '
    "(source_workload,destination_workload,destination_service,destination_principal)"
)


def test_istios_dashboard_and_kiali_queries_answer_from_a_real_prometheus(
    pair: Pair, tmp_path: Path
) -> None:
    binary = prometheus()
    for _ in range(5):
        assert pair.get("api.b:8080", "/hello")[0] == 200
    targets = [pair.web.admin.removeprefix("http://"), pair.api.admin.removeprefix("http://")]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [{"job_name": "weft", "static_configs": [{"targets": targets}]}],
            }
        )
    )
    with socket.socket() as probe:  # a free loopback port, released for Prometheus
        probe.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{probe.getsockname()[1]}"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={listen}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def query(q: str) -> list[dict[str, Any]]:
            url = f"http://{listen}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            code, text = sidecars.http_get(url)
            assert code == 200, text
            result: list[dict[str, Any]] = json.loads(text)["data"]["result"]
            return result

        def rate_seen() -> bool:
            for _ in range(2):  # irate needs two scrapes apart with traffic in between
                pair.get("api.b:8080", "/hello")
            return bool(query(WORKLOAD_DASHBOARD_QUERY))

        sidecars.wait_until(lambda: proc.poll() is None and _ready(listen), timeout=30)
        sidecars.wait_until(rate_seen, timeout=30)
        [series] = query(WORKLOAD_DASHBOARD_QUERY)
        assert series["metric"] == {
            "source_workload": "web-deployment",
            "source_workload_namespace": "a",
            "response_code": "200",
        }
        [edge] = query(KIALI_QUERY)
        assert edge["metric"] == {
            "source_workload": "web-deployment",
            "destination_workload": "api",
            "destination_service": "api.b.svc.cluster.local",
            "destination_principal": API_ID,
        }
        assert float(edge["value"][1]) >= 5
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()


def _ready(listen: str) -> bool:
    try:
        return sidecars.http_get(f"http://{listen}/-/ready")[0] == 200
    except OSError:
        time.sleep(0.2)
        return False
