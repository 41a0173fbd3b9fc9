"""Transports against a real OpenSSH server (tests/sshd.py) and a real folder: no mocks."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rorfeed.config import Config, ConfigFile
from rorfeed.errors import (
    AuthFailed,
    ConnectTimeout,
    HostKeyRejected,
    RemoteMissing,
    RemoteRefused,
    TransportError,
)
from rorfeed.transports import DESTINATIONS, open_transport
from rorfeed.transports.base import Session
from rorfeed.transports.directory import DirectoryDestinationSection, DirectoryTransport
from rorfeed.transports.sftp.client import SftpSession, SftpTransport
from tests.sshd import Sshd, running_sshd

pytestmark = pytest.mark.sshd


def sftp(
    sshd: Sshd,
    remote: Path | str,
    *,
    key: Path | None = None,
    known_hosts: Path | None = None,
    passphrase: str | None = None,
    port: int | None = None,
    host: str | None = None,
) -> SftpTransport:
    section = sshd.section(remote, port=port, private_key=key, known_hosts=known_hosts)
    if host is not None:
        section = section.model_copy(update={"host": host})
    return SftpTransport(
        section,
        private_key=key or sshd.ed25519,
        known_hosts=known_hosts or sshd.known_hosts,
        passphrase=passphrase,
    )


def ssh_fingerprint(private_key: Path) -> str:
    """The SHA256 fingerprint as OpenSSH computes it (independent of our code)."""
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{private_key}.pub"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out.split()[1]


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "rorlits_750712184_20250101T1000.xml"
    path.write_bytes(b"<lits>" + bytes(range(256)) * 400 + b"</lits>\n")
    return path


def put(session: Session, local: Path, name: str) -> None:
    """Upload then commit, as the outbox does for each file of its ledger."""
    session.commit(session.upload(local, name), name)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- delivery ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key_attr", ["ed25519", "rsa"])
def test_put_delivers_an_identical_file_and_leaves_no_part(
    sshd: Sshd, payload: Path, key_attr: str
) -> None:
    remote = sshd.remote_dir()
    with sftp(sshd, remote, key=getattr(sshd, key_attr)).open(10) as session:
        put(session, payload, "a.xml")
        put(session, payload, "b.xml")  # one session, several files
    assert (remote / "a.xml").read_bytes() == payload.read_bytes()
    assert (remote / "b.xml").read_bytes() == payload.read_bytes()
    assert leftovers(remote) == []


def test_server_advertises_posix_rename_and_it_is_used(sshd: Sshd) -> None:
    with sftp(sshd, sshd.remote_dir()).open(10) as session:
        assert session.posix_rename


def test_session_socket_sends_small_packets_at_once(
    sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nagle's algorithm made every SSH request wait for the peer's delayed ACK (40 ms each).
    # The connection is seen where the OS hands it over (socket.create_connection), not in the
    # session's attributes; a timing bound would not tell 40 ms of delay from a busy machine.
    opened: list[socket.socket] = []
    create_connection = socket.create_connection

    def recording(*args: Any, **kwargs: Any) -> socket.socket:
        opened.append(create_connection(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(socket, "create_connection", recording)
    with sftp(sshd, sshd.remote_dir()).open(10) as session:
        assert session.size_of("absent.xml") is None  # the session works over that socket
        [sock] = opened
        assert sock.getpeername() == ("127.0.0.1", sshd.port)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.parametrize("posix_rename", [True, False], ids=["posix-rename", "plain-rename"])
def test_existing_target_is_replaced(sshd: Sshd, tmp_path: Path, posix_rename: bool) -> None:
    remote = sshd.remote_dir()
    (remote / "f.json").write_bytes(b"old content, longer than the new one\n")
    new = tmp_path / "new.json"
    new.write_bytes(b"{}\n")
    with sftp(sshd, remote).open(10) as session:
        session.posix_rename = posix_rename
        put(session, new, "f.json")
    assert (remote / "f.json").read_bytes() == b"{}\n"
    assert leftovers(remote) == []


def test_key_with_passphrase_authenticates(sshd: Sshd, payload: Path) -> None:
    remote = sshd.remote_dir()
    transport = sftp(sshd, remote, key=sshd.ed25519_passphrase, passphrase=sshd.passphrase)
    with transport.open(10) as session:
        put(session, payload, "p.xml")
    assert (remote / "p.xml").exists()


def test_size_of_gives_the_size_or_none(sshd: Sshd, payload: Path) -> None:
    remote = sshd.remote_dir()
    with sftp(sshd, remote).open(10) as session:
        assert session.size_of("absent.xml") is None
        put(session, payload, "present.xml")
        assert session.size_of("present.xml") == payload.stat().st_size


def test_probe_proves_the_folder_writable_and_leaves_nothing(sshd: Sshd) -> None:
    remote = sshd.remote_dir()
    with sftp(sshd, remote).open(10) as session:
        session.probe()
    assert list(remote.iterdir()) == []


def test_a_name_that_is_not_plain_is_a_bug(sshd: Sshd, payload: Path) -> None:
    with sftp(sshd, sshd.remote_dir()).open(10) as session, pytest.raises(ValueError):
        put(session, payload, "../escape.xml")


# -- host keys --------------------------------------------------------------------------------


def test_unknown_host_key_is_rejected_with_its_fingerprint(sshd: Sshd, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("# nothing yet\n")
    transport = sftp(sshd, sshd.remote_dir(), known_hosts=known_hosts)
    with pytest.raises(HostKeyRejected) as caught:
        transport.open(10)
    message = str(caught.value)
    assert ssh_fingerprint(sshd.host_ed25519) in message
    assert "ssh-ed25519" in message
    assert f"{sshd.name()} ssh-ed25519 " in message  # the line to add, once compared
    assert "test-sftp" in message
    assert f"127.0.0.1:{sshd.port}" in message


def test_changed_host_key_is_rejected(sshd: Sshd, tmp_path: Path) -> None:
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts", sshd.other_ed25519)
    transport = sftp(sshd, sshd.remote_dir(), known_hosts=known_hosts)
    with pytest.raises(HostKeyRejected) as caught:
        transport.open(10)
    message = str(caught.value)
    assert "CHANGED" in message
    assert ssh_fingerprint(sshd.host_ed25519) in message
    assert ssh_fingerprint(sshd.other_ed25519) in message


def test_host_known_by_a_type_the_server_lacks_is_rejected_showing_the_offered_key(
    sshd: Sshd, tmp_path: Path
) -> None:
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts", sshd.other_ecdsa)
    with pytest.raises(HostKeyRejected) as caught:
        sftp(sshd, sshd.remote_dir(), known_hosts=known_hosts).open(10)
    assert "CHANGED" in str(caught.value)
    assert ssh_fingerprint(sshd.host_ed25519) in str(caught.value)


def test_host_known_only_by_its_rsa_key_is_accepted(sshd: Sshd, tmp_path: Path) -> None:
    # The server prefers ed25519; we ask for the type known_hosts lists, as OpenSSH does.
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts", sshd.host_rsa)
    with sftp(sshd, sshd.remote_dir(), known_hosts=known_hosts).open(10) as session:
        session.probe()


def test_hashed_known_hosts_entry_is_accepted(sshd: Sshd, tmp_path: Path) -> None:
    known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts", sshd.host_ed25519)
    subprocess.run(
        ["ssh-keygen", "-H", "-f", str(known_hosts)], check=True, capture_output=True, timeout=30
    )
    assert "127.0.0.1" not in known_hosts.read_text()
    with sftp(sshd, sshd.remote_dir(), known_hosts=known_hosts).open(10) as session:
        session.probe()


def test_key_filed_under_another_port_is_not_trusted(sshd: Sshd, tmp_path: Path) -> None:
    known_hosts = sshd.write_known_hosts(tmp_path / "kh", sshd.host_ed25519, port=22)
    with pytest.raises(HostKeyRejected, match="has no key for"):
        sftp(sshd, sshd.remote_dir(), known_hosts=known_hosts).open(10)


# -- authentication ---------------------------------------------------------------------------


def test_wrong_client_key_is_auth_failed(sshd: Sshd) -> None:
    with pytest.raises(AuthFailed) as caught:
        sftp(sshd, sshd.remote_dir(), key=sshd.stranger).open(10)
    assert "refused the key" in str(caught.value)
    assert sshd.user in str(caught.value)


def test_wrong_passphrase_is_auth_failed_without_showing_it(sshd: Sshd) -> None:
    transport = sftp(sshd, sshd.remote_dir(), key=sshd.ed25519_passphrase, passphrase="nope-x1")
    with pytest.raises(AuthFailed) as caught:
        transport.open(10)
    assert "cannot be decrypted" in str(caught.value)
    assert "nope-x1" not in str(caught.value)


def test_encrypted_key_without_passphrase_is_auth_failed(sshd: Sshd) -> None:
    with pytest.raises(AuthFailed, match="no passphrase is configured"):
        sftp(sshd, sshd.remote_dir(), key=sshd.ed25519_passphrase).open(10)


# -- remote folder ----------------------------------------------------------------------------


def test_missing_remote_folder_is_remote_missing_and_never_created(
    sshd: Sshd, payload: Path
) -> None:
    remote = sshd.remote_dir() / "absent"
    with sftp(sshd, remote).open(10) as session:
        with pytest.raises(RemoteMissing):
            session.probe()
        with pytest.raises(RemoteMissing):
            put(session, payload, "a.xml")
        with pytest.raises(RemoteMissing):
            session.size_of("a.xml")
    assert not remote.exists()


def test_read_only_remote_folder_is_remote_refused(sshd: Sshd, payload: Path) -> None:
    # The read-only port serves `internal-sftp -R`: writes are refused even to root.
    remote = sshd.remote_dir()
    with sftp(sshd, remote, port=sshd.readonly_port).open(10) as session:
        with pytest.raises(RemoteRefused):
            session.probe()
        with pytest.raises(RemoteRefused):
            put(session, payload, "a.xml")
        assert session.size_of("a.xml") is None
    assert list(remote.iterdir()) == []


# -- time and network failures ----------------------------------------------------------------


class Listener:
    """A loopback TCP server that accepts, optionally says `greeting`, then stays silent."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            if self.greeting:
                conn.sendall(self.greeting)
            self.accepted.append(conn)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Callable[[bytes], Listener]]:
    made: list[Listener] = []

    def make(greeting: bytes = b"") -> Listener:
        made.append(Listener(greeting))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.mark.parametrize(
    "greeting", [b"", b"SSH-2.0-OpenSSH_9.2\r\n"], ids=["no-banner", "no-key-exchange"]
)
def test_server_that_accepts_and_never_answers_times_out_within_the_budget(
    sshd: Sshd, listener: Callable[[bytes], Listener], greeting: bytes
) -> None:
    silent = listener(greeting)
    transport = sftp(sshd, "/depot", port=silent.port)
    started = time.monotonic()
    with pytest.raises(ConnectTimeout) as caught:
        transport.open(1.0)
    assert time.monotonic() - started < 2.0
    assert f"127.0.0.1:{silent.port}" in str(caught.value)


