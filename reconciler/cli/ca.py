"""`weft ca init | rotate | issue | status`: the mesh CA and workload certificates, in a state
directory or, with --kubeconfig, in a cluster's Secrets.

Exit codes: 0 success; 1 when a CA or a rollover is refused, when the intent has errors, and
from `status` when anything has expired; 2 bad usage.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable
from pathlib import Path

from reconciler import compiler, identity
from reconciler.cli import common, kubernetes
from reconciler.cli.common import SubParsers
from reconciler.identity.authority import Authority

# A kubelet refreshes a mounted Secret up to its sync period (a minute) plus its cache's TTL
# after the Secret changes: every pod must hold the new bundle before the new CA issues.
CLUSTER_GRACE = datetime.timedelta(minutes=5)


def add_commands(sub: SubParsers) -> None:
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
            type=kubernetes.secret_ref,
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
        type=common.duration,
        default=None,
        metavar="DURATION",
        help="how long every workload trusts the new CA before it issues"
        " (default: 1m; 5m with --kubeconfig, for kubelets to refresh mounted Secrets)",
    )
    r.set_defaults(run=_reporting(cmd_ca_rotate))

    s = ca_command("issue", "issue what the intent at PATH needs; reuse what is still valid")
    common.add_intent_arguments(s)
    s.set_defaults(run=_reporting(cmd_ca_issue))

    t = ca_command("status", "list CAs and identities; warn before expiry; exit 1 if expired")
    t.add_argument(
        "--warn-before",
        type=common.duration,
        default=identity.status.DEFAULT_WARN_BEFORE,
        metavar="DURATION",
        help="warn about certificates expiring within this (default: 8h; CAs: 30 days)",
    )
    out = t.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print status as JSON")
    out.add_argument("--metrics", action="store_true", help="print expiry as Prometheus text")
    t.set_defaults(run=_reporting(cmd_ca_status))


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
    mesh = common.load(args)
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


def _from_pem(args: argparse.Namespace) -> tuple[Path, Path] | None:
    return (Path(args.from_pem[0]), Path(args.from_pem[1])) if args.from_pem else None


def _provided(args: argparse.Namespace, now: datetime.datetime) -> Authority | None:
    """The CA in `--from-secret`, read from the cluster and checked; None without the flag."""
    ref = getattr(args, "from_secret", None)
    if ref is None:
        return None
    if not args.kubeconfig:
        raise identity.RefusedCAError(
            f"Secret {ref[0]}/{ref[1]}", ["--from-secret needs --kubeconfig"]
        )
    return kubernetes.identity_store(args).provided_ca(ref[0], ref[1], now)


def _grace(args: argparse.Namespace) -> datetime.timedelta:
    if args.grace is not None:
        return args.grace  # type: ignore[no-any-return]
    return CLUSTER_GRACE if args.kubeconfig else identity.rollover.DEFAULT_GRACE


def _identity_store(args: argparse.Namespace) -> identity.Store:
    """The state directory's files; with --kubeconfig, the cluster's Secrets (the store the
    Kubernetes target issues into, so a rotation started here is carried on by the reconciler)."""
    if getattr(args, "kubeconfig", None):
        return kubernetes.identity_store(args)
    return identity.FileStore(common.state_dir(args.state_dir))
