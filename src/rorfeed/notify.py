"""E-mail to the bed-management cell (SPEC §6): what changed, in French, and its delivery.

Two halves:

- **Composition** (pure, no I/O): `compose_unit_changes` and `compose_killswitch` turn mode
  changes and kill-switch actions into a French plain-text message that names every unit
  (label, code UF, fiche ROR, establishment), the reason, who made the change and when (in
  the local zone), and the last values sent to the ROR with their time — the ROR keeps
  showing them until someone enters new ones. It says plainly whether manual entry in the
  ROR is required from now on, or no longer required.
- **Delivery**: `Notifier.queue` puts a composed message in the state store's e-mail queue;
  `Notifier.flush` hands every waiting message to the SMTP relay with `smtplib`. Every
  network step has a timeout and a flush as a whole has a time budget. A message that cannot
  be sent stays queued, its attempt counted and its error kept, and is retried at the next
  flush; `flush` never raises for a network or relay failure, so e-mail can never fail or
  block a cycle.

No relay configured (no `[notify]` section, or an empty `smtp_host`) means no e-mail at all:
nothing is queued, so nothing piles up to be sent the day a relay is configured.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from email.header import Header
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime, parseaddr
from zoneinfo import ZoneInfo

import structlog

from rorfeed.config import Config, NotifySection
from rorfeed.errors import StateError
from rorfeed.model import ACTOR_RORFEED, BedCounts, KillswitchEvent, Mode, UnitModeEvent, UnitRef
from rorfeed.state import EmailRow, Store
from rorfeed.wording import counted

log = structlog.get_logger("rorfeed.notify")

SUBJECT_PREFIX = "[rorfeed]"
STEP_TIMEOUT_SECONDS = 15.0  # each network step: connect, EHLO, STARTTLS, AUTH, one message
FLUSH_BUDGET_SECONDS = 60.0  # a whole flush; what is left waits for the next one
MAX_ERROR_CHARS = 300

# ---------------------------------------------------------------------------------------------
# Composition

# How a zone is named in a message: « heure de Paris ». Other zones are named after the last
# part of their IANA key; the UTC offset is always given as well, so a time is never ambiguous.
_ZONE_PLACES = {
    "Europe/Paris": "Paris",
    "America/Guadeloupe": "la Guadeloupe",
    "America/Martinique": "la Martinique",
    "America/Cayenne": "la Guyane",
    "Indian/Reunion": "La Réunion",
    "Indian/Mayotte": "Mayotte",
    "America/Miquelon": "Saint-Pierre-et-Miquelon",
    "Pacific/Noumea": "Nouméa",
    "Pacific/Tahiti": "Tahiti",
}

_SIGNATURE = (
    "-- \n"
    "Message automatique de rorfeed, l'alimentation automatique du ROR (disponibilité en lits)\n"
    "de l'établissement. Pour toute question : le chef de projet ROR de l'établissement."
)


def format_time(at: datetime, zone: tzinfo) -> str:
    """« 23/11/2026 à 14:05 (heure de Paris, UTC+01:00) »: local time, never ambiguous."""
    local = at.astimezone(zone)
    offset = local.utcoffset()
    minutes = 0 if offset is None else int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    utc = f"UTC{sign}{hours:02d}:{mins:02d}"
    key = getattr(zone, "key", None)
    if isinstance(zone, ZoneInfo) and key:
        place = _ZONE_PLACES.get(key, key.rsplit("/", 1)[-1].replace("_", " "))
        where = f"heure de {place}, {utc}"
    else:
        where = utc
    return f"{local:%d/%m/%Y} à {local:%H:%M} ({where})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _establishment(name: str | None, finess: str) -> str:
    return f"{_one_line(name)} (FINESS {finess})" if name else f"FINESS {finess}"


def _subject_establishments(units: Sequence[UnitRef]) -> str:
    finesses = {u.finess: u.establishment for u in units}
    if len(finesses) == 1:
        finess, name = next(iter(finesses.items()))
        return f"{_one_line(name)} ({finess})" if name else finess
    return f"{len(finesses)} établissements"


def _indented(label: str, text: str) -> list[str]:
    """`  label : text`, a multi-line text kept readable under its label."""
    lines = text.strip().splitlines() or [""]
    return [f"  {label} : {lines[0]}", *(f"    {line}" for line in lines[1:])]


def _counts(c: BedCounts) -> str:
    return (
        f"{counted(c.installed, 'lit installé', 'lits installés')}, "
        f"{counted(c.closed, 'lit fermé', 'lits fermés')}, "
        f"{counted(c.available, 'lit disponible', 'lits disponibles')}"
    )


def _unit_lines(unit: UnitRef, zone: tzinfo, *, manual: bool) -> list[str]:
    """A unit as the cell looks it up in the ROR, with the values the ROR got from rorfeed."""
    lines = [
        f"- {_one_line(unit.label)}",
        f"  Code UF (code local) : {unit.local_code or '(aucun)'}",
        f"  Fiche ROR : {unit.ror_id}",
        f"  Établissement : {_establishment(unit.establishment, unit.finess)}",
    ]
    if unit.last_counts is None:
        lines.append(
            "  Aucune valeur n'a encore été transmise au ROR pour cette unité par rorfeed."
        )
        return lines
    when = (
        f"relevées le {format_time(unit.last_counts_at, zone)}"
        if unit.last_counts_at is not None
        else "date du relevé inconnue"
    )
    lines.append(f"  Dernières valeurs transmises au ROR par rorfeed, {when} :")
    lines.append(f"    {_counts(unit.last_counts)}.")
    if manual:
        lines.append(
            "  Le ROR continue d'afficher ces valeurs jusqu'à ce qu'une saisie manuelle "
            "les remplace."
        )
    return lines


def _who(actor: str, automatic: str) -> str:
    return automatic if actor == ACTOR_RORFEED else _one_line(actor)


def _event_lines(event: UnitModeEvent, zone: tzinfo) -> list[str]:
    manual = event.removed or event.new is Mode.MANUAL
    lines = _unit_lines(event.unit, zone, manual=manual)
    if event.removed:
        lines.append("  Changement : unité retirée du mapping de rorfeed, qui ne l'alimente plus.")
        who = _who(event.actor, "retrait du mapping constaté par rorfeed")
    else:
        who = _who(event.actor, "bascule automatique par rorfeed")
    lines.extend(_indented("Motif", event.reason))
    lines.append(f"  Changement fait par : {who}")
    lines.append(f"  Date du changement : {format_time(event.at, zone)}")
    return lines


_TO_MANUAL = (
    "La saisie manuelle dans le ROR est nécessaire à partir de maintenant pour les unités "
    "suivantes : rorfeed ne les alimente plus automatiquement."
)
_TO_AUTO = (
    "La saisie manuelle dans le ROR n'est plus nécessaire : rorfeed alimente de nouveau "
    "automatiquement ces unités, à partir de son prochain envoi."
)
_CHECK_AFTER_AUTO = (
    "Merci de contrôler les données de ces unités dans le ROR après le prochain envoi "
    "automatique et de signaler toute anomalie au chef de projet."
)


def compose_unit_changes(events: Sequence[UnitModeEvent], zone: tzinfo) -> list[tuple[str, str]]:
    """(subject, body) of each e-mail announcing mode changes of one or several units.

    One e-mail per direction, so that each subject says what to do: first the units going
    to manual (or removed from the mapping) — manual entry required —, then the units back
    to automated. A batch in one direction gives one e-mail; no event gives none. `zone` is
    the local zone of every time shown.
    """
    to_manual = [e for e in events if e.removed or e.new is Mode.MANUAL]
    to_auto = [e for e in events if not (e.removed or e.new is Mode.MANUAL)]
    messages = []
    if to_manual:
        messages.append(_unit_message(to_manual, zone, "Saisie manuelle requise", _TO_MANUAL, []))
    if to_auto:
        messages.append(
            _unit_message(
                to_auto, zone, "Retour en alimentation automatique", _TO_AUTO, [_CHECK_AFTER_AUTO]
            )
        )
    return messages


def _unit_message(
    events: Sequence[UnitModeEvent], zone: tzinfo, title: str, intro: str, outro: list[str]
) -> tuple[str, str]:
    n = counted(len(events), "unité", "unités")
    where = _subject_establishments([e.unit for e in events])
    subject = f"{SUBJECT_PREFIX} {title} : {n} — {where}"
    body: list[str] = ["Bonjour,", "", intro, ""]
    for e in events:
        body += [*_event_lines(e, zone), ""]
    for paragraph in outro:
        body += [paragraph, ""]
    body.append(_SIGNATURE)
    return subject, "\n".join(body) + "\n"


def compose_killswitch(event: KillswitchEvent, zone: tzinfo) -> tuple[str, str]:
    """(subject, body) of the e-mail announcing that a kill-switch was turned on or off.

    On: the automated feed of the establishment (of every establishment when `finess` is
    None) is stopped and manual entry in the ROR is required for every unit listed, shown
    with the last values sent. Off: the feed resumes for the units listed.
    """
    if event.finess is None:
        scope = "de tous les établissements"
        scope_body = "pour tous les établissements"
        where = ""
    else:
        name = _establishment(event.establishment, event.finess)
        scope = ""
        scope_body = f"pour l'établissement {name}"
        short = (
            f"{_one_line(event.establishment)} ({event.finess})"
            if event.establishment
            else event.finess
        )
        where = f" — {short}"
    scope_subject = f" {scope}" if scope else ""
    n = len(event.units)

    if event.on:
        subject = (
            f"{SUBJECT_PREFIX} Arrêt de l'alimentation automatique{scope_subject}, "
            f"saisie manuelle requise{where}"
        )
        who = _who(event.actor, "arrêt automatique par rorfeed")
        head = [
            f"L'alimentation automatique du ROR par rorfeed est arrêtée {scope_body}.",
            "",
        ]
        if n:
            head += [
                "La saisie manuelle dans le ROR est nécessaire à partir de maintenant pour les "
                f"unités suivantes ({n}), jusqu'à un prochain message annonçant la reprise.",
            ]
        else:
            head += [
                "La saisie manuelle dans le ROR est nécessaire à partir de maintenant pour toute "
                "unité que rorfeed alimentait automatiquement, jusqu'à un prochain message "
                "annonçant la reprise. Aucune unité n'est listée dans ce message.",
            ]
    else:
        subject = f"{SUBJECT_PREFIX} Reprise de l'alimentation automatique{scope_subject}{where}"
        who = _who(event.actor, "rorfeed")
        head = [
            f"L'alimentation automatique du ROR par rorfeed reprend {scope_body}.",
            "",
        ]
        if n:
            head += [
                "La saisie manuelle dans le ROR n'est plus nécessaire pour les unités suivantes "
                f"({n}) : rorfeed alimente de nouveau automatiquement ces unités, à partir de "
                "son prochain envoi.",
            ]
        else:
            head += [
                "Aucune unité n'est listée dans ce message : la saisie manuelle dans le ROR "
                "reste nécessaire pour les unités en mode manuel.",
            ]

    body: list[str] = ["Bonjour,", "", *head, ""]
    body += [line.removeprefix("  ") for line in _indented("Motif", event.reason)]
    body += [
        f"Décision : {who}",
        f"Date : {format_time(event.at, zone)}",
        "",
    ]
    for unit in event.units:
        body += [*_unit_lines(unit, zone, manual=event.on), ""]
    if not event.on and n:
        body += [
            "Les unités qui ne figurent pas dans cette liste (unités en mode manuel, ou "
            "établissement dont l'alimentation reste arrêtée) restent en saisie manuelle.",
            "",
            _CHECK_AFTER_AUTO,
            "",
        ]
    body.append(_SIGNATURE)
    return subject, "\n".join(body) + "\n"


# ---------------------------------------------------------------------------------------------
# Delivery


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
    text = _one_line(f"{step}: {exc.__class__.__name__}: {detail}")
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

    def queue(self, store: Store, subject: str, body: str, now: datetime) -> bool:
        """Queue one e-mail; False (and nothing queued) when no relay is configured.

        A state store failure propagates (`StateError`): it is the cycle's, not e-mail's.
        """
        if not self.enabled:
            log.debug("email_not_queued", reason="no SMTP relay configured", subject=subject)
            return False
        store.queue_email(subject, body, now)
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
            return FlushResult(error=_one_line(str(exc))[:MAX_ERROR_CHARS])
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
            error = _one_line(str(exc))[:MAX_ERROR_CHARS]
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
        subject = _one_line(row.subject)
        message["Subject"] = subject if subject.isascii() else _EncodedHeader("Subject", subject)
        message["From"] = section.sender
        message["To"] = ", ".join(section.recipients)
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
