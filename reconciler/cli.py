"""`weft`: the command line. Thin: parse arguments, call intent and compiler, print, exit.

Exit codes: 0 success, 1 the intent has errors (or warnings with --strict), 2 bad usage.
`weft ca`: 1 when a CA or a rollover is refused, and from `status` when anything has expired.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler import __version__, compiler, identity, intent
from reconciler.compiler import reach


def _snapshot(args: argparse.Namespace) -> intent.files.Snapshot:
    path = Path(args.path)
    if args.ref:
        return intent.files.from_git(path, args.ref)
    return intent.files.from_directory(path)


def _print_diagnostics(diagnostics: Sequence[intent.Diagnostic], root: str) -> None:
    for d in diagnostics:
        print(_rooted(d, root), file=sys.stderr)


def _rooted(d: intent.Diagnostic, root: str) -> str:
    """Diagnostics name repository-relative files; print them relative to where the user is."""
    text = str(d)
    if root not in (".", "") and not d.position.file.startswith("<"):
        text = f"{root.rstrip('/')}/{text}"
    return text


def _load(args: argparse.Namespace) -> intent.Intent | None:
    try:
        mesh, diagnostics = intent.check(_snapshot(args))
    except intent.IntentError as e:
        _print_diagnostics(e.diagnostics, ".")
        return None
    _print_diagnostics(diagnostics, args.path)
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
        _print_diagnostics(diagnostics, root)
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


def cmd_sidecar(args: argparse.Namespace) -> int:
    from reconciler.sidecar import agent  # noqa: PLC0415  # loads the extension; only this command needs it

    return agent.run(
        Path(args.config),
        Path(args.certs),
        Path(args.listeners),
        admin_addr=args.admin,
        workers=args.workers,
        drain_timeout=args.drain_timeout,
    )


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
    store = identity.FileStore(_state_dir(args.state_dir))
    ca_id = identity.ca.init(store, args.trust_domain, now, from_pem=_from_pem(args))
    print(f"CA {ca_id} for trust domain {args.trust_domain} in {store.location}")
    return 0


def cmd_ca_rotate(args: argparse.Namespace) -> int:
    now = identity.clock.system()
    store = identity.FileStore(_state_dir(args.state_dir))
    state = identity.ca.rotate(store, now, from_pem=_from_pem(args), grace=args.grace)
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
    store = identity.FileStore(_state_dir(args.state_dir))
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
    status = identity.status.read(identity.FileStore(_state_dir(args.state_dir)), now)
    if args.json:
        print(json.dumps(identity.status.as_json(status, now, args.warn_before), indent=2))
    elif args.metrics:
        print(identity.metrics.prometheus_text(identity.metrics.expiry_samples(status)), end="")
    else:
        print(identity.status.render(status, now, args.warn_before), end="")
    return 1 if identity.status.expired(status, now) else 0


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
        return c

    def from_pem(c: argparse.ArgumentParser, help_text: str) -> None:
        c.add_argument("--from-pem", nargs=2, metavar=("CERT", "KEY"), help=help_text)

    i = ca_command("init", "create the mesh CA: generated, or your own root or intermediate")
    i.add_argument("--trust-domain", default="cluster.local", help="default: cluster.local")
    from_pem(i, "use this CA (its chain up to the root, then its key) instead of generating one")
    i.set_defaults(run=_reporting(cmd_ca_init))

    r = ca_command("rotate", "start a CA rollover: trust a new CA, then issue from it")
    from_pem(r, "rotate to this CA instead of a newly generated root")
    r.add_argument(
        "--grace",
        type=_duration,
        default=identity.rollover.DEFAULT_GRACE,
        metavar="DURATION",
        help="how long every workload trusts the new CA before it issues (default: 1m)",
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
    sc.add_argument("--config", required=True, help="ProxyConfig JSON file (reloaded on change)")
    sc.add_argument(
        "--certs", required=True, help="folder with tls.crt, tls.key and ca.crt (rotated on change)"
    )
    sc.add_argument("--listeners", required=True, help="JSON file: where the listeners bind")
    sc.add_argument(
        "--admin",
        default="127.0.0.1:15000",
        help="admin address (/ready /live /metrics /config_dump)",
    )
    sc.add_argument("--workers", type=int, default=1, help="fastpath worker threads")
    sc.add_argument(
        "--drain-timeout",
        type=float,
        default=5.0,
        help="seconds to finish in-flight requests on SIGTERM",
    )
    sc.set_defaults(run=cmd_sidecar)

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
