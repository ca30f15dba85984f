"""`weft sidecar`'s arguments and entry point, kept free of heavy imports.

A sidecar runs beside every workload, so its process should hold only what it uses: fastpath,
the agent, and (only when spans are exported) OpenTelemetry. The `weft` launcher sends
`weft sidecar` here without importing the rest of the CLI.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from reconciler import hostport


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="ProxyConfig JSON file (reloaded on change)")
    p.add_argument(
        "--certs", required=True, help="folder with tls.crt, tls.key and ca.crt (rotated on change)"
    )
    p.add_argument("--listeners", required=True, help="JSON file: where the listeners bind")
    p.add_argument(
        "--admin",
        default=hostport.parse("127.0.0.1:15000"),
        type=hostport.argument,
        help="admin address, HOST:PORT or [IPv6]:PORT (/ready /live /metrics /config_dump)",
    )
    p.add_argument("--workers", type=int, default=1, help="fastpath worker threads")
    p.add_argument(
        "--poll",
        type=float,
        default=1.0,
        help="seconds between looks at the files, besides inotify's immediate notice (default 1)",
    )
    p.add_argument(
        "--jwks-refresh",
        type=float,
        default=300.0,
        help="seconds between fetches of each JWT issuer's JWKS (default 300)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=5.0,
        help="seconds to finish in-flight requests on SIGTERM",
    )


def run(args: argparse.Namespace) -> int:
    from reconciler.sidecar import agent  # noqa: PLC0415  # loads the extension only when needed

    return agent.run(
        Path(args.config),
        Path(args.certs),
        Path(args.listeners),
        admin_addr=args.admin,
        workers=args.workers,
        drain_timeout=args.drain_timeout,
        poll_seconds=args.poll,
        jwks_refresh=args.jwks_refresh,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="weft sidecar", description="fastpath plus its agent")
    add_arguments(p)
    return run(p.parse_args(argv))
