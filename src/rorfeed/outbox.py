"""The outbox: atomic files waiting for delivery, the delivery ledger's rules, the archive.

Layout under `work_dir`: `outbox/<destination>/<file>` waiting, `archive/<destination>/<status>/
<file>` done (delivered, superseded, expired, uncertain), removed after `archive_days`.

Never twice, never stale, never older-after-newer (SPEC §7):
- one process at a time delivers to a destination (an exclusive lock on
  `outbox/.<destination>.lock`, waited for within the delivery's time budget), and it reads the
  ledger only once it holds the lock;
- before anything is sent, every pending file older than the newest file of the same
  establishment (per destination) is archived as *superseded*, and one older than
  `max_file_age_minutes` as *expired*;
- a file is uploaded under a temporary name first; only then is it marked `uploading` in the
  ledger, and renamed to its final name. A crash (or a broken connection) after that point
  leaves an *unknown outcome*, settled before the next delivery: the final name on the server
  with the right size → delivered; otherwise → uncertain, never sent again (the operator may
  already have taken it), and its temporary file is removed. A newer file follows anyway;
- a file enters the outbox as a temporary `.<name>.<pid>.tmp`, gets its ledger row, then its
  name: a crash leaves no file the ledger does not know. The next delivery removes the
  temporary files of dead writers, and the server's temporary copy of each file it drops
  unsent (an upload cut short by a crash or the network).

The work folder's own failures (a full disk) are `WorkDirError`s: the cycle fails, and says so.

Time: the destination's `timeout_seconds` bounds the whole delivery of a cycle. A failed
attempt is retried on a new session (with what is left of the budget) after a backoff, at most
`MAX_ATTEMPTS` times, never sleeping past the deadline; errors that another attempt cannot
cure (host key, authentication, missing or read-only remote folder) are not retried. What is
not delivered stays in the outbox for the next cycle.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from rorfeed.durable import fsync_dir, write_temp, writer_alive
from rorfeed.errors import (
    AuthFailed,
    ConnectTimeout,
    HostKeyRejected,
    RemoteMissing,
    RemoteRefused,
    TransportError,
    WorkDirError,
)
from rorfeed.model import LedgerStatus
from rorfeed.state import LedgerRow, Store
from rorfeed.transports.base import Session, Transport
from rorfeed.wording import one_line

log = structlog.get_logger("rorfeed.outbox")

# Pause before the 2nd, 3rd and 4th attempt of a delivery (each bounded by the deadline).
RETRY_BACKOFF_SECONDS = (1.0, 2.0, 4.0)
MAX_ATTEMPTS = len(RETRY_BACKOFF_SECONDS) + 1
# Errors another attempt in the same cycle cannot cure: the file waits for the next cycle.
PERMANENT_ERRORS: tuple[type[TransportError], ...] = (
    HostKeyRejected,
    AuthFailed,
    RemoteMissing,
    RemoteRefused,
)
_LOCK_POLL_SECONDS = 0.1


@contextlib.contextmanager
def _work_dir_errors(what: str) -> Iterator[None]:
    """The work folder's failures (a full disk, ...) as `WorkDirError`, naming the file."""
    try:
        yield
    except OSError as exc:
        raise WorkDirError(f"work folder: cannot {what}: {exc.strerror or exc}") from exc


@dataclass
class DeliveryReport:
    """What one delivery to one destination did; plain data for the CLI, logs and metrics."""

    destination: str
    delivered: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)
    withheld: list[str] = field(default_factory=list)  # stopped by a switch during the cycle
    failed: list[str] = field(default_factory=list)  # still waiting in the outbox
    error: str = ""  # why it failed in the end, one line; "" when it did not
    error_cause: str = ""  # `TransportError.cause` of that error ("host_key", "timeout", ...)
    attempts: int = 0  # sessions tried (1 when the first one did everything)
    failures: Counter[str] = field(default_factory=Counter)  # failed attempts by cause
    # FINESS → the newest cycle time delivered in this delivery (for "last successful delivery
    # per establishment and destination"); delivered means uploaded and renamed, never accepted.
    delivered_finess: dict[str, datetime] = field(default_factory=dict)
    duration: float = 0.0  # seconds, lock wait included

    @property
    def ok(self) -> bool:
        return not self.failed and not self.error

    def add_delivered(self, row: LedgerRow) -> None:
        self.delivered.append(row.file_name)
        newest = self.delivered_finess.get(row.finess)
        if newest is None or row.cycle_time > newest:
            self.delivered_finess[row.finess] = row.cycle_time


