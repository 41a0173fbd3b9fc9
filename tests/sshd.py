"""pytest plugin: a real OpenSSH server (`/usr/sbin/sshd`, internal-sftp) on loopback.

One server per test session (per xdist worker), with host keys and client keys generated at
test time with `ssh-keygen` — once per test run, shared by the xdist workers (RSA key generation
is slow on a busy machine). It listens on two ports: `port` (read-write) and
`readonly_port`, where `ForceCommand internal-sftp -R` refuses every write even to root.
Each test takes a fresh remote folder with `sshd.remote_dir()`.

Key login as the current user (root in CI: `PermitRootLogin prohibit-password`, no PAM).

Outside pytest (bench/run.py), `running_sshd(base)` is the same server as a plain context
manager: it raises `SshdUnavailable` where the fixture fails the tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import pytest

from rorfeed.transports.sftp import SftpDestinationSection

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
PASSPHRASE = "correct horse battery staple"
START_SECONDS = 15.0


class SshdUnavailable(RuntimeError):
    """sshd cannot be found or started; the message says why (the fixture fails with it)."""


def _keygen(path: Path, kind: str, passphrase: str = "") -> Path:
    bits = ["-b", "3072"] if kind == "rsa" else []
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", kind, *bits, "-N", passphrase, "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def public_line(key: Path) -> str:
    """`type base64` of the public half of `key` (no comment)."""
    kind, blob = Path(f"{key}.pub").read_text(encoding="ascii").split()[:2]
    return f"{kind} {blob}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


@dataclass
class Sshd:
    """A running sshd and everything a test needs to reach it."""

    base: Path
    port: int
    readonly_port: int
    user: str
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    host_ed25519: Path = field(init=False)
    host_rsa: Path = field(init=False)
    other_ed25519: Path = field(init=False)  # a host key the server does not have
    other_ecdsa: Path = field(init=False)  # a host key of a type the server does not have
    ed25519: Path = field(init=False)
    rsa: Path = field(init=False)
    ed25519_passphrase: Path = field(init=False)  # encrypted with PASSPHRASE
    stranger: Path = field(init=False)  # a client key the server does not authorize
    known_hosts: Path = field(init=False)  # the server's ed25519 host key, both ports
    passphrase: str = PASSPHRASE
    keys: Path | None = None  # where the keys are (default: base/keys)
    sftp_subsystem: str = "internal-sftp"  # the `Subsystem sftp` command of the read-write port
    extra_config: str = ""  # more sshd_config lines (e.g. `Ciphers 3des-cbc`)
    _dirs: Iterator[int] = field(default_factory=count, init=False)

    def __post_init__(self) -> None:
        keys = self.keys = self.keys or self.base / "keys"
        self.host_ed25519 = keys / "ssh_host_ed25519_key"
        self.host_rsa = keys / "ssh_host_rsa_key"
        self.other_ed25519 = keys / "other_host_ed25519_key"
        self.other_ecdsa = keys / "other_host_ecdsa_key"
        self.ed25519 = keys / "id_ed25519"
        self.rsa = keys / "id_rsa"
        self.ed25519_passphrase = keys / "id_ed25519_passphrase"
        self.stranger = keys / "id_stranger"
        self.known_hosts = self.base / "known_hosts"

    def key_specs(self) -> list[tuple[Path, str, str]]:
        """Every key of the set: (private key path, type, passphrase)."""
        return [
            (self.host_ed25519, "ed25519", ""),
            (self.host_rsa, "rsa", ""),
            (self.other_ed25519, "ed25519", ""),
            (self.other_ecdsa, "ecdsa", ""),
            (self.ed25519, "ed25519", ""),
            (self.rsa, "rsa", ""),
            (self.ed25519_passphrase, "ed25519", PASSPHRASE),
            (self.stranger, "ed25519", ""),
        ]

    @property
    def remote_base(self) -> Path:
        return self.base / "remote"

    @property
    def log(self) -> Path:
        return self.base / "sshd.log"

    def name(self, port: int | None = None) -> str:
        """The known_hosts name of the server: `[127.0.0.1]:port`."""
        return f"[{self.host}]:{port or self.port}"

    def remote_dir(self) -> Path:
        """A fresh, empty remote folder for one test."""
        path = self.remote_base / f"d{next(self._dirs)}"
        path.mkdir(parents=True)
        return path

    def write_known_hosts(self, path: Path, *host_keys: Path, port: int | None = None) -> Path:
        """A known_hosts file listing `host_keys` (private key paths) for the server."""
        lines = [f"{self.name(port)} {public_line(k)}\n" for k in host_keys]
        path.write_text("".join(lines), encoding="ascii")
        return path

    def section(
        self,
        remote_dir: Path | str,
        *,
        port: int | None = None,
        name: str = "test-sftp",
        timeout_seconds: float = 10,
        private_key: Path | None = None,
        known_hosts: Path | None = None,
    ) -> SftpDestinationSection:
        return SftpDestinationSection(
            kind="sftp",
            name=name,
            host=self.host,
            port=port or self.port,
            username=self.user,
            private_key=str(private_key or self.ed25519),
            known_hosts=str(known_hosts or self.known_hosts),
            remote_dir=str(remote_dir),
            timeout_seconds=timeout_seconds,
        )

    def destination_toml(
        self,
        remote_dir: Path | str,
        *,
        name: str = "operator",
        port: int | None = None,
        private_key: Path | None = None,
        known_hosts: Path | None = None,
        timeout_seconds: float = 10,
        formats: tuple[str, ...] = ("xml", "json", "csv"),
    ) -> str:
        """A `[[destinations]]` block of rorfeed.toml for this server."""
        return f"""
