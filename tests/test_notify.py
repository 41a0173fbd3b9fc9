"""E-mail to the bed-management cell (SPEC §6), checked on a real SMTP server on loopback.

The messages are in French and say plainly whether manual entry in the ROR is required; a relay
that is down, slow or refusing never makes `flush` raise, and a message waits until it goes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from rorfeed.config import NotifySection, load
from rorfeed.model import BedCounts, KillswitchEvent, Mode, UnitModeEvent, UnitRef
from rorfeed.notify import (
    FlushResult,
    Notifier,
    compose_killswitch,
    compose_unit_changes,
    format_time,
)
from rorfeed.state import Store, open_store
from tests.sites import directory_destination, mapping_csv, write_site
from tests.smtp import HOST, SMTP_PASSWORD, SMTP_USER, SmtpServer, free_port, start_smtp

PARIS = ZoneInfo("Europe/Paris")
T0 = datetime(2026, 11, 23, 13, 5, tzinfo=UTC)  # 14:05 in Paris
SENDER = "rorfeed@chu-exemple.fr"
CELL = ["cellule-lits@chu-exemple.fr", "cadre-nuit@chu-exemple.fr"]

REA = UnitRef(
    finess="750712184",
    establishment="Hôpital Exemple",
    ror_id="ROR-REA-01",
    local_code="UF1201",
    label="Réanimation médicale",
    last_counts=BedCounts(installed=20, closed=2, available=5),
    last_counts_at=T0 - timedelta(hours=3),  # 11:05 in Paris
)
CARDIO = UnitRef(
    finess="750712184",
    establishment="Hôpital Exemple",
    ror_id="ROR-CARDIO-02",
    local_code="UF3104",
    label="Cardiologie",
    last_counts=BedCounts(installed=30, closed=0, available=1),
    last_counts_at=T0 - timedelta(hours=1),
)
NEW_UNIT = UnitRef(
    finess="750712184",
    establishment="Hôpital Exemple",
    ror_id="ROR-USIC-03",
    local_code="UF3105",
    label="Soins intensifs de cardiologie",
    last_counts=None,
    last_counts_at=None,
)
OTHER_SITE = UnitRef(
    finess="920000650",
    establishment="Clinique du Parc",
    ror_id="ROR-MED-09",
    local_code="M9",
    label="Médecine polyvalente",
    last_counts=BedCounts(installed=12, closed=1, available=0),
    last_counts_at=T0 - timedelta(hours=2),
)


def section(server: SmtpServer, **changes: object) -> NotifySection:
    values: dict[str, object] = {
        "smtp_host": HOST,
        "smtp_port": server.port,
        "starttls": False,
        "sender": SENDER,
        "recipients": CELL,
    }
    values.update(changes)
    return NotifySection.model_validate(values)


def store_at(tmp_path: Path) -> Store:
    return open_store(f"sqlite:///{tmp_path / 's.db'}")


def to_manual(
    unit: UnitRef, actor: str = "rorfeed", reason: str = "rejetée 3 cycles de suite"
) -> UnitModeEvent:
    return UnitModeEvent(unit, Mode.AUTO, Mode.MANUAL, reason, actor, T0)


def to_auto(unit: UnitRef, actor: str = "mdupont", reason: str = "export corrigé") -> UnitModeEvent:
    return UnitModeEvent(unit, Mode.MANUAL, Mode.AUTO, reason, actor, T0)


def deliver(
    server: SmtpServer, tmp_path: Path, messages: Sequence[tuple[str, str]]
) -> list[EmailMessage]:
    """Queue `messages`, flush them to `server`, return what the server received."""
    store = store_at(tmp_path)
    notifier = Notifier(section(server), zone=PARIS)
    for subject, body in messages:
        assert notifier.queue(store, subject, body, T0)
    result = notifier.flush(store, T0)
    assert result == FlushResult(sent=len(messages), failed=0, waiting=0, error="")
    assert store.pending_emails() == []
    return [r.message for r in server.messages]


def content(message: EmailMessage) -> str:
    text = message.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")  # the wire's line ends


# -- composition, read on the real server --------------------------------------------------------


def test_unit_switched_to_manual_by_rorfeed_names_it_and_requires_manual_entry(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    [message] = deliver(smtp, tmp_path, compose_unit_changes([to_manual(REA)], PARIS))
    assert message["Subject"] == (
        "[rorfeed] Saisie manuelle requise : 1 unité — Hôpital Exemple (750712184)"
    )
    body = content(message)
    assert (
        "La saisie manuelle dans le ROR est nécessaire à partir de maintenant pour les unités "
        "suivantes" in body
    )
    assert "- Réanimation médicale\n" in body
    assert "Code UF (code local) : UF1201" in body
    assert "Fiche ROR : ROR-REA-01" in body
    assert "Établissement : Hôpital Exemple (FINESS 750712184)" in body
    assert "Motif : rejetée 3 cycles de suite" in body
    assert "Changement fait par : bascule automatique par rorfeed" in body
    assert "Date du changement : 23/11/2026 à 14:05 (heure de Paris, UTC+01:00)" in body
    assert (
        "Dernières valeurs transmises au ROR par rorfeed, relevées le 23/11/2026 à 11:05 "
        "(heure de Paris, UTC+01:00) :\n"
        "    20 lits installés, 2 lits fermés, 5 lits disponibles." in body
    )
    assert "Le ROR continue d'afficher ces valeurs jusqu'à ce qu'une saisie manuelle" in body
    assert "<html" not in body.lower()


def test_manual_switch_by_a_person_names_that_person(smtp: SmtpServer, tmp_path: Path) -> None:
    event = to_manual(CARDIO, actor="mdupont", reason="travaux, lits fermés hors logiciel")
    [message] = deliver(smtp, tmp_path, compose_unit_changes([event], PARIS))
    body = content(message)
    assert "Changement fait par : mdupont" in body
    assert "bascule automatique" not in body
    assert "Motif : travaux, lits fermés hors logiciel" in body


def test_unit_back_to_automated_says_manual_entry_no_longer_needed(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    [message] = deliver(smtp, tmp_path, compose_unit_changes([to_auto(REA)], PARIS))
    assert message["Subject"] == (
        "[rorfeed] Retour en alimentation automatique : 1 unité — Hôpital Exemple (750712184)"
    )
    body = content(message)
    assert (
        "La saisie manuelle dans le ROR n'est plus nécessaire : rorfeed alimente de nouveau "
        "automatiquement ces unités" in body
    )
    assert "nécessaire à partir de maintenant" not in body
    assert "Fiche ROR : ROR-REA-01" in body
    assert "Changement fait par : mdupont" in body
    assert "Motif : export corrigé" in body
    # What the ROR shows now may be a manual entry: no claim that it still shows our values.
    assert "continue d'afficher" not in body
    assert "contrôler les données de ces unités dans le ROR" in body


def test_several_units_go_in_one_message_and_directions_in_separate_ones(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    events = [to_manual(REA), to_auto(NEW_UNIT), to_manual(CARDIO, actor="mdupont")]
    messages = compose_unit_changes(events, PARIS)
    manual, auto = deliver(smtp, tmp_path, messages)
    assert manual["Subject"] == (
        "[rorfeed] Saisie manuelle requise : 2 unités — Hôpital Exemple (750712184)"
    )
    assert auto["Subject"] == (
        "[rorfeed] Retour en alimentation automatique : 1 unité — Hôpital Exemple (750712184)"
    )
    manual_body, auto_body = content(manual), content(auto)
    assert manual_body.count("\n- ") == 2
    assert manual_body.index("Réanimation médicale") < manual_body.index("Cardiologie")
    assert "Fiche ROR : ROR-CARDIO-02" in manual_body
    assert "30 lits installés, 0 lit fermé, 1 lit disponible." in manual_body
    assert "ROR-USIC-03" not in manual_body
    assert "Fiche ROR : ROR-USIC-03" in auto_body


def test_units_of_several_establishments_are_each_named_with_theirs(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    messages = compose_unit_changes([to_manual(REA), to_manual(OTHER_SITE)], PARIS)
    [message] = deliver(smtp, tmp_path, messages)
    assert message["Subject"] == "[rorfeed] Saisie manuelle requise : 2 unités — 2 établissements"
    body = content(message)
    assert "Établissement : Hôpital Exemple (FINESS 750712184)" in body
    assert "Établissement : Clinique du Parc (FINESS 920000650)" in body


def test_unit_never_sent_says_no_value_was_ever_transmitted(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    [message] = deliver(smtp, tmp_path, compose_unit_changes([to_manual(NEW_UNIT)], PARIS))
    body = content(message)
    assert "Aucune valeur n'a encore été transmise au ROR pour cette unité" in body
    assert "Dernières valeurs" not in body


def test_unit_removed_from_mapping_is_announced_as_manual_entry_required(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    event = UnitModeEvent(
        REA, Mode.AUTO, Mode.AUTO, "retirée du mapping", "rorfeed", T0, removed=True
    )
    [message] = deliver(smtp, tmp_path, compose_unit_changes([event], PARIS))
    assert message["Subject"].startswith("[rorfeed] Saisie manuelle requise : 1 unité")
    body = content(message)
    assert "La saisie manuelle dans le ROR est nécessaire à partir de maintenant" in body
    assert "unité retirée du mapping de rorfeed" in body
    assert "20 lits installés, 2 lits fermés, 5 lits disponibles." in body


def test_no_event_composes_no_message() -> None:
    assert compose_unit_changes([], PARIS) == []


def test_establishment_killswitch_on_requires_manual_entry_for_every_unit_listed(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    event = KillswitchEvent(
        "750712184",
        "Hôpital Exemple",
        True,
        "source injoignable 3 cycles de suite",
        "rorfeed",
        T0,
        (REA, NEW_UNIT),
    )
    [message] = deliver(smtp, tmp_path, [compose_killswitch(event, PARIS)])
    assert message["Subject"] == (
        "[rorfeed] Arrêt de l'alimentation automatique, saisie manuelle requise — "
        "Hôpital Exemple (750712184)"
    )
    body = content(message)
    assert (
        "L'alimentation automatique du ROR par rorfeed est arrêtée pour l'établissement "
        "Hôpital Exemple (FINESS 750712184)." in body
    )
    assert (
        "La saisie manuelle dans le ROR est nécessaire à partir de maintenant pour les unités "
        "suivantes (2)" in body
    )
    assert "Motif : source injoignable 3 cycles de suite" in body
    assert "Décision : arrêt automatique par rorfeed" in body
    assert "Date : 23/11/2026 à 14:05 (heure de Paris, UTC+01:00)" in body
    assert "Fiche ROR : ROR-REA-01" in body and "Code UF (code local) : UF1201" in body
    assert "20 lits installés, 2 lits fermés, 5 lits disponibles." in body
    assert "Le ROR continue d'afficher ces valeurs" in body
    assert "Aucune valeur n'a encore été transmise au ROR pour cette unité" in body


def test_global_killswitch_on_stops_every_establishment(smtp: SmtpServer, tmp_path: Path) -> None:
    event = KillswitchEvent(
        None, None, True, "anomalie du SIH en cours d'analyse", "jmartin", T0, (REA, OTHER_SITE)
    )
    [message] = deliver(smtp, tmp_path, [compose_killswitch(event, PARIS)])
    assert message["Subject"] == (
        "[rorfeed] Arrêt de l'alimentation automatique de tous les établissements, "
        "saisie manuelle requise"
    )
    body = content(message)
    assert "est arrêtée pour tous les établissements." in body
    assert "Décision : jmartin" in body
    assert "Établissement : Clinique du Parc (FINESS 920000650)" in body


def test_killswitch_off_says_manual_entry_no_longer_needed_for_units_listed(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    one = KillswitchEvent(
        "750712184", "Hôpital Exemple", False, "source rétablie", "jmartin", T0, (CARDIO,)
    )
    every = KillswitchEvent(None, None, False, "analyse terminée", "jmartin", T0, (REA,))
    first, second = deliver(
        smtp, tmp_path, [compose_killswitch(one, PARIS), compose_killswitch(every, PARIS)]
    )
    assert first["Subject"] == (
        "[rorfeed] Reprise de l'alimentation automatique — Hôpital Exemple (750712184)"
    )
    assert second["Subject"] == (
        "[rorfeed] Reprise de l'alimentation automatique de tous les établissements"
    )
    body = content(first)
    assert "L'alimentation automatique du ROR par rorfeed reprend pour l'établissement" in body
    assert (
        "La saisie manuelle dans le ROR n'est plus nécessaire pour les unités suivantes (1) : "
        "rorfeed alimente de nouveau automatiquement ces unités" in body
    )
    assert "Fiche ROR : ROR-CARDIO-02" in body
    assert "Motif : source rétablie" in body and "Décision : jmartin" in body
    assert "restent en saisie manuelle" in body
    assert "reprend pour tous les établissements." in content(second)


def test_killswitch_with_no_unit_listed_never_says_manual_entry_is_over() -> None:
    on = KillswitchEvent("750712184", "Hôpital Exemple", True, "test", "jmartin", T0)
    off = KillswitchEvent("750712184", "Hôpital Exemple", False, "test", "jmartin", T0)
    _, on_body = compose_killswitch(on, PARIS)
    _, off_body = compose_killswitch(off, PARIS)
    assert "La saisie manuelle dans le ROR est nécessaire à partir de maintenant" in on_body
    assert "n'est plus nécessaire" not in off_body
    assert "reste nécessaire" in off_body


def test_times_are_local_with_their_offset_in_summer_and_winter() -> None:
    assert format_time(T0, PARIS) == "23/11/2026 à 14:05 (heure de Paris, UTC+01:00)"
    summer = datetime(2026, 7, 14, 8, 30, tzinfo=UTC)
    assert format_time(summer, PARIS) == "14/07/2026 à 10:30 (heure de Paris, UTC+02:00)"
    reunion = ZoneInfo("Indian/Reunion")
    assert format_time(T0, reunion) == "23/11/2026 à 17:05 (heure de La Réunion, UTC+04:00)"
    assert format_time(T0, UTC) == "23/11/2026 à 13:05 (UTC+00:00)"


def test_headers_are_complete_and_the_french_subject_survives_encoding(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    [message] = deliver(smtp, tmp_path, compose_unit_changes([to_manual(REA)], PARIS))
    [received] = smtp.messages
    assert received.mail_from == SENDER
    assert received.rcpt_tos == tuple(CELL)
    assert message["From"] == SENDER
    assert message["To"] == ", ".join(CELL)
    assert message["Date"].datetime == T0
    assert message["Message-ID"].endswith("@chu-exemple.fr>")
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    # The raw header is RFC 2047-encoded in short folded lines; decoded, it is the French
    # subject exactly as written (no doubled space where a line was folded).
    head = received.raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    assert message["Subject"] == (
        "[rorfeed] Saisie manuelle requise : 1 unité — Hôpital Exemple (750712184)"
    )


# -- delivery ------------------------------------------------------------------------------------


def test_starttls_and_login_deliver_the_message(smtp_tls: SmtpServer, tmp_path: Path) -> None:
    store = store_at(tmp_path)
    notifier = Notifier(
        section(smtp_tls, starttls=True, username=SMTP_USER),
        SMTP_PASSWORD,
        zone=PARIS,
        ssl_context=smtp_tls.client_context,
    )
    subject, body = compose_unit_changes([to_manual(REA)], PARIS)[0]
    assert notifier.queue(store, subject, body, T0)
    assert notifier.flush(store, T0) == FlushResult(sent=1, failed=0, waiting=0)
    [received] = smtp_tls.messages
    assert received.tls
    assert received.login == SMTP_USER
    assert "Fiche ROR : ROR-REA-01" in content(received.message)


def test_untrusted_certificate_is_refused_and_the_message_waits(
    smtp_tls: SmtpServer, tmp_path: Path
) -> None:
    store = store_at(tmp_path)
    # The default context trusts the system's authorities only, not the test's certificate.
    notifier = Notifier(section(smtp_tls, starttls=True, username=SMTP_USER), SMTP_PASSWORD)
    notifier.queue(store, "s", "b", T0)
    result = notifier.flush(store, T0)
    assert (result.sent, result.failed, result.waiting) == (0, 1, 1)
    assert "CERTIFICATE_VERIFY_FAILED" in result.error
    assert smtp_tls.messages == []


def test_wrong_password_fails_without_raising_and_never_shows_the_password(
    smtp_tls: SmtpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = store_at(tmp_path)
    wrong = "pas-le-bon-secret-1234"
    notifier = Notifier(
        section(smtp_tls, starttls=True, username=SMTP_USER),
        wrong,
        ssl_context=smtp_tls.client_context,
    )
    notifier.queue(store, "s", "b", T0)
    result = notifier.flush(store, T0)
    assert (result.sent, result.failed, result.waiting) == (0, 1, 1)
    assert "SMTPAuthenticationError: 535" in result.error
    captured = capsys.readouterr()
    for text in (result.error, captured.out, captured.err, repr(notifier)):
        assert wrong not in text
    assert "email_failed" in captured.out + captured.err


def test_relay_down_keeps_the_message_and_sends_it_once_the_relay_is_back(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there yet
    store = store_at(tmp_path)
    notify = NotifySection(
        smtp_host=HOST, smtp_port=port, starttls=False, sender=SENDER, recipients=CELL
    )
    notifier = Notifier(notify, zone=PARIS)
    subject, body = compose_unit_changes([to_manual(REA)], PARIS)[0]
    notifier.queue(store, subject, body, T0)

    down = notifier.flush(store, T0)
    assert (down.sent, down.failed, down.waiting) == (0, 1, 1)
    assert "Connection refused" in down.error
    [waiting] = store.pending_emails()
    assert waiting.attempts == 1
    assert notifier.flush(store, T0).failed == 1
    assert store.pending_emails()[0].attempts == 2

    later = T0 + timedelta(hours=1)
    with start_smtp(port=port) as server:
        assert notifier.flush(store, later) == FlushResult(sent=1, failed=0, waiting=0)
        [received] = server.messages
    assert store.pending_emails() == []
    assert received.message["Subject"] == subject
    assert received.message["Date"].datetime == T0  # written when the change happened


def test_relay_that_never_answers_is_given_up_within_the_step_timeout(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    with socket.socket() as mute:  # accepts connections (backlog) and never says a word
        mute.bind((HOST, 0))
        mute.listen()
        notify = NotifySection(
            smtp_host=HOST,
            smtp_port=mute.getsockname()[1],
            starttls=False,
            sender=SENDER,
            recipients=CELL,
        )
        notifier = Notifier(notify, step_timeout=0.5, flush_budget=5)
        notifier.queue(store, "s", "b", T0)
        started = time.monotonic()
        result = notifier.flush(store, T0)
        elapsed = time.monotonic() - started
    assert elapsed < 3
    assert (result.sent, result.failed, result.waiting) == (0, 1, 1)
    assert "timed out" in result.error


def test_a_message_the_relay_refuses_does_not_hold_back_the_next_ones(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    store = store_at(tmp_path)
    notifier = Notifier(section(smtp))
    for subject in ("premier", "REFUSE-MOI", "troisième"):
        notifier.queue(store, subject, "corps", T0)
    smtp.reject_subjects_containing("REFUSE-MOI")
    result = notifier.flush(store, T0)
    assert (result.sent, result.failed, result.waiting) == (2, 1, 1)
    assert "554" in result.error
    assert [str(r.message["Subject"]) for r in smtp.messages] == ["premier", "troisième"]
    [left] = store.pending_emails()
    assert (left.subject, left.attempts) == ("REFUSE-MOI", 1)

    smtp.reject_subjects_containing(None)
    assert notifier.flush(store, T0) == FlushResult(sent=1, failed=0, waiting=0)


@pytest.mark.parametrize("notify", [None, NotifySection(smtp_host="", recipients=CELL)])
def test_without_a_relay_nothing_is_queued(notify: NotifySection | None, tmp_path: Path) -> None:
    store = store_at(tmp_path)
    notifier = Notifier(notify)
    assert not notifier.enabled
    assert not notifier.queue(store, "s", "b", T0)
    assert store.pending_emails() == []
    assert notifier.flush(store, T0) == FlushResult()


def test_relay_without_sender_or_recipients_keeps_messages_and_says_why(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    notifier = Notifier(NotifySection(smtp_host=HOST, smtp_port=free_port()))
    assert notifier.queue(store, "s", "b", T0)
    result = notifier.flush(store, T0)
    assert result == FlushResult(
        waiting=1,
        error="notify.sender and notify.recipients not set: e-mails cannot be sent",
    )


def test_from_config_reads_relay_password_and_zone(smtp_tls: SmtpServer, tmp_path: Path) -> None:
    (tmp_path / "smtp.pass").write_text(f"{SMTP_PASSWORD}\n")
    path = write_site(
        tmp_path,
        mapping=mapping_csv([("UF1201", "ROR-REA-01", "Réa")]),
        daemon='timezone = "Indian/Reunion"\n',
        name="Hôpital Exemple",
        destinations=directory_destination("out"),
        extra=f"""
