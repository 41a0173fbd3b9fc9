"""Anomalies reported by people (SPEC §10.2): the operations every door uses, the e-mail to the
chef de projet through a real SMTP server, the audit trail and the metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from rorfeed.cli import main
from rorfeed.config import Config, load
from rorfeed.control import Control, ControlError
from rorfeed.metrics import StateCollector
from rorfeed.model import AnomalyDecision, BedCounts, Mode
from rorfeed.state import Store, open_store
from tests.sites import FINESS, directory_destination, mapping_csv, site_toml, write_site
from tests.sites import NOTIFY as SITE_NOTIFY
from tests.smtp import SmtpServer

ROWS = [("REA", "52/100", "Réanimation", "auto"), ("MED", "52/200", "Médecine", "auto")]
EXPORT = [("REA", "10", "1", "2"), ("MED", "30", "0", "5")]
# The cell's relay (tests/sites.py), and the chef de projet's address for anomaly reports.
NOTIFY = SITE_NOTIFY + 'lead_recipients = ["chef.projet@hopital.test"]\n'


@pytest.fixture
def site(tmp_path: Path, smtp: SmtpServer) -> Path:
    toml = site_toml(
        destinations=directory_destination("depot"), extra=NOTIFY.format(port=smtp.port)
    )
    write_site(tmp_path, toml, mapping_csv(ROWS), EXPORT)
    assert main(["--config", str(tmp_path / "rorfeed.toml"), "run-once"]) == 0
    return tmp_path


def opened(site: Path) -> tuple[Config, Store, Control]:
    config = load(site / "rorfeed.toml")
    store = open_store(config.state_url)
    return config, store, Control.from_config(config, store)


def open_reports(config: Config, store: Store) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(StateCollector(config, store))
    value = registry.get_sample_value("rorfeed_anomaly_reports_open", {"finess": FINESS})
    oldest = registry.get_sample_value(
        "rorfeed_anomaly_report_oldest_open_timestamp_seconds", {"finess": FINESS}
    )
    assert value is not None and oldest is not None
    return {"open": value, "oldest": oldest}


def test_a_report_is_stored_audited_and_mailed_to_the_chef_de_projet(
    site: Path, smtp: SmtpServer
) -> None:
    config, store, control = opened(site)
    report = control.report_anomaly(
        FINESS,
        "52/200",
        "Le ROR affiche 5 lits libres, il n'y en a aucun",
        BedCounts(30, 0, 0),
        "cellule",
    )
    control.flush_notifications()
    assert [r.id for r in store.anomaly_reports(FINESS, only_open=True)] == [report.id]
    entry = store.history("52/200")[0]
    assert (entry.actor, entry.action, entry.new) == (
        "cellule",
        "anomaly_report",
        f"report {report.id}",
    )
    assert "aucun" in entry.reason and "30/0/0" in entry.reason
    [mail] = smtp.messages
    assert mail.rcpt_tos == ("chef.projet@hopital.test",)
    assert (
        mail.message["Subject"]
        == "[rorfeed] Anomalie signalée : Médecine — Hôpital Test (750712184)"
    )
    body = mail.message.get_content()
    assert "cellule a signalé une anomalie" in body and "52/200" in body
    assert "30 lits installés, 0 lit fermé, 0 lit disponible" in body
    figures = open_reports(config, store)
    assert figures["open"] == 1 and figures["oldest"] == report.at.timestamp()


def test_a_report_needs_a_text_and_a_unit_of_the_mapping(site: Path) -> None:
    _, store, control = opened(site)
    with pytest.raises(ControlError, match="mandatory"):
        control.report_anomaly(FINESS, "52/200", "  ", None, "cellule")
    with pytest.raises(ControlError, match="unknown unit"):
        control.report_anomaly(FINESS, "52/999", "faux", None, "cellule")
    with pytest.raises(ControlError, match="reserved"):
        control.report_anomaly(FINESS, "52/200", "faux", None, "rorfeed")
    assert store.anomaly_reports() == []


def test_closing_as_switched_to_manual_switches_the_unit_with_both_entries(
    site: Path, smtp: SmtpServer
) -> None:
    config, store, control = opened(site)
    report = control.report_anomaly(FINESS, "52/200", "valeurs figées", None, "cellule")
    events = control.close_anomaly(
        report.id, AnomalyDecision.SWITCHED_MANUAL, "export cassé", "chef"
    )
    control.flush_notifications()
    assert [(e.unit.ror_id, e.new) for e in events] == [("52/200", Mode.MANUAL)]
    assert {u.ror_id: u.mode for u in store.units()}["52/200"] is Mode.MANUAL
    first, second = store.history("52/200")[:2]
    assert (first.action, first.actor, first.new) == (
        "anomaly_closed",
        "chef",
        "switched to manual",
    )
    assert (second.action, second.actor, second.new) == ("unit_mode", "chef", "manual")
    assert second.reason == f"signalement {report.id} : export cassé"
    # The lead heard of the report, the cell of the switch.
    assert sorted(m.rcpt_tos for m in smtp.messages) == [
        ("cellule.lits@hopital.test",),
        ("chef.projet@hopital.test",),
    ]
    assert open_reports(config, store) == {"open": 0, "oldest": 0}


def test_a_report_is_closed_once_with_a_comment(site: Path) -> None:
    _, store, control = opened(site)
    report = control.report_anomaly(FINESS, "52/100", "doute", None, "cellule")
    with pytest.raises(ControlError, match="reason is mandatory"):
        control.close_anomaly(report.id, AnomalyDecision.VALUES_RIGHT, " ", "chef")
    assert control.close_anomaly(report.id, AnomalyDecision.VALUES_RIGHT, "vérifié", "chef") == []
    with pytest.raises(ControlError, match="not open"):
        control.close_anomaly(report.id, AnomalyDecision.CORRECTED_AT_SOURCE, "encore", "chef")
    (closed,) = store.anomaly_reports()
    assert (closed.decision, closed.closed_by, closed.comment) == (
        AnomalyDecision.VALUES_RIGHT,
        "chef",
        "vérifié",
    )
    assert {u.ror_id: u.mode for u in store.units()}["52/100"] is Mode.AUTO


def test_lead_recipients_are_checked_like_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = site_toml(
        destinations=directory_destination("depot"),
        extra=NOTIFY.format(port=25).replace(
            '"chef.projet@hopital.test"', '"chef@h.fr, adjoint@h.fr"'
        ),
    )
    path = write_site(tmp_path, toml, mapping_csv(ROWS))
    assert main(["--config", str(path), "check"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        'rorfeed.toml: notify.lead_recipients[0]: "chef@h.fr, adjoint@h.fr" is not an e-mail'
        " address (name@domain, one per string)"
    ]
