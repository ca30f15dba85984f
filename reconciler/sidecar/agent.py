"""`weft sidecar`: the agent around fastpath.

It reads the ProxyConfig, certificates (`tls.crt`, `tls.key`, `ca.crt`, the layout of a
Kubernetes TLS Secret) and listener bindings from files; starts fastpath; reloads or rotates
when the files change (a refused config or certificate leaves the old one serving, and is
reported); fills in the JWT issuers' keys (`jwks`), refreshed so a rotated key arrives as a
reload; serves the admin port; and on SIGTERM stops accepting, lets in-flight requests
finish up to a deadline, and exits. The agent is never on a request path.

Changes are noticed through inotify (`watch`) as soon as a writer finishes, and by a poll every
`POLL_SECONDS` as well, for what inotify cannot see or where it is not available. Both end in
`Agent.poll` on the main thread (the watching thread only wakes it), which compares digests, so
a change seen twice is applied once and reloads never race the drain or the access log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from reconciler import _native, hostport
from reconciler.sidecar import admin, jwks, metrics, probes, watch

if TYPE_CHECKING:
    from reconciler.sidecar import otlp

log = logging.getLogger("weft.sidecar")

POLL_SECONDS = 1.0
# After a file is written in place, wait until the files have been quiet this long: a writer
# that puts tls.crt, tls.key and ca.crt in place one by one is then read once, not half-new
# (which would be refused and counted). A rename into place (a `..data` swap) is acted on at once.
SETTLE_SECONDS = 0.02
# Access logs are written this often. Each drain runs on the proxy's core, so it is kept small:
# at 0.2 s a drain at 3,300 requests/s was a burst of 660 lines that queued the requests behind
# it (the sidecar pair's p99 1.4-1.8 ms); at 0.02 s it is 66 lines and the p99 fell to 0.9-1.6
# ms, for about 1 % of a core more agent time (docs/benchmarks.md, issue 15).
ACCESS_LOG_SECONDS = 0.02
CERT_FILES = ("tls.crt", "tls.key", "ca.crt")


def _exports_spans(config: dict[str, Any]) -> bool:
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    named = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return bool(named or config.get("telemetry", {}).get("otlpEndpoint"))


def _edge_files(config: dict[str, Any]) -> list[bytes]:
    """What tells a gateway's certificate files changed (a rotated edge certificate), without
    reading the key: each file's inode, size and modification time."""
    marks = []
    for listener in config.get("gateway") or ():
        certs = listener.get("certificates") or ()
        files = [c.get(f) for c in certs for f in ("certificateFile", "keyFile")]
        if listener.get("clientCaFile"):
            files.append(listener["clientCaFile"])
        for name in files:
            try:
                st = os.stat(name)
            except (OSError, TypeError):
                marks.append(b"missing")
                continue
            marks.append(f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode())
    return marks


def _contents(*contents: bytes) -> tuple[bytes, ...]:
    """What a change is judged by: the contents themselves (a few kB of config and PEM; fastpath,
    in this same process, holds the key too). Not a hash: hashlib loads OpenSSL's libcrypto,
    about 3.5 MB of RSS in every sidecar."""
    return contents


@dataclasses.dataclass
class Counters:
    reloads: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"applied": 0, "rejected": 0}
    )
    rotations: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"applied": 0, "rejected": 0}
    )
    last_error: str | None = None


