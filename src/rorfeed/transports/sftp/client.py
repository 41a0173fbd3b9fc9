"""The `sftp` destination, the code: paramiko, strict host keys, key auth, every step bounded.

Errors are translated here, at the edge, into rorfeed's `TransportError` tree (`raise … from`);
each message names the destination, the account, the host and the port.

Time: `open(timeout)` fixes a deadline for the whole session (the destination's budget for the
cycle). Every blocking step waits at most `min(remaining, op_timeout)`, and a watchdog closes the
SSH transport at the deadline, so that even a wait paramiko does not bound ends then; anything
that fails after the deadline is reported as `ConnectTimeout`.

Host keys: only the configured `known_hosts` is read (hashed entries and `[host]:port` names
work). When it lists keys for the host, only those key types are negotiated (as OpenSSH does),
so a server with several host keys shows the one we know. An unknown or changed key refuses the
connection with the offered key's type, its SHA256 fingerprint and the line to add once the
fingerprint has been compared with the one the operator publishes.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import paramiko
from paramiko.hostkeys import InvalidHostKey
from paramiko.pkey import UnknownKeyType
from paramiko.sftp import CMD_INIT, CMD_VERSION
from paramiko.ssh_exception import IncompatiblePeer

from rorfeed.config import Config
from rorfeed.errors import (
    AuthFailed,
    ConnectTimeout,
    HostKeyRejected,
    RemoteMissing,
    RemoteRefused,
    TransportError,
)
from rorfeed.transports.base import Session, plain_name
from rorfeed.transports.sftp import SftpDestinationSection

KEEPALIVE_SECONDS = 15
CHUNK = 32768
# Host-key algorithms to negotiate for each key type a known_hosts file can hold.
_ALGORITHMS_OF_KEY_TYPE = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
}
# Only current algorithms, as OpenSSH 9 negotiates by default (SPEC §7), whatever the paramiko
# version: no CBC cipher, no MD5 or truncated SHA-1 MAC, no SHA-1 key exchange, and SHA-1 RSA
# signatures refused both ways. Named here rather than derived from paramiko's lists, so that a
# paramiko upgrade cannot bring one back.
_DISABLED = {
    "ciphers": ["3des-cbc", "aes128-cbc", "aes192-cbc", "aes256-cbc", "blowfish-cbc"],
    "macs": ["hmac-md5", "hmac-md5-96", "hmac-sha1-96"],
    "kex": [
        "diffie-hellman-group1-sha1",
        "diffie-hellman-group14-sha1",
        "diffie-hellman-group-exchange-sha1",
    ],
    "keys": ["ssh-rsa", "ssh-rsa-cert-v01@openssh.com"],
    "pubkeys": ["ssh-rsa", "ssh-rsa-cert-v01@openssh.com"],
}
_POSIX_RENAME = "posix-rename@openssh.com"
# paramiko's own log records, under a name of ours. Its transport thread logs every failure
# itself, a traceback at ERROR one line per record, often after the session is over; rorfeed
# reports the same failure once, translated, with the destination's name: keep only paramiko's
# critical records.
PARAMIKO_LOG = "rorfeed.sftp.paramiko"
logging.getLogger(PARAMIKO_LOG).setLevel(logging.CRITICAL)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint: `SHA256:` then unpadded base64 of the key blob's digest."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The name a host is filed under in known_hosts: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def step(self, op_timeout: float, where: str) -> float:
        """How long the next blocking step may take: `min(remaining, op_timeout)`."""
        remaining = self.remaining()
        if remaining <= 0:
            raise ConnectTimeout(f"{where}: the delivery's time budget is spent")
        return min(remaining, op_timeout)


class _SFTPClient(paramiko.SFTPClient):
    """An SFTP client that keeps the extensions the server advertises (paramiko drops them)."""

    extensions: dict[str, bytes]

    def _send_version(self) -> int:
        base: Any = self  # paramiko's packet helpers are not in its type stubs
        init = paramiko.Message()
        init.add_int(3)
        base._send_packet(CMD_INIT, init)
        kind, data = base._read_packet()
        if kind != CMD_VERSION:
            raise paramiko.SFTPError("Incompatible sftp protocol")
        reply = paramiko.Message(data)
        version = reply.get_int()
        self.extensions = {}
        while reply.get_remainder():
            ext = reply.get_text()
            self.extensions[ext] = reply.get_string()
        return version


class SftpTransport:
    """Connects to one `sftp` destination; `open()` gives the session of a cycle."""

    def __init__(
        self,
        section: SftpDestinationSection,
        private_key: Path,
        known_hosts: Path,
        passphrase: str | None,
        *,
        op_timeout: float | None = None,
    ) -> None:
        self.section = section
        self.private_key = private_key
        self.known_hosts = known_hosts
        self._passphrase = passphrase
        self.op_timeout = op_timeout if op_timeout is not None else section.timeout_seconds
        s = section
        self.where = f'destination "{s.name}" (sftp {s.username}@{s.host}:{s.port})'

    def __repr__(self) -> str:
        return f"SftpTransport({self.where})"

    def open(self, timeout: float) -> SftpSession:
        """Connect, check the host key, authenticate, start SFTP: all within `timeout` seconds."""
        deadline = _Deadline(timeout)
        key = self._load_key()
        known = self._known_keys()
        transport = self._start(deadline, known)
        watchdog = threading.Timer(deadline.remaining(), transport.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            self._check_host_key(transport, known)
            self._authenticate(transport, key, deadline)
            sftp = self._start_sftp(transport, deadline)
        except BaseException:
            watchdog.cancel()
            transport.close()
            raise
        return SftpSession(self, transport, sftp, deadline, watchdog)

    # -- connection steps ---------------------------------------------------------------------

    def _load_key(self) -> paramiko.PKey:
        path = self.private_key
        what = f"{self.where}: private key {path}"
        # bytes: from_path hands the passphrase to cryptography, which refuses a str (the stubs
        # say str); positional: the keyword is `passphrase` in paramiko 3.x, `password` in 5.x
        secret = None if self._passphrase is None else self._passphrase.encode("utf-8")
        try:
            return paramiko.PKey.from_path(path, cast(str, secret))
        except OSError as exc:
            raise AuthFailed(f"{what} cannot be read ({exc.strerror})") from exc
        except UnknownKeyType as exc:
            raise AuthFailed(f"{what}: unsupported key type (use ed25519 or RSA)") from exc
        except TypeError as exc:
            # cryptography: "Password was not given but private key is encrypted" or the reverse
            if self._passphrase is None:
                raise AuthFailed(
                    f"{what} is encrypted and no passphrase is configured"
                    " — set passphrase_file or passphrase_env"
                ) from exc
            raise AuthFailed(
                f"{what} is not encrypted but a passphrase is configured — remove the passphrase"
                " setting"
            ) from exc
        except (ValueError, paramiko.SSHException) as exc:
            if self._passphrase is not None:
                raise AuthFailed(
                    f"{what} cannot be decrypted: wrong passphrase, or not a private key"
                ) from exc
            raise AuthFailed(f"{what} is not a readable private key (OpenSSH or PEM)") from exc

    def _known_keys(self) -> dict[str, paramiko.PKey]:
        name = known_hosts_name(self.section.host, self.section.port)
        try:
            host_keys = paramiko.HostKeys(str(self.known_hosts))
        except OSError as exc:
            raise HostKeyRejected(
                f"{self.where}: known_hosts {self.known_hosts} cannot be read ({exc.strerror})"
            ) from exc
        except InvalidHostKey as exc:
            raise HostKeyRejected(
                f"{self.where}: known_hosts {self.known_hosts} has an invalid line: {exc.line!r}"
            ) from exc
        found = host_keys.lookup(name)
        return dict(found) if found is not None else {}

    def _start(
        self, deadline: _Deadline, known: dict[str, paramiko.PKey] | None
    ) -> paramiko.Transport:
        """TCP connect, banner and key exchange, bounded by the deadline.

        With `known` host keys, only their types are negotiated; None allows any type.
        """
        algorithms = [a for t in known or {} for a in _ALGORITHMS_OF_KEY_TYPE.get(t, ())]
        s = self.section
        with _translating(self.where, "connect", deadline):
            try:
                sock = socket.create_connection((s.host, s.port), self._step(deadline))
            except socket.gaierror as exc:
                raise TransportError(
                    f"{self.where}: connect: cannot resolve {s.host} ({exc.strerror})"
                ) from exc
            except ConnectionRefusedError as exc:
                raise TransportError(
                    f"{self.where}: connect: connection refused by {s.host}:{s.port}"
                    " — is the SSH server running on that port?"
                ) from exc
        # Every SSH exchange is a small request waiting for its answer: with Nagle's algorithm
        # on, each waited for the peer's delayed ACK (40 ms on Linux); off, authentication on
        # loopback takes 11 ms instead of 50.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport: paramiko.Transport | None = None
        try:
            with _translating(self.where, "SSH handshake", deadline):
                transport = paramiko.Transport(sock, disabled_algorithms=_DISABLED)
                transport.set_log_channel(PARAMIKO_LOG)
                self._handshake(transport, deadline, algorithms)
        except BaseException:
            if transport is not None:
                transport.close()
            sock.close()
            raise
        if not transport.is_active():
            failure = transport.get_exception()
            transport.close()
            if known and isinstance(failure, IncompatiblePeer) and "host key" in str(failure):
                # The server has no key of a type known_hosts lists for it: a changed key.
                # Fetch the one it offers, only to show its fingerprint.
                raise HostKeyRejected(
                    self._rejection(self._offered_key(deadline), known)
                ) from failure
            with _translating(self.where, "SSH handshake", deadline):
                raise failure if failure is not None else paramiko.SSHException("refused")
        return transport

    def _handshake(
        self, transport: paramiko.Transport, deadline: _Deadline, algorithms: list[str]
    ) -> None:
        step = self._step(deadline)
        # paramiko's own limits are backstops: `_wait` below decides first
        transport.banner_timeout = step
        transport.handshake_timeout = step + 1
        transport.auth_timeout = step
        transport.set_keepalive(KEEPALIVE_SECONDS)
        if algorithms:
            transport.get_security_options().key_types = [
                a for a in transport.preferred_keys if a in algorithms
            ]
        done = threading.Event()
        transport.start_client(event=done)
        if not _wait(done, transport, deadline, step):
            raise ConnectTimeout(
                f"{self.where}: SSH handshake: no answer within {step:.1f} s"
                " (the server accepted TCP but did not complete the SSH handshake)"
            )

    def _step(self, deadline: _Deadline) -> float:
        return deadline.step(self.op_timeout, self.where)

    def _check_host_key(
        self, transport: paramiko.Transport, known: dict[str, paramiko.PKey]
    ) -> None:
        offered = transport.get_remote_server_key()
        ours = known.get(offered.get_name())
        if ours is not None and ours == offered:
            return
        raise HostKeyRejected(self._rejection(offered, known))

    def _rejection(self, offered: paramiko.PKey | None, known: dict[str, paramiko.PKey]) -> str:
        name = known_hosts_name(self.section.host, self.section.port)
        changed = bool(known)
        if offered is None:
            shown = "a key of another type (it could not be fetched to show its fingerprint)"
            accept = ""
        else:
            shown = f"{offered.get_name()} {fingerprint(offered)}"
            edit = (
                f"replace the lines for {name} in {self.known_hosts} with"
                if changed
                else f"add this line to {self.known_hosts}"
            )
            accept = (
                f" To accept it deliberately: compare {fingerprint(offered)} with the fingerprint"
                f" the operator publishes and, only if they match, {edit}:"
                f" {name} {offered.get_name()} {offered.get_base64()}"
            )
        if not changed:
            return (
                f"{self.where}: host key not trusted: the server offers {shown}, and"
                f" {self.known_hosts} has no key for {name}.{accept}"
            )
        listed = ", ".join(f"{t} {fingerprint(k)}" for t, k in known.items())
        return (
            f"{self.where}: HOST KEY CHANGED: the server offers {shown}, but {self.known_hosts}"
            f" lists {listed} for {name}. Either the server was re-keyed or someone is in the"
            f" middle: refusing to connect.{accept}"
        )

    def _offered_key(self, deadline: _Deadline) -> paramiko.PKey | None:
        """The host key the server offers when any type is allowed (to show its fingerprint)."""
        try:
            transport = self._start(deadline, None)
        except TransportError:
            return None
        try:
            return transport.get_remote_server_key()
        finally:
            transport.close()

    def _authenticate(
        self, transport: paramiko.Transport, key: paramiko.PKey, deadline: _Deadline
    ) -> None:
        s = self.section
        with _translating(self.where, "authentication", deadline):
            transport.auth_timeout = self._step(deadline)
            try:
                further = transport.auth_publickey(s.username, key)
            except paramiko.BadAuthenticationType as exc:
                raise AuthFailed(
                    f"{self.where}: authentication: the server does not accept keys for"
                    f" {s.username} (it allows: {', '.join(exc.allowed_types) or 'nothing'})"
                ) from exc
            except paramiko.AuthenticationException as exc:
                if "timeout" in str(exc).lower() or deadline.expired():
                    raise ConnectTimeout(
                        f"{self.where}: authentication: no answer in time"
                    ) from exc
                raise AuthFailed(
                    f"{self.where}: authentication: the server refused the key {self.private_key}"
                    f" ({key.get_name()} {fingerprint(key)}) for {s.username} — give the operator"
                    " its public key"
                ) from exc
            if further or not transport.is_authenticated():
                raise AuthFailed(
                    f"{self.where}: authentication: the server wants more than a key"
                    f" ({', '.join(further)})"
                )

    def _start_sftp(self, transport: paramiko.Transport, deadline: _Deadline) -> _SFTPClient:
        with _translating(self.where, "SFTP start", deadline):
            channel = transport.open_session(timeout=self._step(deadline))
            channel.settimeout(self._step(deadline))
            channel.invoke_subsystem("sftp")
            return _SFTPClient(channel)


class SftpSession(Session):
    """One SSH connection and SFTP channel, used for every file of a cycle."""

    def __init__(
        self,
        owner: SftpTransport,
        transport: paramiko.Transport,
        sftp: _SFTPClient,
        deadline: _Deadline,
        watchdog: threading.Timer,
    ) -> None:
        self._op_timeout = owner.op_timeout
        self._transport = transport
        self._sftp = sftp
        self._deadline = deadline
        self._watchdog = watchdog
        self.where = owner.where
        self.remote_dir = owner.section.remote_dir.rstrip("/") or "/"
        self.posix_rename = _POSIX_RENAME in sftp.extensions
        key = transport.get_remote_server_key()
        self.host_key = f"{key.get_name()} {fingerprint(key)}"
        self.username = owner.section.username

    def _path(self, name: str) -> str:
        return f"{self.remote_dir}/{name}"

    def _bounded(self) -> None:
        """Before each blocking operation: the time it may take, or `ConnectTimeout`."""
        channel = self._sftp.get_channel()
        step = self._deadline.step(self._op_timeout, self.where)
        if channel is not None:
            channel.settimeout(step)

    @contextlib.contextmanager
    def _op(self, what: str) -> Iterator[None]:
        try:
            with _translating(self.where, what, self._deadline, remote_dir=self.remote_dir):
                yield
        except ConnectTimeout:
            # A late answer could be taken for the next request's: this session is done.
            self._transport.close()
            raise

    # -- Session ------------------------------------------------------------------------------

    def upload(self, local: Path, name: str) -> str:
        plain_name(name)
        temp = self._path(f".{name}.part")
        try:
            with local.open("rb") as src:
                size = os.fstat(src.fileno()).st_size
                self._upload(src, temp, size)
            self._check_size(temp, size)
        except TransportError:
            self._discard(temp)
            raise
        except OSError as exc:  # the local file
            self._discard(temp)
            raise TransportError(
                f"{self.where}: cannot read local file {local} ({exc.strerror})"
            ) from exc
        return temp

    def commit(self, temp_name: str, name: str) -> None:
        self._rename(temp_name, self._path(plain_name(name)))

    def _upload(self, src: BinaryIO, temp: str, size: int) -> None:
        sent = 0
        with self._op(f"upload to {temp}"):
            self._bounded()
            with self._sftp.open(temp, "wb") as dst:
                dst.set_pipelined(True)
                while chunk := src.read(CHUNK):
                    self._bounded()
                    dst.write(chunk)
                    sent += len(chunk)
                self._bounded()
        if sent != size:
            raise TransportError(
                f"{self.where}: the local file changed during the upload ({sent} bytes read,"
                f" {size} expected); not renamed"
            )

    def _check_size(self, temp: str, size: int) -> None:
        with self._op(f"stat {temp}"):
            self._bounded()
            uploaded = self._sftp.stat(temp).st_size
        if uploaded != size:
            raise TransportError(
                f"{self.where}: the server holds {uploaded} bytes of {size} in {temp}; not renamed"
            )

    def _rename(self, temp: str, final: str) -> None:
        with self._op(f"rename {temp} to {final}"):
            self._bounded()
            if self.posix_rename:
                self._sftp.posix_rename(temp, final)
                return
            # SFTPv3 rename refuses an existing target: remove it first. The final name is then
            # absent for a moment, never partial.
            with contextlib.suppress(FileNotFoundError):
                self._sftp.remove(final)
            self._bounded()
            self._sftp.rename(temp, final)

    def _discard(self, temp: str) -> None:
        """Best effort, bounded: remove a temporary file after a failure."""
        if self._deadline.expired() or not self._transport.is_active():
            return
        with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            channel = self._sftp.get_channel()
            if channel is not None:
                channel.settimeout(min(5.0, self._deadline.remaining()))
            self._sftp.remove(temp)

    def size_of(self, name: str) -> int | None:
        plain_name(name)
        path = self._path(name)
        with self._op(f"stat {path}"):
            self._bounded()
            try:
                return self._sftp.stat(path).st_size
            except FileNotFoundError:
                self._bounded()
                self._sftp.stat(self.remote_dir)  # RemoteMissing when the folder is absent
                return None

    def discard(self, name: str) -> None:
        self._discard(self._path(f".{plain_name(name)}.part"))

    def describe(self) -> str:
        rename = "posix-rename" if self.posix_rename else "plain rename"
        return (
            f"host key {self.host_key} verified, authenticated as {self.username},"
            f" {self.remote_dir} writable ({rename})"
        )

    def probe(self) -> None:
        temp = self._path(f".rorfeed-probe-{secrets.token_hex(8)}.part")
        with self._op(f"write probe {temp}"):
            self._bounded()
            with self._sftp.open(temp, "wb") as fh:
                fh.write(b"rorfeed probe\n")
        with self._op(f"remove probe {temp}"):
            self._bounded()
            self._sftp.remove(temp)

    def close(self) -> None:
        self._watchdog.cancel()
        with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            self._sftp.close()
        self._transport.close()


def _wait(
    done: threading.Event, transport: paramiko.Transport, deadline: _Deadline, step: float
) -> bool:
    """Wait for the handshake's end (success or failure); False when `step` ran out."""
    until = min(deadline.at, time.monotonic() + step)
    while not done.wait(min(0.05, max(0.0, until - time.monotonic()))):
        if not transport.is_active():
            return True
        if time.monotonic() >= until:
            return False
    return True


