"""PostgreSQL goes down: the bed-management database before or during the query, and the
state store in the middle of a cycle (`pg_ctl stop -m immediate`: every backend killed at
once, as a crash or an OOM kill of the server would).

The suite's own PostgreSQL server is stopped and started again (`faults_pg`), never the one
the other tests share.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from psycopg import sql

from rorfeed.cycle import Cycle
from tests.faults.harness import (
    DaemonCycle,
    SftpLog,
    check_invariants,
    ledger_rows,
    recovery_problems,
    rng,
    run_daemon_cycle,
    wait_for,
)
from tests.faults.net import Relay
from tests.faults.pg_control import PgControl
from tests.faults.site import DESTINATION, Site, known_hosts_for, utc_now
from tests.sites import FINESS
from tests.sshd import Sshd

pytestmark = [pytest.mark.sshd, pytest.mark.postgres]

SOURCE_TIMEOUT = 5.0
SLACK_SECONDS = 1.5


def metric_of(dc: DaemonCycle) -> Callable[[str], float | None]:
    def metric(name: str) -> float | None:
        labels = {} if name.startswith("rorfeed_cycles") else {"destination": DESTINATION}
        return dc.metric(name, **labels)

    return metric


def good_cycle(site: Site, sftp_log: SftpLog, json_err: Callable[[], str]) -> list[str]:
    """The invariants as the fault left them, a good cycle, the invariants after it."""
    violations = [f"after the fault: {v}" for v in check_invariants(site, sftp_log, settled=False)]
    before = ledger_rows(site.store)
    later = utc_now() + timedelta(seconds=1)
    good = run_daemon_cycle(site.config, site.store, later, json_err)
    if good.report is None or good.report.outcome != "ok":
        violations.append(f"the cycle after PostgreSQL came back failed: {good.lines}")
    violations += [
        f"good cycle: {v}" for v in recovery_problems(before, good.lines, metric_of(good))
    ]
    violations += [
        f"after the good cycle: {v}" for v in check_invariants(site, sftp_log, settled=True)
    ]
    return violations


def in_thread(work: Callable[[], DaemonCycle]) -> tuple[threading.Thread, list[DaemonCycle]]:
    out: list[DaemonCycle] = []
    thread = threading.Thread(target=lambda: out.append(work()), daemon=True)
    thread.start()
    return thread, out


# -- the source --------------------------------------------------------------------------------


@pytest.fixture
def sql_site(
    tmp_path: Path, faults_sshd: Sshd, pg: PgControl, request: pytest.FixtureRequest
) -> Iterator[Site]:
    run = request.node.callspec.params["run"]
    db = f"beds_{run}"
    url = pg.server.create_db(db)
    rows = [(f"U{i:05d}", 20, 2, 5) for i in range(2)]
    with pg.server.connect(db) as conn:
        conn.execute("CREATE TABLE v_lits (unit text, installed int, closed int, available int)")
        for row in rows:
            conn.execute(sql.SQL("INSERT INTO v_lits VALUES (%s, %s, %s, %s)"), row)
    # The query waits a little first: long enough to stop the server in the middle of it.
    query = (
        "WITH pause AS (SELECT pg_sleep(1.5)) "
        "SELECT unit, installed, closed, available FROM v_lits, pause"
    )
    source = f'kind = "sql"\nurl = "{url}"\nquery = "{query}"\ntimeout_seconds = {SOURCE_TIMEOUT}\n'
    made = Site(tmp_path, faults_sshd, source=source)
    yield made
    made.close()


def query_running(pg: PgControl) -> bool:
    with pg.server.connect() as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'WITH pause AS%%'"
            " AND state = 'active'"
        ).fetchone()
    return bool(found and found[0])


@pytest.mark.faults("PostgreSQL source down before and during the query", short=4, long=10)
def test_the_source_database_down_before_or_during_the_query(
    run: int,
    sql_site: Site,
    pg: PgControl,
    sftp_log: SftpLog,
    json_err: Callable[[], str],
    record_violations: Callable[[list[str]], None],
) -> None:
    site = sql_site
    assert Cycle(site.config, site.store).run(utc_now() - timedelta(seconds=5)).outcome == "ok"
    during = run % 2 == 1
    started = time.monotonic()
    if during:
        thread, out = in_thread(
            lambda: run_daemon_cycle(site.config, site.store, utc_now(), json_err)
        )
        wait_for(lambda: query_running(pg), 10, "the query to run")
        time.sleep(rng("pg-source", run).uniform(0.0, 0.5))
        pg.stop_immediate()
        thread.join(SOURCE_TIMEOUT + 30)
        assert not thread.is_alive()
        faulty = out[0]
    else:
        pg.stop_immediate()
        faulty = run_daemon_cycle(site.config, site.store, utc_now(), json_err)
    elapsed = time.monotonic() - started
    violations: list[str] = []
    if elapsed > SOURCE_TIMEOUT + 10 + SLACK_SECONDS:
        violations.append(f"the cycle took {elapsed:.1f} s (source timeout {SOURCE_TIMEOUT} s)")
    report = faulty.report
    if report is None or report.establishments[0].status != "source_down":
        violations.append(f"the source is not reported down: {faulty.lines}")
    down = faulty.events("source_down")
    if len(down) != 1 or down[0].get("finess") != FINESS or not down[0].get("error"):
        violations.append(f"no source_down line naming the establishment and why: {down}")
    if faulty.metric("rorfeed_source_failures_total", finess=FINESS) != 1:
        violations.append("metric rorfeed_source_failures_total is not 1")
    if faulty.metric("rorfeed_cycles_failed_total") != 1:
        violations.append("metric rorfeed_cycles_failed_total is not 1")
    pg.start()
    violations += good_cycle(site, sftp_log, json_err)
    record_violations(violations)


# -- the state store ---------------------------------------------------------------------------


@pytest.fixture
def pg_state_site(
    tmp_path: Path, faults_sshd: Sshd, pg: PgControl, request: pytest.FixtureRequest
) -> Iterator[Site]:
    run = request.node.callspec.params["run"]
    url = pg.server.create_db(f"state_{run}")
    made = Site(tmp_path, faults_sshd, daemon=f'state_url = "{url}"\n')
    yield made
    made.close()


@pytest.fixture
def relay(faults_sshd: Sshd) -> Iterator[Relay]:
    made = Relay(faults_sshd.port)
    yield made
    made.close()


@pytest.mark.faults("PostgreSQL state store down mid-cycle (or between cycles)", short=3, long=10)
def test_the_state_store_down_in_the_middle_of_a_cycle(
    run: int,
    pg_state_site: Site,
    pg: PgControl,
    relay: Relay,
    sftp_log: SftpLog,
    json_err: Callable[[], str],
    record_violations: Callable[[list[str]], None],
) -> None:
    site = pg_state_site
    assert Cycle(site.config, site.store).run(utc_now() - timedelta(seconds=5)).outcome == "ok"
    # A slow link: the cycle lasts a second or so, and the store goes down somewhere in it.
    relay.rate = 8000
    config = site.configure(port=relay.port, known_hosts=known_hosts_for(site, relay.port))
    t1 = utc_now()
    thread, out = in_thread(lambda: run_daemon_cycle(config, site.store, t1, json_err))
    between = run % 3 == 2
    if between:
        # Down between two cycles instead: the daemon's pooled connections die with the server.
        thread.join(60)
    else:
        time.sleep(rng("pg-state", run).uniform(0.0, 1.0))
    pg.stop_immediate()
    thread.join(60)
    assert not thread.is_alive()
    faulty = out[0]
    violations: list[str] = []
    if between:
        # Back before anything used the store: its pooled connections are dead, unseen.
        pg.start()
        if faulty.report is None or faulty.report.outcome != "ok":
            violations.append(f"the cycle before the store went down failed: {faulty.lines}")
        site.configure()
        violations += good_cycle(site, sftp_log, json_err)
        record_violations(violations)
        return
    if faulty.report is None:
        failed = faulty.events("cycle_failed")
        if len(failed) != 1 or "state store" not in str(failed[0].get("error")):
            violations.append(f"no cycle_failed line naming the state store: {faulty.lines}")
        if faulty.metric("rorfeed_cycles_failed_total") != 1:
            violations.append("metric rorfeed_cycles_failed_total is not 1")
    if faulty.metric("rorfeed_state_up") != 0:
        violations.append("metric rorfeed_state_up is not 0 while the store is down")
    if not [e for e in json_err_lines(json_err) if e.get("event") == "metrics_state_unreadable"]:
        violations.append("no metrics_state_unreadable line while the store is down")
    if any(e.get("event") == "cycle_crashed" for e in faulty.lines):
        violations.append(f"the cycle crashed: {faulty.lines}")
    pg.start()
    site.configure()  # straight to the server again
    violations += good_cycle(site, sftp_log, json_err)
    record_violations(violations)


def json_err_lines(json_err: Callable[[], str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in json_err().splitlines() if line.strip()]
