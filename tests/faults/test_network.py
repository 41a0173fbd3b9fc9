"""The network fails between rorfeed and the SFTP server: a server that accepts TCP and says
nothing, a connection cut in the middle of an upload (loudly with a reset, or silently: the
link stops forwarding), a lossy link and a slow one.

The faults come from a TCP relay on loopback (tests/faults/net.py: no `netem` in this kernel).
Each run: a site that delivered once; a cycle through the faulty relay, run as the daemon runs
it (its log lines, its metrics); the invariants; then a good cycle straight to the server and
the invariants again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from rorfeed.cycle import Cycle
from tests.faults.harness import (
    DaemonCycle,
    SftpLog,
    check_invariants,
    ledger_rows,
    recovery_problems,
    rng,
    run_daemon_cycle,
)
from tests.faults.net import CutKind, Relay
from tests.faults.site import DESTINATION, Site, known_hosts_for, utc_now
from tests.sshd import Sshd

pytestmark = pytest.mark.sshd

# The end of a cycle may come this much after the destination's timeout_seconds (closing the
# session, the log lines), never more: every network wait is bounded.
SLACK_SECONDS = 1.5


@pytest.fixture
def relay(faults_sshd: Sshd, request: pytest.FixtureRequest) -> Iterator[Relay]:
    made = Relay(faults_sshd.port, seed=hash(request.node.nodeid) & 0xFFFF)
    yield made
    made.close()


@pytest.fixture
def big_site(tmp_path: Path, faults_sshd: Sshd) -> Iterator[Site]:
    """Files of some 30 kB each (the establishment's name is on every CSV line): uploads that
    last long enough to be cut in the middle."""
    made = Site(tmp_path, faults_sshd, units=30, name="Hôpital " + "très " * 200)
    yield made
    made.close()


def metric_of(dc: DaemonCycle) -> Callable[[str], float | None]:
    def metric(name: str) -> float | None:
        labels = {} if name.startswith("rorfeed_cycles") else {"destination": DESTINATION}
        return dc.metric(name, **labels)

    return metric


def cause_problems(dc: DaemonCycle, elapsed: float, timeout: float) -> list[str]:
    """The faulty cycle: bounded in time, and its failure named by a log line and a metric."""
    v: list[str] = []
    if elapsed > timeout + SLACK_SECONDS:
        v.append(f"the cycle took {elapsed:.1f} s, its delivery budget is {timeout:g} s")
    report = dc.report
    if report is None:
        return [*v, f"the cycle ended on an error: {dc.lines}"]
    delivery = report.deliveries[0]
    attempts = dc.events("delivery_attempt_failed")
    if len(attempts) != sum(delivery.failures.values()):
        v.append(f"{delivery.failures} failed attempts, {len(attempts)} log lines for them")
    if delivery.ok:
        return v  # cured by a retry within the cycle (each failed attempt logged), or unharmed
    failed = dc.events("delivery_failed")
    if len(failed) != 1 or failed[0].get("cause") != delivery.error_cause:
        v.append(f"no delivery_failed line naming the cause {delivery.error_cause}: {failed}")
    expected = {
        "rorfeed_delivery_failures_total": 1.0,
        "rorfeed_delivery_failing": 1.0,
        "rorfeed_cycles_failed_total": 1.0,
    }
    metric = metric_of(dc)
    for name, value in expected.items():
        if metric(name) != value:
            v.append(f"metric {name}: {metric(name)}, expected {value}")
    return v


def through_a_faulty_relay(
    site: Site,
    relay: Relay,
    sftp_log: SftpLog,
    json_err: Callable[[], str],
    timeout: float,
) -> list[str]:
    """Warm up, one cycle through `relay` as it is set up, one good cycle; every violation."""
    assert Cycle(site.config, site.store).run(utc_now() - timedelta(seconds=5)).outcome == "ok"
    config = site.configure(
        port=relay.port, known_hosts=known_hosts_for(site, relay.port), timeout_seconds=timeout
    )
    started = time.monotonic()
    faulty = run_daemon_cycle(config, site.store, utc_now(), json_err)
    elapsed = time.monotonic() - started
    violations = [f"faulty cycle: {v}" for v in cause_problems(faulty, elapsed, timeout)]
    violations += [f"after the fault: {v}" for v in check_invariants(site, sftp_log, settled=False)]
    before = ledger_rows(site.store)
    good = run_daemon_cycle(
        site.configure(), site.store, utc_now() + timedelta(seconds=1), json_err
    )
    violations += [
        f"good cycle: {v}" for v in recovery_problems(before, good.lines, metric_of(good))
    ]
    violations += [
        f"after the good cycle: {v}" for v in check_invariants(site, sftp_log, settled=True)
    ]
    return violations


@pytest.mark.faults("server accepts TCP then says nothing", short=3, long=10)
def test_a_server_that_accepts_tcp_and_says_nothing(
    run: int,
    site: Site,
    relay: Relay,
    sftp_log: SftpLog,
    json_err: Callable[[], str],
    record_violations: Callable[[list[str]], None],
) -> None:
    relay.mode = "mute"
    timeout = rng("mute", run).uniform(1.0, 2.5)
    record_violations(through_a_faulty_relay(site, relay, sftp_log, json_err, timeout))


@pytest.mark.faults("connection cut mid-upload, loud (RST) and silent", short=6, long=20)
def test_a_connection_cut_in_the_middle_of_an_upload(
    run: int,
    big_site: Site,
    relay: Relay,
    sftp_log: SftpLog,
    json_err: Callable[[], str],
    record_violations: Callable[[list[str]], None],
) -> None:
    r = rng("cut", run)
    how: CutKind = "rst" if run % 2 == 0 else "silent"
    relay.rate = 400_000  # the three uploads last a quarter of a second or so
    # Anywhere from the SSH handshake to the last rename (~58 kB go to the server in all).
    relay.cut_at = (r.randint(1_000, 56_000), how)
    timeout = 3.0
    violations = through_a_faulty_relay(big_site, relay, sftp_log, json_err, timeout)
    record_violations(violations)


@pytest.mark.faults("packet loss and a slow link", short=4, long=10)
def test_a_lossy_or_slow_link(
    run: int,
    big_site: Site,
    relay: Relay,
    sftp_log: SftpLog,
    json_err: Callable[[], str],
    record_violations: Callable[[list[str]], None],
) -> None:
    r = rng("loss", run)
    if run % 2 == 0:
        # Loss: a chunk in ten waits for its retransmission (0.1 to 0.4 s).
        relay.chunk = 2048
        relay.loss = 0.1
        relay.loss_pause = (0.1, 0.4)
        timeout = 8.0
    else:
        # A slow link: 8 to 40 kB/s for ~58 kB; the budget (3 s) may run out mid-upload.
        relay.rate = r.uniform(8_000, 40_000)
        timeout = 3.0
    record_violations(through_a_faulty_relay(big_site, relay, sftp_log, json_err, timeout))
