"""The edge, measured side by side in one run (issue 11): HTTPS ingress, and end-user JWT
verification in a sidecar. Weft against Envoy (and nginx at the ingress), one worker each.

**ingress** — the outside client speaks HTTPS (HTTP/1.1 keep-alive, the site's certificate
for `shop.example.com` from its own CA, verified by the client):

- `direct-tls`: nginx terminating that TLS and answering itself: the baseline every "added"
  figure is measured against (it holds the client's own TLS cost).
- `weft`: a `weft gateway` process as `weft up` runs one (`weft sidecar` with the compiled
  Gateway's config and `gateway` listeners; its SPIFFE identity edge/public), HTTPS in, a Route
  bound to the gateway, mTLS on to b/api's `weft sidecar` (admitting the gateway by an
  AccessPolicy `from: gateways`), then the backend.
- `envoy`: Envoy as the ingress gateway with the same certificate, mTLS upstream with the
  gateway's identity to an Envoy sidecar admitting only that SPIFFE ID, then the backend.
- `nginx`: nginx as a TLS-terminating reverse proxy straight to the backend: one hop fewer
  (nginx cannot check a SPIFFE ID), a floor rather than a peer.

**jwt** — the sidecar pair of bench/sidecar_pair.py (plaintext in at A, mTLS A -> B), with B
requiring a JWT (`Authorization: Bearer`), from an inline JWKS, one issuer and audience: Weft
with a RequestAuthentication, Envoy with `jwt_authn`. Keys are made and tokens signed at bench
time (tests/jwts.py), ES256 (P-256) and RS256 (2048-bit); every request carries the same
token. Each is run twice: with the cache of verified tokens both offer (Weft's
`tokenCacheSize`, on by default; Envoy's `jwt_cache_config`, off by default, set here to the
same 100), where a repeated token costs a lookup, and with it off (`-nocache`), where every
request is a signature check. `direct`, `weft` and `envoy` without JWT are in the same run, so
the cost of verification is the difference.

Latency is open loop at `--rate` (default 1,000/s), from each request's scheduled send time
(bench/sidecar_pair.py's generator, here over TLS for the ingress); the maximum is `wrk -t1
-c16` (closed loop, `https://` for the ingress), and at the ingress also over HTTP/2 from
outside: h2load, 4 connections x 8 streams, ALPN h2 (every peer offers it), `--no-h2` skips it.
Load generator and backend are pinned to CPU 0, every proxy to CPU 1. CPU per request is utime +
stime of each proxy process over the measured phase. The load average (`uptime`) and the CPU
every other process used (`other_cpu_percent`, % of one core) are recorded for every run: on a
shared machine a busy neighbour moves tails far more than medians or CPU per request, so read
CPU per request first when `other_cpu_percent` is high. A run over `--max-other` is repeated (up
to `--retries`) once the machine is quieter; the last attempt is kept either way and marked
`clean: false`.

    .venv/bin/python bench/edge.py [--parts ingress,jwt] [--scenarios a,b] [--runs 3] [--rate 1000]
        [--seconds 10] [--warmup 3] [--wrk-seconds 6] [--max-load 0.5] [--max-wait 120]
        [--max-other 10] [--retries 1] [--keep] [--out FILE] [--from-json FILE]

Raw results: bench/results/edge.json; the plot: docs/bench/edge.png (matplotlib, when
installed). `--from-json` re-summarises and re-plots a saved run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import http.client
import json
import os
import re
import selectors
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sidecar_pair as sp  # noqa: E402
from peers import envoy, envoy_edge, host, nginx, weft  # noqa: E402
from peers.pki import TRUST_DOMAIN  # noqa: E402

from reconciler import compiler, intent  # noqa: E402
from reconciler.identity import authority, workload  # noqa: E402
from reconciler.identity.spiffe import SpiffeId  # noqa: E402
from reconciler.targets.local.binding import bind_endpoints  # noqa: E402
from tests import jwts, sidecars  # noqa: E402
from tests.pki import CA  # noqa: E402

RESULTS = REPO / "bench" / "results" / "edge.json"
PLOT = REPO / "docs" / "bench" / "edge.png"
EDGE_HOST = "shop.example.com"
MESH_HOST = sp.HOST
BODY = sp.BODY
ISSUER = "https://idp.bench.local"
AUDIENCE = "orders"
GATEWAY = ("edge", "public")
GATEWAY_ID = f"spiffe://{TRUST_DOMAIN}/ns/edge/sa/public"
PARTS = {
    "ingress": ("direct-tls", "weft", "envoy", "nginx"),
    "jwt": (
        "direct",
        "weft",
        "envoy",
        *(
            f"{peer}-{alg}{cache}"
            for alg in ("es256", "rs256")
            for cache in ("", "-nocache")
            for peer in ("weft", "envoy")
        ),
    ),
}
# Verified tokens kept: Weft's default `tokenCacheSize`, and Envoy's `jwt_cache_size` set to
# the same (Envoy's cache is off unless configured). The `-nocache` rows turn both off.
TOKEN_CACHE = 100
BASELINE = {"ingress": "direct-tls", "jwt": "direct"}
TARGETS = {"ingress_max_rps": 1.2, "ingress_added_p99": 0.8, "jwt_cpu_per_request": 0.8}


# ---------------------------------------------------------------------------------------------
# Intent, certificates, keys


def gateway_intent(site: Path) -> str:
    """An HTTPS Gateway for the site, a Route binding b/api to it, and b's policy letting the
    outside in through it (as the template's ingress does for a/web)."""
    return textwrap.dedent(
        f"""\
        apiVersion: weft.dev/v1alpha1
        kind: Gateway
        metadata: {{name: public, namespace: edge}}
        spec:
          listeners:
            - name: https
              port: 8443
              hosts: [{EDGE_HOST}]
              tls: {{certificateFile: {site}/tls.crt, keyFile: {site}/tls.key}}
        ---
        apiVersion: weft.dev/v1alpha1
        kind: Route
        metadata: {{name: shop, namespace: b}}
        spec:
          host: api
          gateways: [edge/public]
          hostnames: [{EDGE_HOST}]
          rules: [{{backends: [{{}}]}}]
        ---
        apiVersion: weft.dev/v1alpha1
        kind: AccessPolicy
        metadata: {{name: from-outside, namespace: b}}
        spec: {{from: [{{gateways: [edge/public]}}]}}
        """
    )


def jwt_intent(jwk: dict[str, Any], cache_size: int) -> str:
    """b/api requires a token from ISSUER for AUDIENCE, its key given inline."""
    return textwrap.dedent(
        f"""\
        apiVersion: weft.dev/v1alpha1
        kind: RequestAuthentication
        metadata: {{name: users, namespace: b}}
        spec:
          issuers:
            - issuer: {ISSUER}
              audiences: [{AUDIENCE}]
              jwks: {json.dumps({"keys": [jwk]})}
              tokenCacheSize: {cache_size}
        """
    )


def compile_files(root: Path, files: dict[str, str]) -> compiler.DesiredState:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return compiler.compile(intent.load(intent.files.from_directory(root)))


def mesh_files(extra: str) -> dict[str, str]:
    services = f"{sidecars.WEB_AND_API}---\n{sidecars.ALLOW_A_TO_B}"
    return {
        "mesh.yaml": sidecars.mesh_yaml(TRUST_DOMAIN),
        "services.yaml": services + (f"---\n{extra}" if extra else ""),
    }


def write_certs(root: Path) -> dict[str, Path]:
    """One fresh Weft CA; workload certificates for a/web, b/api and the gateway edge/public;
    and the site's certificate for EDGE_HOST from a separate public-style CA (`site`)."""
    now = datetime.datetime.now(datetime.UTC)
    ca = authority.generate(TRUST_DOMAIN, now)
    dirs = {}
    for name, (ns, sa) in {"web": ("a", "web"), "api": ("b", "api"), "gateway": GATEWAY}.items():
        cert = ca.issuer().issue(SpiffeId(TRUST_DOMAIN, ns, sa), workload.DEFAULT_LIFETIME, now)
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "tls.crt").write_bytes(cert.chain_pem())
        (folder / "tls.key").write_bytes(cert.key.pem())
        (folder / "ca.crt").write_bytes(workload.pem([ca.root]))
        dirs[name] = folder
    site_ca = CA.create("bench public web CA")
    site = site_ca.issue_server(EDGE_HOST)
    folder = root / "site"
    folder.mkdir()
    (folder / "tls.crt").write_bytes(site.chain)
    (folder / "tls.key").write_bytes(site.key)
    (folder / "ca.crt").write_bytes(site_ca.pem)
    dirs["site"] = folder
    return dirs


