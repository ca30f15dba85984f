"""Real git servers on loopback for GitSource tests: `git daemon`, `git http-backend` and sshd.

- `Upstream`: a bare repository the servers export, and a working clone that commits, tags and
  pushes to it with the git CLI (tests may shell out to git; product code may not).
- `GitDaemon`: Debian's `git daemon` on 127.0.0.1 (git://, no auth).
- `HttpGitServer`: a small threaded HTTP server that runs the real `git http-backend` CGI for
  each request and enforces basic auth or bearer tokens itself, so auth is tested end to end.
- `SshServer`: OpenSSH's `sshd -D` on 127.0.0.1 with a generated host key and one authorized
  client key; the client side gets a known_hosts file naming the host key.

Every server binds 127.0.0.1 only, and each is a context manager that stops what it started.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
}
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
LOCKED_KEY_PASSPHRASE = "passphrase-b1f0c3-never-printed"


def git(cwd: Path, *args: str, home: Path | None = None) -> str:
    env = {**GIT_ENV, "HOME": str(home or cwd)}
    done = subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env
    )
    return done.stdout.strip()


class Upstream:
    """A bare repository at `<root>/<name>` and a working clone beside it to push from."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.bare = root / name
        self.work = root.parent / f"{name}.work"
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        git(root, "init", "-q", "--bare", "-b", "main", str(self.bare))
        git(root, "init", "-q", "-b", "main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))

    def commit(self, files: Mapping[str, str | None], message: str = "change") -> str:
        """Write (or, for None, delete) files, commit, push the current branch; the new sha."""
        for rel, text in files.items():
            path = self.work / rel
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", message)
        git(self.work, "push", "-q", "origin", "HEAD")
        return git(self.work, "rev-parse", "HEAD")

    def tag(self, name: str, *, annotated: bool = False, at: str = "HEAD") -> str:
        extra = ["-a", "-m", name] if annotated else []
        git(self.work, "tag", "-f", *extra, name, at)
        git(self.work, "push", "-q", "-f", "origin", f"refs/tags/{name}")
        return git(self.work, "rev-parse", f"{name}^{{commit}}")

    def branch(self, name: str) -> None:
        git(self.work, "checkout", "-q", "-B", name)

    def delete_ref(self, ref: str) -> None:
        git(self.work, "push", "-q", "origin", f":{ref}")


def _name(repo: Upstream | str) -> str:
    return repo if isinstance(repo, str) else repo.name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} is not listening on {port}: {log.read_text()}")


