"""`weft`: the command line. Thin: parse arguments, call intent and compiler, print, exit.

Exit codes: 0 success, 1 the intent has errors (or warnings with --strict), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from reconciler import __version__, compiler, intent
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


def cmd_version(_: argparse.Namespace) -> int:
    from reconciler import _native  # noqa: PLC0415  # only this command needs the extension loaded

    print(f"weft {__version__} (fastpath {_native.version()})")
    return 0


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
