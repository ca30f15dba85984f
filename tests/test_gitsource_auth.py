"""Authentication against real servers: HTTPS token and basic auth through `git http-backend`,
SSH keys and known_hosts through OpenSSH's sshd. Secrets never reach a log, message or repr.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import subprocess
import traceback
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from reconciler.gitsource import (
    AuthError,
    CredentialsError,
    GitSource,
    HostVerificationError,
    Revision,
    Secret,
    credentials,
)
from tests.gitservers import (
    LOCKED_KEY_PASSPHRASE,
    HttpGitServer,
    SshServer,
    Upstream,
    git,
    sshd_available,
)
from tests.pki import CA

TOKEN = "tok-4f9a0c77e1-never-printed"
PASSWORD = "pw-93b1d2-never-printed"
SECRETS = (TOKEN, PASSWORD, LOCKED_KEY_PASSPHRASE, "wrong-token-55aa", "wrong-password-66bb")
_names = itertools.count()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gitsource-auth") / "served"
    root.mkdir()
    return root


@pytest.fixture(scope="module")
def http(served: Path) -> Iterator[HttpGitServer]:
    with HttpGitServer(served, users={"alice": PASSWORD}, tokens=frozenset({TOKEN})) as server:
        yield server


@pytest.fixture
def upstream(served: Path) -> Upstream:
    up = Upstream(served, f"private-{next(_names)}.git")
    up.commit({"mesh.yaml": "private: true\n"})
    return up


@pytest.fixture
def caplog_all(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def printed(
    source: GitSource, error: BaseException | None, caplog: pytest.LogCaptureFixture
) -> str:
    """Everything about a fetch that could end up in front of a person."""
    texts = [caplog.text, repr(source), repr(vars(source)), repr(source._auth)]
    if error is not None:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
    return "\n".join(texts)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def head(upstream: Upstream) -> Revision:
    return Revision("main", git(upstream.work, "rev-parse", "HEAD"))


@pytest.mark.parametrize(
    ("auth", "scheme"),
    [
        pytest.param(credentials.Token(Secret(TOKEN)), "Basic", id="token-as-basic"),
        pytest.param(credentials.Token(Secret(TOKEN), bearer=True), "Bearer", id="token-as-bearer"),
        pytest.param(credentials.BasicAuth("alice", Secret(PASSWORD)), "Basic", id="user-password"),
    ],
)
def test_https_credentials_accepted(
    auth: credentials.Credentials,
    scheme: str,
    *,
    http: HttpGitServer,
    upstream: Upstream,
    tmp_path: Path,
    caplog_all: pytest.LogCaptureFixture,
) -> None:
    before = len(http.authorizations)
    with GitSource(http.url(upstream), "main", tmp_path / "cache", auth) as source:
        assert source.fetch() == head(upstream)
        assert_no_secret(printed(source, None, caplog_all))
    sent = http.authorizations[before:]
    assert sent
    assert all(a.startswith(scheme + " ") for a in sent)


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        pytest.param(
            credentials.Anonymous(), "asks for credentials and none are configured", id="none"
        ),
        pytest.param(
            credentials.Token(Secret("wrong-token-55aa")), "refused the token", id="wrong-token"
        ),
        pytest.param(
            credentials.Token(Secret("wrong-token-55aa"), bearer=True),
            "refused the bearer token",
            id="wrong-bearer",
        ),
        pytest.param(
            credentials.BasicAuth("alice", Secret("wrong-password-66bb")),
            "refused the user and password",
            id="wrong-password",
        ),
    ],
)
def test_https_credentials_refused(
    auth: credentials.Credentials,
    message: str,
    *,
    http: HttpGitServer,
    upstream: Upstream,
    tmp_path: Path,
    caplog_all: pytest.LogCaptureFixture,
) -> None:
    before = len(http.requests)
    with GitSource(http.url(upstream), "main", tmp_path / "cache", auth) as source:
        with pytest.raises(AuthError) as caught:
            source.fetch()
        assert str(caught.value) == f"cannot fetch {http.url(upstream)}: the server {message}"
        assert source.revision is None
        assert_no_secret(printed(source, caught.value, caplog_all))
    # one unauthenticated probe and at most one answer: libgit2 did not replay the credentials
    assert len(http.requests) - before <= 2
    assert all(status == 401 for _, _, status in http.requests[before:])


def test_credentials_from_environment_and_files(tmp_path: Path) -> None:
    url = "https://git.example.com/mesh.git"
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "password").write_text(PASSWORD)
    token = credentials.from_env(url, {"WEFT_GIT_TOKEN_FILE": str(tmp_path / "token")})
    assert isinstance(token, credentials.Token)
    assert (token.token.reveal(), token.username, token.bearer) == (TOKEN, "x-access-token", False)
    bearer = credentials.from_env(url, {"WEFT_GIT_TOKEN": TOKEN, "WEFT_GIT_TOKEN_AUTH": "bearer"})
    assert isinstance(bearer, credentials.Token)
    assert bearer.bearer
    basic = credentials.from_env(
        url,
        {"WEFT_GIT_USERNAME": "alice", "WEFT_GIT_PASSWORD_FILE": str(tmp_path / "password")},
    )
    assert isinstance(basic, credentials.BasicAuth)
    assert (basic.username, basic.password.reveal()) == ("alice", PASSWORD)
    assert credentials.from_env(url, {}) == credentials.Anonymous()
    # HTTPS variables do not apply to other transports
    assert credentials.from_env("git://h/x.git", {"WEFT_GIT_TOKEN": TOKEN}) == (
        credentials.Anonymous()
    )
    assert_no_secret(repr(token) + repr(bearer) + repr(basic) + str(basic))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"WEFT_GIT_TOKEN": TOKEN, "WEFT_GIT_PASSWORD": PASSWORD}, "both WEFT_GIT_TOKEN and"
        ),
        pytest.param(
            {"WEFT_GIT_TOKEN": TOKEN, "WEFT_GIT_TOKEN_FILE": "/x"}, "both WEFT_GIT_TOKEN and"
        ),
        pytest.param({"WEFT_GIT_TOKEN_FILE": "/nonexistent/t"}, "cannot read /nonexistent/t"),
        pytest.param({"WEFT_GIT_TOKEN": ""}, "WEFT_GIT_TOKEN is empty"),
        pytest.param({"WEFT_GIT_PASSWORD": PASSWORD}, "without WEFT_GIT_USERNAME"),
        pytest.param({"WEFT_GIT_TOKEN": TOKEN, "WEFT_GIT_TOKEN_AUTH": "x"}, "'basic' or 'bearer'"),
    ],
)
def test_credentials_configuration_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(CredentialsError, match=message) as caught:
        credentials.from_env("https://git.example.com/mesh.git", env)
    assert_no_secret(str(caught.value))


def test_credentials_in_the_url_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="in the URL is refused") as caught:
        GitSource(f"https://alice:{PASSWORD}@git.example.com/mesh.git", "main", tmp_path)
    assert_no_secret(str(caught.value))
    assert "https://alice:***@git.example.com/mesh.git" in str(caught.value)


def test_credentials_are_not_sent_in_the_clear(tmp_path: Path) -> None:
    auth = credentials.Token(Secret(TOKEN))
    with pytest.raises(CredentialsError, match=r"plain http:// to http://git\.example\.com"):
        GitSource("http://git.example.com/mesh.git", "main", tmp_path, auth)
    with pytest.raises(CredentialsError, match="not an SSH URL"):
        GitSource(
            "https://git.example.com/mesh.git",
            "main",
            tmp_path,
            credentials.SshKey(tmp_path / "key", tmp_path / "known_hosts"),
        )
    with pytest.raises(CredentialsError, match="not an HTTP"):
        GitSource("git://127.0.0.1/mesh.git", "main", tmp_path, auth)


def test_secret_never_prints_nor_pickles() -> None:
    secret = Secret(TOKEN)
    assert TOKEN not in repr(secret) + str(secret) + f"{secret}" + repr([secret])
    assert TOKEN not in repr(credentials.Token(secret))
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secret)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(credentials.BasicAuth("alice", secret))


# SSH, against OpenSSH's sshd on loopback.

ssh_skip = pytest.mark.skipif(bool(sshd_available()), reason=sshd_available() or "available")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with SshServer(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@ssh_skip
def test_ssh_key_with_known_host(
    sshd: SshServer, upstream: Upstream, tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    env = {
        "WEFT_GIT_SSH_KEY_FILE": str(sshd.client_key),
        "WEFT_GIT_SSH_KNOWN_HOSTS_FILE": str(sshd.known_hosts(tmp_path / "known_hosts")),
    }
    url = sshd.url(upstream)
    with GitSource(url, "main", tmp_path / "cache", credentials.from_env(url, env)) as source:
        assert source.fetch() == head(upstream)
        upstream.commit({"mesh.yaml": "private: again\n"})
        assert source.fetch() == head(upstream)
        assert source.fetch() is None


@ssh_skip
def test_ssh_hashed_known_hosts(sshd: SshServer, upstream: Upstream, tmp_path: Path) -> None:
    known = sshd.known_hosts(tmp_path / "known_hosts")
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert known.read_text().startswith("|1|")
    auth = credentials.SshKey(sshd.client_key, known)
    with GitSource(sshd.url(upstream), "main", tmp_path / "cache", auth) as source:
        assert source.fetch() == head(upstream)


@ssh_skip
def test_ssh_key_with_passphrase(
    sshd: SshServer, upstream: Upstream, tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    known = sshd.known_hosts(tmp_path / "known_hosts")
    locked = credentials.SshKey(sshd.locked_key, known, passphrase=Secret(LOCKED_KEY_PASSPHRASE))
    with GitSource(sshd.url(upstream), "main", tmp_path / "cache", locked) as source:
        assert source.fetch() == head(upstream)
        assert_no_secret(printed(source, None, caplog_all))
    wrong = credentials.SshKey(sshd.locked_key, known, passphrase=Secret("wrong-password-66bb"))
    with GitSource(sshd.url(upstream), "main", tmp_path / "cache2", wrong) as source:
        with pytest.raises(AuthError) as caught:
            source.fetch()
        assert_no_secret(printed(source, caught.value, caplog_all))


@ssh_skip
@pytest.mark.parametrize("known", ["empty", "other-key", "other-port"])
def test_ssh_unknown_host_is_refused(
    known: str,
    sshd: SshServer,
    upstream: Upstream,
    tmp_path: Path,
    caplog_all: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "known_hosts"
    if known == "empty":
        path.write_text("")
    elif known == "other-key":
        sshd.known_hosts(path, key=sshd.other_key)
    else:  # the right key, for another port: another host as far as SSH is concerned
        line = sshd.known_hosts(path).read_text()
        path.write_text(line.replace(f"]:{sshd.port} ", f"]:{sshd.port + 1} "))
    auth = credentials.SshKey(sshd.client_key, path)
    with GitSource(sshd.url(upstream), "main", tmp_path / "cache", auth) as source:
        with pytest.raises(HostVerificationError) as caught:
            source.fetch()
        assert str(caught.value) == (
            f"cannot fetch {sshd.url(upstream)}: the SSH host key of 127.0.0.1 is not in "
            f"{path} (or does not match it); unknown hosts are refused"
        )
        assert source.revision is None
    # the same process, right after, with the right known_hosts: accepted
    good = credentials.SshKey(sshd.client_key, sshd.known_hosts(tmp_path / "good"))
    with GitSource(sshd.url(upstream), "main", tmp_path / "cache", good) as source:
        assert source.fetch() == head(upstream)


@ssh_skip
def test_ssh_key_not_authorized(
    sshd: SshServer, upstream: Upstream, tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    auth = credentials.SshKey(sshd.other_key, sshd.known_hosts(tmp_path / "known_hosts"))
    source = GitSource(sshd.url(upstream), "main", tmp_path / "cache", auth)
    with source, pytest.raises(AuthError, match="refused the SSH key"):
        source.fetch()


def test_ssh_without_a_key(tmp_path: Path) -> None:
    source = GitSource("ssh://git@127.0.0.1:1/mesh.git", "main", tmp_path)
    with source, pytest.raises(AuthError, match="needs an SSH key"):
        source.fetch()
    with pytest.raises(CredentialsError, match="known_hosts"):
        credentials.from_env(
            "git@example.com:mesh.git",
            {
                "WEFT_GIT_SSH_KEY_FILE": __file__,
                "WEFT_GIT_SSH_KNOWN_HOSTS_FILE": str(tmp_path / "absent"),
            },
        )


# HTTPS: the server's certificate must chain to a trusted root before anything is sent.


@pytest.fixture(scope="module")
def https(served: Path) -> Iterator[tuple[HttpGitServer, bytes]]:
    ca = CA.create("weft gitsource test CA")
    leaf = ca.issue_server("localhost")
    tls = (leaf.chain, leaf.key)
    with HttpGitServer(served, tokens=frozenset({TOKEN}), tls=tls) as server:
        yield server, ca.pem


def test_https_untrusted_certificate_is_refused_before_credentials_are_sent(
    https: tuple[HttpGitServer, bytes], upstream: Upstream, tmp_path: Path
) -> None:
    server, _ = https
    auth = credentials.Token(Secret(TOKEN))
    source = GitSource(server.url(upstream), "main", tmp_path / "cache", auth)
    with (
        source,
        pytest.raises(HostVerificationError, match="TLS certificate of localhost is not trusted"),
    ):
        source.fetch()
    assert server.requests == []
    assert server.authorizations == []


def test_https_with_a_trusted_certificate(
    https: tuple[HttpGitServer, bytes], upstream: Upstream, tmp_path: Path
) -> None:
    server, ca_pem = https
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    previous = (pygit2.settings.ssl_cert_file, pygit2.settings.ssl_cert_dir)
    pygit2.settings.set_ssl_cert_locations(str(tmp_path / "ca.pem"), None)
    try:
        auth = credentials.Token(Secret(TOKEN))
        with GitSource(server.url(upstream), "main", tmp_path / "cache", auth) as source:
            assert source.fetch() == head(upstream)
    finally:
        pygit2.settings.set_ssl_cert_locations(*previous)  # type: ignore[arg-type]
    assert server.authorizations
