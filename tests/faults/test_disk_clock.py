"""The machine misbehaves: the work folder's disk is full, the clock jumps by two hours.

Disk full: the work folder (outbox, archive, SQLite state store) is a small tmpfs mounted by
the test (it runs as root in CI), filled up to a random margin before a cycle.

Clock: the cycle takes its clock by injection (`Cycle(config, store, clock=...)`), here a
clock that jumps ±2 h between hourly cycles, each cycle's time being the schedule's fire time
by that clock — as the daemon computes it; the source's time stamps follow the same clock.
Then a `rorfeed run-once` process runs on the real clock, two hours behind the last cycle.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from rorfeed.cycle import Cycle
from rorfeed.model import LedgerStatus
from rorfeed.schedule import make_trigger, previous_fire_time
from tests.faults.harness import (
    DaemonCycle,
    SftpLog,
    Zygote,
    check_invariants,
    ledger_rows,
    recovery_problems,
    rng,
    run_daemon_cycle,
)
from tests.faults.site import DESTINATION, Site, utc_now
from tests.sshd import Sshd

pytestmark = pytest.mark.sshd


def metric_of(dc: DaemonCycle) -> Callable[[str], float | None]:
    def metric(name: str) -> float | None:
        labels = {} if name.startswith("rorfeed_cycles") else {"destination": DESTINATION}
        return dc.metric(name, **labels)

    return metric


def crash_problems(dc: DaemonCycle) -> list[str]:
    """A fault must be a known failure: no traceback, no internal error."""
    return [
        f"the cycle crashed (a bug, not a named failure): {e}"
        for e in dc.lines
        if e.get("event") == "cycle_crashed" or "exception" in e
    ]


# -- disk full ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path/work` on a 4 MB tmpfs of its own, unmounted at the end."""
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(work)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode:
        pytest.fail(f"cannot mount a tmpfs (the suite runs as root): {done.stderr}")
    try:
        yield work
    finally:
        subprocess.run(["umount", "-l", str(work)], capture_output=True, timeout=30, check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of `folder` until `leave` bytes (or none) are left."""
    filler = folder / "filler"
    stat = os.statvfs(folder)
    todo = max(0, stat.f_bavail * stat.f_frsize - leave)
    block = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while todo > 0:
                todo -= os.write(fd, block[: min(len(block), todo)])
            while leave == 0:
                os.write(fd, block[:512])
    finally:
        os.close(fd)
    return filler


@pytest.mark.faults("disk full in the work folder", short=4, long=10)
def test_the_work_folder_disk_full(
    run: int,
    small_disk: Path,
    tmp_path: Path,
    faults_sshd: Sshd,
    sftp_log: SftpLog,
    json_err: Callable[[], str],
    record_violations: Callable[[list[str]], None],
) -> None:
    site = Site(tmp_path, faults_sshd, units=30)  # files of a few kB each
    try:
        assert site.config.work_dir == small_disk
        assert Cycle(site.config, site.store).run(utc_now() - timedelta(seconds=5)).outcome == "ok"
        # No room at all, or room for some of the files, or for the state's changes only.
        leave = rng("disk", run).choice((0, 2048, 8192, 16384, 65536))
        filler = fill(small_disk, leave)
        faulty = run_daemon_cycle(site.config, site.store, utc_now(), json_err)
        violations = crash_problems(faulty)
        report = faulty.report
        if report is None or report.failed:
            failed = faulty.events("cycle_failed") + faulty.events("delivery_failed")
            words = ("space", "full", os.strerror(errno.ENOSPC))
            if not any(any(w in str(e) for w in words) for e in failed):
                violations.append(f"no log line says the disk is full: {faulty.lines}")
            if faulty.metric("rorfeed_cycles_failed_total") != 1:
                violations.append("metric rorfeed_cycles_failed_total is not 1")
        filler.unlink()
        violations += [
            f"after the fault: {v}" for v in check_invariants(site, sftp_log, settled=False)
        ]
        before = ledger_rows(site.store)
        good = run_daemon_cycle(site.config, site.store, utc_now() + timedelta(seconds=1), json_err)
        violations += crash_problems(good)
        violations += [
            f"good cycle: {v}" for v in recovery_problems(before, good.lines, metric_of(good))
        ]
        violations += [
            f"after the good cycle: {v}" for v in check_invariants(site, sftp_log, settled=True)
        ]
    finally:
        site.close()
    record_violations(violations)


# -- the clock ---------------------------------------------------------------------------------


@pytest.mark.faults("clock jumps ±2 h between cycles", short=3, long=10)
def test_the_clock_jumping_two_hours_between_cycles(
    run: int,
    site: Site,
    zygote: Zygote,
    sftp_log: SftpLog,
    json_err: Callable[[], str],
    record_violations: Callable[[list[str]], None],
) -> None:
    r = rng("clock", run)
    trigger = make_trigger("5 * * * *", site.config.zone)
    two_hours = timedelta(hours=2)
    jumps = [
        two_hours,
        -two_hours,
        *(r.choice((two_hours, -two_hours, timedelta())) for _ in range(3)),
    ]
    r.shuffle(jumps)
    jumps.append(two_hours)  # the last cycle's time ends up ahead of the real clock
    now = [utc_now()]
    export = site.root / "export.csv"
    violations: list[str] = []
    seen: set[datetime] = set()
    for step, jump in enumerate(jumps):
        now[0] += timedelta(hours=1) + jump
        cycle_time = previous_fire_time(trigger, now[0])
        assert cycle_time is not None
        # The bed-management database's time stamps follow the same (jumping) clock.
        os.utime(export, (now[0].timestamp(), now[0].timestamp()))
        delivered = [
            r.cycle_time for r in ledger_rows(site.store) if r.status == LedgerStatus.DELIVERED
        ]
        newest = max(delivered, default=None)
        dc = run_daemon_cycle(site.config, site.store, cycle_time, json_err, clock=lambda: now[0])
        violations += crash_problems(dc)
        report = dc.report
        where = f"cycle {step} at {cycle_time:%H:%M} (jump {jump})"
        if report is None:
            violations.append(f"{where}: ended on an error: {dc.lines}")
            continue
        delivery = report.deliveries[0]
        if cycle_time in seen:
            # The same fire time again (the clock set back): its files were written already.
            if not dc.events("files_already_written"):
                violations.append(f"{where}: no files_already_written line: {dc.lines}")
            if delivery.delivered:
                violations.append(f"{where}: delivered {delivery.delivered} again")
        elif newest is not None and cycle_time < newest:
            # Older than what the ROR has: superseded, never sent, and said so.
            superseded = [e.get("file") for e in dc.events("file_not_sent")]
            if delivery.delivered or len(superseded) != 3:
                violations.append(
                    f"{where}: older than {newest:%H:%M}, delivered {delivery.delivered},"
                    f" superseded {superseded}"
                )
            if dc.metric("rorfeed_superseded_files_total", destination=DESTINATION) != 3:
                violations.append(f"{where}: metric rorfeed_superseded_files_total is not 3")
        elif len(delivery.delivered) != 3 or report.outcome != "ok":
            violations.append(f"{where}: not delivered: {report.outcome} {delivery}")
        seen.add(cycle_time)
        violations += [f"{where}: {v}" for v in check_invariants(site, sftp_log, settled=True)]

    # `run-once` on the real clock, two hours behind the last cycle: it must neither wait for
    # the clock to catch up nor send anything older than what was delivered.
    now_real = utc_now().timestamp()
    os.utime(export, (now_real, now_real))
    child = zygote.run_once(site)
    try:
        code = child.wait(30)
    except AssertionError:
        violations.append("run-once behind the last cycle's time did not end within 30 s")
        code = child.kill()
    if code != 0 or "Traceback" in child.err():
        violations.append(f"run-once behind the last cycle's time: exit {code}\n{child.err()}")
    violations += [f"run-once: {v}" for v in check_invariants(site, sftp_log, settled=True)]
    record_violations(violations)
