"""The mapping changed by a person: preview, confirmation, versions (SPEC §10.1), through
`rorfeed mapping show|versions|diff|apply|restore` and the cycles that follow."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from rorfeed.cli import main
from rorfeed.config import load
from rorfeed.control import Control
from rorfeed.mapping_changes import FeedEffect, MappingConflict, confirm, propose
from rorfeed.state import open_store
from tests.sites import directory_destination, mapping_csv, site_toml, write_export, write_site

FINESS = "750712184"
ROWS = [
    ("REA", "52/100", "Réanimation", "auto"),
    ("MED", "52/200", "Médecine", "auto"),
    ("CHIR", "52/300", "Chirurgie", "auto"),
]
EXPORT = [("REA", "10", "1", "2"), ("MED", "30", "0", "5"), ("CHIR", "20", "2", "3")]
# A new fiche (PED), one removed (CHIR), one re-declared manual (MED), one re-mapped (REA).
CHANGED = [
    ("REA2", "52/100", "Réanimation", "auto"),
    ("MED", "52/200", "Médecine", "manual"),
    ("PED", "52/600", "Pédiatrie", "auto"),
]
NOTIFY = '\n[notify]\nsmtp_host = "127.0.0.1"\nsmtp_port = 9\nsender = "rorfeed@h.fr"\n'
NOTIFY += 'recipients = ["cellule@h.fr"]\n'


@pytest.fixture
def site(tmp_path: Path) -> Path:
    toml = site_toml(destinations=directory_destination("depot", ("json",)), extra=NOTIFY)
    write_site(tmp_path, toml, mapping_csv(ROWS), [*EXPORT, ("REA2", "9", "0", "1")])
    return tmp_path


def rorfeed(site: Path, *args: str) -> int:
    return main(["--config", str(site / "rorfeed.toml"), *args])


def run_once(site: Path) -> list[str]:
    """One real cycle; the ROR ids of the file it delivered."""
    for old in (site / "depot").glob("*.json"):
        old.unlink()
    write_export(site, [*EXPORT, ("REA2", "9", "0", "1"), ("PED", "12", "0", "4")])
    assert rorfeed(site, "run-once") == 0
    (delivered,) = (site / "depot").glob("*.json")
    return sorted(u["id_fiche_ror"] for u in json.loads(delivered.read_text())["unites"])


def history(site: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, str]]:
    capsys.readouterr()
    assert rorfeed(site, "history", "--json", "--limit", "200") == 0
    entries: list[dict[str, str]] = json.loads(capsys.readouterr().out)
    return entries


def write_proposal(site: Path, rows: Sequence[Sequence[str]], name: str = "new.csv") -> Path:
    path = site / name
    path.write_text(mapping_csv(rows), encoding="utf-8")
    return path


def test_an_invalid_proposal_lists_every_problem_with_its_line_and_writes_nothing(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_once(site) == ["52/100", "52/200", "52/300"]
    before = (site / "mapping.csv").read_bytes()
    bad = write_proposal(
        site,
        [
            ("REA", "52/100", "Réanimation", "auto"),
            ("MED", "52/100", "Médecine", "auto"),  # line 3: ROR id twice
            ("CHIR", "=HYPERLINK(1)", "Chirurgie", "auto"),  # line 4: a formula
            ("USC", "52/400", "Surveillance", "sometimes"),  # line 5: no such mode
        ],
    )
    capsys.readouterr()
    code = rorfeed(site, "mapping", "apply", FINESS, str(bad), "--reason", "r", "--yes")
    err = capsys.readouterr().err
    assert code == 2
    assert [line.split(":")[1] for line in err.splitlines()[1:]] == ["3", "4", "5"]
    assert (site / "mapping.csv").read_bytes() == before
    assert all(e["actor"] == "rorfeed" for e in history(site, capsys))


def test_a_confirmed_change_is_written_audited_under_the_person_and_fed_by_the_next_cycle(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_once(site) == ["52/100", "52/200", "52/300"]
    new = write_proposal(site, CHANGED)
    capsys.readouterr()
    code = rorfeed(
        site,
        "mapping",
        "apply",
        FINESS,
        str(new),
        "--reason",
        "ouverture de la pédiatrie",
        "--by",
        "marie",
        "--yes",
    )
    err = capsys.readouterr().err
    assert code == 0, err
    # The preview says what each change means for the ROR.
    assert "52/300: removed — NO LONGER FED: enter it by hand in the ROR from now on" in err
    assert "52/200: declared auto → manual — NO LONGER FED" in err
    assert "52/600: added (local code PED, auto) — fed automatically from the next cycle" in err
    assert "52/100: local code REA → REA2 — fed with the counts of another local unit" in err
    assert (site / "mapping.csv").read_text(encoding="utf-8") == mapping_csv(CHANGED)

    mine = [e for e in history(site, capsys) if e["actor"] == "marie"]
    assert sorted((e["ror_id"], e["new"]) for e in mine if e["action"] == "mapping") == [
        ("52/100", "REA2 (Réanimation)"),
        ("52/200", "declared manual"),
        ("52/300", "removed"),
        ("52/600", "added (auto)"),
    ]
    assert all(e["reason"].startswith("ouverture de la pédiatrie (") for e in mine)
    # The cell hears of both fiches that leave the automated feed.
    store = open_store(load(site / "rorfeed.toml").state_url)
    bodies = "\n".join(e.body for e in store.pending_emails())
    assert "52/300" in bodies and "52/200" in bodies and "52/600" not in bodies

    # The next cycle feeds the new fiche, no longer the removed one nor the manual one, and
    # finds nothing more to audit: the change was recorded once, under the person's name.
    entries = len(history(site, capsys))
    assert run_once(site) == ["52/100", "52/600"]
    assert len(history(site, capsys)) == entries


def test_a_change_is_refused_when_the_file_changed_since_the_preview(site: Path) -> None:
    config = load(site / "rorfeed.toml")
    store = open_store(config.state_url)
    proposal = propose(config, store, FINESS, mapping_csv(CHANGED))
    assert {c.effect for c in proposal.changes} >= {FeedEffect.STARTS, FeedEffect.STOPS}
    edited = mapping_csv([*ROWS, ("USC", "52/400", "Surveillance continue", "auto")])
    (site / "mapping.csv").write_text(edited, encoding="utf-8")  # someone else, meanwhile
    control = Control.from_config(config, store)
    now = datetime.now(UTC)
    with pytest.raises(MappingConflict, match="changed since the preview"):
        confirm(store, control, proposal, reason="r", actor="marie", now=now)
    assert (site / "mapping.csv").read_text(encoding="utf-8") == edited


def test_a_reason_is_required_and_a_shell_that_is_not_a_terminal_must_say_yes(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = str(write_proposal(site, CHANGED))
    before = (site / "mapping.csv").read_bytes()
    assert rorfeed(site, "mapping", "apply", FINESS, new, "--reason", " ", "--yes") == 2
    assert "a reason is required" in capsys.readouterr().err
    assert rorfeed(site, "mapping", "apply", FINESS, new, "--reason", "r") == 2  # stdin: no tty
    assert "pass --yes" in capsys.readouterr().err
    assert (site / "mapping.csv").read_bytes() == before


def test_every_version_is_kept_compared_and_restored(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_once(site)  # the first cycle keeps the version it read
    new = str(write_proposal(site, CHANGED))
    assert rorfeed(site, "mapping", "apply", FINESS, new, "--reason", "pédiatrie", "--yes") == 0
    # An editor on the server: the next cycle keeps that version too, and audits it itself.
    edited = mapping_csv([*CHANGED, ("CHIR", "52/300", "Chirurgie", "auto")])
    (site / "mapping.csv").write_text(edited, encoding="utf-8")
    run_once(site)
    capsys.readouterr()
    assert rorfeed(site, "mapping", "versions", FINESS) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["3", "2", "1"]
    assert "lu par un cycle" in listed[0] and "pédiatrie" in listed[1]
    assert [e["ror_id"] for e in history(site, capsys)[:1]] == ["52/300"]

    assert rorfeed(site, "mapping", "diff", FINESS, "1", "current") == 0
    diff = capsys.readouterr().out
    assert "52/600: added" in diff and "52/200: declared auto → manual" in diff
    assert rorfeed(site, "mapping", "show", FINESS, "--version", "1") == 0
    assert capsys.readouterr().out == mapping_csv(ROWS)

    assert rorfeed(site, "mapping", "restore", FINESS, "1", "--reason", "retour", "--yes") == 0
    assert (site / "mapping.csv").read_text(encoding="utf-8") == mapping_csv(ROWS)
    assert run_once(site) == ["52/100", "52/300"]  # 52/200 stays manual until `units auto`


def test_show_prints_each_mapping_with_the_modes(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_once(site)
    capsys.readouterr()
    assert rorfeed(site, "mapping", "show") == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["finess"] == FINESS and doc["problems"] == []
    assert [(u["line"], u["ror_id"], u["mode"]) for u in doc["units"]] == [
        (2, "52/100", "auto"),
        (3, "52/200", "auto"),
        (4, "52/300", "auto"),
    ]


def test_a_spreadsheets_file_is_read_and_anything_else_refused(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cp1252 = site / "excel.csv"
    cp1252.write_bytes(
        mapping_csv([*ROWS, ("PED", "52/600", "Pédiatrie", "auto")]).encode("cp1252")
    )
    assert rorfeed(site, "mapping", "apply", FINESS, str(cp1252), "--reason", "r", "--yes") == 0
    assert "Pédiatrie" in (site / "mapping.csv").read_text(encoding="utf-8")
    for name, data, says in (
        ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not text"),
        ("big.csv", b"a;b;c\n" * 200_000, "at most 1 MiB"),
        ("empty.csv", b"\n", "empty"),
    ):
        (site / name).write_bytes(data)
        capsys.readouterr()
        assert rorfeed(site, "mapping", "apply", FINESS, str(site / name), "--reason", "r") == 2
        assert says in capsys.readouterr().err, name


def test_the_state_of_a_crash_after_the_file_was_replaced_is_caught_up_by_the_next_cycle(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_once(site)
    # As if `confirm` had died right after replacing the file: no version, no audit entry.
    (site / "mapping.csv").write_text(mapping_csv(CHANGED), encoding="utf-8")
    stamp = (datetime.now(UTC) - timedelta(minutes=1)).timestamp()
    os.utime(site / "mapping.csv", (stamp, stamp))
    assert run_once(site) == ["52/100", "52/600"]
    ours = [e for e in history(site, capsys) if e["action"] == "mapping"]
    assert {e["ror_id"] for e in ours[:4]} == {"52/100", "52/200", "52/300", "52/600"}
    assert all(e["actor"] == "rorfeed" for e in ours[:4])


def test_two_leads_confirming_at_once_one_wins_and_the_other_sees_the_conflict(
    site: Path,
) -> None:
    config = load(site / "rorfeed.toml")
    store = open_store(config.state_url)
    texts = {
        "marie": mapping_csv(CHANGED),
        "paul": mapping_csv([*ROWS, ("USC", "52/400", "Surveillance continue", "auto")]),
    }
    proposals = {who: propose(config, store, FINESS, text) for who, text in texts.items()}
    start = threading.Barrier(len(proposals))
    outcome: dict[str, str] = {}

    def confirm_as(who: str) -> None:
        control = Control.from_config(config, store)
        start.wait(timeout=10)
        try:
            confirm(
                store,
                control,
                proposals[who],
                reason=who,
                actor=who,
                now=datetime.now(UTC),
            )
            outcome[who] = "written"
        except MappingConflict:
            outcome[who] = "conflict"

    threads = [threading.Thread(target=confirm_as, args=(who,)) for who in proposals]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcome.values()) == ["conflict", "written"]
    (winner,) = (who for who, what in outcome.items() if what == "written")
    assert (site / "mapping.csv").read_text(encoding="utf-8") == texts[winner]
    assert {v.actor for v in store.mapping_versions(FINESS)} == {winner}


def test_priority_and_sync_code_are_kept_audited_and_shown_by_units(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    header = "local_code;ror_id;label;mode;priority;id_externe_synchro\n"
    (site / "mapping.csv").write_text(
        header + "REA;52/100;Réanimation;auto;1;REA-01\nMED;52/200;Médecine;auto;;\n",
        encoding="utf-8",
    )
    run_once(site)
    capsys.readouterr()
    assert rorfeed(site, "units", "--json") == 0
    shown = {
        u["ror_id"]: (u["priority"], u["id_externe_synchro"])
        for u in json.loads(capsys.readouterr().out)
    }
    assert shown == {"52/100": (1, "REA-01"), "52/200": (2, "MED")}
    (site / "mapping.csv").write_text(
        header + "REA;52/100;Réanimation;auto;2;REA-02\nMED;52/200;Médecine;auto;;\n",
        encoding="utf-8",
    )
    run_once(site)
    changed = [(e["previous"], e["new"]) for e in history(site, capsys) if e["ror_id"] == "52/100"]
    assert ("priority 1", "priority 2") in changed
    assert ("id_externe_synchro REA-01", "id_externe_synchro REA-02") in changed


def test_a_store_of_schema_6_gets_the_units_priority_and_sync_code(site: Path) -> None:
    run_once(site)
    url = load(site / "rorfeed.toml").state_url
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE units DROP COLUMN priority"))
        conn.execute(text("ALTER TABLE units DROP COLUMN id_externe_synchro"))
        conn.execute(text("UPDATE rorfeed_meta SET value = '6' WHERE key = 'schema_version'"))
    engine.dispose()
    units = open_store(url).units()
    assert [(u.ror_id, int(u.priority), u.sync_code) for u in units] == [
        ("52/100", 2, "REA"),
        ("52/200", 2, "MED"),
        ("52/300", 2, "CHIR"),
    ]