class Outbox:
    def __init__(self, work_dir: Path, store: Store) -> None:
        self.work_dir = work_dir
        self.store = store

    def folder(self, destination: str) -> Path:
        return self.work_dir / "outbox" / destination

    def stage(
        self,
        destination: str,
        file_name: str,
        data: bytes,
        snapshot_id: int,
        finess: str,
        cycle_time: datetime,
        now: datetime,
    ) -> Path:
        folder = self.folder(destination)
        path = folder / file_name
        with _work_dir_errors(f"write {path}"):
            folder.mkdir(parents=True, exist_ok=True)
            tmp = write_temp(path, data)
        # The ledger row comes before the final name: a crash leaves a temporary file (removed
        # by the next delivery) or a row without its file (never sent), never a file that the
        # ledger does not know, which would wait in the outbox forever.
        try:
            self.store.add_file(
                destination, file_name, snapshot_id, finess, cycle_time, len(data), now
            )
            with _work_dir_errors(f"write {path}"):
                tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with _work_dir_errors(f"write {path}"):
            fsync_dir(folder)
        return path

    def archive(self, destination: str, file_name: str, status: str) -> None:
        src = self.folder(destination) / file_name
        target_dir = self.work_dir / "archive" / destination / status
        with _work_dir_errors(f"archive {src} in {target_dir}"):
            target_dir.mkdir(parents=True, exist_ok=True)
            if src.exists():
                src.replace(target_dir / file_name)

    def purge_archive(self, keep_days: int, now: float | None = None) -> int:
        """Remove archived files older than `keep_days`; return how many."""
        limit = (now if now is not None else time.time()) - keep_days * 86400
        removed = 0
        root = self.work_dir / "archive"
        if not root.exists():
            return 0
        for path in root.rglob("*"):
            if path.is_file() and path.stat().st_mtime < limit:
                path.unlink()
                removed += 1
        return removed

    # -- delivery -------------------------------------------------------------------------

    def _drop_stale(
        self,
        destination: str,
        rows: list[LedgerRow],
        now: datetime,
        max_age: timedelta,
        report: DeliveryReport,
    ) -> list[LedgerRow]:
        newest = self.store.newest_cycle_times(
            destination,
            (
                LedgerStatus.PENDING,
                LedgerStatus.UPLOADING,
                LedgerStatus.DELIVERED,
                LedgerStatus.UNCERTAIN,
            ),
        )
        keep = []
        for row in rows:
            if row.cycle_time < newest[row.finess]:
                status, bucket = LedgerStatus.SUPERSEDED, report.superseded
            elif row.cycle_time < now - max_age:
                status, bucket = LedgerStatus.EXPIRED, report.expired
            else:
                keep.append(row)
                continue
            self.store.set_file_status(row.id, status, now)
            self.archive(destination, row.file_name, status)
            bucket.append(row.file_name)
            log.warning("file_not_sent", destination=destination, file=row.file_name, status=status)
        return keep

    @contextlib.contextmanager
    def _lock(self, destination: str, deadline: float) -> Iterator[bool]:
        """Hold the destination's delivery lock (True), or give up at `deadline` (False)."""
        root = self.work_dir / "outbox"
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / f".{destination}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        yield False
                        return
                    time.sleep(min(_LOCK_POLL_SECONDS, left))
            yield True
        finally:
            os.close(fd)  # releases the lock

    def deliver(
        self,
        destination: str,
        transport: Transport,
        *,
        timeout: float,
        max_age: timedelta,
        production: bool,
        clock: Callable[[], datetime],
        sleep: Callable[[float], None] = time.sleep,
        hold: Callable[[LedgerRow], str | None] = lambda _row: None,
    ) -> DeliveryReport:
        """Deliver every file waiting for `destination`, within `timeout` seconds in all.

        `hold(row)` is asked right before each upload starts: a reason (a unit of the file
        switched to manual, a kill-switch turned on since the file was written) withholds
        the file — archived as withheld, never sent.
        """
        started = time.monotonic()
        deadline = started + timeout
        report = DeliveryReport(destination)
        with self._lock(destination, deadline) as locked:
            if locked:
                self._deliver(
                    destination,
                    transport,
                    timeout,
                    deadline,
                    max_age,
                    production,
                    clock,
                    sleep,
                    hold,
                    report,
                )
            else:
                waiting = self.store.files(
                    destination, (LedgerStatus.PENDING, LedgerStatus.UPLOADING)
                )
                report.failed = [r.file_name for r in waiting]
                report.error = (
                    f'destination "{destination}": another rorfeed process kept delivering to it'
                    f" for {timeout:g} s; the files wait for the next cycle"
                )
                report.error_cause = "busy"
        report.duration = time.monotonic() - started
        if report.attempts or report.superseded or report.expired or not report.ok:
            log.info(
                "delivery_end",
                destination=destination,
                delivered=len(report.delivered),
                superseded=len(report.superseded),
                expired=len(report.expired),
                uncertain=len(report.uncertain),
                waiting=len(report.failed),
                attempts=report.attempts,
                cause=report.error_cause or None,
                duration_s=round(report.duration, 3),
            )
        return report

    def _deliver(
        self,
        destination: str,
        transport: Transport,
        timeout: float,
        deadline: float,
        max_age: timedelta,
        production: bool,
        clock: Callable[[], datetime],
        sleep: Callable[[float], None],
        hold: Callable[[LedgerRow], str | None],
        report: DeliveryReport,
    ) -> None:
        unknown = self.store.files(destination, (LedgerStatus.UPLOADING,))
        pending = self._drop_stale(
            destination,
            self.store.files(destination, (LedgerStatus.PENDING,)),
            clock(),
            max_age,
            report,
        )
        # A file dropped unsent may have left a temporary copy on the server (its upload was
        # cut short by a crash or the network): removed in the session that sends the rest.
        dropped = [*report.superseded, *report.expired]
        self._sweep(destination, {r.file_name for r in unknown + pending})
        if not unknown and not pending:
            return
        # The units' last values sent are recorded once per snapshot, not once per format.
        recorded: set[int] = set()
        while True:
            report.attempts += 1
            current: LedgerRow | None = None
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectTimeout(
                        f'destination "{destination}": the delivery did not finish within its'
                        f" timeout_seconds ({timeout:g} s)"
                    )
                with transport.open(remaining) as session:
                    while dropped:
                        session.discard(dropped[0])
                        dropped.pop(0)
                    while unknown:
                        row = unknown[0]
                        record = production and row.snapshot_id not in recorded
                        if self._settle(session, row, clock(), record, report):
                            recorded.add(row.snapshot_id)
                        unknown.pop(0)
                    while pending:
                        current = pending[0]
                        record = production and current.snapshot_id not in recorded
                        if self._send(session, current, clock(), record, hold, report):
                            recorded.add(current.snapshot_id)
                        pending.pop(0)
                        current = None
                report.error = report.error_cause = ""
                return
            except TransportError as exc:
                message = one_line(str(exc))
                report.error, report.error_cause = message, exc.cause
                report.failures[exc.cause] += 1
                log.warning(
                    "delivery_attempt_failed",
                    destination=destination,
                    attempt=report.attempts,
                    cause=exc.cause,
                    error=message,
                    file=current.file_name if current is not None else None,
                )
                # A file whose rename was under way has an unknown outcome now: it is
                # `uploading` in the ledger, and settled (never re-sent) on the next session.
                unknown = self.store.files(destination, (LedgerStatus.UPLOADING,))
                in_doubt = {u.id for u in unknown}
                pending = [r for r in pending if r.id not in in_doubt]
                now = clock()
                if current is not None:
                    status = (
                        LedgerStatus.UPLOADING if current.id in in_doubt else LedgerStatus.PENDING
                    )
                    # `uploading` counted its attempt already
                    attempted = status == LedgerStatus.PENDING
                    self.store.set_file_status(
                        current.id, status, now, error=message, attempt=attempted
                    )
                wait = RETRY_BACKOFF_SECONDS[min(report.attempts, MAX_ATTEMPTS - 1) - 1]
                if (
                    isinstance(exc, PERMANENT_ERRORS)
                    or report.attempts >= MAX_ATTEMPTS
                    or time.monotonic() + wait >= deadline
                ):
                    for row in pending:
                        if current is None or row.id != current.id:
                            self.store.set_file_status(
                                row.id, LedgerStatus.PENDING, now, error=message
                            )
                    report.failed = [r.file_name for r in unknown + pending]
                    return
                sleep(wait)

    def _sweep(self, destination: str, live: set[str]) -> None:
        """Clean what a crash left in the outbox: archive the files whose ledger status became
        final, remove the temporary files of writers that are dead."""
        folder = self.folder(destination)
        if not folder.is_dir():
            return
        entries = [p for p in folder.iterdir() if p.is_file()]
        for temp in entries:
            name = temp.name
            if name.startswith(".") and name.endswith(".tmp") and not writer_alive(name):
                temp.unlink(missing_ok=True)
                log.info("outbox_temp_removed", destination=destination, file=name)
        strays = {p.name for p in entries if not p.name.startswith(".") and p.name not in live}
        if not strays:
            return
        final = (
            LedgerStatus.DELIVERED,
            LedgerStatus.UNCERTAIN,
            LedgerStatus.SUPERSEDED,
            LedgerStatus.EXPIRED,
            LedgerStatus.WITHHELD,
        )
        status = {
            r.file_name: r.status
            for r in self.store.files(destination, final)
            if r.file_name in strays
        }
        for name in sorted(strays):
            if name in status:
                self.archive(destination, name, status[name])
                log.info(
                    "outbox_file_archived", destination=destination, file=name, status=status[name]
                )
            else:
                log.warning("outbox_file_unknown", destination=destination, file=name)

    def _settle(
        self,
        session: Session,
        row: LedgerRow,
        now: datetime,
        production: bool,
        report: DeliveryReport,
    ) -> bool:
        """Settle a delivery whose outcome is unknown; True when it turns out delivered."""
        size = session.size_of(row.file_name)
        if size == row.size:
            self.store.mark_delivered(row, now, production)
            self.archive(row.destination, row.file_name, LedgerStatus.DELIVERED)
            report.add_delivered(row)
            log.info(
                "delivery_settled",
                destination=row.destination,
                file=row.file_name,
                status=LedgerStatus.DELIVERED,
            )
            return True
        # Never sent again: the operator may already have taken it. Its temporary copy, if
        # any, is ours to remove (the consumer ignores temporary names).
        session.discard(row.file_name)
        detail = (
            "absent from the server"
            if size is None
            else f"on the server with {size} bytes instead of {row.size}"
        )
        self.store.set_file_status(
            row.id,
            LedgerStatus.UNCERTAIN,
            now,
            error=f"outcome unknown (interrupted around the rename); final name {detail}",
        )
        self.archive(row.destination, row.file_name, LedgerStatus.UNCERTAIN)
        report.uncertain.append(row.file_name)
        log.warning(
            "delivery_settled",
            destination=row.destination,
            file=row.file_name,
            status=LedgerStatus.UNCERTAIN,
            remote_size=size,
            size=row.size,
        )
        return False

    def _send(
        self,
        session: Session,
        row: LedgerRow,
        now: datetime,
        production: bool,
        hold: Callable[[LedgerRow], str | None],
        report: DeliveryReport,
    ) -> bool:
        """Upload, then rename; True when delivered (False: withheld or missing)."""
        reason = hold(row)
        if reason:
            self.store.set_file_status(row.id, LedgerStatus.WITHHELD, now, error=reason)
            self.archive(row.destination, row.file_name, LedgerStatus.WITHHELD)
            report.withheld.append(row.file_name)
            log.warning(
                "file_withheld", destination=row.destination, file=row.file_name, reason=reason
            )
            return False
        local = self.folder(row.destination) / row.file_name
        if not local.exists():
            # Lost from the outbox (removed by hand?): nothing to send, say so once.
            self.store.set_file_status(
                row.id, LedgerStatus.EXPIRED, now, error="missing from the outbox"
            )
            report.expired.append(row.file_name)
            log.error("outbox_file_missing", destination=row.destination, file=row.file_name)
            return False
        temp = session.upload(local, row.file_name)
        # Point of no return: from here the outcome may be unknown if we die.
        self.store.set_file_status(row.id, LedgerStatus.UPLOADING, now, attempt=True)
        session.commit(temp, row.file_name)
        self.store.mark_delivered(row, now, production)
        self.archive(row.destination, row.file_name, LedgerStatus.DELIVERED)
        report.add_delivered(row)
        log.info("file_delivered", destination=row.destination, file=row.file_name, size=row.size)
        return True
