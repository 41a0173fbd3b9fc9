"""`rorfeed serve`: the cycle on its schedule, metrics, signals, systemd notifications (SPEC §9).

Threads:
- the **main thread** loads the configuration, starts everything, then sleeps on a wake-up
  socket until a signal comes: `SIGHUP` reloads, `SIGTERM`/`SIGINT` stop;
- **APScheduler**'s `BackgroundScheduler` fires the `cycle` job on a `CronTrigger` built from
  `daemon.schedule` in `daemon.timezone` (`max_instances=1`, `coalesce=True`, no misfire
  limit: a run that is late — a suspended machine — still runs, once), and pings the systemd
  watchdog from its own loop (`watchdog` job, every half `WatchdogSec`);
- the **cycle runner** runs one cycle at a time in its own thread. The job only hands it the
  scheduled fire time: a fire time that comes while a cycle still runs waits for it (only the
  newest one waits; an older waiting one is dropped as coalesced), and a fire time never runs
  twice nor after a newer one;
- prometheus-client's HTTP server answers `/metrics` on `metrics.listen`.

The cron grammar is `rorfeed.schedule`, the runner `rorfeed.cycle_runner`, the endpoint
`rorfeed.metrics_endpoint`; this module is the process's life: start, signals, reload, stop.

A scheduled cycle's time is its scheduled fire time, in UTC. The job computes it with the
trigger's own arithmetic as the latest fire time not after now — exactly the run time
APScheduler coalesced to.

Catch-up: at start, when the state's last cycle is older than the schedule's previous fire
time, that fire time runs once, at once. A fresh state has missed nothing.

Failures: a `RorfeedError` from a cycle (the state store unreachable, …) is logged and the next
cycle runs as scheduled. Any other exception is a bug: it is logged with its traceback and
counted in `rorfeed_cycles_failed_total`, and the daemon keeps running. A dead daemon would
stop the feed of every establishment until someone notices, and the bug may well be tied to one
hour's data; the state store is transactional, so an interrupted cycle leaves it consistent,
and the alerts (failed cycles, stale feed) make a repeating bug visible within hours.

Stop: `SIGTERM`/`SIGINT` stop the scheduler, let the running cycle finish for at most
`STOP_GRACE_SECONDS` (60 s), then exit 0; a cycle still running then is abandoned (logged) —
the state store and the delivery ledger are crash-safe. The unit's `TimeoutStopSec` is longer.
"""

from __future__ import annotations

import contextlib
import secrets
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from rorfeed import config as config_mod
from rorfeed import heap
from rorfeed import logging as rlog
from rorfeed.cycle_runner import CycleRunner
from rorfeed.errors import ConfigError, RorfeedError, StateError
from rorfeed.exit_codes import ExitCode
from rorfeed.metrics_endpoint import MetricsEndpoint
from rorfeed.schedule import Trigger, missed_run, previous_fire_time, schedule_trigger
from rorfeed.systemd import Notifier
from rorfeed.url_password import without_password

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from rorfeed.config import Config
    from rorfeed.cycle import CycleReport
    from rorfeed.metrics import Metrics
    from rorfeed.state import Store

log = structlog.get_logger("rorfeed.daemon")

STOP_GRACE_SECONDS = 60.0
# A cycle running longer than this is taken as hung: the watchdog pings stop, and systemd
# restarts the daemon (every step of a cycle has its own timeout: this is the last resort).
CYCLE_STALL_SECONDS = 3600.0
CYCLE_JOB = "cycle"
WATCHDOG_JOB = "watchdog"


class CycleLike(Protocol):
    def run(self, cycle_time: datetime) -> CycleReport: ...


CycleFactory = Callable[["Config", "Store"], CycleLike]


# ---------------------------------------------------------------------------------------------
# The daemon


def _problem_keys(problems: Sequence[str]) -> list[str]:
    """The keys named by `<file>: <key>: <what>` problem lines."""
    keys = []
    for p in problems:
        parts = p.split(": ", 2)
        if len(parts) == 3:
            keys.append(parts[1])
    return keys


