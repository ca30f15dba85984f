"""The command line's Kubernetes parts: the cluster flags, connecting, leader election around
`weft run --target kubernetes` (`serve`), the cluster's identity Secrets for `weft ca
--kubeconfig` (`ca`), and `weft diff --target kubernetes`.

The kubernetes client takes a while to import, so it is imported only by the commands that talk
to a cluster, not when the parser is built."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler import __version__, compiler, identity, intent
from reconciler.cli.common import SubParsers

if TYPE_CHECKING:
    from reconciler.targets.kubernetes import Api, KubernetesTarget
    from reconciler.targets.kubernetes.leader import LeaderElector, Timing

log = logging.getLogger("weft.kubernetes")

DEFAULT_IMAGE = f"ghcr.io/weft-mesh/weft:{__version__}"


def add_commands(sub: SubParsers) -> None:
    df = sub.add_parser(
        "diff", help="show what applying intent to a cluster would change; exit 1 if anything"
    )
    df.add_argument("path", help="intent directory")
    df.add_argument("--target", default="kubernetes", choices=["kubernetes"])
    add_arguments(df, election=False)
    df.set_defaults(run=cmd_diff)


def add_arguments(p: argparse.ArgumentParser, *, election: bool) -> None:
    g = p.add_argument_group("--target kubernetes")
    g.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: in-cluster config when KUBERNETES_SERVICE_HOST is set,"
        " else $KUBECONFIG or ~/.kube/config)",
    )
    g.add_argument("--context", help="kubeconfig context")
    g.add_argument("--image", default=DEFAULT_IMAGE, help="image of the injected containers")
    g.add_argument(
        "--system-namespace", default="weft-system", help="where the CA, inventory and Lease live"
    )
    g.add_argument(
        "--ca-secret",
        metavar="NAMESPACE/NAME",
        type=secret_ref,
        help="on first start, use the CA in this kubernetes.io/tls Secret, not a generated one",
    )
    if election:
        g.add_argument(
            "--resync",
            type=float,
            default=60.0,
            help="seconds between reconciles of an unchanged revision (reverts drift)",
        )
        g.add_argument(
            "--lease-duration",
            type=float,
            default=15.0,
            help="leader-election Lease in seconds (renew deadline 2/3 of it)",
        )


def secret_ref(text: str) -> tuple[str, str]:
    ns, sep, name = text.partition("/")
    if not sep or not ns or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return ns, name


def connect(args: argparse.Namespace) -> Api:
    from reconciler.targets.kubernetes import Api  # noqa: PLC0415

    if args.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return Api.in_cluster()
    return Api.from_kubeconfig(args.kubeconfig, args.context)


def target(args: argparse.Namespace, api: Api) -> KubernetesTarget:
    from reconciler.targets.kubernetes import KubernetesTarget  # noqa: PLC0415

    return KubernetesTarget(
        api,
        image=args.image,
        system_namespace=args.system_namespace,
        ca_secret=getattr(args, "ca_secret", None),
    )


def identity_store(args: argparse.Namespace) -> identity.secretstore.SecretStore:
    """The cluster's identity Secrets, for `weft ca --kubeconfig`."""
    from reconciler.identity.secretstore import SecretStore  # noqa: PLC0415
    from reconciler.targets.kubernetes.identities import SecretBackend  # noqa: PLC0415

    return SecretStore(SecretBackend(connect(args)), args.system_namespace)


def timing(lease_seconds: float) -> Timing:
    """client-go's proportions (15 s / 10 s / 2 s) for any Lease duration."""
    from reconciler.targets.kubernetes.leader import Timing  # noqa: PLC0415

    return Timing(
        duration=lease_seconds, renew_deadline=lease_seconds * 2 / 3, retry=lease_seconds * 2 / 15
    )


@contextlib.contextmanager
def leadership(
    args: argparse.Namespace, api: Api, stop: threading.Event
) -> Iterator[LeaderElector]:
    """Lead before reconciling: blocks until this process holds the Lease (or `stop`). If
    leadership is lost, `stop` is set so the loop ends, and the elector's `lost` says why. On
    leaving, the Lease is released only after the loop has stopped writing."""
    from reconciler.targets.kubernetes.leader import LeaderElector  # noqa: PLC0415

    lease_timing = timing(args.lease_duration)
    # The elector's requests time out within one retry period, so a hung API call cannot keep
    # a stale leader believing it still leads; the target's writes are fenced on it.
    elector = LeaderElector(
        api.with_timeout((lease_timing.retry, lease_timing.retry)),
        args.system_namespace,
        timing=lease_timing,
    )
    api.fence = elector.holds
    election_stop = threading.Event()
    thread = threading.Thread(
        target=elector.run, args=(election_stop, stop.set), name="leader-election", daemon=True
    )
    thread.start()
    log.info("%s waiting to lead (Lease %s/%s)", elector.identity, args.system_namespace,
             elector.name)  # fmt: skip
    try:
        while not stop.is_set() and not elector.leading.wait(0.5):
            pass
        yield elector
    finally:
        election_stop.set()
        thread.join(10)


def cmd_diff(args: argparse.Namespace) -> int:
    """Compile the intent and show what applying it would change; exit 1 when it would."""
    from reconciler.targets.kubernetes import ApiError, ConflictError, UnreachableError  # noqa: PLC0415
    from reconciler.targets.kubernetes.plan import RELEASE  # noqa: PLC0415

    snapshot = intent.files.from_directory(Path(args.path))
    mesh, diagnostics = intent.check(snapshot)
    if mesh is None:
        for d in diagnostics:
            print(d, file=sys.stderr)
        return 2
    desired = compiler.compile(mesh)
    try:
        api = connect(args)
        t = target(args, api)
        plan = t.plan(desired, t.observe())
        rejected = t.dry_run(plan)
    except (ApiError, ConflictError, UnreachableError) as e:
        print(f"weft diff: {e}", file=sys.stderr)
        return 2
    for change in plan.changes:
        if change.detail == RELEASE:  # the workload stays; only Weft's fields go
            print(f"release {change.key}")
            continue
        detail = f"  ({change.detail})" if change.detail else ""
        print(f"{change.action:<7} {change.key}{detail}")
    for ref, message in rejected.items():
        print(f"weft diff: the API server would reject {ref}: {message}", file=sys.stderr)
    if rejected:
        return 2
    if plan.empty:
        print(f"no changes: the cluster matches {desired.revision}")
        return 0
    return 1
