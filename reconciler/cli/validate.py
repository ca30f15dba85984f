"""`weft validate`, `weft compile`, `weft reach`: intent read, checked and compiled, printed or
written to a folder; nothing running is touched.

Exit codes: 0 success, 1 the intent has errors (or warnings with --strict), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reconciler import compiler, intent
from reconciler.cli import common
from reconciler.cli.common import SubParsers
from reconciler.compiler import reach


def add_commands(sub: SubParsers) -> None:
    def intent_command(name: str, help_text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text)
        common.add_intent_arguments(c)
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


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        snapshot = common.snapshot(args)
        mesh, diagnostics = intent.check(snapshot)
    except intent.IntentError as e:
        common.print_diagnostics(e.diagnostics, ".")
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
        common.print_diagnostics(diagnostics, root, [f.path for f in snapshot.files])
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
    mesh = common.load(args)
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
    mesh = common.load(args)
    if mesh is None:
        return 1
    cells = reach.matrix(mesh, sources=set(args.source or ()), destinations=set(args.dest or ()))
    # Gateways are sources too: shown unless the sources asked for are all services.
    edge = [] if args.source else reach.entries(mesh, destinations=set(args.dest or ()))
    text = reach.to_json(mesh, cells, edge) if args.json else reach.to_table(mesh, cells, edge)
    print(text, end="")
    return 0