class _Process:
    """A server process with its output in a log file; stopped and reaped on exit."""

    proc: subprocess.Popen[bytes]
    _log: IO[bytes]

    def _spawn(self, args: list[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        self.log = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class GitDaemon(_Process):
    """`git daemon` exporting every repository under `root` as git://127.0.0.1:<port>/<name>."""

    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = root
        for _ in range(5):  # the free port can be taken between probe and bind: retry
            self.port = port or free_port()
            self._spawn(
                [
                    "git",
                    "daemon",
                    f"--base-path={root}",
                    "--export-all",
                    "--listen=127.0.0.1",
                    f"--port={self.port}",
                    "--reuseaddr",
                    "--informative-errors",
                    str(root),
                ],
                root.parent / "git-daemon.log",
                env={**GIT_ENV, "HOME": str(root.parent)},
            )
            try:
                wait_listening(self.port, self.proc, self.log, "git daemon")
                return
            except RuntimeError:
                self.close()
        raise RuntimeError("git daemon did not start")

    def url(self, repo: Upstream | str) -> str:
        return f"git://127.0.0.1:{self.port}/{_name(repo)}"

    def __enter__(self) -> GitDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpGitServer(http.server.ThreadingHTTPServer):
    """Smart HTTP through the real `git http-backend` CGI, with auth enforced here.

    With neither `users` nor `tokens`, anyone may fetch. Otherwise a request needs
    `Authorization: Basic` with a user's password or any user with a token as password, or
    `Authorization: Bearer <token>`; anything else gets 401 and a Basic challenge. With `tls`
    (a certificate chain and key, PEM, for `localhost`) it serves HTTPS.
    """

    daemon_threads = True

    def __init__(
        self,
        root: Path,
        users: Mapping[str, str] | None = None,
        tokens: frozenset[str] = frozenset(),
        tls: tuple[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _CgiHandler)
        self.scheme = "http"
        if tls is not None:
            chain, key = root.parent / "https-chain.pem", root.parent / "https-key.pem"
            chain.write_bytes(tls[0])
            key.write_bytes(tls[1])
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(chain, key)
            self.socket = context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"
        self.root = root
        self.users = dict(users or {})
        self.tokens = tokens
        self.backend = Path(git(root, "--exec-path")) / "git-http-backend"
        self.failing = 0  # when set, every request gets this status: a broken server
        self.requests: list[tuple[str, str, int]] = []  # method, path, status
        self.authorizations: list[str] = []  # every Authorization header received
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, repo: Upstream | str) -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}/{_name(repo)}"

    def authorized(self, header: str | None) -> str | None:
        """The remote user a request authenticates as ("" when no auth is needed), or None."""
        if not self.users and not self.tokens:
            return ""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return "token" if value.strip() in self.tokens else None
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except ValueError:
            return None
        if self.users.get(user) == password or password in self.tokens:
            return user
        return None

    def close(self) -> None:
        self.shutdown()
        self._thread.join()
        self.server_close()

    def __enter__(self) -> HttpGitServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _CgiHandler(http.server.BaseHTTPRequestHandler):
    server: HttpGitServer

    def do_GET(self) -> None:  # http.server names these
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _cgi(self) -> None:
        authorization = self.headers.get("Authorization")
        if authorization:
            self.server.authorizations.append(authorization)
        user = self.server.authorized(authorization)
        body = self._body()
        if self.server.failing:
            self._reply(self.server.failing, {}, b"broken\n")
            return
        if user is None:
            self._reply(401, {"WWW-Authenticate": 'Basic realm="weft-test"'}, b"unauthorized\n")
            return
        path, _, query = self.path.partition("?")
        env = {
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "HOME": str(self.server.root.parent),
        }
        if user:
            env["REMOTE_USER"] = user
        for header, variable in (
            ("Git-Protocol", "GIT_PROTOCOL"),
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
        ):
            if self.headers.get(header):
                env[variable] = self.headers[header]
        done = subprocess.run(
            [str(self.server.backend)], input=body, env=env, capture_output=True, check=False
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = done.stdout.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        self._reply(status, headers, payload)

    def _reply(self, status: int, headers: Mapping[str, str], payload: bytes) -> None:
        self.server.requests.append((self.command, self.path, status))
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class SshServer(_Process):
    """OpenSSH's sshd on 127.0.0.1, trusting one generated client key, for ssh:// fetches.

    Needs root (sshd checks the login user) and Debian's openssh-server.
    """

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.user = getpass.getuser()
        self.host_key = _keygen(workdir / "host_ed25519")
        self.client_key = _keygen(workdir / "client_ed25519")
        self.locked_key = _keygen(workdir / "locked_ed25519", LOCKED_KEY_PASSPHRASE)
        self.other_key = _keygen(workdir / "other_ed25519")  # never authorized
        (workdir / "authorized_keys").write_text(
            "".join(k.with_suffix(".pub").read_text() for k in (self.client_key, self.locked_key))
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        for _ in range(5):
            self.port = free_port()
            config = workdir / "sshd_config"
            config.write_text(
                "\n".join(
                    [
                        "ListenAddress 127.0.0.1",
                        f"Port {self.port}",
                        f"HostKey {self.host_key}",
                        f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
                        "AuthenticationMethods publickey",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "PermitRootLogin prohibit-password",
                        "StrictModes no",  # the test's tmp path has world-writable parents
                        "UsePAM no",
                        "PidFile none",
                        "LogLevel VERBOSE",
                        "",
                    ]
                )
            )
            self._spawn([SSHD, "-D", "-e", "-f", str(config)], workdir / "sshd.log")
            try:
                wait_listening(self.port, self.proc, self.log, "sshd")
                return
            except RuntimeError:
                self.close()
        raise RuntimeError("sshd did not start")

    def url(self, upstream: Upstream) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{upstream.bare}"

    def known_hosts(self, path: Path, key: Path | None = None) -> Path:
        """A known_hosts file naming this server with `key` (default: its real host key)."""
        public = (key or self.host_key).with_suffix(".pub").read_text().split()
        path.write_text(f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n")
        return path

    def __enter__(self) -> SshServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def sshd_available() -> str:
    """Why SSH tests cannot run here, or "" when they can."""
    if os.geteuid() != 0:
        return "sshd needs root to accept a login"
    if not Path(SSHD).is_file() or shutil.which("ssh-keygen") is None:
        return "openssh-server is not installed (apt-get install -y openssh-server)"
    return ""
