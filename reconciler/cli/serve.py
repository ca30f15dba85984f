"""`weft up` and `weft run`: the composition root of a running reconciler. Here a source, a
target, the loop, the metrics and webhook listeners and, on Kubernetes, leader election are
put together and run until Ctrl-C or SIGTERM; everything started is stopped on the way out.

Exit codes: 0 stopped on a signal; 1 the leader-election Lease was lost; 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler import gitsource, hostport, identity, localrepo, loop, sources, telemetry
from reconciler.cli import common, kubernetes
from reconciler.cli.common import SubParsers
from reconciler.targets import Target
from reconciler.targets.local import netns
from reconciler.targets.local.target import LocalTarget

TEMPLATE = Path(__file__).resolve().parents[2] / "mesh-repo-template"


def add_commands(sub: SubParsers) -> None:
    up = sub.add_parser("up", help="run the mesh on this machine, reconciled from a git repository")
    up.add_argument(
        "repo", nargs="?", help="git repository (default: one made from mesh-repo-template)"
    )
    up.add_argument("--ref", default="main", help="branch, tag or commit to follow")
    up.add_argument("--state-dir", help="default: $WEFT_STATE_DIR or ~/.local/state/weft")
    up.add_argument(
        "--poll", type=float, default=2.0, help="seconds between looks at the repository"
    )
    up.add_argument(
        "--metrics", metavar="ADDR", type=hostport.argument, help="serve Prometheus /metrics here"
    )
    up.add_argument(
        "--isolation",
        choices=["none", "netns"],
        default="none",
        help="netns (root): each workload in its own network namespace, its TCP captured by "
        "iptables, so apps need no proxy settings",
    )
    _add_trusted_keys(up)
    up.set_defaults(run=cmd_up)

    rn = sub.add_parser("run", help="reconcile a git repository onto a target until stopped")
    rn.add_argument("--repo", required=True, help="the intent repository: a URL, or a local path")
    rn.add_argument(
        "--webhook",
        metavar="ADDR",
        type=hostport.argument,
        help="serve POST /hook here (GitHub-style HMAC, secret in $WEFT_WEBHOOK_SECRET[_FILE])",
    )
    rn.add_argument("--ref", default="main")
    rn.add_argument("--target", default="local", choices=["local", "kubernetes"])
    rn.add_argument("--state-dir")
    rn.add_argument("--poll", type=float, default=15.0)
    rn.add_argument(
        "--metrics", metavar="ADDR", type=hostport.argument, help="serve Prometheus /metrics here"
    )
    _add_trusted_keys(rn)
    kubernetes.add_arguments(rn, election=True)
    rn.set_defaults(run=cmd_run)


def cmd_up(args: argparse.Namespace) -> int:
    if args.isolation == "netns":
        try:
            netns.check_tools()
        except netns.NetnsError as e:
            print(f"weft up: {e}", file=sys.stderr)
            return 2
    state = common.state_dir(args.state_dir)
    repo = Path(args.repo) if args.repo else state / "repo"
    if not args.repo and not repo.exists():
        if not TEMPLATE.is_dir():
            print(f"weft up: no repository given and no template at {TEMPLATE}", file=sys.stderr)
            return 2
        state.mkdir(parents=True, exist_ok=True)
        localrepo.init_from_template(TEMPLATE, repo)
        print(f"weft: created {repo} from mesh-repo-template", flush=True)
    try:
        keys = _trusted_keys(args)
    except gitsource.GitSourceError as e:
        print(f"weft up: {e}", file=sys.stderr)
        return 2
    return serve(
        localrepo.LocalRepoSource(repo, args.ref, keys),
        state,
        args.poll,
        _banner(repo, args.state_dir),
        metrics_addr=args.metrics,
        isolation=args.isolation,
    )


def _trusted_keys(args: argparse.Namespace) -> gitsource.signatures.TrustedKeys | None:
    """The keys every revision must be signed by (--trusted-keys, else $WEFT_TRUSTED_KEYS, a
    list of paths split by ':'); None when neither is set: signatures are then not checked."""
    paths = list(args.trusted_keys or [])
    if not paths and os.environ.get("WEFT_TRUSTED_KEYS"):
        paths = [p for p in os.environ["WEFT_TRUSTED_KEYS"].split(os.pathsep) if p]
    if not paths:
        return None
    keys = gitsource.signatures.TrustedKeys.load([Path(p) for p in paths])
    missing = gitsource.signatures.tools_missing(keys)
    if missing:
        raise gitsource.TrustedKeysError(
            f"verifying signatures needs {' and '.join(missing)} on PATH"
        )
    logging.getLogger("weft").info("revisions must be signed: %s", keys.describe())
    return keys


def _add_trusted_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trusted-keys",
        action="append",
        metavar="PATH",
        help="require every revision to be signed by one of these keys: armored OpenPGP public "
        "keys and/or an SSH allowed-signers file, or a directory of them (a mounted ConfigMap "
        "or Secret); repeatable; default $WEFT_TRUSTED_KEYS. Unsigned, unknown-key, "
        "expired-key and bad signatures are refused and the last good revision stays",
    )


def cmd_run(args: argparse.Namespace) -> int:
    state = common.state_dir(args.state_dir)
    try:
        keys = _trusted_keys(args)
        source = sources.open_source(args.repo, args.ref, state / "cache", keys)
    except (gitsource.GitSourceError, ValueError) as e:
        print(f"weft run: {e}", file=sys.stderr)
        return 2
    return serve(
        source,
        state,
        args.poll,
        None,
        metrics_addr=args.metrics,
        webhook_addr=args.webhook,
        kubernetes_args=args if args.target == "kubernetes" else None,
    )


def serve(
    source: loop.Source,
    state: Path,
    poll: float,
    banner: Callable[[LocalTarget], None] | None,
    *,
    metrics_addr: hostport.HostPort | None = None,
    webhook_addr: hostport.HostPort | None = None,
    isolation: str = "none",
    kubernetes_args: argparse.Namespace | None = None,
) -> int:
    """Reconcile `source` onto a target until Ctrl-C or SIGTERM; then stop everything started.
    The local target by default; with `kubernetes_args` (the `weft run` arguments), the
    cluster, once this process holds the leader-election Lease."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    provider = telemetry.configure()
    target: Target
    store: identity.Store
    resync: float | None = None
    if kubernetes_args is not None:
        api = kubernetes.connect(kubernetes_args)
        cluster = kubernetes.target(kubernetes_args, api)
        target, store, resync = cluster, cluster.store, kubernetes_args.resync
    else:
        local = LocalTarget(state, isolation=isolation)
        target, store = local, local.store
    rec = loop.Reconciler(
        source,
        target,
        state / "status.json",
        certificates=lambda now: identity.status.read(store, now),
    )
    if metrics_addr:
        metrics_server(metrics_addr, rec)
    stop, wake = threading.Event(), threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        wake.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    hook = None
    if webhook_addr:
        secret = gitsource.credentials.secret_from_env(os.environ, "WEFT_WEBHOOK_SECRET")
        if secret is None:
            print(
                "weft: --webhook needs WEFT_WEBHOOK_SECRET or WEFT_WEBHOOK_SECRET_FILE",
                file=sys.stderr,
            )
            target.close()
            return 2
        hook = gitsource.WebhookReceiver(secret, wake.set, *webhook_addr).start()
        logging.getLogger("weft").info("webhook listening on %s", hook.url)
    shown = False

    def applied(_: str) -> None:
        nonlocal shown
        if banner and isinstance(target, LocalTarget) and not shown:
            banner(target)
            shown = True

    lost = False
    try:
        with (
            kubernetes.leadership(kubernetes_args, api, stop)
            if kubernetes_args is not None
            else contextlib.nullcontext()
        ) as elector:
            if elector is None or elector.leading.is_set():
                rec.run(stop, wake, poll_seconds=poll, on_applied=applied, resync_seconds=resync)
            lost = elector is not None and elector.lost.is_set()
    finally:
        if hook is not None:
            hook.close()
        target.close()
        if provider is not None:
            provider.shutdown()
        print("weft: stopped every process it started", flush=True)
    if lost:
        print("weft: lost the leader-election Lease; exiting so a follower takes over",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def metrics_server(addr: hostport.HostPort, rec: loop.Reconciler) -> http.server.HTTPServer:
    """/metrics for Prometheus (reconcile metrics and certificate expiry) and /healthz for
    probes, on `addr`. Neither reads the target: expiry is what the loop last read, so a scrape
    or a probe costs nothing and still answers while the target is unreachable."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                body = b"ok\n"
            elif self.path == "/metrics":
                body = rec.metrics.render(_expiry_text(rec.status.certificates)).encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = hostport.http_server(addr, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _expiry_text(certificates: identity.status.Status | None) -> str:
    if certificates is None:
        return ""
    return identity.metrics.prometheus_text(identity.metrics.expiry_samples(certificates))


def _status_command(state_dir: str | None) -> str:
    """The `weft status` that reads what this process writes, to print exactly as it must be run."""
    return f"weft status --state-dir {shlex.quote(state_dir)}" if state_dir else "weft status"


def _banner(repo: Path, state_dir: str | None) -> Callable[[LocalTarget], None]:
    def show(target: LocalTarget) -> None:
        lines = ["", "weft: the mesh is running. Where everything listens:"]
        for ref, where in sorted(target.listening.items()):
            lines.append(f"  {ref}")
            lines += [f"    {name:<28} {addr}" for name, addr in where.items()]
        web = target.listening.get("a/web/default", {}).get("outbound (HTTP_PROXY)")
        if web:
            lines += [
                "",
                "Try (as a/web, through its sidecar):",
                f"  curl -x http://{web} http://api.b:8080/        # A -> B: allowed",
                f"  curl -x http://{web} http://ledger.c:8080/     # A -> C: denied",
            ]
        web_netns = target.listening.get("a/web/default", {}).get("netns")
        if web_netns:
            lines += [
                "",
                "Try (as a/web, in its network namespace, with no proxy settings):",
                f"  ip netns exec {web_netns} curl http://api.b:8080/     # A -> B: allowed",
                f"  ip netns exec {web_netns} curl http://ledger.c:8080/  # A -> C: denied",
            ]
        lines += [
            "",
            f"Change policy: edit {repo}, then `git -C {repo} commit -am '...'`;",
            "it is applied within seconds.",
            f"Status: {_status_command(state_dir)}    Stop: Ctrl-C",
            "",
        ]
        print("\n".join(lines), flush=True)

    return show