def test_connection_refused_names_the_host_and_port(sshd: Sshd) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(TransportError, match=f"refused by 127.0.0.1:{port}"):
        sftp(sshd, "/depot", port=port).open(5)


def test_unresolvable_host_is_a_transport_error(sshd: Sshd) -> None:
    with pytest.raises(TransportError, match="cannot resolve"):
        sftp(sshd, "/depot", host="no-such-host.invalid").open(5)


def test_operations_after_the_session_budget_time_out(sshd: Sshd, payload: Path) -> None:
    remote = sshd.remote_dir()
    session = sftp(sshd, remote).open(1.0)
    with session:
        assert session.size_of("late.xml") is None  # works within its budget
        time.sleep(1.1)
        with pytest.raises(ConnectTimeout):
            put(session, payload, "late.xml")
    assert not (remote / "late.xml").exists()


def test_server_that_stops_answering_mid_session_times_out_each_operation(
    sshd: Sshd, payload: Path
) -> None:
    remote = sshd.remote_dir()
    section = sshd.section(remote)
    transport = SftpTransport(section, sshd.ed25519, sshd.known_hosts, None, op_timeout=1.0)
    session = transport.open(30)
    try:
        assert sshd.kill_sessions(signal.SIGSTOP), "no sshd process served the session"
        started = time.monotonic()
        with pytest.raises(ConnectTimeout, match="no answer in time"):
            put(session, payload, "stuck.xml")
        assert time.monotonic() - started < 2.0
    finally:
        sshd.kill_sessions(signal.SIGKILL)
        session.close()
    assert not (remote / "stuck.xml").exists()


