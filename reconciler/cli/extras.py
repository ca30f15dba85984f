"""`weft sidecar`, `weft demo-app`, `weft version`: commands that only hand over to the module
that does the work (`weft sidecar` normally never gets here: `reconciler.entry` starts it
without the control plane's imports)."""

from __future__ import annotations

import argparse

from reconciler import __version__
from reconciler.cli.common import SubParsers
from reconciler.sidecar import command as sidecar_command


def add_sidecar(sub: SubParsers) -> None:
    sc = sub.add_parser("sidecar", help="run the sidecar: fastpath plus its agent")
    sidecar_command.add_arguments(sc)
    sc.set_defaults(run=sidecar_command.run)


def add_commands(sub: SubParsers) -> None:
    sub.add_parser("demo-app", help="the demo service the template runs locally").set_defaults(
        run=cmd_demo_app
    )

    sub.add_parser("version", help="print the weft and fastpath versions").set_defaults(
        run=cmd_version
    )


def cmd_demo_app(_: argparse.Namespace) -> int:
    from reconciler import demo_app  # noqa: PLC0415

    return demo_app.main()


def cmd_version(_: argparse.Namespace) -> int:
    from reconciler import _native  # noqa: PLC0415  # only this command needs the extension loaded

    print(f"weft {__version__} (fastpath {_native.version()})")
    return 0
