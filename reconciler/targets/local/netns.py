"""Network namespaces for `weft up --isolation netns`: one per workload instance, on a bridge.

Each namespace is joined to one Linux bridge in the root namespace by a veth pair and has an
address in a private /24 of 10.253.0.0/16 (the bridge holds `.1`, so this machine reaches
every sidecar's admin port). With `confine`, nothing a namespace starts may leave the
bridge: a filter chain in the root namespace rejects it before it is forwarded, so the way
out of the mesh is an egress gateway, which runs in the root namespace at an address of its
own on the bridge.
Every name a network makes carries its tag, derived from the state directory: a weft that
crashed is followed by one with the same tag, which removes whatever is left
(`remove_stale`) before it makes anything. Needs root, iproute2 and iptables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import parentdeath

PREFIX = "10.253"
NETNS_ETC = Path("/etc/netns")  # `ip netns exec` mounts /etc/netns/<name>/hosts on /etc/hosts
FIRST_HOST = 2  # .1 is the bridge


class NetnsError(RuntimeError):
    """A namespace, link or address could not be made or removed."""


def ip(*args: str) -> str:
    """Runs `ip` with `args`; its output, or NetnsError naming the command and its complaint."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def tag_for(state_dir: Path) -> str:
    """Six hex digits naming one state directory's devices: short enough for a 15-byte
    interface name, stable across restarts so a crashed run's leftovers are found."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:6]


def subnets_in_use() -> set[int]:
    """Third octets of 10.253.x.0/24 networks some interface of the root namespace holds."""
    out = ip("-4", "-o", "addr", "show")
    return {int(m) for m in re.findall(rf"inet {re.escape(PREFIX)}\.(\d+)\.\d+/", out)}


def free_subnet(tag: str) -> int:
    """A /24 no other network on this machine uses, starting from one the tag suggests so
    two meshes rarely even look at the same one."""
    used = subnets_in_use()
    start = int(tag, 16) % 250
    for i in range(250):
        candidate = 1 + (start + i) % 250
        if candidate not in used:
            return candidate
    raise NetnsError(f"every {PREFIX}.x.0/24 network is in use")


def iptables(*args: str) -> str:
    """Runs `iptables -w` (filter table, root namespace) with `args`, as `ip` does."""
    done = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"iptables {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def chain_for(tag: str) -> str:
    """The root namespace's filter chain that keeps one network's traffic on its bridge."""
    return f"WEFT-{tag}"


def unprivileged(uid: int, caps: Sequence[str] = (), pdeathsig: bool = False) -> list[str]:
    """The command prefix that runs a program as user and group `uid`, keeping only the
    capabilities `caps` (e.g. "dac_read_search")."""
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    if caps:
        # Ambient capabilities survive the change of user and the exec; the bounding set
        # keeps anything else from coming back.
        listed = ",".join(f"+{c}" for c in caps)
        cmd += [f"--inh-caps={listed}", f"--ambient-caps={listed}"]
        cmd += [f"--bounding-set=-all,{listed}"]
    if pdeathsig:
        # Set again after the change of user, which clears it; then the race check.
        return [*cmd, "--pdeathsig", "TERM", "--", *parentdeath.still_parent()]
    return [*cmd, "--"]


@dataclasses.dataclass(frozen=True)
class Host:
    """One namespace on the network."""

    netns: str
    address: str

    def exec_prefix(
        self, uid: int | None = None, caps: Sequence[str] = (), pdeathsig: bool = False
    ) -> list[str]:
        """The command prefix that runs a program in this namespace; with `uid`, as that user
        and group, keeping only the capabilities `caps` (e.g. "dac_read_search")."""
        cmd = ["ip", "netns", "exec", self.netns]
        if uid is None:
            return cmd
        return [*cmd, *unprivileged(uid, caps, pdeathsig)]


@dataclasses.dataclass
class Network:
    """A bridge and the namespaces on it. `create` before `add`; `remove` undoes both."""

    tag: str
    subnet: int
    hosts: list[Host] = dataclasses.field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"wb{self.tag}"

    @property
    def gateway(self) -> str:
        return f"{PREFIX}.{self.subnet}.1"

    @property
    def cidr(self) -> str:
        return f"{PREFIX}.{self.subnet}.0/24"

    def address(self, index: int) -> str:
        """The address of the index-th host (0-based), or, counted from the top of the /24,
        of anything else a target wants to give an address (virtual service addresses)."""
        if not 0 <= index < 253:
            raise NetnsError(f"no address {index} in {self.cidr}")
        return f"{PREFIX}.{self.subnet}.{FIRST_HOST + index}"

    def netns_name(self, index: int) -> str:
        return f"weft-{self.tag}-{index}"

    def create(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def confine(self) -> None:
        """Nothing a namespace on the bridge starts may be forwarded off it (to this machine's
        other networks or beyond): rejected at once, so the caller fails fast. It still
        reaches the bridge's own addresses (the host, an egress gateway), which is delivery,
        not forwarding, and replies to connections made from elsewhere still pass. Whether
        the machine forwards at all (`net.ipv4.ip_forward`, Docker turns it on) does not
        matter: the jump is first in FORWARD."""
        chain = chain_for(self.tag)
        iptables("-N", chain)
        iptables("-A", chain, "-o", self.bridge, "-j", "RETURN")
        iptables("-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN")
        # TCP is reset rather than answered with ICMP: the kernel rate-limits its ICMP errors
        # per destination, so once a namespace's blocked DNS lookups have spent them, a blocked
        # connection would hang until its timeout instead of failing at once.
        iptables("-A", chain, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")
        iptables("-A", chain, "-j", "REJECT", "--reject-with", "icmp-admin-prohibited")
        iptables("-I", "FORWARD", "1", "-i", self.bridge, "-j", chain)

    def add_address(self, address: str) -> None:
        """Gives the bridge (the root namespace's side) one more address of the /24, for a
        process of the root namespace that namespaces call (an egress gateway)."""
        shown = ip("-4", "-o", "addr", "show", "dev", self.bridge)
        if f"inet {address}/" not in shown:
            ip("addr", "add", f"{address}/32", "dev", self.bridge)

    def add(self, index: int, hosts: Mapping[str, str] | None = None) -> Host:
        """A namespace with address `address(index)`, its default route via the bridge, and,
        given `hosts` (name -> address), its own /etc/hosts for programs run in it."""
        host = Host(self.netns_name(index), self.address(index))
        outside, inside = f"wv{self.tag}{index}", f"wp{self.tag}{index}"
        ip("netns", "add", host.netns)
        self.hosts.append(host)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", host.netns)
        ip("link", "set", outside, "master", self.bridge, "up")
        ns = ["-n", host.netns]
        ip(*ns, "link", "set", inside, "name", "eth0")
        ip(*ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip(*ns, "link", "set", "eth0", "up")
        ip(*ns, "link", "set", "lo", "up")
        ip(*ns, "route", "add", "default", "via", self.gateway)
        if hosts is not None:
            write_hosts(host.netns, hosts)
        return host

    def remove(self) -> None:
        """Removes every namespace, link and hosts file of this network; what is already gone
        is skipped, so it may run after a partial `create`."""
        remove_stale(self.tag)
        self.hosts.clear()


def write_hosts(netns: str, names: Mapping[str, str]) -> None:
    folder = NETNS_ETC / netns
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    lines += [f"{addr} {name}" for name, addr in sorted(names.items())]
    (folder / "hosts").write_text("\n".join(lines) + "\n")


def remove_stale(tag: str) -> list[str]:
    """Removes every namespace, bridge, veth and hosts folder named with `tag`; returns the
    namespaces removed. Deleting a namespace takes its end of each veth pair, and so the pair."""
    removed = []
    prefix = f"weft-{tag}-"
    for line in ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(prefix):
            with contextlib.suppress(NetnsError):
                ip("netns", "del", name)
                removed.append(name)
    for link in _links():
        if link in (f"wb{tag}",) or link.startswith(f"wv{tag}"):
            with contextlib.suppress(NetnsError):
                ip("link", "del", link)
    if NETNS_ETC.is_dir():
        for folder in NETNS_ETC.glob(f"{prefix}*"):
            shutil.rmtree(folder, ignore_errors=True)
    chain = chain_for(tag)
    jump = ("FORWARD", "-i", f"wb{tag}", "-j", chain)
    with contextlib.suppress(NetnsError):
        while True:  # every copy of the jump (iptables -C fails once none is left)
            iptables("-C", *jump)
            iptables("-D", *jump)
    with contextlib.suppress(NetnsError):
        iptables("-F", chain)
        iptables("-X", chain)
    return removed


def _links() -> list[str]:
    # "5: wvabc1230@if4: <...>" -> "wvabc1230"
    return [
        line.split(":", 2)[1].strip().split("@")[0]
        for line in ip("-o", "link", "show").splitlines()
        if line.count(":") >= 2
    ]


class Addresses:
    """Which host index each workload instance has, and which virtual address each Service
    has, kept in the state directory so they survive restarts like loopback ports do.

    Instances count up from the bottom of the /24, Services down from the top: a Service's
    address stands for it as a ClusterIP does (nothing listens on it; capture maps it to the
    upstream), so a caller need not know which instance will answer.
    """

    def __init__(self, path: Path, tag: str) -> None:
        self.path = path
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            saved = {}
        self.subnet: int | None = saved.get("subnet")
        self.hosts: dict[str, int] = saved.get("hosts", {})
        self.services: dict[str, int] = saved.get("services", {})
        self.tag = tag

    def network(self) -> Network:
        """The network to make: the saved /24 if no interface holds it, else a free one. Call
        it once, after `remove_stale`; once the bridge exists its /24 is in use."""
        if self.subnet is None or self.subnet in subnets_in_use():
            self.subnet = free_subnet(self.tag)
            self._save()
        return Network(self.tag, self.subnet)

    def host(self, ref: str) -> int:
        return self._index(self.hosts, ref)

    def service(self, key: str) -> int:
        return 252 - self._index(self.services, key)

    def _index(self, table: dict[str, int], key: str) -> int:
        if key not in table:
            table[key] = min(set(range(len(table) + 1)) - set(table.values()))
            if len(self.hosts) + len(self.services) > 251:
                raise NetnsError("more than 251 instances and Services in one /24")
            self._save()
        return table[key]

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".netns.")
        with os.fdopen(fd, "w") as f:
            json.dump(
                {"subnet": self.subnet, "hosts": self.hosts, "services": self.services},
                f,
                indent=2,
                sort_keys=True,
            )
        os.replace(tmp, self.path)


def check_tools() -> None:
    """Raises NetnsError naming what `--isolation netns` lacks on this machine."""
    if os.geteuid() != 0:
        raise NetnsError("--isolation netns needs root (it makes namespaces and iptables rules)")
    missing = [t for t in ("ip", "iptables", "iptables-restore", "setpriv") if not shutil.which(t)]
    if missing:
        raise NetnsError(f"--isolation netns needs {', '.join(missing)} (Debian: iproute2, "
                         "iptables, util-linux)")  # fmt: skip