# ---------------------------------------------------------------------------------------------
# The processes of one scenario


@dataclass
class Proc:
    """One proxy process to start: its side name, argv, and the admin URL that says ready."""

    side: str
    argv: list[str]
    ready: str | None


@dataclass
class Scenario:
    """What one scenario starts (none for a baseline), where the client connects, and how."""

    name: str
    build: Callable[[Path, int], list[Proc]]  # (work folder, listening port) -> processes
    tls: bool  # the client speaks HTTPS with the site's certificate
    headers: dict[str, str] = field(default_factory=dict)
    port: int = 0  # a baseline's fixed port (the backend); 0: a fresh one per start


class Running(sp.Pair):
    """sidecar_pair's Pair for processes built by a Scenario."""

    def __init__(self, ctx: sp.Context, scenario: Scenario) -> None:
        super().__init__(ctx)
        self.scenario, self.name = scenario, scenario.name

    def start(self) -> int:
        root = self.ctx.tmp / "run" / self.name
        root.mkdir(parents=True, exist_ok=True)
        port = self.scenario.port or host.free_port()
        procs = self.scenario.build(root, port)
        for p in procs:
            proc = self.ctx.processes.start(f"{self.name}-{p.side}", p.argv, self.ctx.proxy_cpu)
            self.procs.append(proc)
            self.pids[p.side] = proc.pid
        for p in procs:
            if p.ready is not None:
                host.wait_until(f"{self.name} {p.side}", _ready(p.ready), self.procs)
        return port


def _ready(url: str) -> Callable[[], bool]:
    return lambda: host.http_get(url)[0] == 200


# ---------------------------------------------------------------------------------------------
# Clients: one checked request, the open-loop generator (over TLS when asked), wrk


