"""SFTP delivery end to end: the real cycle (and `rorfeed run-once`) against a real sshd.

Each test builds a site in tmp_path (a CSV export, its mapping, rorfeed.toml with an `sftp`
destination pointing at the session's sshd, tests/sshd.py) and checks what SPEC §7 promises,
on the server's folder and in the delivery ledger: whole files under their final names only,
never twice, never stale, every failure reported and bounded in time. A small TCP relay
(`Relay`) stands between rorfeed and the sshd where the network must misbehave: refuse, drop,
stay mute, slow down or be cut in the middle of an upload. The site and the relay are shared
with the fault-injection suite (tests/faults/site.py, tests/faults/net.py).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import paramiko
import pytest
from sqlalchemy import text

from rorfeed.cli import main
from rorfeed.config import load
from rorfeed.cycle import CycleReport
from rorfeed.model import BedCounts
from rorfeed.outbox import Outbox
from rorfeed.state import open_store
from rorfeed.transports import open_transport
from tests.faults.net import Relay
from tests.faults.site import (
    DESTINATION,
    Site,
    cycle_time_of,
    known_hosts_for,
    names,
    utc_now,
    wait_for_next_second,
)
from tests.sites import FINESS
from tests.sshd import Sshd

pytestmark = pytest.mark.sshd


@pytest.fixture
def site(tmp_path: Path, sshd: Sshd) -> Site:
    return Site(tmp_path, sshd)


@pytest.fixture
def relay(sshd: Sshd) -> Iterator[Callable[[], Relay]]:
    made: list[Relay] = []

    def make() -> Relay:
        made.append(Relay(sshd.port))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it), never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


# -- success ----------------------------------------------------------------------------------


def test_cycle_delivers_all_three_formats_identical_and_archives_them(site: Site) -> None:
    t = utc_now()
    report = site.cycle(t)
    assert not report.failed
    delivery = report.deliveries[0]
    assert sorted(delivery.delivered) == sorted(names(t))
    assert (delivery.attempts, delivery.error, dict(delivery.failures)) == (1, "", {})
    assert delivery.delivered_finess == {FINESS: t}
    # On the server: the three final names, nothing under a temporary name.
    assert site.server() == sorted(names(t))
    for name in names(t):
        assert (site.remote / name).read_bytes() == site.archive_copy(name)
    # Locally: nothing waiting, everything archived as delivered, the ledger agrees.
    assert site.outbox() == []
    assert site.archived("delivered") == sorted(names(t))
    assert site.ledger() == dict.fromkeys(names(t), ("delivered", 1))
    # The units' last values sent are those of this cycle (a production destination).
    units = site.store.units(FINESS)
    assert {(u.last_counts_at, u.last_counts) for u in units} == {
        (t, BedCounts(installed=20, closed=2, available=5))
    }


def test_cycle_forgets_ledger_rows_and_snapshots_past_the_retention(site: Site) -> None:
    t = utc_now()
    long_ago = t - timedelta(days=31)  # archive_days defaults to 30
    counts = {"R1": BedCounts(1, 0, 1)}
    old_snapshot = site.store.add_snapshot_once(FINESS, long_ago, counts)
    assert old_snapshot is not None
    site.store.add_file(DESTINATION, "old.xml", old_snapshot, FINESS, long_ago, 10, long_ago)
    [row] = site.store.files(DESTINATION, ("pending",))
    site.store.set_file_status(row.id, "delivered", long_ago)
    site.store.add_snapshot_once(FINESS, long_ago + timedelta(hours=1), counts)  # no file staged
    assert "old.xml" in site.ledger()
    report = site.cycle(t)
    assert not report.failed
    assert site.ledger() == dict.fromkeys(names(t), ("delivered", 1))
    with site.store.engine.begin() as conn:
        left = conn.execute(text("SELECT count(*) FROM snapshots")).scalar_one()
    assert left == 1  # this cycle's: it gives the units their last values sent
    assert {u.last_counts_at for u in site.store.units(FINESS)} == {t}


def test_state_is_kept_as_long_as_a_file_may_wait_when_that_outlasts_the_archive(
    tmp_path: Path, sshd: Sshd
) -> None:
    # A file may wait 3 days here: it must still be compared with every newer file of its
    # establishment, so the ledger keeps 3 days although the archive keeps 1.
    site = Site(
        tmp_path,
        sshd,
        daemon="archive_days = 1\n",
        extra="\n[rules]\nmax_file_age_minutes = 4320\n",
    )
    t = utc_now()
    counts = {"R1": BedCounts(1, 0, 1)}
    for days, name in ((2, "kept.xml"), (4, "forgotten.xml")):
        at = t - timedelta(days=days)
        snapshot = site.store.add_snapshot_once(FINESS, at, counts)
        assert snapshot is not None
        site.store.add_file(DESTINATION, name, snapshot, FINESS, at, 10, at)
        [row] = site.store.files(DESTINATION, ("pending",))
        site.store.set_file_status(row.id, "delivered", at)
    assert not site.cycle(t).failed
    assert site.ledger() == {
        "kept.xml": ("delivered", 0),
        **dict.fromkeys(names(t), ("delivered", 1)),
    }
    site.close()


def test_rsa_client_key_with_a_passphrase_from_a_file_delivers(site: Site, sshd: Sshd) -> None:
    (site.root / "passphrase").write_text(sshd.passphrase + "\n", encoding="utf-8")
    text = site.config_path.read_text(encoding="utf-8").replace(
        "timeout_seconds", 'passphrase_file = "passphrase"\ntimeout_seconds'
    )
    site.config_path.write_text(
        text.replace(str(sshd.ed25519), str(sshd.ed25519_passphrase)), encoding="utf-8"
    )
    t = utc_now()
    assert not site.cycle(t, load(site.config_path)).failed
    site.configure(private_key=sshd.rsa)
    t2 = t + timedelta(minutes=1)
    assert not site.cycle(t2).failed
    assert site.server() == sorted(names(t) + names(t2))


# -- failures that another attempt cannot cure --------------------------------------------------


def _unknown(site: Site) -> dict[str, object]:
    empty = site.root / "known_hosts_empty"
    empty.write_text("# the operator's key was never added\n", encoding="ascii")
    return {"known_hosts": empty}


def _changed(site: Site) -> dict[str, object]:
    return {"known_hosts": site.sshd.write_known_hosts(site.root / "kh", site.sshd.other_ed25519)}


def _wrong_key(site: Site) -> dict[str, object]:
    return {"private_key": site.sshd.stranger}


def _missing_dir(site: Site) -> dict[str, object]:
    return {"remote_dir": site.remote / "absent"}


def _read_only(site: Site) -> dict[str, object]:
    return {"port": site.sshd.readonly_port}


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (_unknown, "host key not trusted: the server offers ssh-ed25519 SHA256:"),
        (_changed, "HOST KEY CHANGED: the server offers ssh-ed25519 SHA256:"),
        (_wrong_key, "authentication: the server refused the key"),
        (_missing_dir, "does the remote folder"),
        (_read_only, "permission denied by the server"),
    ],
    ids=["unknown-host-key", "changed-host-key", "wrong-client-key", "missing-dir", "read-only"],
)
def test_refused_delivery_fails_the_run_and_keeps_every_file(
    site: Site,
    capsys: pytest.CaptureFixture[str],
    setup: Callable[[Site], dict[str, object]],
    reason: str,
) -> None:
    site.configure(**setup(site))
    started = time.monotonic()
    assert site.run_once() == 1
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.splitlines()
    # One line says why, naming the destination.
    failed = [line for line in err if line.startswith("rorfeed: cycle failed")]
    assert len(failed) == 1
    assert f'destination "{DESTINATION}" (sftp ' in failed[0]
    assert reason in failed[0]
    # Not retried: nothing another attempt in this cycle could cure (no backoff either).
    attempts = [line for line in err if '"delivery_attempt_failed"' in line]
    assert len(attempts) == 1
    assert elapsed < 5
    # Every file waits in the outbox; nothing reached the server, not even a temporary name.
    waiting = site.outbox()
    assert len(waiting) == 3
    assert {status for status, _ in site.ledger().values()} == {"pending"}
    assert all(reason in e for e in site.last_errors().values())
    assert site.server() == []
    assert not (site.remote / "absent").exists()
    assert site.store.recent_cycles(1)[0].outcome == "failed"


# -- outages, silence, cuts -------------------------------------------------------------------


def test_server_down_then_up_delivers_the_newest_file_only(site: Site, closed_port: int) -> None:
    t1 = utc_now()
    down = site.configure(port=closed_port, timeout_seconds=2)
    report = site.cycle(t1, down)
    assert report.failed
    delivery = report.deliveries[0]
    assert "connection refused" in delivery.error
    assert delivery.attempts == 2  # one retry after 1 s; the next pause would pass the budget
    assert delivery.failures == {"error": 2}
    assert site.outbox() == sorted(names(t1))

    up = site.configure()
    t2 = t1 + timedelta(minutes=1)
    report = site.cycle(t2, up)
    assert not report.failed
    assert sorted(report.deliveries[0].superseded) == sorted(names(t1))
    assert sorted(report.deliveries[0].delivered) == sorted(names(t2))
    assert site.server() == sorted(names(t2))
    assert site.archived("superseded") == sorted(names(t1))
    ledger = site.ledger()
    assert {n: ledger[n] for n in names(t1)} == dict.fromkeys(names(t1), ("superseded", 0))
    assert {n: ledger[n] for n in names(t2)} == dict.fromkeys(names(t2), ("delivered", 1))

    # A third cycle with nothing new (the export is gone): nothing is sent again.
    (site.root / "export.csv").unlink()
    before = {n: (site.remote / n).stat().st_mtime_ns for n in site.server()}
    report = site.cycle(t2 + timedelta(minutes=1), up)
    assert report.deliveries[0].delivered == []
    assert report.deliveries[0].attempts == 0  # nothing to do: no connection at all
    assert {n: (site.remote / n).stat().st_mtime_ns for n in site.server()} == before


def test_server_that_accepts_tcp_and_never_answers_ends_the_cycle_within_its_timeout(
    site: Site, relay: Callable[[], Relay], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    mute = relay()
    mute.mode = "mute"
    config = site.configure(
        port=mute.port, known_hosts=known_hosts_for(site, mute.port), timeout_seconds=2
    )
    started = time.monotonic()
    report = site.cycle(utc_now(), config)
    elapsed = time.monotonic() - started
    assert elapsed < 2 + 1.5
    delivery = report.deliveries[0]
    assert report.failed
    assert delivery.error_cause == "timeout"
    assert delivery.attempts == 1
    assert len(site.outbox()) == 3
    assert site.server() == []
    # The failure is reported once, by rorfeed; paramiko's thread adds no traceback of its own.
    for thread in threading.enumerate():
        if isinstance(thread, paramiko.Transport):
            thread.join(timeout=5)
    noise = [r for r in caplog.records if "paramiko" in r.name and r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in noise] == []


def test_timeout_bounds_the_whole_delivery_retries_included(
    site: Site, relay: Callable[[], Relay]
) -> None:
    flaky = relay()
    flaky.mode = "drop"  # accepts, then closes at once: a failure worth retrying
    config = site.configure(
        port=flaky.port, known_hosts=known_hosts_for(site, flaky.port), timeout_seconds=2.5
    )
    report = site.cycle(utc_now(), config)
    delivery = report.deliveries[0]
    # Attempts at 0 s and 1 s; the next pause (2 s) would end past the budget: it stops there
    # rather than sleeping past it.
    assert delivery.attempts == 2
    assert delivery.failures == {"error": 2}
    assert delivery.duration < 2.5
    assert len(site.outbox()) == 3

    # Given more time, it tries more often (at 0, 1 and 3 s), still within the budget.
    config = site.configure(
        port=flaky.port, known_hosts=known_hosts_for(site, flaky.port), timeout_seconds=4
    )
    report = site.cycle(utc_now() + timedelta(seconds=1), config)
    assert report.deliveries[0].attempts == 3
    assert report.deliveries[0].duration < 4


def test_connection_cut_during_an_upload_leaves_no_final_file_and_the_retry_delivers(
    tmp_path: Path, sshd: Sshd, relay: Callable[[], Relay]
) -> None:
    # A CSV file of some 100 kB (the name is on every line), uploaded at 64 kB/s.
    site = Site(tmp_path, sshd, units=40, name="Hôpital " + "très " * 500)
    slow = relay()
    slow.rate = 64 * 1024
    config = site.configure(
        port=slow.port, known_hosts=known_hosts_for(site, slow.port), timeout_seconds=60
    )
    t = utc_now()
    result: list[CycleReport] = []
    worker = threading.Thread(target=lambda: result.append(site.cycle(t, config)), daemon=True)
    worker.start()
    part = site.remote / f".{names(t)[0]}.part"
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > 16 * 1024):
        assert time.monotonic() < deadline, "the upload did not start"
        assert worker.is_alive(), "the cycle ended before the upload"
        time.sleep(0.005)
    slow.rate = None
    slow.cut()
    seen_at_cut = site.server()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert seen_at_cut == [part.name]  # the consumer saw no final name

    delivery = result[0].deliveries[0]
    assert not result[0].failed
    assert delivery.attempts == 2
    assert sum(delivery.failures.values()) == 1
    assert site.server() == sorted(names(t))
    for name in names(t):
        assert (site.remote / name).read_bytes() == site.archive_copy(name)
    ledger = site.ledger()
    assert ledger[names(t)[0]] == ("delivered", 2)  # the cut upload, then the good one
    assert ledger[names(t)[1]] == ledger[names(t)[2]] == ("delivered", 1)


# -- crashes and restarts ---------------------------------------------------------------------


def test_process_killed_right_after_the_rename_does_not_deliver_that_file_again(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    assert site.run_once_process(kill="after") == -signal.SIGKILL
    t1 = cycle_time_of(min(site.ledger()))  # one cycle so far: its three files
    csv_name = names(t1)[0]
    # Renamed on the server, but the ledger could not say so: the outcome is unknown.
    assert site.server() == [csv_name]
    assert site.ledger()[csv_name] == ("uploading", 1)
    remote_before = (site.remote / csv_name).stat()

    wait_for_next_second(t1)
    assert site.run_once() == 0  # the next run, in a new store: only the ledger remembers
    err = capsys.readouterr().err
    ledger = site.ledger()
    assert ledger[csv_name] == ("delivered", 1)  # settled: the final name has the right size
    assert '"delivery_settled"' in err
    assert {ledger[n] for n in names(t1)[1:]} == {("superseded", 0)}
    t2 = max(cycle_time_of(n) for n in ledger)
    assert {ledger[n] for n in names(t2)} == {("delivered", 1)}
    # The server has the settled file exactly once, untouched, and the next cycle's files.
    assert site.server() == sorted([csv_name, *names(t2)])
    remote_after = (site.remote / csv_name).stat()
    assert (remote_after.st_ino, remote_after.st_mtime_ns) == (
        remote_before.st_ino,
        remote_before.st_mtime_ns,
    )
    assert (site.remote / csv_name).read_bytes() == site.archive_copy(csv_name)
    assert site.outbox() == []


def test_process_killed_before_the_rename_leaves_the_file_uncertain_never_sent(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    assert site.run_once_process(kill="before") == -signal.SIGKILL
    t1 = cycle_time_of(min(site.ledger()))
    csv_name = names(t1)[0]
    assert site.server() == [f".{csv_name}.part"]  # uploaded, never renamed
    assert site.ledger()[csv_name] == ("uploading", 1)

    wait_for_next_second(t1)
    assert site.run_once() == 0  # the next run, in a new store: only the ledger remembers
    err = capsys.readouterr().err
    ledger = site.ledger()
    # Final name absent: the operator may have taken it already — never sent again.
    assert ledger[csv_name] == ("uncertain", 1)
    assert site.archived("uncertain") == [csv_name]
    assert {ledger[n] for n in names(t1)[1:]} == {("superseded", 0)}
    newer = sorted(n for n in ledger if n not in names(t1))
    assert {ledger[n] for n in newer} == {("delivered", 1)}
    # A newer file followed; the temporary copy is gone; the old file never appeared.
    assert site.server() == newer
    assert site.outbox() == []
    assert "1 uncertain" in err


def test_the_same_file_is_never_delivered_twice_across_restarts(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    assert site.run_once_process() == 0, site.last_stderr
    first = dict(site.ledger())
    t1 = max(cycle_time_of(n) for n in first)
    stamps = {n: (site.remote / n).stat().st_mtime_ns for n in site.server()}
    wait_for_next_second(t1)
    assert site.run_once() == 0  # a new process's store: only the ledger remembers
    ledger = site.ledger()
    assert len(ledger) == 6
    assert set(ledger.values()) == {("delivered", 1)}
    assert len(site.server()) == 6
    assert {n: (site.remote / n).stat().st_mtime_ns for n in first} == stamps
    # A restart with the source down: nothing new, and nothing old goes out again.
    (site.root / "export.csv").unlink()
    capsys.readouterr()
    assert site.run_once() == 1
    assert "source" in capsys.readouterr().err
    assert site.ledger() == ledger
    assert len(site.server()) == 6


def test_two_processes_delivering_at_once_send_each_file_once(
    site: Site, closed_port: int, relay: Callable[[], Relay]
) -> None:
    t = utc_now()
    assert site.cycle(t, site.configure(port=closed_port, timeout_seconds=1)).failed
    slow = relay()
    slow.rate = 64 * 1024  # long enough a delivery for the other to arrive in the middle
    config = site.configure(
        port=slow.port, known_hosts=known_hosts_for(site, slow.port), timeout_seconds=20
    )
    reports = []

    def deliver() -> None:
        outbox = Outbox(config.work_dir, open_store(config.state_url))
        reports.append(
            outbox.deliver(
                DESTINATION,
                open_transport(config, 0),
                timeout=20,
                max_age=timedelta(hours=2),
                production=True,
                clock=utc_now,
            )
        )

    workers = [threading.Thread(target=deliver, daemon=True) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(w.is_alive() for w in workers)
    assert sorted(len(r.delivered) for r in reports) == [0, 3]
    assert all(r.ok for r in reports)
    assert site.server() == sorted(names(t))
    assert set(site.ledger().values()) == {("delivered", 1)}


def test_status_reports_the_files_waiting_after_a_failed_delivery(
    site: Site, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    site.configure(port=closed_port, timeout_seconds=1)
    assert site.run_once() == 1
    capsys.readouterr()
    assert main(["--config", str(site.config_path), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outbox"] == {DESTINATION: 3}


def test_a_delivery_waits_for_another_process_only_within_its_budget(
    site: Site, closed_port: int
) -> None:
    t1 = utc_now()
    assert site.cycle(t1, site.configure(port=closed_port, timeout_seconds=1)).failed
    fd = os.open(site.root / "work" / "outbox" / f".{DESTINATION}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process is delivering to the destination
        started = time.monotonic()
        report = site.cycle(t1 + timedelta(minutes=1), site.configure(timeout_seconds=1))
        elapsed = time.monotonic() - started
    finally:
        os.close(fd)
    delivery = report.deliveries[0]
    assert delivery.error_cause == "busy"
    assert "another rorfeed process" in delivery.error
    assert 1 <= elapsed < 1 + 1.5
    assert site.server() == []
    assert len(site.outbox()) == 6
    t3 = t1 + timedelta(minutes=2)
    report = site.cycle(t3)
    assert not report.failed
    assert len(report.deliveries[0].superseded) == 6
    assert site.server() == sorted(names(t3))


def test_a_delivered_file_left_in_the_outbox_by_a_crash_is_archived_not_sent_again(
    site: Site,
) -> None:
    t1 = utc_now()
    assert not site.cycle(t1).failed
    # As if the process died between the ledger's "delivered" and the move to the archive.
    archived = site.root / "work" / "archive" / DESTINATION / "delivered" / names(t1)[0]
    shutil.move(archived, site.root / "work" / "outbox" / DESTINATION / names(t1)[0])
    (site.remote / names(t1)[0]).unlink()  # the operator took it
    t2 = t1 + timedelta(minutes=1)
    report = site.cycle(t2)
    assert sorted(report.deliveries[0].delivered) == sorted(names(t2))
    assert site.outbox() == []
    assert names(t1)[0] in site.archived("delivered")
    assert names(t1)[0] not in site.server()
