"""Manual mode, the kill-switch and the chef de projet's commands (SPEC §2, §6)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from rorfeed.cli import main
from rorfeed.config import load
from rorfeed.cycle import Cycle
from rorfeed.model import Mode
from rorfeed.state import open_store
from tests.sites import BAD_CHIR, GOOD, NOTIFY, T0, cycle, write_site
from tests.smtp import SmtpServer, free_port


@pytest.fixture
def site(tmp_path: Path) -> Path:
    write_site(tmp_path, export=GOOD)
    return tmp_path


def units_json(site: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    capsys.readouterr()
    assert main(["--config", str(site / "rorfeed.toml"), "units", "--json"]) == 0
    return {u["ror_id"]: u for u in json.loads(capsys.readouterr().out)}


def history_json(
    site: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main(["--config", str(site / "rorfeed.toml"), "history", "--json", *args]) == 0
    entries: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return entries


def cli(site: Path, *args: str) -> int:
    return main(["--config", str(site / "rorfeed.toml"), *args])


def sent_ids(site: Path, hour: int) -> list[str]:
    stamp = (T0 + timedelta(hours=hour)).strftime("%Y%m%dT%H%M%SZ")
    path = site / "depot" / f"rorlits_750712184_{stamp}.json"
    if not path.exists():
        return []
    return [u["id_fiche_ror"] for u in json.loads(path.read_text())["unites"]]


def test_unit_goes_manual_after_exactly_three_rejected_cycles(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for hour in (0, 1):
        cycle(site, hour, BAD_CHIR)
    unit = units_json(site, capsys)["52/300"]
    assert (unit["mode"], unit["streak"]) == ("auto", 2)
    cycle(site, 2, BAD_CHIR)
    unit = units_json(site, capsys)["52/300"]
    assert unit["mode"] == "manual"
    entry = history_json(site, capsys, "--unit", "52/300", "--limit", "1")[0]
    assert (entry["actor"], entry["action"], entry["previous"], entry["new"]) == (
        "rorfeed",
        "unit_mode",
        "auto",
        "manual",
    )
    assert "3 cycles consécutifs" in str(entry["reason"])
    assert "count_not_integer" in str(entry["reason"])
    assert "'x'" in str(entry["reason"])  # the last rejected values
    # It never comes back by itself, even when its data is fine again.
    cycle(site, 3)
    assert units_json(site, capsys)["52/300"]["mode"] == "manual"
    assert "52/300" not in sent_ids(site, 3)


def test_a_valid_cycle_in_between_resets_the_streak(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cycle(site, 0, BAD_CHIR)
    cycle(site, 1, BAD_CHIR)
    cycle(site, 2)
    cycle(site, 3, BAD_CHIR)
    cycle(site, 4, BAD_CHIR)
    unit = units_json(site, capsys)["52/300"]
    assert (unit["mode"], unit["streak"]) == ("auto", 2)


def test_unreachable_source_does_not_touch_unit_streaks(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cycle(site, 0, BAD_CHIR)
    cycle(site, 1, None)
    cycle(site, 2, BAD_CHIR)
    assert units_json(site, capsys)["52/300"]["streak"] == 2


def test_manual_unit_leaves_the_next_file_and_auto_brings_it_back(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cycle(site, 0)
    assert sent_ids(site, 0) == ["52/100", "52/200", "52/300", "52/400"]
    assert cli(site, "units", "manual", "MED", "--reason", "travaux", "--by", "alice") == 0
    cycle(site, 1)
    assert sent_ids(site, 1) == ["52/100", "52/300", "52/400"]
    unit = units_json(site, capsys)["52/200"]
    assert (unit["mode"], unit["mode_reason"]) == ("manual", "travaux")
    assert unit["last_counts"] == {"installed": 30, "closed": 0, "available": 5}
    assert cli(site, "units", "auto", "52/200", "--reason", "fin des travaux", "--by", "alice") == 0
    cycle(site, 2)
    assert sent_ids(site, 2) == ["52/100", "52/200", "52/300", "52/400"]
    entries = history_json(site, capsys, "--unit", "MED")
    assert [(e["actor"], e["previous"], e["new"], e["reason"]) for e in entries[:2]] == [
        ("alice", "manual", "auto", "fin des travaux"),
        ("alice", "auto", "manual", "travaux"),
    ]


def test_declared_manual_fiche_cannot_be_put_back_by_the_cli(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cycle(site, 0)
    capsys.readouterr()
    assert cli(site, "units", "auto", "52/500", "--reason", "x", "--by", "bob") == 1
    assert "declared manual in the mapping" in capsys.readouterr().err
    assert units_json(site, capsys)["52/500"]["mode"] == "manual"


def test_unknown_unit_changes_nothing(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cycle(site, 0)
    capsys.readouterr()
    assert cli(site, "units", "manual", "MED", "NOPE", "--reason", "x", "--by", "bob") == 1
    assert "unknown unit 'NOPE'" in capsys.readouterr().err
    assert units_json(site, capsys)["52/200"]["mode"] == "auto"


def test_reason_is_mandatory_and_rorfeed_is_a_reserved_actor(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cycle(site, 0)
    with pytest.raises(SystemExit) as info:
        cli(site, "units", "manual", "MED")
    assert info.value.code == 2
    assert cli(site, "units", "manual", "MED", "--reason", " ", "--by", "bob") == 1
    assert cli(site, "units", "manual", "MED", "--reason", "x", "--by", "rorfeed") == 1
    assert units_json(site, capsys)["52/200"]["mode"] == "auto"


def test_by_defaults_to_sudo_user(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cycle(site, 0)
    monkeypatch.setenv("SUDO_USER", "carole")
    assert cli(site, "units", "manual", "MED", "--reason", "test") == 0
    assert history_json(site, capsys)[0]["actor"] == "carole"


def test_killswitch_trips_after_three_unreachable_cycles_and_stays_on(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cycle(site, 0)
    cycle(site, 1, None)
    cycle(site, 2, None)
    capsys.readouterr()
    assert cli(site, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["killswitch"]["establishments"] == {
        "750712184": False
    }
    cycle(site, 3, None)
    report = cycle(site, 4)  # the source is back: the switch stays on
    assert report.establishments[0].status == "killswitch"
    assert sent_ids(site, 4) == []
    entry = history_json(site, capsys)[0]
    assert (entry["actor"], entry["action"], entry["new"]) == ("rorfeed", "killswitch", "on")
    assert "3 cycles" in str(entry["reason"])
    assert (
        cli(
            site,
            "killswitch",
            "off",
            "--establishment",
            "750712184",
            "--reason",
            "source réparée",
            "--by",
            "dsi",
        )
        == 0
    )
    cycle(site, 5)
    assert sent_ids(site, 5) == ["52/100", "52/200", "52/300", "52/400"]
    # Turning it off started its counts afresh: two more outages do not trip it again.
    cycle(site, 6, None)
    cycle(site, 7, None)
    assert cycle(site, 8).establishments[0].status == "ok"


def test_killswitch_trips_when_more_than_half_the_units_are_rejected(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [("REA", "10", "1", "2"), ("MED", "-1", "0", "5"), ("CHIR", "1", "2", "3")]
    report = cycle(site, 0, rows)  # 3 of 4 automated units rejected
    assert report.establishments[0].status == "killswitch"
    assert sent_ids(site, 0) == []  # the cycle that trips it sends nothing
    assert "3 unités rejetées sur 4" in str(history_json(site, capsys)[0]["reason"])
    assert cycle(site, 1).establishments[0].status == "killswitch"


def test_global_killswitch_stops_every_establishment(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(site, "killswitch", "on", "--reason", "incident ROR", "--by", "dsi") == 0
    report = cycle(site, 0)
    assert report.establishments[0].status == "killswitch"
    assert sent_ids(site, 0) == []
    capsys.readouterr()
    assert cli(site, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["killswitch"]["global"] is True
    entry = next(e for e in history_json(site, capsys) if e["action"] == "killswitch")
    assert (entry["finess"], entry["new"], entry["actor"]) == (None, "on", "dsi")


def test_emergency_commands_act_even_with_an_invalid_config(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cycle(site, 0)
    config_text = (site / "rorfeed.toml").read_text()
    (site / "rorfeed.toml").write_text(config_text.replace("[daemon]", "[daemon]\ntypo = 1"))
    capsys.readouterr()
    assert cli(site, "units", "manual", "MED", "--reason", "panne", "--by", "eve") == 0
    err = capsys.readouterr().err
    assert "daemon.typo: unknown key" in err
    assert cli(site, "killswitch", "on", "--reason", "panne", "--by", "eve") == 0
    # Non-emergency commands refuse an invalid configuration.
    assert cli(site, "units", "auto", "MED", "--reason", "x", "--by", "eve") == 2
    assert cli(site, "killswitch", "off", "--reason", "x", "--by", "eve") == 2
    (site / "rorfeed.toml").write_text(config_text)
    assert units_json(site, capsys)["52/200"]["mode"] == "manual"
    capsys.readouterr()
    assert cli(site, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["killswitch"]["global"] is True


def test_units_and_history_tables_on_a_terminal(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cycle(site, 0)
    capsys.readouterr()
    assert cli(site, "units") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["FINESS", "LOCAL", "ROR", "ID"]
    assert any("52/500" in line and "MANUEL (mapping)" in line for line in out)
    assert any("52/100" in line and "10/1/2" in line for line in out)
    assert cli(site, "history") == 0
    assert "added (auto)" in capsys.readouterr().out


def test_two_processes_switching_at_once_lose_no_entry(site: Path) -> None:
    cycle(site, 0)
    script = (
        "import sys\n"
        "from rorfeed.cli import main\n"
        "cfg, unit, who = sys.argv[1:]\n"
        "for i in range(8):\n"
        "    mode = 'manual' if i % 2 == 0 else 'auto'\n"
        "    assert main(['--config', cfg, 'units', mode, unit, '--reason', f'r{i}',"
        " '--by', who]) == 0\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(site / "rorfeed.toml"), unit, who])
        for unit, who in (("REA", "p1"), ("MED", "p2"))
    ]
    assert [p.wait(timeout=90) for p in procs] == [0, 0]
    store = open_store(load(site / "rorfeed.toml").state_url)
    entries = [e for e in store.history(limit=1000) if e.action == "unit_mode"]
    assert sorted((e.actor, e.reason) for e in entries) == sorted(
        (who, f"r{i}") for who in ("p1", "p2") for i in range(8)
    )
    assert {u.ror_id: u.mode for u in store.units()}["52/100"] is Mode.AUTO


def test_switch_by_cli_and_automatic_switch_email_the_cell(site: Path, smtp: SmtpServer) -> None:
    with (site / "rorfeed.toml").open("a") as fh:
        fh.write(NOTIFY.format(port=smtp.port))
    cycle(site, 0)
    assert cli(site, "units", "manual", "MED", "--reason", "travaux", "--by", "alice") == 0
    [mail] = smtp.messages
    body = mail.message.get_content()
    assert mail.rcpt_tos == ("cellule.lits@hopital.test",)
    assert "Médecine" in body and "52/200" in body and "MED" in body and "travaux" in body
    assert "saisie manuelle dans le ROR est nécessaire" in body
    assert "30" in body  # the last values sent, which the ROR keeps showing
    smtp.clear()
    for hour in (1, 2, 3):
        cycle(site, hour, BAD_CHIR)
    [auto] = smtp.messages
    text = auto.message.get_content()
    assert "52/300" in text and "rorfeed" in text and "count_not_integer" in text


def test_smtp_down_never_fails_a_cycle_and_the_email_waits(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (site / "rorfeed.toml").open("a") as fh:
        fh.write(NOTIFY.format(port=free_port()))  # nothing listens there
    cycle(site, 0)
    assert cli(site, "units", "manual", "MED", "--reason", "travaux", "--by", "alice") == 0
    for hour in (1, 2, 3):
        report = cycle(site, hour, BAD_CHIR)
        assert not report.failed
    assert sent_ids(site, 3) == ["52/100", "52/400"]
    store = open_store(load(site / "rorfeed.toml").state_url)
    waiting = store.pending_emails()
    assert len(waiting) == 2
    # Tried at the command, then at each cycle's end; a relay down stops the batch at once.
    assert [e.attempts for e in waiting] == [4, 0]


def test_switch_made_after_files_were_written_withholds_their_delivery(site: Path) -> None:
    """A switch made while a cycle runs stops every delivery not started yet (SPEC §2)."""
    config = load(site / "rorfeed.toml")
    (site / "depot").rmdir()  # the first delivery fails: the files wait in the outbox
    at = T0
    stamp = (at - timedelta(minutes=5)).timestamp()
    os.utime(site / "export.csv", (stamp, stamp))
    store = open_store(config.state_url)
    assert Cycle(config, store, clock=lambda: at).run(at).failed
    assert cli(site, "units", "manual", "MED", "--reason", "travaux", "--by", "alice") == 0
    (site / "depot").mkdir()
    # The next cycle's source is down: only the waiting files could leave, and they hold MED.
    (site / "export.csv").unlink()
    later = at + timedelta(minutes=10)
    report = Cycle(config, store, clock=lambda: later).run(later)
    store.engine.dispose()
    assert len(report.deliveries[0].withheld) == 3
    assert list((site / "depot").iterdir()) == []
    assert len(list((site / "work" / "archive" / "depot" / "withheld").iterdir())) == 3


def test_killswitch_turned_on_before_delivery_withholds_waiting_files(site: Path) -> None:
    config = load(site / "rorfeed.toml")
    (site / "depot").rmdir()
    stamp = (T0 - timedelta(minutes=5)).timestamp()
    os.utime(site / "export.csv", (stamp, stamp))
    store = open_store(config.state_url)
    assert Cycle(config, store, clock=lambda: T0).run(T0).failed
    assert (
        cli(
            site,
            "killswitch",
            "on",
            "--establishment",
            "750712184",
            "--reason",
            "doute",
            "--by",
            "dsi",
        )
        == 0
    )
    (site / "depot").mkdir()
    later = T0 + timedelta(minutes=10)
    report = Cycle(config, store, clock=lambda: later).run(later)
    store.engine.dispose()
    assert len(report.deliveries[0].withheld) == 3
    assert list((site / "depot").iterdir()) == []


def test_units_says_which_units_the_cell_enters_by_hand_and_why(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The rule the page shows, on the command line too: 52/500 is declared manual in the
    # mapping; with the kill-switch on, every unit is entered by hand.
    cycle(site, 0)
    units = units_json(site, capsys)
    assert units["52/500"]["manual_entry"] == ["declared_manual"]
    assert units["52/100"]["manual_entry"] == []
    assert cli(site, "killswitch", "on", "--reason", "panne", "--by", "alice") == 0
    units = units_json(site, capsys)
    assert units["52/100"]["manual_entry"] == ["global_killswitch"]
    assert units["52/500"]["manual_entry"] == ["declared_manual", "global_killswitch"]
    capsys.readouterr()
    assert cli(site, "units") == 0
    out, err = capsys.readouterr()
    assert "ENTER BY HAND" in out.splitlines()[0]
    assert "5 unit(s), 1 in manual mode, 5 to enter by hand in the ROR" in err


def test_the_units_table_shows_times_to_the_minute_and_never_runs_a_label(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cycle(site, 0)
    # A label written before the mapping refused control characters, still in the state.
    with sqlite3.connect(site / "work" / "state.db") as conn:
        conn.execute("UPDATE units SET label = ? WHERE ror_id = '52/100'", ("\x1b[2JRéa",))
    # A switch made now: its time has microseconds, which the table must not show.
    assert cli(site, "units", "manual", "MED", "--reason", "travaux", "--by", "bob") == 0
    capsys.readouterr()
    assert cli(site, "units") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\\x1b[2JRéa" in out
    row = next(line for line in out.splitlines() if "52/200" in line)
    # SINCE / SENT AT: local date and minute with the offset; no seconds, no microseconds.
    assert len(re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d[+-]\d\d:\d\d(?:\s|$)", row)) == 2, row
    assert not re.search(r"\d\d:\d\d[.:]\d", row), row
