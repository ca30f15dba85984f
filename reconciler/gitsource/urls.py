"""Remote URLs: their transport, their host, and the form that is safe to print.

Git accepts `ssh://[user@]host[:port]/path`, the scp-like `[user@]host:path`, `https://`,
`http://`, `git://`, `file://` and plain local paths. A password inside the URL is refused
(credentials come from the environment or files), so `display` has nothing to hide in a URL
Weft accepted; it still masks one, for the error that refuses it.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

from reconciler.gitsource.errors import CredentialsError, UrlError

_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/]+)@)?(?P<host>[^:/]+):(?!//)(?P<path>.*)$")
_SCHEMES = {
    "ssh": "ssh",
    "ssh+git": "ssh",
    "git+ssh": "ssh",
    "http": "http",
    "https": "https",
    "git": "git",
    "file": "file",
}


def scheme(url: str) -> str:
    """The transport: ssh, http, https, git or file (a plain path is file)."""
    if "://" in url:
        return _SCHEMES.get(url.split("://", 1)[0].lower(), "unknown")
    return "ssh" if _SCP_LIKE.match(url) else "file"


def host(url: str) -> str:
    if "://" in url:
        return urllib.parse.urlsplit(url).hostname or ""
    m = _SCP_LIKE.match(url)
    return m["host"] if m else ""


def username(url: str) -> str:
    if "://" in url:
        return urllib.parse.unquote(urllib.parse.urlsplit(url).username or "")
    m = _SCP_LIKE.match(url)
    return (m["user"] or "") if m else ""


def is_loopback(url: str) -> bool:
    name = host(url)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def display(url: str) -> str:
    """The URL with any password masked: what messages and logs show."""
    if "://" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


def check(url: str) -> None:
    """Refuse URLs Weft cannot use or that carry a password."""
    if scheme(url) == "unknown":
        raise UrlError(f"{display(url)}: unsupported URL scheme")
    if "://" in url and urllib.parse.urlsplit(url).password is not None:
        raise CredentialsError(
            f"{display(url)}: a password or token in the URL is refused; "
            "set WEFT_GIT_TOKEN or WEFT_GIT_PASSWORD (or their *_FILE variants) instead"
        )