def test_connection_cut_during_an_upload_leaves_no_final_file_and_next_attempt_succeeds(
    sshd: Sshd, tmp_path: Path
) -> None:
    big = tmp_path / "big.csv"
    with big.open("wb") as fh:
        fh.truncate(256 * 1024 * 1024)
    remote = sshd.remote_dir()
    part = remote / ".big.csv.part"
    outcome: list[BaseException | None] = []

    session = sftp(sshd, remote).open(60)

    def upload() -> None:
        try:
            put(session, big, "big.csv")
        except TransportError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=upload, daemon=True)
    worker.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size > 1 << 20):
        time.sleep(0.005)
    assert part.exists(), "the upload did not start"
    assert sshd.kill_sessions(), "no sshd process served the session"
    worker.join(timeout=20)
    session.close()
    assert not worker.is_alive()
    assert outcome and isinstance(outcome[0], TransportError)
    assert "test-sftp" in str(outcome[0])
    assert not (remote / "big.csv").exists()

    small = tmp_path / "big.csv.retry"
    small.write_bytes(b"retried\n")
    with sftp(sshd, remote).open(10) as retry:
        put(retry, small, "big.csv")
    assert (remote / "big.csv").read_bytes() == b"retried\n"
    assert leftovers(remote) == []


# -- directory --------------------------------------------------------------------------------


