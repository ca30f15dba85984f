"""The `weft` executable: `weft sidecar` starts without importing the control plane (a sidecar
runs beside every workload, and the reconciler's imports would triple its memory); every other
command goes to `reconciler.cli`."""

from __future__ import annotations

import sys


def main() -> int:
    if sys.argv[1:2] == ["sidecar"]:
        from reconciler.sidecar import command  # noqa: PLC0415

        return command.main(sys.argv[2:])
    from reconciler import cli  # noqa: PLC0415

    return cli.main()