def _local(value: datetime, zone: tzinfo) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def _default_cycle_factory(config: Config, store: Store) -> CycleLike:
    from rorfeed.cycle import Cycle

    return Cycle(config, store)


class _StartError(Exception):
    """The daemon cannot start (exit 1); the message says why."""


class Daemon:
    """Everything `serve` runs, for one configuration and one state store.

    `trigger`, `cycle_factory`, `notifier`, `clock` and `stop_grace` are injectable for tests;
    `serve` uses the defaults.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        trigger: Trigger | None = None,
        cycle_factory: CycleFactory = _default_cycle_factory,
        notifier: Notifier | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], datetime] | None = None,
        stop_grace: float = STOP_GRACE_SECONDS,
    ) -> None:
        from prometheus_client import CollectorRegistry

        from rorfeed.metrics import Metrics

        self.config = config
        self.store = store
        rlog.register_secrets(config.secrets.values())
        self._trigger = trigger if trigger is not None else schedule_trigger(config)
        self._cycle_factory = cycle_factory
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics: Metrics = Metrics(self.registry, config, store)
        self._clock = clock or (lambda: datetime.now(UTC))
        self.stop_grace = stop_grace
        self.runner = CycleRunner(self._run_cycle)
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._scheduler: Any = None
        self.metrics_endpoint = MetricsEndpoint(self.registry)
        self._stall_logged = False
        self._stop_signal: int | None = None
        self._reload_requested = False
        self._wake_w: socket.socket | None = None

    # -- requests (from signal handlers or tests) ---------------------------------------------

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum
        self._wake()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake()

    def _wake(self) -> None:
        wake = self._wake_w
        if wake is not None:
            with contextlib.suppress(OSError):  # already awake (buffer full), or closed at exit
                wake.send(b"\0")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only flags and a non-blocking send here: nothing that takes a lock.
        if signum == signal.SIGHUP:
            self.request_reload()
        else:
            self.request_stop(signum)

    # -- main loop ----------------------------------------------------------------------------

    def run(self, *, install_signals: bool = True) -> int:
        """Start, serve until asked to stop, stop; the process exit code."""
        wake_r, self._wake_w = socket.socketpair()
        wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        previous: dict[signal.Signals, Any] = {}
        previous_wakeup_fd = -1
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                previous[sig] = signal.signal(sig, self._on_signal)
            # The kernel gives a signal to any thread of the process, and Python runs its
            # handler in the main thread only, once that thread runs again. A SIGTERM taken by
            # the scheduler's or the cycle's thread left the main thread asleep in select()
            # until its 60 s timeout. With the wake-up fd, the interpreter's C-level handler
            # writes to the wake-up socket from whichever thread took the signal.
            previous_wakeup_fd = signal.set_wakeup_fd(
                self._wake_w.fileno(), warn_on_full_buffer=False
            )
        try:
            try:
                self._start()
            except _StartError as exc:
                print(f"rorfeed: {exc}", file=sys.stderr)
                return ExitCode.FAILED
            while self._stop_signal is None:
                select.select([wake_r], [], [], 60.0)
                with contextlib.suppress(OSError):  # BlockingIOError: nothing more to read
                    while wake_r.recv(64):
                        pass
                if self._reload_requested and self._stop_signal is None:
                    self._reload_requested = False
                    self.reload()
            return self._stop()
        finally:
            if install_signals:
                signal.set_wakeup_fd(previous_wakeup_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_w, self._wake_w = self._wake_w, None
            wake_w.close()
            wake_r.close()

    def _start(self) -> None:
        from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
            BackgroundScheduler,
        )

        config = self.config
        log.info(
            "starting",
            config=str(config.path),
            schedule=config.file.daemon.schedule,
            timezone=config.file.daemon.timezone,
            state=_display_state_url(config.state_url),
        )
        listen = config.file.metrics.listen
        error = self.metrics_endpoint.try_start(listen)
        if error:
            raise _StartError(
                f"{config.path.name}: metrics.listen: cannot listen on {listen}: {error}"
            )
        history: list[Any] = []
        try:
            history = self.store.recent_cycles(100)
        except StateError as exc:
            # The store may come back before the first cycle: start anyway, and say so.
            log.warning("state_unreadable", error=str(exc))
        self.metrics.restore(history)

        # Everything loaded so far (libraries, configuration, store) is left out of the
        # collector's walks during the first cycle; each cycle settles the heap again after.
        heap.settle()
        self._scheduler = BackgroundScheduler(timezone=UTC, daemon=True)
        self._scheduler.add_job(
            self._on_fire,
            trigger=self._trigger,
            id=CYCLE_JOB,
            name="rorfeed cycle",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        watchdog = self.notifier.watchdog_seconds
        if watchdog:
            self._scheduler.add_job(
                self._watchdog,
                trigger="interval",
                seconds=watchdog / 2,
                id=WATCHDOG_JOB,
                name="systemd watchdog",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        self._scheduler.start()
        next_run = self._next_run()
        self.notifier.ready(f"waiting; next cycle {next_run}")
        self.notifier.watchdog()
        log.info("ready", next_cycle=next_run, metrics=self.metrics_endpoint.url)
        self.ready.set()

        last = history[0].cycle_time if history else None
        missed = missed_run(self._trigger, last, self._clock())
        if missed is not None:
            log.info(
                "catch_up",
                missed=missed.isoformat(),
                last_cycle=last.isoformat() if last else None,
            )
            self.runner.submit(missed)

    def _stop(self) -> int:
        signum = self._stop_signal
        name = signal.Signals(signum).name if signum else "request"
        running = self.runner.running_for() is not None
        self.notifier.stopping("stopping: finishing the running cycle" if running else "stopping")
        log.info("stopping", signal=name, cycle_running=running)
        self._shutdown_scheduler()
        self.runner.close()
        deadline = time.monotonic() + self.stop_grace
        interval = (self.notifier.watchdog_seconds or 20.0) / 2
        finished = self.runner.wait_idle(0)
        while not finished and time.monotonic() < deadline:
            finished = self.runner.wait_idle(min(interval, max(0.0, deadline - time.monotonic())))
            self.notifier.watchdog()
        if not finished:
            log.error(
                "cycle_abandoned",
                grace_seconds=self.stop_grace,
                detail="the cycle did not finish in time; the next start settles its deliveries",
            )
        self.metrics_endpoint.stop()
        log.info("stopped", signal=name)
        return ExitCode.OK

    def _shutdown_scheduler(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    # -- scheduler jobs -----------------------------------------------------------------------

    def _on_fire(self) -> None:
        """The `cycle` job: hand the scheduled fire time to the runner (returns at once)."""
        now = self._clock()
        with self._lock:
            trigger = self._trigger
        fire = previous_fire_time(trigger, now) or now
        self.runner.submit(fire)

    def _watchdog(self) -> None:
        """The `watchdog` job: runs in the scheduler, so a ping proves the scheduler alive."""
        running = self.runner.running_for()
        if running is not None and running > CYCLE_STALL_SECONDS:
            if not self._stall_logged:
                self._stall_logged = True
                log.error(
                    "cycle_stalled",
                    running_seconds=round(running),
                    detail="watchdog pings stopped: systemd will restart the daemon",
                )
            return
        self._stall_logged = False
        self.notifier.watchdog()

    def _next_run(self) -> str:
        job = self._scheduler.get_job(CYCLE_JOB) if self._scheduler is not None else None
        when: datetime | None = getattr(job, "next_run_time", None)
        return _local(when, self.config.zone) if when is not None else "none"

    # -- one cycle ----------------------------------------------------------------------------

    def _run_cycle(self, cycle_time: datetime) -> None:
        cycle_id = f"{cycle_time.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(cycle_id=cycle_id):
            with self._lock:
                config, store = self.config, self.store
            log.info("cycle_start", cycle_time=cycle_time.isoformat())
            report: CycleReport | None = None
            error: str | None = None
            try:
                report = self._cycle_factory(config, store).run(cycle_time)
            except RorfeedError as exc:
                error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            except Exception as exc:  # a bug must not stop the feed: see the module docstring
                error = f"internal error: {type(exc).__name__}"
                log.exception("cycle_crashed", cycle_time=cycle_time.isoformat())
            when = _local(cycle_time, config.zone)
            if report is not None:
                self.metrics.observe_cycle(report)
                status = (
                    f"last cycle {when}: {report.outcome}, {report.sent} sent, "
                    f"{report.rejected} rejected"
                )
            else:
                log.error("cycle_failed", cycle_time=cycle_time.isoformat(), error=error)
                self.metrics.observe_cycle_error(time.monotonic() - started)
                # `systemctl status` shows this to every user: never a secret in it either.
                status = rlog.scrub(f"last cycle {when}: failed ({error})")
            self.notifier.status(f"{status}; next cycle {self._next_run()}")
        heap.settle()
        heap.release()

    # -- reload -------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Reload and validate the configuration; keep the running one if the new one is not."""
        from rorfeed.state import open_store

        path = self.config.path
        old = self.config
        try:
            new = config_mod.load(path)
            schedule_changed = (new.file.daemon.schedule, new.file.daemon.timezone) != (
                old.file.daemon.schedule,
                old.file.daemon.timezone,
            )
            trigger = schedule_trigger(new) if schedule_changed else None
            store = self.store
            if (new.state_url, new.state_password) != (old.state_url, old.state_password):
                try:
                    store = open_store(new.state_url, new.state_password)
                except StateError as exc:
                    raise ConfigError([f"{path.name}: daemon.state_url: {exc}"]) from None
        except ConfigError as exc:
            problems = exc.problems
        else:
            self._apply(new, store, trigger)
            self.metrics.observe_reload(accepted=True)
            return True
        self.metrics.observe_reload(accepted=False)
        log.error(
            "config_reload_rejected",
            file=str(path),
            keys=_problem_keys(problems),
            problems=problems,
            kept="the running configuration",
        )
        self.notifier.status(f"configuration reload rejected ({path}); running the previous one")
        return False

    def _apply(self, new: Config, store: Store, trigger: Trigger | None) -> None:
        old = self.config
        rlog.register_secrets(new.secrets.values())
        with self._lock:
            self.config, self.store = new, store
            if trigger is not None:
                self._trigger = trigger
        if trigger is not None and self._scheduler is not None:
            self._scheduler.reschedule_job(CYCLE_JOB, trigger=trigger)
        self.metrics.set_config(new, store)
        if new.file.metrics.listen != old.file.metrics.listen:
            self.metrics_endpoint.stop()
            error = self.metrics_endpoint.try_start(new.file.metrics.listen)
            if error:
                log.error(
                    "metrics_listen_failed",
                    file=str(new.path),
                    key="metrics.listen",
                    listen=new.file.metrics.listen,
                    error=error,
                )
        log.info(
            "config_reloaded",
            file=str(new.path),
            schedule=new.file.daemon.schedule,
            schedule_changed=trigger is not None,
            next_cycle=self._next_run(),
        )

    # -- metrics server -----------------------------------------------------------------------


def _display_state_url(url: str) -> str:
    return without_password(url)


# ---------------------------------------------------------------------------------------------
# Entry points


def serve(config_path: Path) -> int:
    """`rorfeed serve`: 0 after a clean stop, 1 when it cannot start, 2 on invalid config."""
    from prometheus_client import disable_created_metrics

    from rorfeed.state import open_store

    try:
        config = config_mod.load(config_path)
        trigger = schedule_trigger(config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return ExitCode.USAGE
    # The `_created` companions of counters serve no alert and double the series.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        store = open_store(config.state_url, config.state_password)
    except StateError as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    return Daemon(config, store, trigger=trigger).run()
