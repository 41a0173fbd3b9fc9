"""`rorfeed serve`: schedule, catch-up, one cycle at a time, signals, reload, systemd, logs.

The scheduling logic runs in process with an injected trigger (every second) and fake cycles,
so that no test waits for a real hour. Three tests start the real daemon as a subprocess; one
of them waits for the next minute boundary of a `* * * * *` schedule, set by a reload (at most
~60 s).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from rorfeed import logging as rlog
from rorfeed.config import Config, load
from rorfeed.cycle import CycleReport
from rorfeed.cycle_runner import CycleRunner
from rorfeed.daemon import Daemon, serve
from rorfeed.errors import ConfigError, SourceError
from rorfeed.model import CycleDetail, CycleOutcome
from rorfeed.schedule import make_trigger, missed_run, previous_fire_time
from rorfeed.state import Store, open_store
from rorfeed.systemd import Notifier
from tests.sites import FINESS, directory_destination, mapping_csv, site_toml, write_site

PARIS = ZoneInfo("Europe/Paris")


def serve_argv(config: Path) -> list[str]:
    """`rorfeed --config <config> serve`, as systemd starts it."""
    return [sys.executable, "-m", "rorfeed", "--config", str(config), "serve"]


DEPOT = directory_destination("depot", formats=("xml",))
MAPPING = mapping_csv(
    [("REA", "52/100", "Réanimation", "auto"), ("MED", "52/200", "Médecine", "auto")]
)
EXPORT = [("REA", 10, 1, 2), ("MED", 30, 0, 5)]


def config_text(schedule: str = "5 * * * *", listen: str = "127.0.0.1:0", extra: str = "") -> str:
    """rorfeed.toml for a site: CSV source → directory `depot`, on `schedule`."""
    return site_toml(schedule=schedule, metrics_listen=listen, destinations=DEPOT, extra=extra)


def make_site(
    base: Path, schedule: str = "5 * * * *", listen: str = "127.0.0.1:0", extra: str = ""
) -> Path:
    """A site (CSV source → directory destination) and its config path."""
    return write_site(base, config_text(schedule, listen, extra), MAPPING, EXPORT)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Recorder:
    """Fake cycles: records each call, optionally blocks on a gate or raises."""

    def __init__(
        self, *, delay: float = 0.0, errors: list[BaseException | None] | None = None
    ) -> None:
        self.delay = delay
        self.errors = list(errors or [])
        self.calls: list[tuple[datetime, datetime]] = []  # (cycle time, wall time at start)
        self.finished: list[datetime] = []
        self.gate: threading.Event | None = None
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def factory(self, _config: Config, _store: Store) -> Recorder:
        return self

    def run(self, cycle_time: datetime) -> CycleReport:
        with self._lock:
            self.calls.append((cycle_time, datetime.now(UTC)))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            error = self.errors.pop(0) if self.errors else None
        try:
            if self.gate is not None:
                self.gate.wait(30)
            time.sleep(self.delay)
            if error is not None:
                raise error
            return CycleReport(cycle_time)
        finally:
            with self._lock:
                self.active -= 1
                self.finished.append(cycle_time)


def every_second() -> Any:
    return CronTrigger(second="*", timezone=UTC)


def never() -> Any:
    # 29 February at 04:00: far enough for any test run.
    return CronTrigger(month=2, day=29, hour=4, timezone=UTC)


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[dict[str, int]]:
    """`daemon.run()` in a thread; stopped (and its exit code checked) on exit."""
    result: dict[str, int] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("rc", daemon.run(install_signals=False)), daemon=True
    )
    thread.start()
    wait_until(lambda: daemon.ready.is_set() or not thread.is_alive(), 15, "the daemon to start")
    try:
        yield result
    finally:
        daemon.request_stop()
        thread.join(daemon.stop_grace + 15)
        assert not thread.is_alive(), "the daemon did not stop"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return make_site(tmp_path)


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Callable[[], list[dict[str, Any]]]:
    """The real log pipeline (JSON on stderr); returns a reader of every line so far."""
    rlog.configure(json_output=True)
    lines: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        err = capsys.readouterr().err
        for line in err.splitlines():
            if line.strip():
                lines.append(json.loads(line))  # every line is one JSON object
        return lines

    return read


def daemon_for(config_path: Path, **kwargs: Any) -> Daemon:
    config = load(config_path)
    kwargs.setdefault("notifier", Notifier(None))
    return Daemon(config, open_store(config.state_url), **kwargs)


def run_cycle(daemon: Daemon, cycle_time: datetime) -> None:
    """One cycle as the scheduler hands it over (`daemon.runner`), waited for."""
    assert daemon.runner.submit(cycle_time) == "started"
    assert daemon.runner.wait_idle(60), "the cycle did not end within 60 s"


# ---------------------------------------------------------------------------------------------
# The schedule: APScheduler's arithmetic, cron's semantics


def test_weekday_numbers_follow_cron_not_apscheduler() -> None:
    sunday = datetime(2026, 3, 1, 12, tzinfo=PARIS)
    assert make_trigger("0 8 * * 1", PARIS).get_next_fire_time(None, sunday).weekday() == 0
    assert make_trigger("0 8 * * 0", PARIS).get_next_fire_time(None, sunday).weekday() == 6
    assert make_trigger("0 8 * * 7", PARIS).get_next_fire_time(None, sunday).weekday() == 6
    saturday = datetime(2026, 3, 7, 12, tzinfo=PARIS)
    assert make_trigger("0 8 * * 1-5", PARIS).get_next_fire_time(None, saturday).day == 9
    # APScheduler's own from_crontab reads "1" as Tuesday: the reason for make_trigger.
    plain = CronTrigger.from_crontab("0 8 * * 1", timezone=PARIS)
    assert plain.get_next_fire_time(None, sunday).weekday() == 1


def test_day_and_weekday_both_restricted_fire_on_either() -> None:
    trigger = make_trigger("0 8 13 * 5", PARIS)
    fires, prev, now = [], None, datetime(2026, 3, 1, tzinfo=PARIS)
    for _ in range(8):
        prev = trigger.get_next_fire_time(prev, now)
        now = prev
        fires.append(prev.day)
    # Fridays of March and April 2026, and Monday 13 April.
    assert fires == [6, 13, 20, 27, 3, 10, 13, 17]


def test_a_schedule_apscheduler_would_refuse_is_a_config_error_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(make_site(tmp_path, schedule="5-1 * * * *"))
    assert caught.value.problems[0].startswith("rorfeed.toml: daemon.schedule: ")


def _fires(trigger: Any, start: datetime, end: datetime) -> list[datetime]:
    out: list[datetime] = []
    prev, now = None, start
    while True:
        fire = trigger.get_next_fire_time(prev, now)
        if fire > end:
            return out
        out.append(fire)
        prev = now = fire


@pytest.mark.parametrize(
    ("start", "end"),
    [
        # Last Sunday of March 2026: 02:00 CET → 03:00 CEST (the local hour 02:xx does not exist).
        (datetime(2026, 3, 28, 20, tzinfo=UTC), datetime(2026, 3, 29, 6, tzinfo=UTC)),
        # Last Sunday of October 2026: 03:00 CEST → 02:00 CET (the local hour 02:xx comes twice).
        (datetime(2026, 10, 24, 20, tzinfo=UTC), datetime(2026, 10, 25, 6, tzinfo=UTC)),
    ],
    ids=["spring", "autumn"],
)
def test_exactly_one_cycle_per_real_hour_across_daylight_saving(
    start: datetime, end: datetime
) -> None:
    trigger = make_trigger("5 * * * *", PARIS)
    fires = _fires(trigger, start, end)
    hours = [f.astimezone(UTC).replace(minute=0) for f in fires]
    expected = [
        start + timedelta(hours=h) for h in range(int((end - start).total_seconds()) // 3600)
    ]
    assert hours == expected  # one per real hour: none skipped, none doubled
    assert all(f.astimezone(PARIS).minute == 5 for f in fires)
    local = [f.astimezone(PARIS).strftime("%H:%M%z") for f in fires]
    if start.month == 3:
        assert "01:05+0100" in local and "03:05+0200" in local
        assert not any(t.startswith("02:") for t in local)
    else:
        assert local.count("02:05+0200") == 1 and local.count("02:05+0100") == 1
    # The daemon's own computation of "the fire time of this run" agrees, hour by hour.
    for fire in fires:
        utc = fire.astimezone(UTC)  # (arithmetic in UTC: Paris wall-clock +30 min is ambiguous)
        assert previous_fire_time(trigger, utc + timedelta(minutes=30)) == utc
        assert previous_fire_time(trigger, utc + timedelta(minutes=59)) == utc
        assert previous_fire_time(trigger, utc) == utc


def test_missed_run_is_the_previous_fire_time_only_when_the_state_is_older() -> None:
    trigger = make_trigger("5 * * * *", PARIS)
    now = datetime(2026, 6, 1, 10, 40, tzinfo=UTC)  # 12:40 in Paris
    previous = datetime(2026, 6, 1, 10, 5, tzinfo=UTC)
    assert missed_run(trigger, None, now) is None  # a fresh state has missed nothing
    assert missed_run(trigger, previous - timedelta(hours=5), now) == previous
    assert missed_run(trigger, previous - timedelta(seconds=1), now) == previous
    assert missed_run(trigger, previous, now) is None
    assert missed_run(trigger, now, now) is None  # e.g. a run-once after the fire time


# ---------------------------------------------------------------------------------------------
# One cycle at a time, each fire time once


def test_runner_runs_one_cycle_at_a_time_and_each_fire_time_once() -> None:
    rec = Recorder()
    rec.gate = threading.Event()

    def run(cycle_time: datetime) -> None:
        rec.run(cycle_time)

    runner = CycleRunner(run)
    t0 = datetime(2026, 6, 1, 10, 5, tzinfo=UTC)
    hour = timedelta(hours=1)
    assert runner.submit(t0) == "started"
    wait_until(lambda: rec.calls, 5, "the first cycle")
    assert runner.submit(t0 + hour) == "deferred"
    assert runner.submit(t0 + 2 * hour) == "deferred"  # coalesced: replaces t0 + 1 h
    assert runner.submit(t0) == "skipped"  # already running
    assert runner.submit(t0 + hour) == "skipped"  # older than the one waiting
    rec.gate.set()
    assert runner.wait_idle(5)
    assert [c for c, _ in rec.calls] == [t0, t0 + 2 * hour]
    assert rec.max_active == 1
    assert runner.submit(t0 + hour) == "skipped"  # never after a newer one
    runner.close()
    assert runner.submit(t0 + 3 * hour) == "closed"


def test_scheduled_cycle_time_is_the_fire_time_and_never_overlaps(site: Path) -> None:
    rec = Recorder(delay=1.1)  # longer than the 1-second schedule
    daemon = daemon_for(site, trigger=every_second(), cycle_factory=rec.factory)
    with running(daemon):
        wait_until(lambda: len(rec.finished) >= 3, 15, "three cycles")
    times = [c for c, _ in rec.calls]
    assert rec.max_active == 1
    assert times == sorted(set(times))  # each once, in order
    for cycle_time, wall in rec.calls:
        assert cycle_time.tzinfo is not None and cycle_time.utcoffset() == timedelta(0)
        assert cycle_time.microsecond == 0  # the trigger's fire time, not "now"
        assert cycle_time <= wall


def test_catch_up_runs_the_missed_fire_time_once_at_start(site: Path) -> None:
    config = load(site)
    store = open_store(config.state_url)
    now = datetime.now(UTC)
    trigger = make_trigger("5 * * * *", PARIS)
    previous = previous_fire_time(trigger, now)
    assert previous is not None
    old = previous - timedelta(hours=3)
    store.record_cycle(old, old, old, CycleOutcome.OK, 2, 0, CycleDetail())
    rec = Recorder()
    daemon = Daemon(
        config, store, trigger=trigger, cycle_factory=rec.factory, notifier=Notifier(None)
    )
    with running(daemon):
        wait_until(lambda: rec.finished, 10, "the catch-up cycle")
        time.sleep(0.5)
    assert [c for c, _ in rec.calls] == [previous]


def test_a_fresh_state_catches_nothing_up(site: Path) -> None:
    rec = Recorder()
    daemon = daemon_for(site, trigger=make_trigger("5 * * * *", PARIS), cycle_factory=rec.factory)
    with running(daemon):
        time.sleep(0.5)
    assert rec.calls == []


def test_a_failing_or_crashing_cycle_does_not_stop_the_daemon(
    site: Path, json_logs: Callable[[], list[dict[str, Any]]]
) -> None:
    rec = Recorder(errors=[SourceError("db down"), ValueError("a bug"), None])
    daemon = daemon_for(site, trigger=every_second(), cycle_factory=rec.factory)
    with running(daemon):
        wait_until(lambda: len(rec.finished) >= 3, 10, "three cycles")
        wait_until(
            lambda: daemon.registry.get_sample_value("rorfeed_cycles_total") == 3, 5, "metrics"
        )
    assert daemon.registry.get_sample_value("rorfeed_cycles_failed_total") == 2
    events = {e["event"]: e for e in json_logs()}
    assert events["cycle_failed"]["error"] in ("db down", "internal error: ValueError")
    assert "ValueError: a bug" in events["cycle_crashed"]["exception"]  # with its traceback
    assert "Traceback" in events["cycle_crashed"]["exception"]


def test_every_line_of_a_cycle_carries_its_cycle_id(
    site: Path, json_logs: Callable[[], list[dict[str, Any]]]
) -> None:
    daemon = daemon_for(site)
    json_logs()
    cycle_time = datetime.now(UTC).replace(microsecond=0)
    run_cycle(daemon, cycle_time)
    lines = json_logs()
    assert lines[0]["event"] == "cycle_start"
    assert "cycle_end" in [e["event"] for e in lines]
    ids = {e.get("cycle_id") for e in lines}
    assert len(ids) == 1 and None not in ids
    assert str(next(iter(ids))).startswith(cycle_time.strftime("%Y%m%dT%H%M%SZ"))
    assert len(list((site.parent / "depot").iterdir())) == 1


def test_after_a_cycle_the_survivors_are_frozen_out_of_the_collectors_walks(site: Path) -> None:
    # Seen as the collector sees it: a reference cycle alive when the daemon's cycle ends is
    # frozen with the other survivors, so a plain collection leaves it alone once it is garbage
    # (tests/test_memory.py checks heap.settle itself: the next settle frees it).
    daemon = daemon_for(site)
    gc.unfreeze()
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a  # only the collector can free them
        watch = weakref.ref(a)
        run_cycle(daemon, datetime.now(UTC).replace(microsecond=0))
        del a, b
        gc.collect()
        assert watch() is not None
        gc.unfreeze()
        gc.collect()
        assert watch() is None  # nothing else kept it: it waited only because it was frozen
    finally:
        gc.unfreeze()  # this test process's own collector, as it was


class Node:
    other: Node


# ---------------------------------------------------------------------------------------------
# Stop and reload


def test_stop_lets_the_running_cycle_finish(site: Path) -> None:
    rec = Recorder()
    rec.gate = threading.Event()
    daemon = daemon_for(site, trigger=every_second(), cycle_factory=rec.factory)
    with running(daemon) as result:
        wait_until(lambda: rec.calls, 5, "a cycle")
        daemon.request_stop()
        time.sleep(0.3)
        assert rec.finished == []  # still waiting for the cycle
        rec.gate.set()
    assert result["rc"] == 0
    assert len(rec.finished) == len(rec.calls) == 1  # finished, and no other started


def test_stop_abandons_a_cycle_that_outlives_the_grace(
    site: Path, json_logs: Callable[[], list[dict[str, Any]]]
) -> None:
    rec = Recorder()
    rec.gate = threading.Event()
    daemon = daemon_for(site, trigger=every_second(), cycle_factory=rec.factory, stop_grace=0.4)
    started = 0.0
    try:
        with running(daemon) as result:
            wait_until(lambda: rec.calls, 5, "a cycle")
            started = time.monotonic()
        assert result["rc"] == 0
        assert time.monotonic() - started < 3
        assert "cycle_abandoned" in [e["event"] for e in json_logs()]
    finally:
        rec.gate.set()


def test_reload_applies_a_valid_config_and_keeps_the_running_one_otherwise(
    site: Path, json_logs: Callable[[], list[dict[str, Any]]]
) -> None:
    daemon = daemon_for(site, trigger=never())
    with running(daemon):
        site.write_text(config_text(schedule="7 * * * *", listen="127.0.0.1:0"))
        assert daemon.reload()
        reloaded = [e for e in json_logs() if e["event"] == "config_reloaded"]
        assert [(e["schedule"], e["schedule_changed"]) for e in reloaded] == [("7 * * * *", True)]
        # The job itself was rescheduled: its next run, local time, is at minute 7.
        next_cycle = reloaded[0]["next_cycle"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:07 CES?T", next_cycle), next_cycle
        assert daemon.config.file.daemon.schedule == "7 * * * *"

        good = site.read_text()
        site.write_text(good.replace('name = "depot"', 'name = "depot"\nbogus = 1'))
        daemon.request_reload()  # as SIGHUP does
        wait_until(
            lambda: any(e["event"] == "config_reload_rejected" for e in json_logs()),
            5,
            "the rejected reload",
        )
        assert daemon.config.file.daemon.schedule == "7 * * * *"  # kept
        assert daemon.ready.is_set()
        registry = daemon.metrics.registry
        assert registry.get_sample_value("rorfeed_config_last_reload_successful") == 0
        assert registry.get_sample_value("rorfeed_config_reload_rejections_total") == 1
        site.write_text(good)
        assert daemon.reload()
        assert registry.get_sample_value("rorfeed_config_last_reload_successful") == 1
        assert registry.get_sample_value("rorfeed_config_reload_rejections_total") == 1
        # The rejected reload left the job alone: the same schedule, the same next run.
        again = [e for e in json_logs() if e["event"] == "config_reloaded"][1:]
        assert [(e["schedule_changed"], e["next_cycle"]) for e in again] == [(False, next_cycle)]
    rejected = next(e for e in json_logs() if e["event"] == "config_reload_rejected")
    assert rejected["level"] == "error"
    assert rejected["file"] == str(site)
    assert rejected["keys"] == ["destinations[0].bogus"]
    assert "unknown key" in rejected["problems"][0]


# ---------------------------------------------------------------------------------------------
# systemd notifications and metrics


class NotifySocket:
    """A datagram socket standing for systemd's, in the abstract namespace."""

    def __init__(self) -> None:
        self.name = f"@rorfeed-test-{secrets.token_hex(6)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def receive(self, until: Callable[[list[str]], bool], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while not until(self.messages):
            if time.monotonic() > deadline:
                pytest.fail(f"no such notification in {timeout} s; got {self.messages}")
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())
        return self.messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    s = NotifySocket()
    yield s
    s.close()


