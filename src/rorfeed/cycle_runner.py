"""One cycle at a time, in its own thread, each fire time at most once (SPEC §9).

The scheduler's job only hands the runner a fire time: a fire time that comes while a cycle
still runs waits for it (only the newest one waits; an older waiting one is dropped as
coalesced), and a fire time never runs twice nor after a newer one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

log = structlog.get_logger("rorfeed.daemon")


class CycleRunner:
    """Runs `run(cycle_time)` in a worker thread, one at a time, each fire time at most once."""

    def __init__(self, run: Callable[[datetime], None]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._running: datetime | None = None
        self._since: float | None = None
        self._pending: datetime | None = None
        self._last: datetime | None = None
        self._closed = False

    def submit(self, cycle_time: datetime) -> str:
        """Start, defer or skip a cycle; returns "started", "deferred", "skipped" or "closed"."""
        cycle_time = cycle_time.astimezone(UTC)
        with self._lock:
            if self._closed:
                return "closed"
            known = [t for t in (self._last, self._running, self._pending) if t is not None]
            if known and cycle_time <= max(known):
                log.warning(
                    "cycle_skipped",
                    cycle_time=cycle_time.isoformat(),
                    reason="a cycle of this time or a later one already ran or is due",
                )
                return "skipped"
            if self._running is not None:
                if self._pending is not None:
                    log.warning("cycle_coalesced", dropped=self._pending.isoformat())
                self._pending = cycle_time
                log.warning(
                    "cycle_deferred",
                    cycle_time=cycle_time.isoformat(),
                    running=self._running.isoformat(),
                )
                return "deferred"
            self._running, self._since = cycle_time, time.monotonic()
            self._idle.clear()
        threading.Thread(
            target=self._work, args=(cycle_time,), name="rorfeed-cycle", daemon=True
        ).start()
        return "started"

    def _work(self, cycle_time: datetime) -> None:
        current: datetime | None = cycle_time
        while current is not None:
            try:
                self._run(current)
            except Exception:  # `run` logs its own errors: this only keeps the runner alive
                log.exception("cycle_runner_error", cycle_time=current.isoformat())
            with self._lock:
                self._last = current
                current, self._pending = (None if self._closed else self._pending), None
                self._running = current
                self._since = None if current is None else time.monotonic()
                if current is None:
                    self._idle.set()

    def running_for(self) -> float | None:
        """Seconds the running cycle has been running, None when idle."""
        since = self._since
        return None if since is None else time.monotonic() - since

    def close(self) -> None:
        """Accept no more cycles; a waiting one is dropped."""
        with self._lock:
            self._closed = True
            if self._pending is not None:
                log.warning("cycle_dropped_at_stop", cycle_time=self._pending.isoformat())
            self._pending = None

    def wait_idle(self, timeout: float) -> bool:
        return self._idle.wait(timeout)