[[destinations]]
name = "{name}"
kind = "sftp"
host = "{self.host}"
port = {port or self.port}
username = "{self.user}"
private_key = "{private_key or self.ed25519}"
known_hosts = "{known_hosts or self.known_hosts}"
remote_dir = "{remote_dir}"
formats = [{", ".join(f'"{f}"' for f in formats)}]
timeout_seconds = {timeout_seconds}
"""

    def session_pids(self) -> list[int]:
        """The sshd processes serving connections (children of the listener)."""
        assert self.process is not None
        return _children(self.process.pid)

    def kill_sessions(self, sig: signal.Signals = signal.SIGKILL) -> list[int]:
        """Send `sig` to every process serving a connection; the listener stays up."""
        pids = self.session_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids


def _config(base: Path, server: Sshd) -> Path:
    cfg = base / "sshd_config"
    cfg.write_text(
        f"""\
ListenAddress 127.0.0.1:{server.port}
ListenAddress 127.0.0.1:{server.readonly_port}
HostKey {server.host_ed25519}
HostKey {server.host_rsa}
PidFile {base / "sshd.pid"}
AuthorizedKeysFile {base / "authorized_keys"}
AllowUsers {server.user}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding no
X11Forwarding no
MaxStartups 100
LogLevel VERBOSE
Subsystem sftp {server.sftp_subsystem}
{server.extra_config}
Match LocalPort {server.readonly_port}
    ForceCommand internal-sftp -R
""",
        encoding="ascii",
    )
    return cfg


def _locked(user: str) -> bool:
    try:
        lines = Path("/etc/shadow").read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    return any(line.split(":")[0] == user and line.split(":")[1].startswith("!") for line in lines)


def _generate_keys(server: Sshd) -> None:
    """Generate the key set into `server.keys` unless it is there already (`done` marker)."""
    assert server.keys is not None
    if (server.keys / "done").exists():
        return
    if server.keys.exists():  # a half-made set: ssh-keygen will not overwrite it
        shutil.rmtree(server.keys)
    server.keys.mkdir(parents=True)
    for key, kind, passphrase in server.key_specs():
        _keygen(key, kind, passphrase)
    (server.keys / "done").touch()


@contextmanager
def _exclusive(lock: Path, seconds: float) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock`, waiting at most `seconds` for it."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SshdUnavailable(f"{lock}: still locked after {seconds:g} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _start(
    base: Path,
    keys: Path | None = None,
    sftp_subsystem: str = "internal-sftp",
    extra_config: str = "",
) -> Sshd:
    """Start sshd with its files under `base` (an empty folder) and its keys in `keys` (made
    there when missing; default `base/keys`); `SshdUnavailable` when it cannot."""
    if not SSHD.exists():
        raise SshdUnavailable(
            f"{SSHD} is missing: the SFTP tests need a real OpenSSH server — install it with"
            " `apt-get install openssh-server` (bash .ci/run does)"
        )
    user = getpass.getuser()
    if _locked(user):
        raise SshdUnavailable(
            f"the account {user} is locked ('!' in /etc/shadow): sshd refuses key logins to a"
            " locked account without PAM — run the tests as another user or unlock it"
        )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    server = Sshd(
        base=base,
        port=_free_port(),
        readonly_port=_free_port(),
        user=user,
        keys=keys,
        sftp_subsystem=sftp_subsystem,
        extra_config=extra_config,
    )
    assert server.keys is not None
    with _exclusive(server.keys.parent / f"{server.keys.name}.lock", 120):
        _generate_keys(server)
    authorized = [server.ed25519, server.rsa, server.ed25519_passphrase]
    (base / "authorized_keys").write_text(
        "".join(f"{public_line(k)}\n" for k in authorized), encoding="ascii"
    )
    server.remote_base.mkdir()
    for _attempt in range(3):  # a free port may be taken between its choice and sshd's bind
        if _launch(server):
            return server
        _stop(server.process)
        if b"Address already in use" not in server.log.read_bytes():
            break
        server.port, server.readonly_port = _free_port(), _free_port()
    log = server.log.read_text(errors="replace")
    raise SshdUnavailable(f"sshd did not start within {START_SECONDS:g} s; its log:\n{log}")


def _launch(server: Sshd) -> bool:
    """Start sshd; True once it answers with its SSH banner, False when it died or is mute."""
    server.known_hosts.write_text(
        "".join(
            f"{server.name(p)} {public_line(server.host_ed25519)}\n"
            for p in (server.port, server.readonly_port)
        ),
        encoding="ascii",
    )
    cfg = _config(server.base, server)
    with server.log.open("wb") as log:
        server.process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            with socket.create_connection((server.host, server.port), timeout=1) as s:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                if s.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    for pid in _children(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextmanager
def running_sshd(
    base: Path,
    keys: Path | None = None,
    sftp_subsystem: str = "internal-sftp",
    extra_config: str = "",
) -> Iterator[Sshd]:
    """A real OpenSSH server with its files under `base` (an empty folder), stopped on exit.

    Its keys are read from `keys` (generated there when missing; default `base/keys`).
    `sftp_subsystem` is the `Subsystem sftp` command (e.g. a wrapper that logs every SFTP
    operation); `extra_config`, more lines of its configuration. Raises `SshdUnavailable` when
    it cannot be started.
    """
    server = _start(base, keys, sftp_subsystem, extra_config)
    try:
        yield server
    finally:
        _stop(server.process)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real OpenSSH server for this test session (or xdist worker)."""
    base = tmp_path_factory.mktemp("sshd")
    # One key set per test run: the xdist workers' temporary folders share a parent.
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    try:
        with running_sshd(base, shared / "sshd-keys") as server:
            yield server
    except SshdUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
