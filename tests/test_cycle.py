"""The feed end to end, in process: CSV or SQLite source → pivot files → directory delivery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree

from rorfeed.cli import main
from rorfeed.config import load
from rorfeed.cycle import Cycle
from rorfeed.state import open_store
from tests.sites import (
    CONFIG,
    sqlite_source,
    write_export,
    write_mapping,
    write_site,
    write_sqlite_export,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def site(tmp_path: Path) -> Path:
    # REA and MED are sent; CHIR (a count that is not a number) and USC (absent from the
    # export) are rejected; 52/500 is manual; NEW is in the export but not in the mapping.
    write_site(
        tmp_path,
        export=[
            ("REA", "10", "1", "2"),
            ("MED", "30", "0", "5"),
            ("CHIR", "20", "2", "x"),
            ("NEW", "5", "0", "1"),
        ],
    )
    return tmp_path


def run(site: Path, *args: str) -> int:
    return main(["--config", str(site / "rorfeed.toml"), *args])


def delivered(site: Path) -> list[str]:
    return sorted(p.name for p in (site / "depot").iterdir())


def test_cycle_delivers_exactly_the_valid_automated_units(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(site, "run-once") == 0
    names = delivered(site)
    assert [n.rsplit(".", 1)[1] for n in names] == ["csv", "json", "xml"]
    assert all(n.startswith("rorlits_750712184_") for n in names)
    doc = json.loads((site / "depot" / names[1]).read_text(encoding="utf-8"))
    assert [u["id_fiche_ror"] for u in doc["unites"]] == ["52/100", "52/200"]
    assert doc["unites"][0]["lits_installes"] == 10
    assert "date_maj" in doc["unites"][0]  # the export's modification time
    tree = etree.fromstring((site / "depot" / names[2]).read_bytes())
    assert tree.xpath("count(//unite)") == 2
    err = capsys.readouterr().err
    assert "2 sent, 2 rejected, 1 manual, 1 unmapped, 3 files" in err
    assert "rejected by count_not_integer: 1" in err
    assert "rejected by unit_missing: 1" in err
    assert "unmapped source units: NEW" in err
    # Nothing left waiting; the files are archived as delivered.
    assert not list((site / "work" / "outbox" / "depot").iterdir())
    assert len(list((site / "work" / "archive" / "depot" / "delivered").iterdir())) == 3


def test_second_run_shows_streaks_in_status(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(site, "run-once") == 0
    time.sleep(1.1)  # a new cycle time, a new file name
    assert run(site, "run-once") == 0
    capsys.readouterr()
    assert run(site, "status", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["outcome"] for c in doc["cycles"]] == ["partial", "partial"]
    streaks = {u["ror_id"]: u["streak"] for u in doc["units"]}
    assert streaks == {"52/100": 0, "52/200": 0, "52/300": 2, "52/400": 2, "52/500": 0}
    assert doc["outbox"] == {"depot": 0}
    assert doc["killswitch"] == {"global": False, "establishments": {"750712184": False}}
    assert len(delivered(site)) == 6


def test_dry_run_writes_files_into_the_folder_and_changes_no_state(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = site / "dry"
    assert run(site, "run-once", "--dry-run", "--output", str(out)) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert len(list(out.iterdir())) == 3
    assert delivered(site) == []
    assert not (site / "work" / "state.db").exists()


def test_dry_run_default_folder_is_created_in_the_current_directory(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(site)
    assert run(site, "run-once", "--dry-run") == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder.parent == site
    assert folder.name.startswith("rorfeed-dry-run-")
    assert len(list(folder.iterdir())) == 3


def test_unreachable_source_fails_the_cycle_without_touching_streaks(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(site, "run-once") == 0
    (site / "export.csv").unlink()
    assert run(site, "run-once") == 1
    assert "cycle failed" in capsys.readouterr().err
    store = open_store(load(site / "rorfeed.toml").state_url)
    assert {u.ror_id: u.streak for u in store.units()}["52/300"] == 1


def test_stale_csv_export_is_rejected_and_nothing_is_sent(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = time.time() - 3 * 3600
    os.utime(site / "export.csv", (old, old))
    assert run(site, "run-once") == 0
    assert delivered(site) == []
    err = capsys.readouterr().err
    assert "rejected by updated_at_stale: 3" in err
    assert "kill-switch tripped, nothing sent" in err


def test_cp1252_export_with_accented_unit_codes(site: Path) -> None:
    write_mapping(site, [("RÉA", "52/100", "Réanimation")])
    (site / "rorfeed.toml").write_text(
        CONFIG.replace('path = "export.csv"', 'path = "export.csv"\nencoding = "cp1252"')
    )
    write_export(site, [("RÉA", "10", "1", "2")], encoding="cp1252")
    assert run(site, "run-once") == 0
    doc = json.loads(next((site / "depot").glob("*.json")).read_text(encoding="utf-8"))
    assert doc["unites"][0]["id_fiche_ror"] == "52/100"


def test_empty_source_rejects_every_mapped_unit_and_sends_no_file(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_export(site, [])
    assert run(site, "run-once") == 0
    assert delivered(site) == []
    err = capsys.readouterr().err
    assert "rejected by unit_missing: 4" in err
    assert "kill-switch tripped" in err


def test_invalid_mapping_fails_the_cycle_and_sends_nothing(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_mapping(site, [("A", "R1", "x"), ("A", "R2", "y")])
    assert run(site, "run-once") == 1
    assert delivered(site) == []
    assert "local code A already mapped on line 2" in capsys.readouterr().err


def test_invalid_config_exits_2_naming_file_and_key(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (site / "rorfeed.toml").write_text(CONFIG.replace("[daemon]", "[daemon]\nbogus = 1"))
    assert run(site, "run-once") == 2
    assert "rorfeed.toml: daemon.bogus: unknown key" in capsys.readouterr().err


def test_file_times_are_utc_in_names_and_local_offset_inside(site: Path) -> None:
    config = load(site / "rorfeed.toml")
    store = open_store(config.state_url)
    cycle_time = datetime(2026, 7, 1, 12, 5, tzinfo=UTC)
    exported = (cycle_time - timedelta(minutes=10)).timestamp()
    os.utime(site / "export.csv", (exported, exported))
    Cycle(config, store, clock=lambda: cycle_time).run(cycle_time)
    names = delivered(site)
    assert names[0] == "rorlits_750712184_20260701T120500Z.csv"
    doc = json.loads((site / "depot" / names[1]).read_text(encoding="utf-8"))
    assert doc["horodatage"] == "2026-07-01T14:05:00+02:00"


def test_older_pending_file_is_superseded_and_stale_one_expired(site: Path) -> None:
    config = load(site / "rorfeed.toml")
    store = open_store(config.state_url)
    (site / "depot").rmdir()  # delivery fails: files stay in the outbox
    t1 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    assert Cycle(config, store, clock=lambda: t1).run(t1).failed
    t2 = t1 + timedelta(minutes=1)
    (site / "depot").mkdir()
    report = Cycle(config, store, clock=lambda: t2).run(t2)
    assert not report.failed
    assert len(report.deliveries[0].superseded) == 3
    assert len(report.deliveries[0].delivered) == 3
    assert all("T" + t2.strftime("%H%M%S") in n for n in delivered(site))


def test_file_older_than_max_age_is_never_delivered(site: Path) -> None:
    config = load(site / "rorfeed.toml")
    store = open_store(config.state_url)
    (site / "depot").rmdir()
    t1 = datetime.now(UTC).replace(microsecond=0)
    Cycle(config, store, clock=lambda: t1).run(t1)
    (site / "depot").mkdir()
    later = t1 + timedelta(hours=3)
    # The next cycle's source is down (export gone): only the old file could be sent.
    (site / "export.csv").unlink()
    report = Cycle(config, store, clock=lambda: later).run(later)
    assert len(report.deliveries[0].expired) == 3
    assert delivered(site) == []


def test_sqlite_source_relative_to_the_config_folder(tmp_path: Path) -> None:
    write_sqlite_export(
        tmp_path / "beds.sqlite",
        [("REA", 10, 1, 2), ("MED", 30, 0, 5), ("CHIR", 20, 2, 3), ("USC", 8, 0, 1)],
    )
    write_site(tmp_path, source=sqlite_source("beds.sqlite"))
    assert main(["--config", str(tmp_path / "rorfeed.toml"), "run-once"]) == 0
    assert len(list((tmp_path / "depot").iterdir())) == 3


def test_demo_runs_from_a_fresh_copy(tmp_path: Path) -> None:
    """The README's first command, minus the install: the demo cycle works and rejects."""
    demo = tmp_path / "demo-checkout"
    (demo / "config").mkdir(parents=True)
    (demo / "samples").mkdir()
    for name in ("demo.toml", "demo-mapping.csv"):
        (demo / "config" / name).write_bytes((ROOT / "config" / name).read_bytes())
    (demo / "samples" / "make_demo_db.py").write_bytes(
        (ROOT / "samples" / "make_demo_db.py").read_bytes()
    )
    subprocess.run(
        [sys.executable, str(demo / "samples" / "make_demo_db.py")],
        check=True,
        timeout=60,
        capture_output=True,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rorfeed.cli",
            "--config",
            str(demo / "config" / "demo.toml"),
            "run-once",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    files = sorted((demo / "demo" / "depot").iterdir())
    assert [f.suffix for f in files] == [".csv", ".json", ".xml"]
    doc = json.loads(files[1].read_text(encoding="utf-8"))
    sent = {u["id_fiche_ror"] for u in doc["unites"]}
    assert len(sent) == 13
    assert not sent & {
        "75/100107",
        "75/100110",
        "75/100112",
        "75/100114",
        "75/100115",
        "75/100118",
        "75/100120",
    }
    assert "7 rejected" not in result.stderr and "6 rejected" in result.stderr


def test_two_runs_in_the_same_second_do_not_collide(site: Path) -> None:
    assert run(site, "run-once") == 0
    assert run(site, "run-once") == 0
    assert len(delivered(site)) == 6


def test_every_file_and_folder_rorfeed_creates_is_its_owners_only_whatever_the_umask(
    site: Path,
) -> None:
    # SPEC §10.3: the state store holds the page's signing key and the password hashes. Run
    # from a shell with the common umask 022, as a person would.
    def rorfeed(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "rorfeed", "--config", str(site / "rorfeed.toml"), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            preexec_fn=lambda: os.umask(0o022),  # the shell's umask, in the child only
        )
        assert done.returncode == 0, done.stderr

    rorfeed("run-once")
    rorfeed("run-once", "--dry-run", "--output", str(site / "dry"))
    created = [site / "work", site / "dry", *(site / "work").rglob("*"), *(site / "dry").rglob("*")]
    created += list((site / "depot").iterdir())
    assert any(p.name == "state.db" for p in created)
    assert any(p.suffix == ".xml" for p in (site / "depot").iterdir())
    loose = {str(p.relative_to(site)): oct(p.stat().st_mode & 0o777) for p in created}
    assert {p: m for p, m in loose.items() if m not in ("0o600", "0o700")} == {}