@contextlib.contextmanager
def _translating(
    where: str, what: str, deadline: _Deadline, *, remote_dir: str | None = None
) -> Iterator[None]:
    """Translate paramiko and socket errors of one step into the `TransportError` tree."""
    try:
        yield
    except TransportError:
        raise
    except TimeoutError as exc:  # socket.timeout is TimeoutError
        raise ConnectTimeout(f"{where}: {what}: no answer in time") from exc
    except PermissionError as exc:
        raise RemoteRefused(f"{where}: {what}: permission denied by the server") from exc
    except FileNotFoundError as exc:
        folder = f"the remote folder {remote_dir}" if remote_dir else "the remote path"
        raise RemoteMissing(
            f"{where}: {what}: no such file — does {folder} exist? (rorfeed never creates it)"
        ) from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if deadline.expired():
            raise ConnectTimeout(f"{where}: {what}: the delivery's time budget ran out") from exc
        if isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
            if isinstance(exc.__context__, TimeoutError):
                raise ConnectTimeout(
                    f"{where}: {what}: no SSH banner in time (the server accepted TCP but says"
                    " nothing)"
                ) from exc
            raise TransportError(f"{where}: {what}: not an SSH server ({exc})") from exc
        if isinstance(exc, IncompatiblePeer) and "no acceptable" in str(exc):
            raise TransportError(
                f"{where}: {what}: the server offers no algorithm rorfeed accepts ({exc});"
                " rorfeed refuses CBC ciphers, MD5 and truncated SHA-1 MACs, SHA-1 key exchange"
                " and SHA-1 RSA signatures — the server must offer current ones (OpenSSH 9's"
                " defaults)"
            ) from exc
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
            raise RemoteRefused(f"{where}: {what}: permission denied by the server") from exc
        detail = str(exc) or type(exc).__name__
        raise TransportError(f"{where}: {what}: {detail}") from exc


def build(config: Config, index: int) -> SftpTransport:
    """The transport of `config.file.destinations[index]`, an `sftp` destination."""
    section = config.file.destinations[index]
    if not isinstance(section, SftpDestinationSection):
        raise TypeError(f"destinations[{index}] is not an sftp destination")
    return SftpTransport(
        section,
        private_key=config.resolve(section.private_key),
        known_hosts=config.resolve(section.known_hosts),
        passphrase=config.secrets.get(f"destinations[{index}].passphrase"),
    )