def test_notifier_speaks_the_sd_notify_protocol(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    assert Notifier.from_env({}).notify("READY=1") is False  # not under systemd: no-op
    n = Notifier.from_env({"NOTIFY_SOCKET": notify_socket.name, "WATCHDOG_USEC": "3000000"})
    assert n.watchdog_seconds == 3.0
    assert n.ready("line one\nline two")
    notify_socket.receive(lambda m: len(m) == 1, 2)
    assert notify_socket.messages == ["READY=1\nSTATUS=line one line two"]
    other = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_env(other).watchdog_seconds is None  # pings expected from another pid
    # A socket in the file system works the same.
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert Notifier(str(path)).watchdog()
        assert sock.recv(64) == b"WATCHDOG=1"
    assert Notifier(str(tmp_path / "gone.sock")).status("x") is False  # never raises


def test_daemon_notifies_ready_watchdog_status_and_stopping(
    site: Path, notify_socket: NotifySocket
) -> None:
    rec = Recorder()
    notifier = Notifier(notify_socket.name, watchdog_usec=300_000)
    daemon = daemon_for(site, trigger=every_second(), cycle_factory=rec.factory, notifier=notifier)
    with running(daemon):
        messages = notify_socket.receive(
            lambda m: sum(x == "WATCHDOG=1" for x in m) >= 3 and any("last cycle" in x for x in m),
            10,
        )
        assert messages[0].startswith("READY=1\nSTATUS=waiting; next cycle ")
    notify_socket.receive(lambda m: any(x.startswith("STOPPING=1") for x in m), 5)
    status = next(x for x in notify_socket.messages if "last cycle" in x)
    assert status.startswith("STATUS=last cycle ") and ": ok, 0 sent, 0 rejected" in status


def test_metrics_answer_on_listen_and_can_be_disabled(tmp_path: Path) -> None:
    daemon = daemon_for(make_site(tmp_path), trigger=never())
    with running(daemon):
        assert daemon.metrics_endpoint.address is not None
        host, port = daemon.metrics_endpoint.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert f'rorfeed_units{{finess="{FINESS}",mode="auto"}} 0.0' in body
        assert "python_gc" not in body  # our own registry, not the global one
    off = tmp_path / "off"
    off.mkdir()
    daemon = daemon_for(make_site(off, listen=""), trigger=never())
    with running(daemon):
        assert daemon.metrics_endpoint.address is None


def test_serve_exits_2_on_an_invalid_config_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_site(tmp_path, schedule="61 * * * *")
    assert serve(path) == 2
    err = capsys.readouterr().err
    assert "rorfeed.toml: daemon.schedule:" in err
    assert not (tmp_path / "work").exists()  # no state store created


def test_metrics_port_in_use_is_a_clear_start_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        daemon = daemon_for(make_site(tmp_path, listen=f"127.0.0.1:{port}"), trigger=never())
        assert daemon.run(install_signals=False) == 1
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# No secret in any log line, even on errors


def test_no_secret_reaches_the_logs_even_on_errors(
    tmp_path: Path, json_logs: Callable[[], list[dict[str, Any]]]
) -> None:
    password = "Db-pässword/42@x"
    passphrase = "sftp passphrase 7!"
    (tmp_path / "db-password").write_text(password + "\n", encoding="utf-8")
    (tmp_path / "sftp-passphrase").write_text(passphrase + "\n", encoding="utf-8")
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    key_body = [line for line in key.read_text().splitlines() if not line.startswith("-----")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens there once closed
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{closed_port} ssh-ed25519 AAAA\n")
    # Both secrets in use and both ends unreachable: a PostgreSQL source with its password
    # file and an SFTP destination with its passphrase file, on a port where nothing listens.
    source = f"""kind = "sql"
url = "postgresql+psycopg://rorfeed@127.0.0.1:{closed_port}/beds"
password_file = "db-password"
query = "SELECT 1"
timeout_seconds = 3
"""
    sftp = f"""
[[destinations]]
name = "sesan"
kind = "sftp"
host = "127.0.0.1"
port = {closed_port}
username = "etab"
private_key = "id_ed25519"
passphrase_file = "sftp-passphrase"
known_hosts = "known_hosts"
remote_dir = "/depot"
timeout_seconds = 3
"""
    write_site(tmp_path, mapping=MAPPING, metrics_listen="", source=source, destinations=sftp)
    config = load(tmp_path / "rorfeed.toml")
    store = open_store(config.state_url)
    # A file waiting in the outbox, so that the SFTP delivery is attempted (and fails).
    cycle_time = datetime.now(UTC).replace(microsecond=0)
    snapshot = store.add_snapshot_once(FINESS, cycle_time - timedelta(hours=1), {})
    assert snapshot is not None
    outbox = tmp_path / "work" / "outbox" / "sesan"
    outbox.mkdir(parents=True)
    name = f"rorlits_{FINESS}_x.xml"
    (outbox / name).write_text("<x/>")
    store.add_file(
        "sesan", name, snapshot, FINESS, cycle_time - timedelta(minutes=30), 4, cycle_time
    )

    daemon = Daemon(config, store, notifier=Notifier(None))
    run_cycle(daemon, cycle_time)  # the real cycle: source and delivery both fail

    def crash(_config: Config, _store: Store) -> Recorder:
        raise ValueError(f"connect failed for rorfeed:{password}@db with passphrase {passphrase}")

    crashing = Daemon(config, store, cycle_factory=crash, notifier=Notifier(None))
    run_cycle(crashing, cycle_time + timedelta(hours=1))  # a bug whose message holds secrets
    lines = json_logs()
    events = [e["event"] for e in lines]
    assert "source_down" in events and "delivery_failed" in events and "cycle_crashed" in events
    text = "\n".join(json.dumps(e, ensure_ascii=False) for e in lines)
    for secret in (password, passphrase, *key_body):
        assert secret not in text
    assert "ValueError" in text  # the crash itself is logged, its secrets masked


# ---------------------------------------------------------------------------------------------
# The real daemon, as a subprocess


class Serve:
    """`rorfeed serve` as a subprocess; stderr read line by line (one JSON object each)."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            serve_argv(config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            self.lines.append(json.loads(line))

    def wait_event(self, event: str, timeout: float, **match: object) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [
                e
                for e in self.lines
                if e["event"] == event and all(e.get(k) == v for k, v in match.items())
            ]
            return bool(found) or self.proc.poll() is not None

        wait_until(seen, timeout, f"log event {event}")
        assert found, f"serve exited ({self.proc.returncode}) before {event}: {''.join(self.raw)}"
        return found[0]

    def stop(self, sig: signal.Signals, timeout: float) -> int:
        started = time.monotonic()
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        assert time.monotonic() - started < timeout
        return rc

    def kill(self) -> None:
        """Kill (if still running) and close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: str = resp.read().decode()
        return body


def sample(body: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def test_serve_subprocess_delivers_on_schedule_serves_metrics_reloads_and_stops(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    # It starts on a daily schedule 12 hours away (and a fresh state: nothing to catch up), so
    # that no cycle can run before the first scrape; the reload below puts it on every minute.
    far = datetime.now(PARIS) + timedelta(hours=12)
    daily = f"{far.minute} {far.hour} * * *"
    path = make_site(tmp_path, schedule=daily)
    serve_ = Serve(path, env={"NOTIFY_SOCKET": notify_socket.name})
    try:
        notify_socket.receive(lambda m: any(x.startswith("READY=1") for x in m), 20)
        port = serve_.wait_event("metrics_listening", 5)["port"]
        body = scrape(port)
        assert sample(body, "rorfeed_killswitch", finess=FINESS) == 0
        assert sample(body, "rorfeed_cycles_total") == 0
        assert "_created" not in body

        # An invalid reload is refused and logged; the daemon keeps serving.
        good = path.read_text()
        path.write_text(good.replace('finess = "750712184"', 'finess = "750712185"'))
        serve_.proc.send_signal(signal.SIGHUP)
        rejected = serve_.wait_event("config_reload_rejected", 10)
        assert rejected["file"] == str(path)
        assert rejected["keys"] == ["establishments[0].finess"]
        assert serve_.proc.poll() is None
        assert "rorfeed_units" in scrape(port)
        assert f'schedule = "{daily}"' in good
        path.write_text(good.replace(f'schedule = "{daily}"', 'schedule = "* * * * *"'))
        serve_.proc.send_signal(signal.SIGHUP)
        reloaded = serve_.wait_event("config_reloaded", 10)
        assert (reloaded["schedule"], reloaded["schedule_changed"]) == ("* * * * *", True)

        # The next minute boundary: one cycle, its time the fire time, one file delivered.
        end = serve_.wait_event("cycle_end", 70)
        fire = datetime.fromisoformat(end["cycle_time"])
        assert fire.second == 0 and fire.microsecond == 0
        files = sorted(p.name for p in (tmp_path / "depot").iterdir())
        assert files == [f"rorlits_{FINESS}_{fire:%Y%m%dT%H%M}00Z.xml"]
        body = scrape(port)
        assert sample(body, "rorfeed_cycles_total") == 1
        assert sample(body, "rorfeed_last_success_timestamp_seconds", finess=FINESS) == (
            fire.timestamp()
        )
        delivered = sample(
            body, "rorfeed_last_delivery_timestamp_seconds", finess=FINESS, destination="depot"
        )
        assert delivered is not None and delivered >= fire.timestamp()
        notify_socket.receive(lambda m: any("last cycle" in x for x in m), 5)

        assert serve_.stop(signal.SIGTERM, 10) == 0
        assert serve_.lines[-1]["event"] == "stopped"
        notify_socket.receive(lambda m: any(x.startswith("STOPPING=1") for x in m), 2)
    finally:
        serve_.kill()
    assert all(line.startswith("{") for line in serve_.raw)  # one JSON object per line


def _thread_kill(pid: int, tid: int, sig: signal.Signals) -> None:
    """Send `sig` to one thread of another process, as the kernel may choose to (tgkill)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tid, int(sig)) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid}, {sig.name})")


def test_serve_subprocess_answers_a_signal_that_another_thread_took_at_once(
    tmp_path: Path,
) -> None:
    # The kernel hands a process-directed signal to any thread that does not block it. Python
    # runs the handler in the main thread only: without a wake-up fd, the main thread slept
    # on in select() until its 60 s timeout (a SIGTERM from systemd answered a minute late).
    path = make_site(tmp_path)
    serve_ = Serve(path)
    try:
        serve_.wait_event("ready", 20)
        pid = serve_.proc.pid
        others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        assert others, "the daemon has no thread but the main one"
        good = path.read_text()
        path.write_text(good.replace('finess = "750712184"', 'finess = "750712185"'))

        def rejections() -> int:
            return sum(e["event"] == "config_reload_rejected" for e in serve_.lines)

        for count, tid in enumerate(others, start=1):
            _thread_kill(pid, tid, signal.SIGHUP)
            wait_until(lambda: rejections() >= count, 10, f"the reload asked through {tid}")  # noqa: B023
        started = time.monotonic()
        _thread_kill(pid, others[-1], signal.SIGTERM)
        assert serve_.proc.wait(10) == 0
        assert time.monotonic() - started < 10
    finally:
        serve_.kill()


def test_serve_subprocess_catches_up_once_at_start_and_stops_on_sigint(tmp_path: Path) -> None:
    path = make_site(tmp_path, schedule="5 * * * *")
    config = load(path)
    store = open_store(config.state_url)
    old = datetime.now(UTC) - timedelta(hours=5)
    store.record_cycle(old, old, old, CycleOutcome.OK, 2, 0, CycleDetail())
    store.engine.dispose()
    previous = previous_fire_time(make_trigger("5 * * * *", PARIS), datetime.now(UTC))
    assert previous is not None
    serve_ = Serve(path)
    try:
        catch_up = serve_.wait_event("catch_up", 20)
        assert catch_up["missed"] == previous.isoformat()
        serve_.wait_event("cycle_end", 20)
        assert serve_.stop(signal.SIGINT, 10) == 0
    finally:
        serve_.kill()
    assert [e["event"] for e in serve_.lines].count("cycle_start") == 1
    files = [p.name for p in (tmp_path / "depot").iterdir()]
    assert files == [f"rorlits_{FINESS}_{previous:%Y%m%dT%H%M%S}Z.xml"]


def test_serve_subprocess_exits_2_on_an_invalid_config(tmp_path: Path) -> None:
    path = make_site(tmp_path, extra="\n[bogus]\nx = 1\n")
    done = subprocess.run(
        serve_argv(path),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "rorfeed.toml: bogus: unknown key" in done.stderr
