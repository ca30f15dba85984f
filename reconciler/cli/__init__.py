"""`weft`: the command line. Thin: each command group is a module that adds its commands to the
parser and runs them; this puts the parser together and dispatches.

    validate    validate, compile, reach: intent read and compiled, nothing running touched
    serve       up, run: the composition root of a running reconciler
    status      status: what the reconciler here last reported
    ca          ca init | rotate | issue | status: the mesh CA and workload certificates
    kubernetes  diff, and the cluster flags, connection and leader election the others use
    extras      sidecar, demo-app, version

Each group's module says its exit codes; across all of them 0 is success, 1 a refusal (the
intent has errors, a CA is refused, the status is stalled) and 2 bad usage.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from reconciler.cli import ca, extras, kubernetes, serve, status, validate

# In the order `weft --help` lists the commands.
GROUPS = (
    validate.add_commands,
    ca.add_commands,
    extras.add_sidecar,
    serve.add_commands,
    kubernetes.add_commands,
    status.add_commands,
    extras.add_commands,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="weft", description="A service mesh whose control plane is git."
    )
    sub = p.add_subparsers(dest="command", required=True)
    for add_commands in GROUPS:
        add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code
