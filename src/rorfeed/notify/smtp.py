"""Delivery of the e-mails to the bed-management cell over SMTP (SPEC §6).

`Notifier.queue` puts a composed message (`rorfeed.notify.compose`) in the state store's e-mail
queue; `Notifier.flush` hands every waiting message to the SMTP relay with `smtplib`. Every
network step has a timeout and a flush as a whole has a time budget. A message that cannot be
sent stays queued, its attempt counted and its error kept, and is retried at the next flush;
`flush` never raises for a network or relay failure, so e-mail can never fail or block a cycle.

No relay configured (no `[notify]` section, or an empty `smtp_host`) means no e-mail at all:
nothing is queued, so nothing piles up to be sent the day a relay is configured.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from email.header import Header
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime, parseaddr

import structlog

from rorfeed.config import Config, NotifySection
from rorfeed.errors import StateError
from rorfeed.model import Audience
from rorfeed.state import EmailRow, Store
from rorfeed.wording import one_line

log = structlog.get_logger("rorfeed.notify")

STEP_TIMEOUT_SECONDS = 15.0  # each network step: connect, EHLO, STARTTLS, AUTH, one message
FLUSH_BUDGET_SECONDS = 60.0  # a whole flush; what is left waits for the next one
MAX_ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one flush did: `waiting` counts the e-mails still queued after it (failed ones
    included); `error` is the last failure's short reason, empty when none."""

    sent: int = 0
    failed: int = 0
    waiting: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class _MessageRejected(Exception):
    """The relay refused this message only; the next ones may still go."""