class Agent:
    def __init__(
        self,
        config: Path,
        certs: Path,
        listeners: Path,
        workers: int = 1,
        jwks_refresh: float = jwks.REFRESH_SECONDS,
    ) -> None:
        self.config_path, self.certs_dir, self.listeners_path = config, certs, listeners
        self.jwks = jwks.Cache(jwks_refresh)
        self.workers = workers
        self.proxy: _native.Proxy | None = None
        self.config: dict[str, Any] = {}
        self.counters = Counters()
        self.draining = threading.Event()
        self._config_seen: tuple[bytes, ...] = ()
        self._certs_seen: tuple[bytes, ...] = ()
        self._lock = threading.Lock()
        self.spans: otlp.SpanExport | None = None  # on when OTEL_EXPORTER_OTLP_ENDPOINT is set
        self.app_probes = probes.from_environment()  # the app's probes the kubelet asks us to run

    def _certs(self) -> tuple[bytes, bytes, bytes]:
        """The three files as one consistent set. Stores that publish Kubernetes-style (a
        `..data` symlink swapped atomically) are read through the resolved `..data` once, so a
        swap between reads can never pair a new certificate with an old key."""
        base = self.certs_dir
        if (base / "..data").is_symlink():
            base = (base / "..data").resolve()
        chain, key, bundle = (base / name for name in CERT_FILES)
        return chain.read_bytes(), key.read_bytes(), bundle.read_bytes()

    def _effective(self, text: str) -> str:
        """The config as fastpath gets it: the file, with the issuers' keys filled in. Text that
        is not JSON goes on as it is, for fastpath to refuse with its own message."""
        if (
            '"jwksUri"' not in text
            and '"jwksFile"' not in text
            and '"discovery"' not in text
            and not self.jwks.entries
        ):
            return text  # the common case, every poll: no parse
        try:
            config = json.loads(text)
        except ValueError:
            return text
        filled = self.jwks.effective(config)
        return text if filled is config else json.dumps(filled)

    def start(self) -> None:
        text = self._effective(self.config_path.read_text())
        chain, key, bundle = self._certs()
        self.proxy = _native.start(
            text, chain, key, bundle, self.listeners_path.read_text(), workers=self.workers
        )
        self.config = json.loads(text)
        self._config_seen = _contents(text.encode(), *_edge_files(self.config))
        self._certs_seen = _contents(chain, key, bundle)
        self._start_span_export()
        if self.spans is None:
            # Nothing drains spans: fastpath keeps none (sampling still propagates downstream),
            # rather than holding a ring of them that only grows the sidecar's memory.
            self.proxy.record_spans(False)
        log.info(
            "started",
            extra={
                "event": "started",
                "revision": self.proxy.revision(),
                "bound": self.proxy.bound(),
            },
        )

    def _start_span_export(self) -> None:
        """Export spans once the environment or the config in force names a collector: at
        start, or at the first reload whose Mesh gains an `otlpEndpoint`."""
        assert self.proxy is not None
        if self.spans is not None or not _exports_spans(self.config):
            return
        # OpenTelemetry costs a sidecar ~10 MB: load it only when spans go somewhere.
        from reconciler.sidecar import otlp  # noqa: PLC0415

        self.spans = otlp.from_environment(self.proxy.drain_spans, lambda: self.config)
        if self.spans is not None:
            self.proxy.record_spans(True)
            self.spans.start()
            log.info("exporting spans over OTLP", extra={"event": "span-export"})

    @property
    def ready(self) -> bool:
        return self.proxy is not None and not self.draining.is_set()

    @property
    def serving(self) -> bool:
        return self.proxy is not None

    def poll(self) -> None:
        """Reload or rotate if a file changed since the last look."""
        assert self.proxy is not None
        with self._lock:
            try:
                text = self._effective(self.config_path.read_text())
            except OSError as e:
                return self._rejected("reloads", f"cannot read {self.config_path}: {e}")
            edge: list[bytes] = []
            if '"gateway"' in text:  # only a gateway's config: no parse on every sidecar poll
                # Not JSON: fastpath refuses it below, with its own message.
                with contextlib.suppress(ValueError):
                    edge = _edge_files(json.loads(text))
            seen = _contents(text.encode(), *edge)
            if seen != self._config_seen:
                self._config_seen = seen
                try:
                    revision = self.proxy.reload(text)
                except _native.ConfigError as e:
                    return self._rejected("reloads", f"config refused, previous one stays: {e}")
                self.config = json.loads(text)
                self._start_span_export()
                self.counters.reloads["applied"] += 1
                log.info("config reloaded", extra={"event": "reloaded", "revision": revision})
            try:
                certs = self._certs()
            except OSError as e:
                return self._rejected("rotations", f"cannot read certificates: {e}")
            seen = _contents(*certs)
            if seen != self._certs_seen:
                self._certs_seen = seen
                try:
                    self.proxy.rotate(*certs)
                except _native.CertificateError as e:
                    return self._rejected(
                        "rotations", f"certificates refused, previous ones stay: {e}"
                    )
                self.counters.rotations["applied"] += 1
                log.info("certificates rotated", extra={"event": "rotated"})
        return None

    def write_access_log(self, out: IO[str]) -> None:
        """Access log entries fastpath queued since the last call, one JSON object a line."""
        if self.proxy is None:
            return
        lines = self.proxy.drain_access_log_lines()  # serialised by fastpath, GIL released
        if lines:
            out.write(lines)
            out.flush()

    def _rejected(self, kind: str, message: str) -> None:
        getattr(self.counters, kind)["rejected"] += 1
        self.counters.last_error = message
        log.error(message, extra={"event": f"{kind}-rejected"})

    def metrics(self) -> str:
        assert self.proxy is not None
        c = self.counters
        extra = [
            "# TYPE weft_sidecar_reloads_total counter",
            *(f'weft_sidecar_reloads_total{{result="{k}"}} {v}' for k, v in c.reloads.items()),
            "# TYPE weft_sidecar_rotations_total counter",
            *(f'weft_sidecar_rotations_total{{result="{k}"}} {v}' for k, v in c.rotations.items()),
            "# TYPE weft_sidecar_config_info gauge",
            f'weft_sidecar_config_info{{revision="{self.proxy.revision()}"}} 1',
            "# TYPE weft_sidecar_spans_exported_total counter",
            f"weft_sidecar_spans_exported_total {self.spans.exported if self.spans else 0}",
            "# TYPE weft_sidecar_span_export_failures_total counter",
            f"weft_sidecar_span_export_failures_total {self.spans.failed if self.spans else 0}",
            "# TYPE weft_sidecar_jwks_fetches_total counter",
            *(
                f'weft_sidecar_jwks_fetches_total{{source="{src}",result="{k}"}} {v}'
                for src, e in sorted(self.jwks.entries.items())
                for k, v in e.fetches.items()
            ),
            "# TYPE weft_sidecar_jwks_stale gauge",
            *(
                f'weft_sidecar_jwks_stale{{source="{src}"}} {int(e.stale)}'
                for src, e in sorted(self.jwks.entries.items())
            ),
        ]
        extra += metrics.clusters(self.proxy.clusters())
        return metrics.render(self.proxy.stats(), self.config, extra)

    def clusters(self) -> dict[str, Any]:
        assert self.proxy is not None
        report: dict[str, Any] = json.loads(self.proxy.clusters())
        return report

    def app_health(self, key: str) -> tuple[bool, str] | None:
        probe = self.app_probes.get(key)
        return None if probe is None else probes.run(probe)

    def config_dump(self) -> dict[str, Any]:
        assert self.proxy is not None
        return {
            "revision": self.proxy.revision(),
            "bound": self.proxy.bound(),
            "config": self.config,
            "reloads": self.counters.reloads,
            "rotations": self.counters.rotations,
            "lastError": self.counters.last_error,
            "jwks": self.jwks.status(),
        }

    def shutdown(self, drain_timeout: float) -> None:
        self.draining.set()
        if self.proxy is not None:
            log.info("draining", extra={"event": "draining", "timeout": drain_timeout})
            self.proxy.shutdown(drain_timeout)
        if self.spans is not None:  # after the drain, so the last requests' spans go out too
            self.spans.stop()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log pipelines ingest without parsing rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for field in ("event", "revision", "bound", "timeout"):
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        return json.dumps(entry)


