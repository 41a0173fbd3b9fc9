"""pytest plugin: a real SMTP server (`aiosmtpd`) on loopback that keeps what it receives.

- `smtp`: a plain server (no TLS, no AUTH), fresh for each test.
- `smtp_tls`: a server that requires STARTTLS before anything else and AUTH (over TLS only)
  before accepting mail; its certificate (self-signed, for 127.0.0.1) is generated at test
  time and `smtp_tls.client_context` trusts it. Login: `SMTP_USER` / `SMTP_PASSWORD`.
- `start_smtp(...)`: a context manager for a test that needs a server on a chosen port later
  (e.g. a relay that comes back up).

Each server runs its own asyncio loop in a thread (aiosmtpd's `Controller`) and is stopped at
the end of the test; fixtures are function-scoped, so xdist workers never share one.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
SMTP_USER = "cellule-lits"
SMTP_PASSWORD = "mot de passe du relais 42"  # the test server's own


@dataclass(frozen=True)
class Received:
    """One message as the server took it: envelope and parsed content."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    login: str | None  # the AUTH login of the session, None without AUTH
    tls: bool  # the session was under TLS when the message came


@dataclass
class _Handler:
    """aiosmtpd handler: stores every message, thread-safely."""

    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reject_subject: str | None = None  # refuse (554) a message whose subject contains this

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or b""
        message = message_from_bytes(raw, policy=policy.default)
        if self.reject_subject and self.reject_subject in str(message["Subject"]):
            return "554 5.6.0 message refused by the test server"
        login = None
        if session.authenticated and isinstance(session.auth_data, LoginPassword):
            login = session.auth_data.login.decode()
        with self.lock:
            self.received.append(
                Received(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    raw=raw,
                    message=message,
                    login=login,
                    tls=session.ssl is not None,
                )
            )
        return "250 OK"


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


@dataclass
class SmtpServer:
    """A running server: where it listens and what it received."""

    port: int
    _handler: _Handler
    host: str = HOST
    client_context: ssl.SSLContext | None = None  # trusts the server's certificate (TLS only)

    @property
    def messages(self) -> list[Received]:
        with self._handler.lock:
            return list(self._handler.received)

    def reject_subjects_containing(self, text: str | None) -> None:
        """Make the server refuse (554 after DATA) messages whose subject contains `text`."""
        self._handler.reject_subject = text

    def clear(self) -> None:
        with self._handler.lock:
            self._handler.received.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Verifies the server (certificate and host name) against this certificate only."""
        return ssl.create_default_context(cafile=str(self.cert))


def self_signed(base: Path) -> TlsFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rorfeed test SMTP")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(IPv4Address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(base / "smtp-cert.pem", base / "smtp-key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@contextmanager
def start_smtp(port: int | None = None, tls: TlsFiles | None = None) -> Iterator[SmtpServer]:
    """Run a server until the block ends; with `tls`, STARTTLS and AUTH are required."""
    handler = _Handler()
    kwargs: dict[str, Any] = {}
    if tls is not None:
        kwargs = {
            "tls_context": tls.server_context(),
            "require_starttls": True,
            "auth_required": True,
            "auth_require_tls": True,
            "authenticator": _authenticator,
        }
    for attempt in range(5):  # a free port may be taken between its choice and the bind
        chosen = port or free_port()
        controller = Controller(
            handler,
            hostname=HOST,
            port=chosen,
            server_hostname="smtp.test",  # else aiosmtpd asks DNS for the machine's FQDN
            ready_timeout=10.0,
            **kwargs,
        )
        try:
            controller.start()
        except OSError as exc:
            controller.stop(no_assert=True)
            controller.loop.close()
            if exc.errno != errno.EADDRINUSE or port is not None or attempt == 4:
                raise
            continue
        break
    try:
        yield SmtpServer(
            port=chosen,
            _handler=handler,
            client_context=tls.client_context() if tls is not None else None,
        )
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def smtp_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return self_signed(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A plain SMTP server on loopback (no TLS, no AUTH) for this test."""
    with start_smtp() as server:
        yield server


@pytest.fixture
def smtp_tls(smtp_tls_files: TlsFiles) -> Iterator[SmtpServer]:
    """An SMTP server requiring STARTTLS, then AUTH as SMTP_USER / SMTP_PASSWORD."""
    with start_smtp(tls=smtp_tls_files) as server:
        yield server