class Client:
    def __init__(self, site_ca: Path, scenario: Scenario) -> None:
        self.scenario = scenario
        self.ssl = ssl.create_default_context(cafile=str(site_ca)) if scenario.tls else None
        self.host = EDGE_HOST if scenario.tls else MESH_HOST
        self.headers = {"Host": self.host, **scenario.headers}

    def check(self, port: int) -> None:
        conn: http.client.HTTPConnection
        if self.ssl is not None:
            conn = _Https(port, self.ssl)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                conn.request("GET", "/", headers=self.headers)
                resp = conn.getresponse()
                body = resp.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                conn.close()
                time.sleep(0.1)
        conn.close()
        if resp.status != 200 or body != BODY:
            raise RuntimeError(f"{self.scenario.name}: GET / answered {resp.status} {body[:200]!r}")
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if token:  # evidence the proxy verifies: no token, and a forged signature, are refused
            head, claims, sig = token.split(".")
            forged = f"{head}.{claims}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
            for what, auth in (("no token", None), ("a forged signature", f"Bearer {forged}")):
                plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                headers = {"Host": self.host, **({"Authorization": auth} if auth else {})}
                plain.request("GET", "/", headers=headers)
                status = plain.getresponse().status
                plain.close()
                if status != 401:
                    raise RuntimeError(f"{self.scenario.name}: {what} answered {status}, not 401")

    def generator(self, port: int) -> sp.LoadGenerator:
        gen = sp.LoadGenerator(port) if self.ssl is None else TlsGenerator(port, self.ssl)
        lines = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        gen.request = f"GET / HTTP/1.1\r\n{lines}User-Agent: weft-bench\r\n\r\n".encode()
        return gen

    def h2load(self, port: int, seconds: float, cpu: int | None) -> dict[str, Any]:
        """The maximum over HTTP/2 (ALPN h2, SNI and :authority the site's name): h2load, 4
        connections x 8 concurrent streams, closed loop, as bench/h2.py runs it."""
        argv = ["h2load", "-D", f"{seconds:g}", "-c", "4", "-m", "8"]
        argv += [f"--connect-to=127.0.0.1:{port}", f"https://{EDGE_HOST}/"]
        done = subprocess.run(
            host.pinned(cpu, argv), capture_output=True, text=True, check=False, timeout=120
        )
        out = host.h2load_summary(done.stdout)
        if done.returncode != 0 or out.get("protocol") != "h2" or not out.get("succeeded"):
            raise RuntimeError(f"{self.scenario.name}: h2load: {done.stdout[-600:]}")
        return out

    def wrk(self, port: int, seconds: float, cpu: int | None) -> dict[str, Any]:
        scheme = "https" if self.ssl is not None else "http"
        argv = ["wrk", "-t1", "-c16", f"-d{seconds:g}s"]
        for k, v in self.headers.items():
            argv += ["-H", f"{k}: {v}"]
        out = host.command_output(host.pinned(cpu, [*argv, f"{scheme}://127.0.0.1:{port}/"]))
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        errors = re.search(r"Socket errors:.*", out)
        return {
            "requests_per_s": float(rps.group(1)) if rps else None,
            "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(0) if errors else None,
        }


class _Https(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1, verifying the certificate as the site's name (no DNS needed)."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        super().__init__(EDGE_HOST, port, context=context, timeout=5)
        self.tls = context

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=EDGE_HOST)


