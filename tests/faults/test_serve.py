"""Signals to `rorfeed serve`: SIGKILL mid-cycle then a restart as systemd does it, SIGTERM
during a delivery, SIGHUP with an invalid configuration.

No test waits for a cron minute: the site's schedule is hourly ("5 * * * *") and its state
holds a cycle older than the schedule's previous fire time, so `serve` catches that fire time
up at once when it starts (SPEC §9) — a real scheduled cycle, its time the fire time, in the
real daemon process. After a SIGKILL the cycle was never recorded as ended: the restarted
daemon catches the same fire time up again, which is what systemd's `Restart=` leads to.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rorfeed.cycle import Cycle
from rorfeed.schedule import make_trigger, previous_fire_time
from tests.faults.harness import (
    Child,
    SftpLog,
    Zygote,
    check_invariants,
    ledger_rows,
    recovery_problems,
    rng,
    sample,
    scrape,
    scrape_after_cycles,
    wait_for,
)
from tests.faults.net import Relay
from tests.faults.site import DESTINATION, Site, known_hosts_for
from tests.sites import FINESS
from tests.sshd import Sshd

pytestmark = pytest.mark.sshd

SCHEDULE = "5 * * * *"
SERVE_DAEMON = f'schedule = "{SCHEDULE}"\n'
METRICS = '\n[metrics]\nlisten = "127.0.0.1:0"\n'
# A bound on every wait for the daemon: generous for a loaded CI machine, never endless.
WAIT = 30.0


def fire_time(site: Site) -> datetime:
    previous = previous_fire_time(make_trigger(SCHEDULE, site.config.zone), datetime.now(UTC))
    assert previous is not None
    return previous


def warm_up(site: Site) -> datetime:
    """A delivered cycle just before the schedule's previous fire time: the daemon will catch
    that fire time up at start. Returns it."""
    fire = fire_time(site)
    report = Cycle(site.config, site.store).run(fire - timedelta(seconds=30))
    assert report.outcome == "ok", report
    site.close()
    return fire


@pytest.fixture
def serve_site(tmp_path: Path, faults_sshd: Sshd) -> Iterator[Site]:
    made = Site(tmp_path, faults_sshd, daemon=SERVE_DAEMON, extra=METRICS)
    yield made
    made.close()


def stop(child: Child, sig: signal.Signals = signal.SIGTERM) -> int:
    child.signal(sig)
    try:
        return child.wait(75)  # the 60 s grace for a running cycle, and some
    finally:
        child.kill()


def no_traceback(child: Child) -> list[str]:
    err = child.err()
    bad = [line for line in err.splitlines() if not line.startswith("{")]
    return [f"serve wrote a line that is not one JSON object: {line}" for line in bad] + (
        [f"serve logged a traceback:\n{err}"] if "Traceback" in err else []
    )


def metric_reader(body: str) -> Any:
    def metric(name: str) -> float | None:
        labels = {} if name.startswith("rorfeed_cycles") else {"destination": DESTINATION}
        return sample(body, name, **labels)

    return metric


@pytest.mark.faults("SIGKILL of serve mid-cycle, restarted", short=10, long=50)
def test_sigkill_of_serve_mid_cycle_then_restart_catches_up_without_harm(
    run: int,
    serve_site: Site,
    zygote: Zygote,
    sftp_log: SftpLog,
    record_violations: Any,
) -> None:
    site = serve_site
    fire = warm_up(site)
    delay = rng("kill-serve", run).uniform(0.0, 0.6)
    first = zygote.serve(site)
    violations: list[str] = []
    try:
        first.wait_event("cycle_start", WAIT)
        time.sleep(delay)
    finally:
        code = first.kill()
    assert code == -signal.SIGKILL
    violations += no_traceback(first)
    violations += [f"after the kill: {v}" for v in check_invariants(site, sftp_log, settled=False)]
    # Whether the killed daemon's cycle ran is the state's to say, not the log's: the kill can
    # land between the cycle's record (committed) and its last log line.
    logged_end = any(e["event"] == "cycle_end" for e in first.log())
    recorded = site.store.recent_cycles(1)
    finished = bool(recorded) and recorded[0].cycle_time == fire
    if logged_end and not finished:
        violations.append("cycle_end was logged, but the state has no record of that cycle")
    before = ledger_rows(site.store)
    site.close()

    second = zygote.serve(site)
    try:
        second.wait_event("ready", WAIT)
        port = second.wait_event("metrics_listening", WAIT)["port"]
        if finished:
            # The killed daemon had ended its cycle: nothing is missed, nothing runs again.
            time.sleep(0.5)
            catch_up = [e for e in second.log() if e["event"] == "catch_up"]
            if catch_up:
                violations.append(f"a finished cycle was caught up again: {catch_up}")
        else:
            missed = second.wait_event("catch_up", WAIT)["missed"]
            if missed != fire.isoformat():
                violations.append(f"the restart caught {missed} up, not {fire}")
            end = second.wait_event(("cycle_end", "cycle_failed"), WAIT)
            body = scrape_after_cycles(port, 1, WAIT)
            violations += [
                f"restart: {v}"
                for v in recovery_problems(before, second.log(), metric_reader(body))
            ]
            if end.get("cycle_time") != fire.isoformat():
                violations.append(f"the caught-up cycle is not the fire time: {end}")
            if sample(body, "rorfeed_last_success_timestamp_seconds", finess=FINESS) != (
                fire.timestamp()
            ):
                violations.append("metric: last success is not the caught-up fire time")
    finally:
        code = stop(second)
    if code != 0:
        violations.append(f"serve exited {code} on SIGTERM")
    violations += no_traceback(second)
    violations += [
        f"after the restart: {v}" for v in check_invariants(site, sftp_log, settled=True)
    ]
    record_violations(violations)


@pytest.fixture
def relay(faults_sshd: Sshd) -> Iterator[Relay]:
    made = Relay(faults_sshd.port)
    yield made
    made.close()


@pytest.mark.faults("SIGTERM of serve during a delivery", short=5, long=20)
def test_sigterm_during_a_delivery_finishes_the_cycle_and_exits_0(
    run: int,
    serve_site: Site,
    relay: Relay,
    zygote: Zygote,
    sftp_log: SftpLog,
    record_violations: Any,
) -> None:
    site = serve_site
    fire = warm_up(site)
    # A slow link (4 kB/s): the handshake and the three uploads take a second or two.
    relay.rate = 4096
    site.configure(port=relay.port, known_hosts=known_hosts_for(site, relay.port))
    started = relay.forwarded
    violations: list[str] = []
    child = zygote.serve(site)
    try:
        child.wait_event("cycle_start", WAIT)
        # Some random point of the delivery: after 0 to 3 kB have gone through.
        sent = rng("sigterm", run).randint(0, 3000)
        wait_for(lambda: relay.forwarded - started > sent, WAIT, "the delivery to start")
        child.signal(signal.SIGTERM)
        code = child.wait(75)
    finally:
        child.kill()
    events = [e["event"] for e in child.log()]
    if code != 0:
        violations.append(f"serve exited {code} on SIGTERM")
    stopping = [e for e in child.log() if e["event"] == "stopping"]
    if not stopping or stopping[0].get("signal") != "SIGTERM":
        violations.append(f"no stopping line naming SIGTERM: {events}")
    if "cycle_end" not in events or events.index("cycle_end") > events.index("stopped"):
        violations.append(f"the running cycle did not end before the daemon: {events}")
    violations += no_traceback(child)
    violations += check_invariants(site, sftp_log, settled=True)

    # Restarted, the daemon shows the cycle the SIGTERM let finish: nothing to catch up.
    relay.rate = None
    again = zygote.serve(site)
    try:
        port = again.wait_event("metrics_listening", WAIT)["port"]
        again.wait_event("ready", WAIT)
        body = scrape(port)
        if sample(body, "rorfeed_last_success_timestamp_seconds", finess=FINESS) != (
            fire.timestamp()
        ):
            violations.append("metric: the finished cycle is not the last success")
        if sample(body, "rorfeed_outbox_files", destination=DESTINATION) != 0:
            violations.append("metric: files wait in the outbox")
        if any(e["event"] == "catch_up" for e in again.log()):
            violations.append("the finished cycle was caught up again")
    finally:
        stop(again)
    record_violations(violations)


# How the configuration is broken → the key its error must name (None: not valid TOML, the
# file itself is named).
INVALID: dict[str, str | None] = {
    "finess": "establishments[0].finess",
    "unknown-key": "daemon.colour",
    "toml-syntax": None,
    "mapping-missing": "establishments[0].mapping",
    "schedule": "daemon.schedule",
}


def break_config(text: str, how: str) -> str:
    if how == "finess":
        return text.replace('finess = "750712184"', 'finess = "750712185"')
    if how == "unknown-key":
        return text.replace("[daemon]\n", '[daemon]\ncolour = "blue"\n')
    if how == "toml-syntax":
        return text.replace("[daemon]\n", "[daemon\n")
    if how == "mapping-missing":
        return text.replace('mapping = "mapping.csv"', 'mapping = "absent.csv"')
    return text.replace(SERVE_DAEMON, 'schedule = "61 * * * *"\n')


@pytest.mark.faults("SIGHUP of serve with an invalid configuration", short=5, long=20)
def test_sighup_with_an_invalid_config_keeps_the_running_one(
    run: int,
    serve_site: Site,
    zygote: Zygote,
    sftp_log: SftpLog,
    record_violations: Any,
) -> None:
    site = serve_site
    fire = warm_up(site)
    how = sorted(INVALID)[run % len(INVALID)]
    r = rng("sighup", run)
    good = site.config_path.read_text(encoding="utf-8")
    violations: list[str] = []
    child = zygote.serve(site)
    try:
        port = child.wait_event("metrics_listening", WAIT)["port"]
        child.wait_event("cycle_start", WAIT)
        time.sleep(r.uniform(0.0, 0.3))  # during the cycle, or just after it
        site.config_path.write_text(break_config(good, how), encoding="utf-8")
        child.signal(signal.SIGHUP)
        rejected = child.wait_event("config_reload_rejected", WAIT)
        if rejected.get("file") != str(site.config_path):
            violations.append(f"the rejection does not name the file: {rejected}")
        key = INVALID[how]
        if key is not None and key not in rejected.get("keys", []):
            violations.append(f"the rejection does not name the key {key}: {rejected}")
        if key is None and str(site.config_path) not in " ".join(rejected.get("problems", [])):
            violations.append(f"the rejection does not say where the file is broken: {rejected}")
        end = child.wait_event(("cycle_end", "cycle_failed"), WAIT)
        if end.get("outcome") != "ok" or end.get("cycle_time") != fire.isoformat():
            violations.append(f"the cycle under the running configuration did not end ok: {end}")
        body = scrape_after_cycles(port, 1, WAIT)  # still serving, on the running config
        if sample(body, "rorfeed_cycles_total") != 1:
            violations.append("metric: the cycle is not counted")
        if sample(body, "rorfeed_config_last_reload_successful") != 0:
            violations.append("metric: the rejected reload does not show")
        if sample(body, "rorfeed_config_reload_rejections_total") != 1:
            violations.append("metric: the rejected reload is not counted")
        if child.poll() is not None:
            violations.append(f"serve died on the reload: {child.poll()}")
    finally:
        code = stop(child)
    if code != 0:
        violations.append(f"serve exited {code} on SIGTERM")
    violations += no_traceback(child)
    violations += check_invariants(site, sftp_log, settled=True)

    # Started again with the invalid file (systemd's restart), it refuses with exit 2.
    refused = zygote.serve(site)
    code = refused.wait(WAIT)
    if code != 2:
        violations.append(f"serve started on the invalid configuration: exit {code}")
    if (key := INVALID[how]) and key not in refused.err():
        violations.append(f"serve's refusal does not name {key}: {refused.err()}")
    record_violations(violations)
