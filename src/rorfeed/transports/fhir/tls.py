"""The `fhir` destination's TLS (SPEC §12): the server verified against `ca_bundle` and its
host name, TLS ≥ 1.2, the client certificate presented; and the words for a TLS failure."""

from __future__ import annotations

import ssl
from pathlib import Path

from rorfeed.errors import AuthFailed, TransportError, shown

# Alerts by which a server refuses the client certificate during the handshake (OpenSSL's
# reasons): a configuration problem, not a broken connection — not retried.
CLIENT_CERTIFICATE_REFUSED = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)


def ssl_context(
    where: str, client_cert: Path, client_key: Path, ca_bundle: Path, passphrase: str | None
) -> ssl.SSLContext:
    """Verify the server against `ca_bundle` and its host name, TLS ≥ 1.2, present the client
    certificate. Raises `TransportError` (`AuthFailed` for the certificate or key)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(
            f"{where}: ca_bundle {ca_bundle} holds no usable PEM certificate ({ssl_reason(exc)})"
        ) from exc

    # Always a callback: without one, OpenSSL would prompt on the terminal for an encrypted
    # key. An empty answer makes the load fail instead.
    def password() -> bytes:
        return b"" if passphrase is None else passphrase.encode("utf-8")

    try:
        context.load_cert_chain(str(client_cert), str(client_key), password=password)
    except OSError as exc:
        reason = ssl_reason(exc)
        # OpenSSL often says only "PEM lib": whether the key is encrypted is read from its file.
        if _encrypted(client_key) or "BAD_DECRYPT" in reason:
            why = (
                "is encrypted and no passphrase is configured — set client_key_passphrase_file"
                " or client_key_passphrase_env"
                if passphrase is None
                else "does not open with the configured passphrase"
            )
            raise AuthFailed(f"{where}: client_key {client_key} {why}") from exc
        if "KEY_VALUES_MISMATCH" in reason:
            raise AuthFailed(
                f"{where}: client_key {client_key} is not the key of client_cert {client_cert}"
            ) from exc
        raise AuthFailed(
            f"{where}: client_cert {client_cert} / client_key {client_key} cannot be loaded as"
            f" PEM ({reason})"
        ) from exc
    return context


def _encrypted(key: Path) -> bool:
    """A PEM private key protected by a passphrase (PKCS#8 or the traditional header)."""
    try:
        text = key.read_bytes()[:4096]
    except OSError:
        return False
    return b"BEGIN ENCRYPTED PRIVATE KEY" in text or b"Proc-Type: 4,ENCRYPTED" in text


def ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason or type(exc).__name__)


def tls_refusal(exc: BaseException) -> str | None:
    """`tls_verify` when the server's certificate did not verify, `client_certificate` when the
    server refused ours, None for any other failure (retried: a broken connection)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "tls_verify"
        if isinstance(cause, ssl.SSLError) and cause.reason in CLIENT_CERTIFICATE_REFUSED:
            return "client_certificate"
        cause = cause.__cause__ or cause.__context__
    return None


def ssl_cause(exc: BaseException) -> BaseException:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return exc


def verify_message(exc: BaseException) -> str:
    cause = ssl_cause(exc)
    message = getattr(cause, "verify_message", None)
    return shown(str(message or ssl_reason(cause)))