[notify]
smtp_host = "{HOST}"
smtp_port = {smtp_tls.port}
starttls = true
username = "{SMTP_USER}"
password_file = "smtp.pass"
sender = "{SENDER}"
recipients = ["cellule-lits@chu-exemple.fr"]
""",
    )
    notifier = Notifier.from_config(load(path), ssl_context=smtp_tls.client_context)
    assert SMTP_PASSWORD not in repr(notifier)
    store = store_at(tmp_path)
    [(subject, body)] = compose_unit_changes([to_manual(REA)], notifier.zone)
    assert notifier.queue(store, subject, body, T0)
    assert notifier.flush(store, T0) == FlushResult(sent=1, failed=0, waiting=0)
    [received] = smtp_tls.messages
    assert received.login == SMTP_USER
    assert "23/11/2026 à 17:05 (heure de La Réunion, UTC+04:00)" in content(received.message)


def test_spent_flush_budget_leaves_the_rest_for_the_next_flush(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    store = store_at(tmp_path)
    notifier = Notifier(section(smtp), flush_budget=0)
    notifier.queue(store, "s", "b", T0)
    result = notifier.flush(store, T0)
    assert result == FlushResult(waiting=1, error="flush stopped after 0 s")
    assert store.pending_emails()[0].attempts == 0  # not tried, so not counted as failed
    assert smtp.messages == []
