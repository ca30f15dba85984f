"""`reconciler.hostport`: the one parser of listener addresses, IPv6 literals included; and
real listeners bound on [::1] through it (the sidecar's admin port, the webhook)."""

from __future__ import annotations

import argparse
import re
import socket
import threading
import urllib.request

import pytest

from reconciler import hostport
from reconciler.gitsource import webhook
from reconciler.gitsource.credentials import Secret
from reconciler.gitsource.webhook import WebhookReceiver
from reconciler.sidecar import admin, command


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:9090", "127.0.0.1", 9090),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("localhost:15000", "localhost", 15000),
        ("api.b.svc.cluster.local:8080", "api.b.svc.cluster.local", 8080),
        (":9090", "127.0.0.1", 9090),
        ("9090", "127.0.0.1", 9090),
        ("[::1]:8080", "::1", 8080),
        ("[::]:65535", "::", 65535),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
    ],
)
def test_parses_ipv4_hostnames_and_bracketed_ipv6(text: str, host: str, port: int) -> None:
    parsed = hostport.parse(text)
    assert parsed == (host, port)
    assert hostport.parse(str(parsed)) == parsed  # the text form reads back


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", "no port"),
        ("localhost", "no port"),
        ("localhost:", "port '' is not a number"),
        ("localhost:http", "port 'http' is not a number"),
        ("127.0.0.1:-1", "port '-1' is not a number"),
        ("127.0.0.1:65536", "out of range"),
        ("::1:8080", "needs brackets"),
        ("[::1]", "no port after ']'"),
        ("[::1]8080", "no port after ']'"),
        ("[::1:8080", "without a closing ']'"),
        ("[127.0.0.1]:80", "not an IPv6 address"),
        ("[::1]:", "port '' is not a number"),
        ("[::1]:٣", "is not a number"),  # an Arabic-Indic digit: isdigit(), not a port
    ],
)
def test_refuses_what_is_not_an_address_naming_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as e:
        hostport.parse(text)
    assert str(e.value).startswith(repr(text))


def test_default_host_and_family() -> None:
    assert hostport.parse(":80", default_host="0.0.0.0") == ("0.0.0.0", 80)
    assert hostport.parse("[::1]:1").family is socket.AF_INET6
    assert hostport.parse("127.0.0.1:1").family is socket.AF_INET
    assert hostport.join("::1", 80) == "[::1]:80"
    assert hostport.join("10.0.0.1", 80) == "10.0.0.1:80"


def test_a_bad_flag_is_a_usage_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser(prog="weft sidecar")
    command.add_arguments(p)
    base = ["--config", "c", "--certs", "d", "--listeners", "l"]
    assert p.parse_args([*base, "--admin", "[::1]:0"]).admin == ("::1", 0)
    with pytest.raises(SystemExit) as e:
        p.parse_args([*base, "--admin", "::1:15000"])
    assert e.value.code == 2
    assert "--admin: '::1:15000': an IPv6 address needs brackets" in capsys.readouterr().err


class _Sidecar:
    """The admin port's view of a sidecar that has started and is ready."""

    ready = True
    serving = True

    def metrics(self) -> str:
        return "weft_up 1\n"

    def config_dump(self) -> dict[str, str]:
        return {"revision": "r1"}

    def clusters(self) -> dict[str, list[str]]:
        return {"clusters": [], "mirrors": []}

    def app_health(self, key: str) -> tuple[bool, str] | None:
        return None


def test_the_admin_port_listens_on_an_ipv6_loopback() -> None:
    server = admin.serve(hostport.parse("[::1]:0"), _Sidecar())
    try:
        url = f"http://{hostport.join('::1', server.server_port)}"
        with urllib.request.urlopen(f"{url}/ready", timeout=5) as resp:
            assert (resp.status, resp.read()) == (200, b"ready\n")
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            assert resp.read() == b"weft_up 1\n"
    finally:
        server.shutdown()
        server.server_close()


def test_the_webhook_listens_on_an_ipv6_loopback_and_names_it_bracketed() -> None:
    pushed = threading.Event()
    with WebhookReceiver(Secret("s3cret"), pushed.set, "::1", 0) as receiver:
        assert receiver.url.startswith("http://[::1]:")
        body = b'{"ref": "refs/heads/main"}'
        request = urllib.request.Request(
            receiver.url,
            data=body,
            method="POST",
            headers={"X-Hub-Signature-256": webhook.sign(b"s3cret", body)},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 202
        assert pushed.wait(5)
