"""The outbox: atomic files waiting for delivery, the delivery ledger's rules, the archive.

Layout under `work_dir`: `outbox/<destination>/<file>` waiting, `archive/<destination>/<status>/
<file>` done (delivered, superseded, expired, uncertain), removed after `archive_days`.

Never twice, never stale, never older-after-newer (SPEC §7):
- before anything is sent, every pending file older than the newest file of the same
  establishment (per destination) is archived as *superseded*, and one older than
  `max_file_age_minutes` as *expired*;
- a file is uploaded under a temporary name first; only then is it marked `uploading` in the
  ledger, and renamed to its final name. A crash (or a broken connection) after that point
  leaves an *unknown outcome*, settled before the next delivery: the final name on the server
  with the right size → delivered; otherwise → uncertain, never sent again (the operator may
  already have taken it). A newer file follows anyway.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from rorfeed.errors import TransportError
from rorfeed.state import (
    DELIVERED,
    EXPIRED,
    PENDING,
    SUPERSEDED,
    UNCERTAIN,
    UPLOADING,
    LedgerRow,
    Store,
)
from rorfeed.transports.base import Session, Transport

log = structlog.get_logger("rorfeed.outbox")

RETRY_BACKOFF_SECONDS = (1.0, 2.0, 4.0)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the whole file or nothing, even on a crash."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class DeliveryReport:
    destination: str
    delivered: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    error: str = ""
    error_cause: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.error


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
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / file_name
        write_atomic(path, data)
        self.store.add_file(destination, file_name, snapshot_id, finess, cycle_time, len(data), now)
        return path

    def archive(self, destination: str, file_name: str, status: str) -> None:
        src = self.folder(destination) / file_name
        target_dir = self.work_dir / "archive" / destination / status
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
        newest: dict[str, datetime] = {}
        for row in self.store.files(destination, (PENDING, UPLOADING, DELIVERED, UNCERTAIN)):
            newest[row.finess] = max(newest.get(row.finess, row.cycle_time), row.cycle_time)
        keep = []
        for row in rows:
            if row.cycle_time < newest[row.finess]:
                status, bucket = SUPERSEDED, report.superseded
            elif row.cycle_time < now - max_age:
                status, bucket = EXPIRED, report.expired
            else:
                keep.append(row)
                continue
            self.store.set_file_status(row.id, status, now)
            self.archive(destination, row.file_name, status)
            bucket.append(row.file_name)
            log.warning("file_not_sent", destination=destination, file=row.file_name, status=status)
        return keep

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
    ) -> DeliveryReport:
        """Deliver every file waiting for `destination`, within `timeout` seconds in all."""
        report = DeliveryReport(destination)
        deadline = time.monotonic() + timeout
        unknown = self.store.files(destination, (UPLOADING,))
        pending = self._drop_stale(
            destination, self.store.files(destination, (PENDING,)), clock(), max_age, report
        )
        if not unknown and not pending:
            return report
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TransportError(f"{destination}: delivery did not finish in {timeout}s")
                with transport.open(remaining) as session:
                    for row in unknown:
                        self._settle(session, row, clock(), production, report)
                    unknown = []
                    while pending:
                        row = pending[0]
                        self._send(session, row, clock(), production, report)
                        pending.pop(0)
                return report
            except TransportError as exc:
                attempt += 1
                report.error, report.error_cause = str(exc), exc.cause
                wait = RETRY_BACKOFF_SECONDS[min(attempt - 1, len(RETRY_BACKOFF_SECONDS) - 1)]
                log.warning(
                    "delivery_attempt_failed",
                    destination=destination,
                    attempt=attempt,
                    cause=exc.cause,
                    error=str(exc),
                )
                if attempt >= len(RETRY_BACKOFF_SECONDS) or time.monotonic() + wait >= deadline:
                    report.failed = [r.file_name for r in pending]
                    return report
                sleep(wait)
                # Files left mid-way are `uploading` now: settle them on the new session.
                unknown = self.store.files(destination, (UPLOADING,))
                pending = [r for r in pending if r.id not in {u.id for u in unknown}]

    def _settle(
        self,
        session: Session,
        row: LedgerRow,
        now: datetime,
        production: bool,
        report: DeliveryReport,
    ) -> None:
        size = session.size_of(row.file_name)
        if size == row.size:
            self.store.mark_delivered(row, now, production)
            self.archive(row.destination, row.file_name, DELIVERED)
            report.delivered.append(row.file_name)
            log.info(
                "delivery_settled",
                destination=row.destination,
                file=row.file_name,
                status=DELIVERED,
            )
        else:
            self.store.set_file_status(row.id, UNCERTAIN, now, error="outcome unknown")
            self.archive(row.destination, row.file_name, UNCERTAIN)
            report.uncertain.append(row.file_name)
            log.warning(
                "delivery_settled",
                destination=row.destination,
                file=row.file_name,
                status=UNCERTAIN,
                remote_size=size,
                size=row.size,
            )

    def _send(
        self,
        session: Session,
        row: LedgerRow,
        now: datetime,
        production: bool,
        report: DeliveryReport,
    ) -> None:
        local = self.folder(row.destination) / row.file_name
        if not local.exists():
            # Lost from the outbox (removed by hand?): nothing to send, say so once.
            self.store.set_file_status(row.id, EXPIRED, now, error="missing from the outbox")
            report.expired.append(row.file_name)
            log.error("outbox_file_missing", destination=row.destination, file=row.file_name)
            return
        temp = session.upload(local, row.file_name)
        # Point of no return: from here the outcome may be unknown if we die.
        self.store.set_file_status(row.id, UPLOADING, now, attempt=True)
        session.commit(temp, row.file_name)
        self.store.mark_delivered(row, now, production)
        self.archive(row.destination, row.file_name, DELIVERED)
        report.delivered.append(row.file_name)
        log.info("file_delivered", destination=row.destination, file=row.file_name, size=row.size)