def directory(path: Path) -> DirectoryTransport:
    section = DirectoryDestinationSection(kind="directory", name="local", path=str(path))
    return DirectoryTransport(section, path)


def test_directory_put_delivers_and_leaves_no_part(tmp_path: Path, payload: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.xml").write_bytes(b"old")
    with directory(out).open(5) as session:
        assert session.size_of("b.xml") is None
        put(session, payload, "a.xml")
        put(session, payload, "b.xml")
        session.probe()
        assert session.size_of("b.xml") == payload.stat().st_size
    assert (out / "a.xml").read_bytes() == payload.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["a.xml", "b.xml"]


def test_directory_missing_folder_is_remote_missing(tmp_path: Path, payload: Path) -> None:
    out = tmp_path / "absent"
    with directory(out).open(5) as session:
        with pytest.raises(RemoteMissing, match="local"):
            put(session, payload, "a.xml")
        with pytest.raises(RemoteMissing):
            session.probe()
        with pytest.raises(RemoteMissing):
            session.size_of("a.xml")
    assert not out.exists()


def test_directory_unreadable_local_file_is_a_transport_error(tmp_path: Path) -> None:
    with directory(tmp_path).open(5) as session, pytest.raises(TransportError):
        put(session, tmp_path / "missing.xml", "a.xml")
    assert list(tmp_path.iterdir()) == []


# -- registry ---------------------------------------------------------------------------------


def test_importing_the_registry_does_not_import_paramiko() -> None:
    code = "import sys, rorfeed.transports; assert 'paramiko' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_open_transport_builds_each_kind_from_the_config(tmp_path: Path) -> None:
    file = ConfigFile.model_validate(
        {
            "establishments": [
                {
                    "name": "H",
                    "finess": "750712184",
                    "mapping": "m.csv",
                    "source": {"kind": "csv", "path": "x.csv"},
                }
            ],
            "destinations": [
                {
                    "name": "s",
                    "kind": "sftp",
                    "host": "h",
                    "username": "u",
                    "private_key": "id",
                    "known_hosts": "kh",
                    "remote_dir": "/d",
                },
                {"name": "d", "kind": "directory", "path": "out"},
            ],
        }
    )
    config = Config(
        path=tmp_path / "rorfeed.toml", file=file, secrets={"destinations[0].passphrase": "pp"}
    )
    sftp_transport = open_transport(config, 0)
    assert isinstance(sftp_transport, SftpTransport)
    assert sftp_transport.private_key == tmp_path / "id"
    assert sftp_transport.known_hosts == tmp_path / "kh"
    dir_transport = open_transport(config, 1)
    assert isinstance(dir_transport, DirectoryTransport)
    assert dir_transport.path == tmp_path / "out"
    assert set(DESTINATIONS) == {"sftp", "directory"}
    assert "pp" not in repr(sftp_transport)


def test_session_type_is_what_open_returns(sshd: Sshd) -> None:
    with sftp(sshd, sshd.remote_dir()).open(10) as session:
        assert isinstance(session, SftpSession)


# -- algorithms (SPEC §7) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "refused"),
    [
        ("Ciphers 3des-cbc\nMACs hmac-md5", "cipher"),
        ("Ciphers aes128-cbc,aes256-cbc", "cipher"),
        ("MACs hmac-md5,hmac-sha1-96,hmac-md5-96", "mac"),
    ],
)
def test_a_server_offering_only_weak_algorithms_is_refused(
    sshd: Sshd, tmp_path: Path, offered: str, refused: str
) -> None:
    # The same keys and user as the session's server, weaker algorithms only.
    assert sshd.keys is not None
    (tmp_path / "weak").mkdir()
    expected = f"offers no algorithm rorfeed accepts .*no acceptable {refused}"
    with (
        running_sshd(tmp_path / "weak", sshd.keys, extra_config=offered) as weak,
        pytest.raises(TransportError, match=expected) as caught,
    ):
        sftp(weak, weak.remote_dir()).open(10)
    assert f"127.0.0.1:{weak.port}" in str(caught.value)
    assert list(weak.remote_dir().iterdir()) == []
