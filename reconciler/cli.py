"""`weft`: the command line. Thin: parse arguments, call intent and compiler, print, exit.

Exit codes: 0 success, 1 the intent has errors (or warnings with --strict), 2 bad usage.
`weft ca`: 1 when a CA or a rollover is refused, and from `status` when anything has expired.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reconciler import (
    __version__,
    compiler,
    gitsource,
    identity,
    intent,
    kubecli,
    localrepo,
    loop,
    sources,
    status,
    telemetry,
)
from reconciler.compiler import reach
from reconciler.identity.authority import Authority
from reconciler.sidecar import command as sidecar_command
from reconciler.targets import Target
from reconciler.targets.local import netns
from reconciler.targets.local.target import LocalTarget


def _snapshot(args: argparse.Namespace) -> intent.files.Snapshot:
    path = Path(args.path)
    if args.ref:
        return intent.files.from_git(path, args.ref)
    return intent.files.from_directory(path)


def _print_diagnostics(
    diagnostics: Sequence[intent.Diagnostic], root: str, files: Sequence[str] = ()
) -> None:
    for d in diagnostics:
        print(_rooted(d, root, files), file=sys.stderr)


def _rooted(d: intent.Diagnostic, root: str, files: Sequence[str] = ()) -> str:
    """Diagnostics name repository-relative files; print them relative to where the user is.

    Positions inside the message ("first defined at mesh.yaml:2:1") are rooted the same way, so
    every path on the line can be opened from the same place."""
    if root in (".", ""):
        return str(d)
    prefix = root.rstrip("/") + "/"
    message = d.message
    if files:
        names = "|".join(re.escape(f) for f in sorted(files, key=len, reverse=True))
        message = re.sub(rf"(?<![\w./-])({names})(?=:\d+:\d+)", lambda m: prefix + m[1], message)
    position = d.position
    if not position.file.startswith("<"):
        position = dataclasses.replace(position, file=prefix + position.file)
    return str(dataclasses.replace(d, position=position, message=message))


def _load(args: argparse.Namespace) -> intent.Intent | None:
    try:
        snapshot = _snapshot(args)
        mesh, diagnostics = intent.check(snapshot)
    except intent.IntentError as e:
        _print_diagnostics(e.diagnostics, ".")
        return None
    _print_diagnostics(diagnostics, args.path, [f.path for f in snapshot.files])
    return mesh


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        snapshot = _snapshot(args)
        mesh, diagnostics = intent.check(snapshot)
    except intent.IntentError as e:
        _print_diagnostics(e.diagnostics, ".")
        return 1
    root = args.path
    if args.json:
        print(
            json.dumps(
                {"revision": snapshot.revision, "diagnostics": [d.as_json() for d in diagnostics]},
                indent=2,
            )
        )
    else:
        _print_diagnostics(diagnostics, root, [f.path for f in snapshot.files])
    errors = sum(d.severity is intent.Severity.ERROR for d in diagnostics)
    warnings = len(diagnostics) - errors
    failed = mesh is None or (args.strict and warnings > 0)
    if not args.json:
        if mesh is not None:
            print(
                f"{snapshot.revision}: {len(snapshot.files)} files, {len(mesh.services)} services, "
                f"{len(mesh.policies)} policies, {len(mesh.routes)} routes, "
                f"{len(mesh.externals)} external services: "
                f"{'valid' if not failed else 'warnings refused (--strict)'}"
                f"{f' with {warnings} warning(s)' if warnings and not failed else ''}"
            )
        else:
            print(f"{snapshot.revision}: {errors} error(s), {warnings} warning(s)", file=sys.stderr)
    return 1 if failed else 0


def cmd_compile(args: argparse.Namespace) -> int:
    mesh = _load(args)
    if mesh is None:
        return 1
    desired = compiler.compile(mesh)
    out = Path(args.out)
    try:
        compiler.write(desired, out)
    except FileExistsError as e:
        print(f"weft compile: {e}", file=sys.stderr)
        return 2
    print(
        f"{mesh.revision}: {len(desired.proxy_configs)} ProxyConfigs, "
        f"{len(desired.identities)} identities, {len(desired.network_policies)} NetworkPolicies, "
        f"{len(desired.discovery_services)} discovery Services -> {out}"
    )
    return 0


def cmd_reach(args: argparse.Namespace) -> int:
    mesh = _load(args)
    if mesh is None:
        return 1
    cells = reach.matrix(mesh, sources=set(args.source or ()), destinations=set(args.dest or ()))
    print(reach.to_json(mesh, cells) if args.json else reach.to_table(mesh, cells), end="")
    return 0


TEMPLATE = Path(__file__).resolve().parent.parent / "mesh-repo-template"


def _metrics_server(addr: str, rec: loop.Reconciler) -> None:
    """/metrics for Prometheus (reconcile metrics and certificate expiry) and /healthz for
    probes, on `addr`. Neither reads the target: expiry is what the loop last read, so a scrape
    or a probe costs nothing and still answers while the target is unreachable."""
    import http.server  # noqa: PLC0415
    import threading  # noqa: PLC0415

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

    host, _, port = addr.rpartition(":")
    server = http.server.ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()


def _expiry_text(certificates: identity.status.Status | None) -> str:
    if certificates is None:
        return ""
    return identity.metrics.prometheus_text(identity.metrics.expiry_samples(certificates))


def _serve(
    source: Any,
    state: Path,
    poll: float,
    banner: Callable[[LocalTarget], None] | None,
    *,
    metrics_addr: str | None = None,
    webhook_addr: str | None = None,
    isolation: str = "none",
    kubernetes: argparse.Namespace | None = None,
) -> int:
    """Reconcile `source` onto a target until Ctrl-C or SIGTERM; then stop everything started.
    The local target by default; with `kubernetes` (the `weft run` arguments), the cluster, once
    this process holds the leader-election Lease."""
    import contextlib  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    provider = telemetry.configure()
    target: Target
    store: identity.Store
    resync: float | None = None
    if kubernetes is not None:
        api = kubecli.connect(kubernetes)
        cluster = kubecli.target(kubernetes, api)
        target, store, resync = cluster, cluster.store, kubernetes.resync
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
        _metrics_server(metrics_addr, rec)
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
        host, _, port = webhook_addr.rpartition(":")
        hook = gitsource.WebhookReceiver(secret, wake.set, host or "127.0.0.1", int(port)).start()
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
            kubecli.leadership(kubernetes, api, stop)
            if kubernetes is not None
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


def cmd_up(args: argparse.Namespace) -> int:
    if args.isolation == "netns":
        try:
            netns.check_tools()
        except netns.NetnsError as e:
            print(f"weft up: {e}", file=sys.stderr)
            return 2
    state = _state_dir(args.state_dir)
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
    return _serve(
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
    state = _state_dir(args.state_dir)
    try:
        keys = _trusted_keys(args)
        source = sources.open_source(args.repo, args.ref, state / "cache", keys)
    except (gitsource.GitSourceError, ValueError) as e:
        print(f"weft run: {e}", file=sys.stderr)
        return 2
    return _serve(
        source,
        state,
        args.poll,
        None,
        metrics_addr=args.metrics,
        webhook_addr=args.webhook,
        kubernetes=args if args.target == "kubernetes" else None,
    )


def cmd_status(args: argparse.Namespace) -> int:
    state = _state_dir(args.state_dir)
    current = status.read(state / "status.json")
    if current is None:
        # No state is not a healthy mesh: exit 1, and say where we looked, since the usual cause
        # is a `weft up --state-dir` whose directory was not passed here.
        print(
            f"weft status: no reconcile status in {state} (no status.json): nothing has been "
            "reconciled there yet; give the --state-dir that `weft up` or `weft run` was given",
            file=sys.stderr,
        )
        return 1
    if current.certificates is not None:
        # Warnings as of now, not as of the reconciler's last look: if it stopped, its
        # certificates are still running out.
        current.assess_certificates(current.certificates, identity.clock.system())
    if args.json:
        print(json.dumps(current.as_json(), indent=2))
    else:
        print(status.render(current), end="")
    stalled = current.conditions.get("Stalled")
    return 1 if (stalled and stalled.status) or current.certificates_expired() else 0


def cmd_demo_app(_: argparse.Namespace) -> int:
    from reconciler import demo_app  # noqa: PLC0415

    return demo_app.main()


def cmd_version(_: argparse.Namespace) -> int:
    from reconciler import _native  # noqa: PLC0415  # only this command needs the extension loaded

    print(f"weft {__version__} (fastpath {_native.version()})")
    return 0


# ---------------------------------------------------------------- weft ca: workload identity


def _state_dir(value: str | None) -> Path:
    """--state-dir, else $WEFT_STATE_DIR, else $XDG_STATE_HOME/weft (~/.local/state/weft)."""
    if value:
        return Path(value)
    if os.environ.get("WEFT_STATE_DIR"):
        return Path(os.environ["WEFT_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "weft"


def _duration(value: str) -> datetime.timedelta:
    if value in ("0", "0s"):
        return datetime.timedelta(0)
    try:
        return datetime.timedelta(milliseconds=intent.model.parse_duration(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _from_pem(args: argparse.Namespace) -> tuple[Path, Path] | None:
    return (Path(args.from_pem[0]), Path(args.from_pem[1])) if args.from_pem else None


def _reporting(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Identity errors are the user's to fix: print the message (never key material), exit 1."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except identity.IdentityError as e:
            print(f"weft ca {args.ca_command}: {e}", file=sys.stderr)
            return 1

    return wrapped


def cmd_ca_init(args: argparse.Namespace) -> int:
    now = identity.clock.system()
    store = _identity_store(args)
    ca_id = identity.ca.init(
        store, args.trust_domain, now, from_pem=_from_pem(args), provided=_provided(args, now)
    )
    print(f"CA {ca_id} for trust domain {args.trust_domain} in {store.location}")
    return 0


def cmd_ca_rotate(args: argparse.Namespace) -> int:
    now = identity.clock.system()
    store = _identity_store(args)
    state = identity.ca.rotate(
        store, now, from_pem=_from_pem(args), provided=_provided(args, now), grace=_grace(args)
    )
    incoming = state.incoming
    assert incoming is not None
    print(
        f"CA {incoming.ca_id} is trusted now beside CA {state.active.ca_id}; it issues from "
        f"{identity.clock.timestamp(incoming.issues_from)}. `weft ca issue` then moves every "
        "identity to it, and retires the old CA once no live certificate chains to it."
    )
    return 0


def cmd_ca_issue(args: argparse.Namespace) -> int:
    mesh = _load(args)
    if mesh is None:
        return 1
    store = _identity_store(args)
    report = identity.ensure(
        store,
        compiler.identities.required(mesh),
        trust_domain=mesh.spec.trust_domain,
        lifetime=datetime.timedelta(milliseconds=mesh.spec.certificate_lifetime),
        now=identity.clock.system(),
    )
    if report.generated_ca:
        print(f"generated CA {report.generated_ca} for trust domain {mesh.spec.trust_domain}")
    for change in report.changes:
        print(change)
    for decision in report.issued:
        print(f"issued {decision.identity.spiffe_id} ({decision.reason})")
    counts = [f"{len(report.issued)} issued", f"{report.reused} reused"]
    if report.kept:
        counts.append(f"{len(report.kept)} no longer in the mesh kept until they expire")
    if report.removed:
        counts.append(f"{len(report.removed)} expired and removed")
    print(f"{mesh.revision}: {', '.join(counts)} -> {store.location}")
    return 0


def cmd_ca_status(args: argparse.Namespace) -> int:
    now = identity.clock.system()
    status = identity.status.read(_identity_store(args), now)
    if args.json:
        print(json.dumps(identity.status.as_json(status, now, args.warn_before), indent=2))
    elif args.metrics:
        print(identity.metrics.prometheus_text(identity.metrics.expiry_samples(status)), end="")
    else:
        print(identity.status.render(status, now, args.warn_before), end="")
    return 1 if identity.status.expired(status, now) else 0


def _provided(args: argparse.Namespace, now: datetime.datetime) -> Authority | None:
    """The CA in `--from-secret`, read from the cluster and checked; None without the flag."""
    ref = getattr(args, "from_secret", None)
    if ref is None:
        return None
    if not args.kubeconfig:
        raise identity.RefusedCAError(
            f"Secret {ref[0]}/{ref[1]}", ["--from-secret needs --kubeconfig"]
        )
    return kubecli.identity_store(args).provided_ca(ref[0], ref[1], now)


# A kubelet refreshes a mounted Secret up to its sync period (a minute) plus its cache's TTL
# after the Secret changes: every pod must hold the new bundle before the new CA issues.
CLUSTER_GRACE = datetime.timedelta(minutes=5)


def _grace(args: argparse.Namespace) -> datetime.timedelta:
    if args.grace is not None:
        return args.grace  # type: ignore[no-any-return]
    return CLUSTER_GRACE if args.kubeconfig else identity.rollover.DEFAULT_GRACE


def _identity_store(args: argparse.Namespace) -> identity.Store:
    """The state directory's files; with --kubeconfig, the cluster's Secrets (the store the
    Kubernetes target issues into, so a rotation started here is carried on by the reconciler)."""
    if getattr(args, "kubeconfig", None):
        return kubecli.identity_store(args)
    return identity.FileStore(_state_dir(args.state_dir))


def _ca_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = sub.add_parser("ca", help="the mesh CA and workload certificates").add_subparsers(
        dest="ca_command", required=True
    )

    def ca_command(name: str, help_text: str) -> argparse.ArgumentParser:
        c = ca.add_parser(name, help=help_text)
        c.add_argument(
            "--state-dir",
            help="where identity is kept (default: $WEFT_STATE_DIR or ~/.local/state/weft)",
        )
        c.add_argument(
            "--kubeconfig",
            help="work on a cluster's identity Secrets instead of a state directory",
        )
        c.add_argument("--context", help="kubeconfig context")
        c.add_argument(
            "--system-namespace", default="weft-system", help="where the cluster's CA lives"
        )
        return c

    def from_pem(c: argparse.ArgumentParser, help_text: str) -> None:
        source = c.add_mutually_exclusive_group()
        source.add_argument("--from-pem", nargs=2, metavar=("CERT", "KEY"), help=help_text)
        source.add_argument(
            "--from-secret",
            metavar="NAMESPACE/NAME",
            type=kubecli.secret_ref,
            help="the same, from a kubernetes.io/tls Secret (tls.crt, tls.key); needs --kubeconfig",
        )

    i = ca_command("init", "create the mesh CA: generated, or your own root or intermediate")
    i.add_argument("--trust-domain", default="cluster.local", help="default: cluster.local")
    from_pem(i, "use this CA (its chain up to the root, then its key) instead of generating one")
    i.set_defaults(run=_reporting(cmd_ca_init))

    r = ca_command("rotate", "start a CA rollover: trust a new CA, then issue from it")
    from_pem(r, "rotate to this CA instead of a newly generated root")
    r.add_argument(
        "--grace",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="how long every workload trusts the new CA before it issues"
        " (default: 1m; 5m with --kubeconfig, for kubelets to refresh mounted Secrets)",
    )
    r.set_defaults(run=_reporting(cmd_ca_rotate))

    s = ca_command("issue", "issue what the intent at PATH needs; reuse what is still valid")
    s.add_argument("path", help="intent directory (with --ref: a folder of a git repository)")
    s.add_argument("--ref", help="read the intent at this branch, tag or commit of a git repo")
    s.set_defaults(run=_reporting(cmd_ca_issue))

    t = ca_command("status", "list CAs and identities; warn before expiry; exit 1 if expired")
    t.add_argument(
        "--warn-before",
        type=_duration,
        default=identity.status.DEFAULT_WARN_BEFORE,
        metavar="DURATION",
        help="warn about certificates expiring within this (default: 8h; CAs: 30 days)",
    )
    out = t.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print status as JSON")
    out.add_argument("--metrics", action="store_true", help="print expiry as Prometheus text")
    t.set_defaults(run=_reporting(cmd_ca_status))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="weft", description="A service mesh whose control plane is git."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def intent_command(name: str, help_text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text)
        c.add_argument("path", help="intent directory (with --ref: a folder of a git repository)")
        c.add_argument("--ref", help="read the intent at this branch, tag or commit of a git repo")
        return c

    v = intent_command("validate", "check intent; print every error as file:line:col")
    v.add_argument("--strict", action="store_true", help="fail on warnings too")
    v.add_argument("--json", action="store_true", help="print diagnostics as JSON")
    v.set_defaults(run=cmd_validate)

    c = intent_command(
        "compile", "compile intent into ProxyConfigs, identities and Kubernetes objects"
    )
    c.add_argument("--out", required=True, help="output directory (replaced atomically)")
    c.set_defaults(run=cmd_compile)

    r = intent_command("reach", "print who may call whom, and which policy decided")
    r.add_argument("--json", action="store_true", help="print the matrix as JSON")
    r.add_argument(
        "--from", dest="source", action="append", metavar="NS/NAME", help="only these sources"
    )
    r.add_argument(
        "--to", dest="dest", action="append", metavar="NS/NAME", help="only these destinations"
    )
    r.set_defaults(run=cmd_reach)

    _ca_commands(sub)

    sc = sub.add_parser("sidecar", help="run the sidecar: fastpath plus its agent")
    sidecar_command.add_arguments(sc)
    sc.set_defaults(run=sidecar_command.run)

    up = sub.add_parser("up", help="run the mesh on this machine, reconciled from a git repository")
    up.add_argument(
        "repo", nargs="?", help="git repository (default: one made from mesh-repo-template)"
    )
    up.add_argument("--ref", default="main", help="branch, tag or commit to follow")
    up.add_argument("--state-dir", help="default: $WEFT_STATE_DIR or ~/.local/state/weft")
    up.add_argument(
        "--poll", type=float, default=2.0, help="seconds between looks at the repository"
    )
    up.add_argument("--metrics", metavar="ADDR", help="serve Prometheus /metrics here")
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
        help="serve POST /hook here (GitHub-style HMAC, secret in $WEFT_WEBHOOK_SECRET[_FILE])",
    )
    rn.add_argument("--ref", default="main")
    rn.add_argument("--target", default="local", choices=["local", "kubernetes"])
    rn.add_argument("--state-dir")
    rn.add_argument("--poll", type=float, default=15.0)
    rn.add_argument("--metrics", metavar="ADDR", help="serve Prometheus /metrics here")
    _add_trusted_keys(rn)
    kubecli.add_arguments(rn, election=True)
    rn.set_defaults(run=cmd_run)

    df = sub.add_parser(
        "diff", help="show what applying intent to a cluster would change; exit 1 if anything"
    )
    df.add_argument("path", help="intent directory")
    df.add_argument("--target", default="kubernetes", choices=["kubernetes"])
    kubecli.add_arguments(df, election=False)
    df.set_defaults(run=kubecli.cmd_diff)

    st = sub.add_parser(
        "status",
        help="print the reconcile status and certificate expiry; exit 1 if stalled or expired",
    )
    st.add_argument("--state-dir")
    st.add_argument("--json", action="store_true")
    st.set_defaults(run=cmd_status)

    sub.add_parser("demo-app", help="the demo service the template runs locally").set_defaults(
        run=cmd_demo_app
    )

    sub.add_parser("version", help="print the weft and fastpath versions").set_defaults(
        run=cmd_version
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
