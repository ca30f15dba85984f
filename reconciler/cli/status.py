"""`weft status`: the reconcile status a `weft up` or `weft run` here last wrote, with the
certificate warnings worked out again as of now.

Exit codes: 0, or 1 when nothing was reconciled here yet, the loop is stalled, or a
certificate has expired.
"""

from __future__ import annotations

import argparse
import json
import sys

from reconciler import conditions, identity, status
from reconciler.cli import common
from reconciler.cli.common import SubParsers


def add_commands(sub: SubParsers) -> None:
    st = sub.add_parser(
        "status",
        help="print the reconcile status and certificate expiry; exit 1 if stalled or expired",
    )
    st.add_argument("--state-dir")
    st.add_argument("--json", action="store_true")
    st.set_defaults(run=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    state = common.state_dir(args.state_dir)
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
    stalled = current.conditions.get(conditions.STALLED)
    return 1 if (stalled and stalled.status) or current.certificates_expired() else 0
