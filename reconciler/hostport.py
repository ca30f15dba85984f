"""`host:port` addresses as flags and listeners take them: `127.0.0.1:9090`, `localhost:9090`,
`[::1]:9090`, or `:9090` or `9090` for the default host.

One parser for every listener address Weft accepts (`--metrics`, `--webhook`, the sidecar's
`--admin`, the local target's app addresses): splitting at the last colon, as each once did,
reads `[::1]:8080` as host `[::1]` and cannot tell `::1` from a missing port. Standard library
only: the sidecar imports it too.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import http.server

DEFAULT_HOST = "127.0.0.1"


class HostPort(NamedTuple):
    host: str  # an IPv6 literal without its brackets
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        """The socket family a listener on this address needs."""
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return join(self.host, self.port)


def parse(text: str, default_host: str = DEFAULT_HOST) -> HostPort:
    """`host:port` or `[ipv6]:port`; an empty host, or a port alone, is `default_host`. Raises
    ValueError naming what is wrong: no port, a port out of range, an unbracketed IPv6 literal."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: '[' without a closing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: no port after ']' (expected [HOST]:PORT)")
        port_text = rest[1:]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = text.partition(":")
        if not sep and text.isascii() and text.isdigit():
            host, port_text = "", text  # a port alone, as every flag has always taken it
        elif not sep:
            raise ValueError(f"{text!r}: no port (expected HOST:PORT)")
        if ":" in port_text:
            raise ValueError(f"{text!r}: an IPv6 address needs brackets: [ADDRESS]:PORT")
        host = host or default_host
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"{text!r}: port {port} is out of range (0-65535)")
    return HostPort(host, port)


def join(host: str, port: int) -> str:
    """The text form of (host, port): IPv6 literals bracketed, so `parse` reads it back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_server(
    addr: HostPort, handler: type[http.server.BaseHTTPRequestHandler]
) -> http.server.ThreadingHTTPServer:
    """A threading HTTP server bound to `addr`; http.server binds IPv4 unless told otherwise."""
    import http.server  # noqa: PLC0415  # not at import: the sidecar uses this module without it

    class Server(http.server.ThreadingHTTPServer):
        address_family = addr.family
        daemon_threads = True

    return Server(addr, handler)


def argument(text: str) -> HostPort:
    """`parse` as an argparse `type=`: a bad address is a usage error (exit 2) naming it."""
    try:
        return parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