def _follow(changes: watch.Watch, wake: threading.Event, stop: threading.Event) -> None:
    """Wake the main loop as soon as inotify reports a change, until `stop`."""
    while not stop.is_set():
        found = changes.changed(0.5)
        if found is not None:
            if found.in_place:
                changes.settle(SETTLE_SECONDS)
            wake.set()


def _watch(agent: Agent) -> watch.Watch | None:
    files = [agent.config_path, *(agent.certs_dir / name for name in CERT_FILES)]
    try:
        return watch.start(files)
    except watch.WatchError as e:
        log.warning(f"polling only: {e}", extra={"event": "watch-unavailable"})
        return None


def run(
    config: Path,
    certs: Path,
    listeners: Path,
    *,
    admin_addr: hostport.HostPort,
    workers: int,
    drain_timeout: float,
    poll_seconds: float = POLL_SECONDS,
    jwks_refresh: float = jwks.REFRESH_SECONDS,
) -> int:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    agent = Agent(config, certs, listeners, workers, jwks_refresh)
    stop = threading.Event()
    wake = threading.Event()  # a file changed, or `stop`: the main loop looks at once

    def on_signal(*_: object) -> None:
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    next_poll = time.monotonic() + poll_seconds
    server = admin.serve(admin_addr, agent)
    admin_bound = hostport.join(str(server.server_address[0]), server.server_port)
    log.info("admin listening", extra={"event": "admin", "bound": {"admin": admin_bound}})
    # Watch before the first read, so no change can fall between the two.
    changes = _watch(agent)
    try:
        agent.start()
    except (OSError, ValueError) as e:
        log.error(f"cannot start: {e}", extra={"event": "start-failed"})
        server.shutdown()
        if changes is not None:
            changes.close()
        return 1
    follower = None
    if changes is not None:
        follower = threading.Thread(target=_follow, args=(changes, wake, stop), daemon=True)
        follower.start()
    while True:
        changed = wake.wait(ACCESS_LOG_SECONDS)
        wake.clear()
        if stop.is_set():
            break
        agent.write_access_log(sys.stdout)
        if changed or time.monotonic() >= next_poll:
            agent.poll()
            next_poll = time.monotonic() + poll_seconds
    agent.shutdown(drain_timeout)
    if changes is not None and follower is not None:
        follower.join()  # within half a second of `stop`; the drain has not waited for it
        changes.close()
    agent.write_access_log(sys.stdout)
    server.shutdown()
    log.info("stopped", extra={"event": "stopped"})
    return 0
