"""Transparent capture: the iptables script that sends a workload's TCP through its sidecar.

`weft-capture.sh` beside this file is the one script every target runs in a workload's network
namespace (the Kubernetes capture init container, `weft up --isolation netns`); this module
only says where it is and how to call it, so the rules never exist in two versions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

SCRIPT = Path(__file__).with_name("weft-capture.sh")

# Istio's numbers, so the ports and UID are familiar to anyone who has debugged a mesh pod.
CAPTURE_PORT = 15001
PROXY_UID = 1337


def apply_command(
    *,
    proxy_uid: int = PROXY_UID,
    capture_port: int = CAPTURE_PORT,
    inbound: Mapping[int, int] | None = None,
    exclude_ports: Iterable[int] = (),
    exclude_cidrs: Iterable[str] = (),
) -> list[str]:
    """The command line that installs capture: `inbound` maps each pod port (the app's target
    port) to the port of its mTLS inbound listener."""
    cmd = ["sh", str(SCRIPT), "apply", "--proxy-uid", str(proxy_uid)]
    cmd += ["--capture-port", str(capture_port)]
    for target, listen in sorted((inbound or {}).items()):
        cmd += ["--inbound", f"{target}:{listen}"]
    if ports := sorted(set(exclude_ports)):
        cmd += ["--exclude-ports", ",".join(map(str, ports))]
    if cidrs := sorted(set(exclude_cidrs)):
        cmd += ["--exclude-cidrs", ",".join(cidrs)]
    return cmd


def cleanup_command() -> list[str]:
    """The command line that removes every rule and chain `apply_command` installed."""
    return ["sh", str(SCRIPT), "cleanup"]
