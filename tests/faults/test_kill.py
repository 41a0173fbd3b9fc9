"""SIGKILL of `rorfeed run-once`: at a random instant, right after a remote rename, and while
the state store commits (SQLite, the default store).

Each run: a site that has delivered once already; a `run-once` process (from the fork server,
tests/faults/zygote.py) killed by the fault; the invariants checked on what it left; the next
good cycle run as the daemon runs it; the invariants checked again, with what that cycle must
say about the files the kill left behind (a log line each, a metric).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from rorfeed.cycle import Cycle
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


@dataclass(frozen=True)
class Calibration:
    seconds: float  # how long a run-once of a site that delivered once takes, start to exit
    commits: int  # how many state-store commits it makes


@pytest.fixture(scope="session")
def calibration(
    tmp_path_factory: pytest.TempPathFactory, faults_sshd: Sshd, zygote: Zygote
) -> Calibration:
    """Time and count one undisturbed run, so that the faults fall inside a run."""
    site = Site(tmp_path_factory.mktemp("calibration"), faults_sshd)
    try:
        warm_up(site)
        counted = site.root / "commits"
        times = []
        for _ in range(2):  # the second one is the figure: the first may warm caches
            started = time.monotonic()
            child = zygote.run_once(site, hooks={"count_commits": str(counted)})
            assert child.wait(60) == 0, child.err()
            times.append(time.monotonic() - started)
            time.sleep(1.0)  # a new second: a new cycle time
        return Calibration(times[-1], int(counted.read_text()))
    finally:
        site.close()


def warm_up(site: Site) -> None:
    """The site has delivered once, a few seconds ago: a store, a ledger, an archive."""
    report = Cycle(site.config, site.store).run(utc_now() - timedelta(seconds=5))
    assert report.outcome == "ok", report


def recover(site: Site, json_err: Callable[[], str]) -> DaemonCycle:
    """The next good cycle, a second ahead of anything the killed run could have named."""
    return run_daemon_cycle(site.config, site.store, utc_now() + timedelta(seconds=1), json_err)


def kill_and_recover(
    site: Site,
    zygote: Zygote,
    sftp_log: SftpLog,
    json_err: Callable[[], str],
    *,
    delay: float | None = None,
    hooks: dict[str, Any] | None = None,
) -> tuple[int, list[str]]:
    """Run `run-once`, killed after `delay` seconds or by its `hooks`; check, recover, check."""
    warm_up(site)
    child = zygote.run_once(site, hooks=hooks)
    if delay is not None:
        time.sleep(delay)
        child.signal(signal.SIGKILL)
    code = child.wait(60)
    violations = []
    if "Traceback" in child.err():
        violations.append(f"run-once printed a traceback:\n{child.err()}")
    violations += [f"after the kill: {v}" for v in check_invariants(site, sftp_log, settled=False)]
    before = ledger_rows(site.store)
    after = recover(site, json_err)
    if after.report is None or after.report.outcome != "ok":
        violations.append(f"the good cycle after the kill failed: {after.lines}")

    def metric(name: str) -> float | None:
        labels = {} if name.startswith("rorfeed_cycles") else {"destination": DESTINATION}
        return after.metric(name, **labels)

    violations += [f"good cycle: {v}" for v in recovery_problems(before, after.lines, metric)]
    violations += [
        f"after the good cycle: {v}" for v in check_invariants(site, sftp_log, settled=True)
    ]
    return code, violations


@pytest.mark.faults("SIGKILL of run-once at a random instant", short=20, long=150)
def test_sigkill_of_run_once_at_a_random_instant(
    run: int,
    site: Site,
    zygote: Zygote,
    sftp_log: SftpLog,
    calibration: Calibration,
    json_err: Callable[[], str],
    record_violations: Callable[[list[str]], None],
) -> None:
    delay = rng("kill-random", run).uniform(0, calibration.seconds * 1.1)
    code, violations = kill_and_recover(site, zygote, sftp_log, json_err, delay=delay)
    assert code in (0, -signal.SIGKILL)
    record_violations(violations)


@pytest.mark.faults("SIGKILL of run-once right after a remote rename", short=10, long=50)
def test_sigkill_of_run_once_right_after_a_remote_rename(
    run: int,
    site: Site,
    zygote: Zygote,
    sftp_log: SftpLog,
    json_err: Callable[[], str],
    record_violations: Callable[[list[str]], None],
) -> None:
    nth = rng("kill-rename", run).randint(1, 3)  # the csv, json or xml file's rename
    code, violations = kill_and_recover(
        site, zygote, sftp_log, json_err, hooks={"kill_after_rename": nth}
    )
    assert code == -signal.SIGKILL
    record_violations(violations)


@pytest.mark.faults("SIGKILL while the state store commits (SQLite)", short=30, long=200)
def test_sigkill_while_the_state_store_commits(
    run: int,
    site: Site,
    zygote: Zygote,
    sftp_log: SftpLog,
    calibration: Calibration,
    json_err: Callable[[], str],
    record_violations: Callable[[list[str]], None],
) -> None:
    r = rng("kill-commit", run)
    nth = r.randint(1, calibration.commits)
    # 0: at the commit's start; else within the few milliseconds an fsynced commit takes.
    delay = r.choice((0.0, r.uniform(0.0, 0.004)))
    code, violations = kill_and_recover(
        site, zygote, sftp_log, json_err, hooks={"kill_in_commit": [nth, delay]}
    )
    assert code in (0, -signal.SIGKILL)
    record_violations(violations)