class TlsGenerator(sp.LoadGenerator):
    """The open-loop generator on HTTPS connections, verifying the site's certificate."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        super().__init__(port)
        self.context = context

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.opening += 1
        try:
            _, conn = await loop.create_connection(
                lambda: sp._Conn(self),
                "127.0.0.1",
                self.port,
                ssl=self.context,
                server_hostname=EDGE_HOST,
            )
            await conn.connected
            self.conns.add(conn)
            self.idle.append(conn)
        finally:
            self.opening -= 1
        self._pump()


# ---------------------------------------------------------------------------------------------
# One scenario, one round


def measure(
    ctx: sp.Context, scenario: Scenario, site_ca: Path, loop: asyncio.AbstractEventLoop
) -> dict[str, Any]:
    args = ctx.args
    pair = Running(ctx, scenario)
    client = Client(site_ca, scenario)
    result: dict[str, Any] = {"scenario": scenario.name, "loadavg_before": host.loadavg()}
    port = pair.start()
    try:
        client.check(port)
        time.sleep(args.settle)
        result["idle_kib"] = {side: host.memory_kib(pid) for side, pid in pair.pids.items()}
        gen = client.generator(port)
        loop.run_until_complete(gen.connect())
        warm = loop.run_until_complete(gen.run(args.rate, args.warmup))
        result["warmup"] = {"sent": warm.sent, "ok": warm.statuses[200], "lost": warm.lost}
        window = CpuWindow(pair.pids, ctx)
        phase = loop.run_until_complete(gen.run(args.rate, args.seconds))
        cpu = window.close(phase.statuses[200])
        gen.close()
        result.update(
            {
                "requests": {
                    "scheduled": phase.sent,
                    "ok": phase.statuses[200],
                    "other_status": {str(k): v for k, v in phase.statuses.items() if k != 200},
                    "lost": phase.lost,
                    "unanswered": phase.outstanding,
                },
                "achieved_rps": round(len(phase.latency) / args.seconds, 1),
                "latency_ms": sp.percentiles(phase.latency),
                "service_time_ms": sp.percentiles(phase.service),
                "send_lateness_ms": sp.percentiles(phase.lateness),
                **cpu,
                "loaded_kib": {side: host.memory_kib(pid) for side, pid in pair.pids.items()},
            }
        )
        if args.wrk:
            window = CpuWindow(pair.pids, ctx)
            found = client.wrk(port, args.wrk_seconds, ctx.client_cpu)
            done = int((found["requests_per_s"] or 0) * args.wrk_seconds)
            found.update(window.close(done))
            result["wrk_max"] = found
        if args.h2 and scenario.tls:
            window = CpuWindow(pair.pids, ctx)
            found = client.h2load(port, args.wrk_seconds, ctx.client_cpu)
            found.update(window.close(found["succeeded"]))
            result["h2_max"] = found
        result["loadavg_after"] = host.loadavg()
    finally:
        pair.stop()
    return result


class CpuWindow:
    """CPU seconds of the proxies, the backend, this process and everything else from now."""

    def __init__(self, pids: dict[str, int], ctx: sp.Context) -> None:
        self.pids = pids
        assert ctx.backend is not None
        self.backend = ctx.backend.pid
        self.t0 = time.monotonic()
        self.cpu = {side: host.cpu_seconds(pid) for side, pid in pids.items()}
        self.threads = {side: host.thread_cpu_seconds(pid) for side, pid in pids.items()}
        self.me, self.back, self.all = (
            host.cpu_seconds(),
            host.cpu_seconds(self.backend),
            host.all_cpu_seconds(),
        )

    def close(self, requests: int) -> dict[str, Any]:
        elapsed = time.monotonic() - self.t0
        n = max(requests, 1)
        cpu = {side: host.cpu_seconds(pid) - self.cpu[side] for side, pid in self.pids.items()}
        threads = {
            side: {
                name: round((v - self.threads[side].get(name, 0.0)) / n * 1e6, 1)
                for name, v in host.thread_cpu_seconds(pid).items()
            }
            for side, pid in self.pids.items()
        }
        me = host.cpu_seconds() - self.me
        back = host.cpu_seconds(self.backend) - self.back
        other = host.all_cpu_seconds() - self.all - me - back - sum(cpu.values())
        return {
            "cpu_s": cpu,
            "cpu_us_per_request": {side: v / n * 1e6 for side, v in cpu.items()},
            "thread_cpu_us_per_request": threads,
            "generator_cpu_us_per_request": me / n * 1e6,
            "backend_cpu_us_per_request": back / n * 1e6,
            # everything else on the machine (wrk, for the maximum, is in here), % of one core
            "other_cpu_percent": round(other / elapsed * 100, 1),
        }


# ---------------------------------------------------------------------------------------------
# The scenarios


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, tools: dict[str, Any]) -> None:
        self.args, self.tmp, self.tools = args, tmp, tools
        self.ctx = sp.Context(args, tmp, tools["envoy"])
        self.certs = write_certs(tmp / "edge-certs")
        self.ctx.certs = self.certs
        self.weft = REPO / ".venv/bin/weft"
        base = compile_files(tmp / "intent-edge", mesh_files(gateway_intent(self.certs["site"])))
        self.configs = {k: c.as_dict() for k, c in base.proxy_configs.items()}
        self.gateway = base.gateway_configs[GATEWAY].as_dict()
        sa = self.gateway["workload"]["serviceAccount"]
        if sa != GATEWAY[1]:
            raise RuntimeError(f"the gateway's service account is {sa!r}, not {GATEWAY[1]!r}")
        self.keys = {
            alg: jwts.SigningKey(f"bench-{alg.lower()}", alg) for alg in ("ES256", "RS256")
        }
        self.tokens = {
            alg: key.sign(jwts.claims(ISSUER, aud=AUDIENCE, exp=int(time.time()) + 86400))
            for alg, key in self.keys.items()
        }
        self.jwt_configs = {
            (alg, size): {
                k: c.as_dict()
                for k, c in compile_files(
                    tmp / f"intent-{alg}-{size}", mesh_files(jwt_intent(key.jwk, size))
                ).proxy_configs.items()
            }
            for alg, key in self.keys.items()
            for size in (TOKEN_CACHE, 0)
        }

    # -- helpers that build one proxy process

    def _weft(
        self, root: Path, side: str, config: dict[str, Any], listeners: dict[str, Any], certs: str
    ) -> Proc:
        admin = host.free_port()
        path = weft.write(root, side, config, listeners)
        argv = weft.sidecar_argv(self.weft, path, self.certs[certs], admin)
        return Proc(side, argv, f"http://127.0.0.1:{admin}/ready")

    def _envoy(self, root: Path, side: str, build: Callable[[int], dict[str, Any]]) -> Proc:
        admin = host.free_port()
        path = root / f"envoy-{side}.json"  # JSON is YAML: Envoy reads either
        path.write_text(json.dumps(build(admin), indent=2))
        return Proc(side, envoy.argv(self.tools["envoy"], path), f"http://127.0.0.1:{admin}/ready")

    def _nginx(self, root: Path, side: str, text: str) -> Proc:
        root.mkdir(parents=True, exist_ok=True)
        conf = root / "nginx.conf"
        conf.write_text(text)
        return Proc(side, [self.tools["nginx"], "-p", str(root), "-c", str(conf)], None)

    def _b(self, root: Path, configs: dict[tuple[str, str], dict[str, Any]], port: int) -> Proc:
        listeners = weft.inbound_listeners(port, self.ctx.backend_port)
        return self._weft(root, "B", configs[("b", "api")], listeners, "api")

    # -- ingress

    def ingress(self) -> list[Scenario]:
        app, site = self.ctx.backend_port, self.certs["site"]

        def direct_tls(root: Path, port: int) -> list[Proc]:
            return [self._nginx(root / "direct", "S", nginx_tls(root / "direct", port, None, site))]

        def weft_gw(root: Path, port: int) -> list[Proc]:
            b_port = host.free_port()
            config = bind_endpoints(self.gateway, {"b/api": [f"127.0.0.1:{b_port}"]})
            listeners = {"gateway": {"https": f"127.0.0.1:{port}"}}
            return [
                self._b(root, self.configs, b_port),
                self._weft(root, "G", config, listeners, "gateway"),
            ]

        def envoy_gw(root: Path, port: int) -> list[Proc]:
            b_port = host.free_port()
            mesh = self.certs["gateway"]
            api = self.certs["api"]
            return [
                self._envoy(
                    root, "B", lambda a: envoy_edge.sidecar_b(a, b_port, app, api, GATEWAY_ID)
                ),
                self._envoy(root, "G", lambda a: envoy_edge.ingress(a, port, b_port, site, mesh)),
            ]

        def nginx_gw(root: Path, port: int) -> list[Proc]:
            return [self._nginx(root / "nginx", "G", nginx_tls(root / "nginx", port, app, site))]

        return [
            Scenario("direct-tls", direct_tls, tls=True),
            Scenario("weft", weft_gw, tls=True),
            Scenario("envoy", envoy_gw, tls=True),
            Scenario("nginx", nginx_gw, tls=True),
        ]

    # -- jwt

    def jwt(self) -> list[Scenario]:
        app = self.ctx.backend_port
        web, api = self.certs["web"], self.certs["api"]

        def weft_pair(configs: dict[tuple[str, str], dict[str, Any]]) -> Callable[..., list[Proc]]:
            def build(root: Path, port: int) -> list[Proc]:
                b_port = host.free_port()
                return [
                    self._b(root, configs, b_port),
                    self._weft(
                        root,
                        "A",
                        weft.caller(configs, b_port),
                        weft.outbound_listeners(port),
                        "web",
                    ),
                ]

            return build

        def envoy_pair(alg: str | None, cache: int = 0) -> Callable[..., list[Proc]]:
            def b_config(a: int, b_port: int) -> dict[str, Any]:
                config = envoy.envoy_b(a, b_port, app, api)
                if alg is None:
                    return config
                jwks = {"keys": [self.keys[alg].jwk]}
                return envoy_edge.with_jwt(config, ISSUER, AUDIENCE, jwks, cache)

            def build(root: Path, port: int) -> list[Proc]:
                b_port = host.free_port()
                return [
                    self._envoy(root, "B", lambda a: b_config(a, b_port)),
                    self._envoy(root, "A", lambda a: envoy.envoy_a(a, port, b_port, web)),
                ]

            return build

        found = [
            Scenario("direct", lambda root, port: [], tls=False, port=app),
            Scenario("weft", weft_pair(self.configs), tls=False),
            Scenario("envoy", envoy_pair(None), tls=False),
        ]
        for alg in ("ES256", "RS256"):
            bearer = {"Authorization": f"Bearer {self.tokens[alg]}"}
            for size, suffix in ((TOKEN_CACHE, ""), (0, "-nocache")):
                name = f"{alg.lower()}{suffix}"
                weft_b = weft_pair(self.jwt_configs[(alg, size)])
                found += [
                    Scenario(f"weft-{name}", weft_b, False, bearer),
                    Scenario(f"envoy-{name}", envoy_pair(alg, size), False, bearer),
                ]
        return found


def nginx_tls(root: Path, port: int, app: int | None, site: Path) -> str:
    """nginx terminating HTTPS with the site's certificate: answering itself (`app` None, the
    baseline) or proxying to the app over keep-alive HTTP/1.1 (the reverse proxy peer)."""
    if app is None:
        body = f'location / {{ return 200 "{BODY.strip()}\\n"; }}'
        extra = "access_log off;"
    else:
        body = f"location / {{\n    proxy_pass http://up;\n{textwrap.dedent(nginx._PASS)}\n}}"
        extra = f"{nginx._log(root)}\n{nginx._upstream(app)}"
    server = textwrap.dedent(
        f"""\
        server {{
            listen 127.0.0.1:{port} ssl http2 backlog=4096;
            ssl_certificate {site}/tls.crt;
            ssl_certificate_key {site}/tls.key;
        """
    )
    server += textwrap.indent(body, "    ") + "\n}\n"
    return nginx._main(root, f"{extra}\n{server}")


# ---------------------------------------------------------------------------------------------
# Summary


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _added(base_rows: list[dict[str, Any]], r: dict[str, Any], q: str) -> float:
    """A run's latency quantile over the baseline's in the same round (or the first's)."""
    same = [b for b in base_rows if b["round"] == r["round"]]
    base = same[0] if same else base_rows[0]
    return float(r["latency_ms"][q] - base["latency_ms"][q])


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the clean runs of each part's scenarios (all of them if none was clean)."""
    out: dict[str, Any] = {}
    for part, names in PARTS.items():
        base_rows = [r for r in runs if r["part"] == part and r["scenario"] == BASELINE[part]]
        summary: dict[str, Any] = {}
        for name in names:
            rows = [r for r in runs if r["part"] == part and r["scenario"] == name]
            if not rows:
                continue
            rows = [r for r in rows if r["clean"]] or rows
            s: dict[str, Any] = {
                "runs": len(rows),
                "clean_runs": sum(r["clean"] for r in rows),
                "latency_ms": {
                    q: _stat([r["latency_ms"][q] for r in rows]) for q in ("p50", "p99", "max")
                },
                "other_cpu_percent": _stat([r["other_cpu_percent"] for r in rows]),
                "loadavg_1min": _stat([r["loadavg_before"][0] for r in rows]),
                "failed": sum(r["requests"]["scheduled"] - r["requests"]["ok"] for r in rows),
            }
            if base_rows and name != BASELINE[part]:
                s["added_ms"] = {
                    q: _stat([_added(base_rows, r, q) for r in rows]) for q in ("p50", "p99")
                }
            if rows[0]["cpu_us_per_request"]:
                s["cpu_us_per_request"] = {
                    side: _stat([r["cpu_us_per_request"][side] for r in rows])
                    for side in rows[0]["cpu_us_per_request"]
                }
                s["total_cpu_us_per_request"] = _stat(
                    [sum(r["cpu_us_per_request"].values()) for r in rows]
                )
            if all(r.get("h2_max", {}).get("req_per_s") for r in rows):
                s["h2_max_rps"] = _stat([r["h2_max"]["req_per_s"] for r in rows])
                if rows[0]["cpu_us_per_request"]:
                    s["h2_max_cpu_us_per_request"] = _stat(
                        [sum(r["h2_max"]["cpu_us_per_request"].values()) for r in rows]
                    )
            if all(r.get("wrk_max", {}).get("requests_per_s") for r in rows):
                s["max_rps"] = _stat([r["wrk_max"]["requests_per_s"] for r in rows])
                s["max_other_cpu_percent"] = _stat(
                    [r["wrk_max"]["other_cpu_percent"] for r in rows]
                )
                if rows[0]["cpu_us_per_request"]:  # batched under saturation: far less noisy
                    s["max_cpu_us_per_request"] = {
                        side: _stat([r["wrk_max"]["cpu_us_per_request"][side] for r in rows])
                        for side in rows[0]["cpu_us_per_request"]
                    }
            summary[name] = s
        if summary:
            out[part] = summary
    return out


def ratios(summary: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    ing = summary.get("ingress", {})
    if "weft" in ing and "envoy" in ing:
        w, e = ing["weft"], ing["envoy"]
        if "max_rps" in w and "max_rps" in e:
            r = w["max_rps"]["median"] / e["max_rps"]["median"]
            found["ingress_max_rps_weft_over_envoy"] = {
                "ratio": round(r, 2),
                "target": f">= {TARGETS['ingress_max_rps']}",
                "met": r >= TARGETS["ingress_max_rps"],
            }
        if "added_ms" in w and "added_ms" in e:
            we, ee = w["added_ms"]["p99"]["median"], e["added_ms"]["p99"]["median"]
            # a baseline's tail above a peer's (a busy machine) leaves no ratio to judge
            measurable = we > 0 and ee > 0
            found["ingress_added_p99_weft_over_envoy"] = {
                "weft_ms": round(we, 3),
                "envoy_ms": round(ee, 3),
                "ratio": round(we / ee, 2) if measurable else None,
                "target": f"<= {TARGETS['ingress_added_p99']}",
                "met": we / ee <= TARGETS["ingress_added_p99"] if measurable else None,
            }
        if "h2_max_rps" in w and "h2_max_rps" in e:
            r = w["h2_max_rps"]["median"] / e["h2_max_rps"]["median"]
            found["ingress_h2_max_rps_weft_over_envoy"] = {"ratio": round(r, 2)}
        found["ingress_cpu_per_request_weft_over_envoy"] = {
            "ratio": round(
                w["total_cpu_us_per_request"]["median"] / e["total_cpu_us_per_request"]["median"], 2
            )
        }
    jwt = summary.get("jwt", {})
    for variant in (f"{a}{c}" for a in ("es256", "rs256") for c in ("", "-nocache")):
        w, e = jwt.get(f"weft-{variant}"), jwt.get(f"envoy-{variant}")
        w0, e0 = jwt.get("weft"), jwt.get("envoy")
        if not (w and e and w0 and e0):
            continue
        alg = variant.replace("-", "_")  # as a key: "es256_nocache"
        wb, eb = w["cpu_us_per_request"]["B"]["median"], e["cpu_us_per_request"]["B"]["median"]
        wcost = wb - w0["cpu_us_per_request"]["B"]["median"]
        ecost = eb - e0["cpu_us_per_request"]["B"]["median"]
        found[f"jwt_{alg}_B_cpu_per_request_weft_over_envoy"] = {
            "weft_us": round(wb, 1),
            "envoy_us": round(eb, 1),
            "ratio": round(wb / eb, 2),
            "target": f"<= {TARGETS['jwt_cpu_per_request']}",
            "met": wb / eb <= TARGETS["jwt_cpu_per_request"],
        }
        found[f"jwt_{alg}_verification_cost_us"] = {
            "weft_us": round(wcost, 1),
            "envoy_us": round(ecost, 1),
            "ratio": round(wcost / ecost, 2) if ecost > 0 else None,
        }
        if "max_cpu_us_per_request" in w and "max_cpu_us_per_request" in e:
            at_max = {
                name: s["max_cpu_us_per_request"]["B"]["median"]
                for name, s in (("w", w), ("e", e), ("w0", w0), ("e0", e0))
            }
            found[f"jwt_{alg}_B_cpu_per_request_at_max_weft_over_envoy"] = {
                "weft_us": round(at_max["w"], 1),
                "envoy_us": round(at_max["e"], 1),
                "ratio": round(at_max["w"] / at_max["e"], 2),
                "verification_cost_weft_us": round(at_max["w"] - at_max["w0"], 1),
                "verification_cost_envoy_us": round(at_max["e"] - at_max["e0"], 1),
            }
    return found


def fmt(s: dict[str, float], digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}\u2013{s['max']:.{digits}f})"


def markdown(summary: dict[str, Any]) -> str:
    lines: list[str] = []
    for part, rows in summary.items():
        lines += [
            f"**{part}**",
            "",
            "| | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU µs/request (by process) "
            "| CPU µs/request total | max requests/s (wrk) | max h2 requests/s (h2load) "
            "| other CPU % | load |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for name, s in rows.items():
            lat, added = s["latency_ms"], s.get("added_ms")
            cpu = s.get("cpu_us_per_request", {})
            by = ", ".join(f"{k} {v['median']:.1f}" for k, v in cpu.items()) or "—"
            total = fmt(s["total_cpu_us_per_request"], 1) if cpu else "—"
            mx = fmt(s["max_rps"], 0) if "max_rps" in s else "—"
            h2 = fmt(s["h2_max_rps"], 0) if "h2_max_rps" in s else "—"
            lines.append(
                f"| {name} | {fmt(lat['p50'])} | {fmt(lat['p99'])} "
                f"| {fmt(added['p50']) if added else '—'} | {fmt(added['p99']) if added else '—'} "
                f"| {by} | {total} | {mx} | {h2} | {fmt(s['other_cpu_percent'], 0)} "
                f"| {s['loadavg_1min']['median']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Bars, median of the runs with min-max whiskers: the ingress maximum and CPU per request,
    and sidecar B's CPU per request with and without JWT."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    def bars(ax: Any, names: list[str], stats: list[dict[str, float]], title: str) -> None:
        ys = [s["median"] for s in stats]
        err = [[y - s["min"] for y, s in zip(ys, stats, strict=True)]]
        err.append([s["max"] - y for y, s in zip(ys, stats, strict=True)])
        ax.bar(names, ys, yerr=err, capsize=4, color="#4c72b0")
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
        ax.tick_params(axis="x", rotation=40)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")

    panels: list[tuple[list[str], list[dict[str, float]], str]] = []
    ing = {k: v for k, v in summary.get("ingress", {}).items() if k != "direct-tls"}
    if ing:
        names = [n for n in ing if "max_rps" in ing[n]]
        panels.append((names, [ing[n]["max_rps"] for n in names], "HTTPS ingress: max requests/s"))
        names = [n for n in ing if "h2_max_rps" in ing[n]]
        if names:
            panels.append(
                (names, [ing[n]["h2_max_rps"] for n in names], "HTTPS ingress: max h2 requests/s")
            )
        names = [n for n in ing if "total_cpu_us_per_request" in ing[n]]
        panels.append(
            (
                names,
                [ing[n]["total_cpu_us_per_request"] for n in names],
                "HTTPS ingress at 1,000/s: CPU µs/request (all proxies)",
            )
        )
    jwt = {k: v for k, v in summary.get("jwt", {}).items() if k != "direct"}
    if jwt:
        names = [n for n in jwt if "cpu_us_per_request" in jwt[n]]
        panels.append(
            (
                names,
                [jwt[n]["cpu_us_per_request"]["B"] for n in names],
                "Sidecar B at 1,000/s: CPU µs/request, JWT or none",
            )
        )
        names = [n for n in jwt if "max_rps" in jwt[n]]
        panels.append(
            (
                names,
                [jwt[n]["max_rps"] for n in names],
                "Sidecar pair with JWT at B: max requests/s",
            )
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.2), squeeze=False)
    for ax, (names, stats, title) in zip(axes[0], panels, strict=True):
        bars(ax, names, stats, title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------


def find_tools() -> dict[str, Any]:
    args = argparse.Namespace(scenarios=["envoy"], wrk=True)
    return sp.find_tools(args)


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    if keep:
        path = Path(tempfile.mkdtemp(prefix="weft-edge-"))
        print(f"   work files kept in {path}")
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="weft-edge-") as tmp:
            yield Path(tmp)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--parts", default="ingress,jwt", help="ingress,jwt")
    parser.add_argument(
        "--scenarios", default="", help="only these scenarios (comma-separated; default all)"
    )
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s (default 1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured phase length")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up at the same rate")
    parser.add_argument("--settle", type=float, default=1.0, help="idle seconds before load")
    parser.add_argument("--wrk-seconds", type=float, default=6.0)
    parser.add_argument("--no-wrk", dest="wrk", action="store_false", help="skip the maximum")
    parser.add_argument(
        "--no-h2", dest="h2", action="store_false", help="skip the ingress's HTTP/2 maximum"
    )
    parser.add_argument("--max-load", type=float, default=0.5, help="1-min load to wait for")
    parser.add_argument("--max-wait", type=float, default=120.0, help="seconds to wait for it")
    parser.add_argument(
        "--max-other",
        type=float,
        default=10.0,
        help="a run during which other processes used more CPU than this (%% of one core) is "
        "repeated once the machine is quieter (up to --retries), and marked unclean if kept",
    )
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--nice", type=int, default=-10, help="niceness when root")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep configs, certs and logs")
    parser.add_argument("--plot", type=Path, default=PLOT, help="where the PNG goes")
    parser.add_argument("--from-json", type=Path, help="re-summarise and re-plot a saved run")
    args = parser.parse_args()
    args.parts = [p for p in args.parts.split(",") if p]
    if set(args.parts) - set(PARTS):
        parser.error(f"unknown parts: {sorted(set(args.parts) - set(PARTS))}")
    args.envoy_access_log = True  # sidecar_pair's Context reads it: Weft always logs
    args.baseline = None  # and this: no second Weft build here
    return args


def report(result: dict[str, Any], plot_path: Path) -> None:
    print()
    print(markdown(result["summary"]))
    print(json.dumps(result["ratios"], indent=2))
    try:
        print(f"plot: {plot(result['summary'], plot_path)}")
    except ImportError:
        print(f"no plot: matplotlib missing ({REPO / '.venv/bin/pip'} install matplotlib)")


def main() -> int:
    args = parse_args()
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        saved["summary"] = summarise(saved["runs"])
        saved["ratios"] = ratios(saved["summary"])
        report(saved, args.plot)
        return 0
    tools = find_tools()
    found_versions = sp.versions(tools, None)
    if args.nice != os.getpriority(os.PRIO_PROCESS, 0) and os.geteuid() == 0:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())  # µs sleeps, not ms
    asyncio.set_event_loop(loop)
    sp.quiet_timers()
    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    quiet: dict[str, Any] = {}

    def save(complete: bool) -> dict[str, Any]:
        summary = summarise(runs)
        result = {
            "benchmark": "edge",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": host.machine(),
            "versions": found_versions,
            "settings": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k not in ("keep", "from_json")
            },
            "load": quiet,
            "complete": complete,
            "summary": summary,
            "ratios": ratios(summary),
            "runs": runs,
            "discarded_runs": discarded,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return result

    with workspace(args.keep) as tmp:
        bench = Bench(args, tmp, tools)
        ctx = bench.ctx
        if ctx.client_cpu is not None:
            os.sched_setaffinity(0, {ctx.client_cpu})
        root = tmp / "backend"
        conf = nginx.backend(root, ctx.backend_port, BODY, root)
        ctx.backend = ctx.processes.start(
            "backend", [tools["nginx"], "-p", str(root), "-c", str(conf)], ctx.client_cpu
        )
        site_ca = bench.certs["site"] / "ca.crt"
        try:
            host.wait_until(
                "backend",
                lambda: host.http_get(f"http://127.0.0.1:{ctx.backend_port}/")[0] == 200,
                [ctx.backend],
            )
            print(f"== waiting for 1-min load average < {args.max_load}", flush=True)
            quiet = host.wait_for_quiet(args.max_load, args.max_wait)
            print(f"   load {quiet['when_measuring_began']}, waited {quiet['waited_s']} s")
            for part in args.parts:
                scenarios: list[Scenario] = getattr(bench, part)()
                if args.scenarios:
                    scenarios = [x for x in scenarios if x.name in args.scenarios.split(",")]
                for n in range(args.runs):
                    k = n % len(scenarios)  # rotate the order: none always first or last
                    for sc in scenarios[k:] + scenarios[:k]:
                        for attempt in range(args.retries + 1):
                            print(f"== {part} round {n + 1}/{args.runs}: {sc.name}", flush=True)
                            r = measure(ctx, sc, site_ca, loop)
                            r.update(part=part, round=n, attempt=attempt)
                            r["clean"] = r["other_cpu_percent"] <= args.max_other
                            lat, mx = r["latency_ms"], r.get("wrk_max", {})
                            cpu = sum(r["cpu_us_per_request"].values())
                            print(
                                f"   p50 {lat['p50']:.3f} p99 {lat['p99']:.3f} ms, ok "
                                f"{r['requests']['ok']}/{r['requests']['scheduled']}, "
                                f"CPU {cpu:.1f} µs/req, max {mx.get('requests_per_s')}/s, "
                                f"other {r['other_cpu_percent']:.0f}%, load "
                                f"{r['loadavg_before'][0]:.2f}",
                                flush=True,
                            )
                            if r["clean"] or attempt == args.retries:
                                runs.append(r)
                                break
                            discarded.append(r)
                            host.wait_for_idle_cpu(args.max_other, args.max_wait)
                        save(False)
        finally:
            ctx.processes.stop()
            loop.close()
    result = save(True)
    report(result, args.plot)
    print(f"raw results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