def _short(step: str, exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        detail = "; ".join(
            f"{rcpt}: {code} {_decode(msg)}" for rcpt, (code, msg) in exc.recipients.items()
        )
    elif isinstance(exc, smtplib.SMTPResponseException):
        detail = f"{exc.smtp_code} {_decode(exc.smtp_error)}"
    else:
        detail = str(exc) or "(no detail)"
    text = one_line(f"{step}: {exc.__class__.__name__}: {detail}")
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Notifier:
    """Queues e-mails for the bed-management cell and hands them to the SMTP relay.

    Built from the `[notify]` section (or None) and the relay password. Disabled — `queue`
    queues nothing and returns False, `flush` sends nothing — when there is no section or
    its `smtp_host` is empty: no relay configured means no e-mail.
    """

    def __init__(
        self,
        section: NotifySection | None,
        password: str | None = None,
        *,
        zone: tzinfo = UTC,
        ssl_context: ssl.SSLContext | None = None,
        step_timeout: float = STEP_TIMEOUT_SECONDS,
        flush_budget: float = FLUSH_BUDGET_SECONDS,
    ) -> None:
        self.section = section
        self._password = password or ""
        self.zone = zone
        self._ssl_context = ssl_context
        self.step_timeout = step_timeout
        self.flush_budget = flush_budget

    @classmethod
    def from_config(cls, config: Config, *, ssl_context: ssl.SSLContext | None = None) -> Notifier:
        return cls(
            config.file.notify,
            config.secrets.get("notify.password"),
            zone=config.zone,
            ssl_context=ssl_context,
        )

    def __repr__(self) -> str:  # never the password
        host = self.section.smtp_host if self.section else ""
        return f"Notifier(smtp_host={host!r}, enabled={self.enabled})"

    @property
    def enabled(self) -> bool:
        return self.section is not None and bool(self.section.smtp_host.strip())

    # -- queueing -------------------------------------------------------------------------

    def queue(
        self,
        store: Store,
        subject: str,
        body: str,
        now: datetime,
        audience: Audience = Audience.CELL,
    ) -> bool:
        """Queue one e-mail for `audience`; False (and nothing queued) when no relay is
        configured, or no `notify.lead_recipients` for the chef de projet.

        A state store failure propagates (`StateError`): it is the cycle's, not e-mail's.
        """
        if not self.enabled:
            log.debug("email_not_queued", reason="no SMTP relay configured", subject=subject)
            return False
        assert self.section is not None  # noqa: S101 - enabled implies a section
        if audience is Audience.LEAD and not self.section.lead_recipients:
            log.warning(
                "email_not_queued", reason="notify.lead_recipients is empty", subject=subject
            )
            return False
        store.queue_email(subject, body, now, audience)
        log.info("email_queued", subject=subject)
        return True

    # -- sending --------------------------------------------------------------------------

    def flush(self, store: Store, now: datetime) -> FlushResult:
        """Send every queued e-mail; never raises for a relay, network or store failure.

        Each success is recorded as sent at `now`. A connection-level failure (relay down,
        timeout, TLS or login refused) records the failed attempt on the message being sent
        and stops this flush: the rest wait for the next one. A refusal of one message only
        (sender, recipients or content refused) is recorded on it and the next ones still go,
        so one message can never hold back the others. Stops too when `flush_budget` is spent.
        """
        if not self.enabled:
            return FlushResult()
        try:
            pending = store.pending_emails()
        except StateError as exc:
            log.warning("email_flush_failed", error=str(exc))
            return FlushResult(error=one_line(str(exc))[:MAX_ERROR_CHARS])
        if not pending:
            return FlushResult()
        section = self.section
        assert section is not None  # noqa: S101 - enabled implies a section
        missing = [k for k in ("sender", "recipients") if not getattr(section, k)]
        if missing:
            error = f"notify.{' and notify.'.join(missing)} not set: e-mails cannot be sent"
            log.error("email_flush_failed", error=error, waiting=len(pending))
            return FlushResult(waiting=len(pending), error=error)

        deadline = time.monotonic() + self.flush_budget
        sent = failed = 0
        error = ""
        smtp: smtplib.SMTP | None = None
        try:
            for row in pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    error = error or f"flush stopped after {self.flush_budget:g} s"
                    log.warning("email_flush_budget_spent", waiting=len(pending) - sent)
                    break
                if not store.claim_email(row.id, now):
                    continue  # sent meanwhile, or being sent by another rorfeed process
                step_timeout = max(0.1, min(self.step_timeout, remaining))
                try:
                    if smtp is None:
                        smtp = self._connect(section, step_timeout)
                    elif smtp.sock is not None:
                        smtp.sock.settimeout(step_timeout)
                    self._send(smtp, section, row)
                except _MessageRejected as exc:
                    failed += 1
                    error = str(exc)
                    self._failed(store, row, error)
                    continue
                except (smtplib.SMTPException, OSError) as exc:
                    failed += 1
                    error = _short(f"SMTP {section.smtp_host}:{section.smtp_port}", exc)
                    self._failed(store, row, error)
                    break
                store.email_sent(row.id, now)
                sent += 1
                log.info("email_sent", email_id=row.id, subject=row.subject)
        except StateError as exc:
            error = one_line(str(exc))[:MAX_ERROR_CHARS]
            log.warning("email_flush_failed", error=error)
        finally:
            if smtp is not None:
                _close(smtp)
        return FlushResult(sent=sent, failed=failed, waiting=len(pending) - sent, error=error)

    def _connect(self, section: NotifySection, timeout: float) -> smtplib.SMTP:
        """Open, secure and authenticate a session; every step bounded by `timeout`."""
        smtp = smtplib.SMTP(section.smtp_host.strip(), section.smtp_port, timeout=timeout)
        try:
            smtp.ehlo()
            if section.starttls:
                context = self._ssl_context or ssl.create_default_context()
                smtp.starttls(context=context)
                smtp.ehlo()
            if section.username:
                try:
                    smtp.login(section.username, self._password)
                except UnicodeError:
                    # smtplib encodes credentials as ASCII; say so without quoting them.
                    raise smtplib.SMTPException(
                        "login: the username or password is not ASCII"
                    ) from None
        except BaseException:
            _close(smtp)
            raise
        return smtp

    def _send(self, smtp: smtplib.SMTP, section: NotifySection, row: EmailRow) -> None:
        try:
            message = self._message(section, row)
        except (ValueError, TypeError) as exc:
            raise _MessageRejected(_short("compose", exc)) from exc
        try:
            refused = smtp.send_message(message)
        except (
            smtplib.SMTPSenderRefused,
            smtplib.SMTPRecipientsRefused,
            smtplib.SMTPDataError,
        ) as exc:
            if getattr(exc, "smtp_code", 0) == 421:
                raise  # the relay is closing the session: stop here
            raise _MessageRejected(_short("SMTP refused the message", exc)) from exc
        if refused:
            log.warning(
                "email_recipients_refused",
                email_id=row.id,
                refused=sorted(refused),
            )

    def _message(self, section: NotifySection, row: EmailRow) -> EmailMessage:
        message = EmailMessage()
        subject = one_line(row.subject)
        message["Subject"] = subject if subject.isascii() else _EncodedHeader("Subject", subject)
        message["From"] = section.sender
        to = section.lead_recipients if row.audience is Audience.LEAD else section.recipients
        message["To"] = ", ".join(to)
        message["Date"] = format_datetime(row.created_at.astimezone(self.zone))
        # Stable across retries: a relay or a mailbox can tell a resent copy from a new one.
        domain = parseaddr(section.sender)[1].rpartition("@")[2] or "rorfeed.invalid"
        message["Message-ID"] = f"<rorfeed.{row.id}.{row.created_at:%Y%m%dT%H%M%S%f}@{domain}>"
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
        message.set_content(row.body, charset="utf-8")
        return message

    @staticmethod
    def _failed(store: Store, row: EmailRow, error: str) -> None:
        log.warning("email_failed", email_id=row.id, attempts=row.attempts + 1, error=error)
        store.email_failed(row.id, error)


class _EncodedHeader:
    """A non-ASCII header value, encoded (RFC 2047 words of at most 76 characters) and folded
    by `email.header.Header`, then written as is.

    Python's own folder can end a folded line with a space before an encoded word, which
    mail clients then show as a doubled space in the subject ("tous les  établissements").
    """

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value
        self._lines = (
            Header(value, "utf-8", maxlinelen=76, header_name=name)
            .encode(linesep="\n")
            .splitlines()
        )

    def fold(self, *, policy: Policy) -> str:
        linesep = policy.linesep
        return f"{self.name}: {linesep.join(self._lines)}{linesep}"

    def __str__(self) -> str:
        return self.value


def _close(smtp: smtplib.SMTP) -> None:
    """QUIT politely when the session still answers, then close the socket in any case."""
    try:
        if smtp.sock is not None:
            smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()
