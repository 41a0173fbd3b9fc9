"""Snapshots and the delivery ledger: what each file carries, where it stands, and the units'
last values sent that its delivery makes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from rorfeed.model import BedCounts, LedgerStatus, Mode
from rorfeed.state.batched import executemany
from rorfeed.state.establishments import Establishments
from rorfeed.state.schema import establishments_t, files_t, snapshots_t, units_t


@dataclass(frozen=True)
class LedgerRow:
    id: int
    destination: str
    file_name: str
    snapshot_id: int
    finess: str
    cycle_time: datetime
    size: int
    status: str  # a LedgerStatus's value, as stored
    attempts: int


# A snapshot's counts as stored: ROR fiche id → [installed, closed, available].
SnapshotCounts = dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class Applied:
    """An establishment's applied snapshot: the last values sent of the units it carries."""

    snapshot_id: int
    cycle_time: datetime
    counts: SnapshotCounts


def _snapshot_json(counts: dict[str, BedCounts]) -> str:
    # In the cycle's order (the mapping's): no reader depends on the order, and sorting
    # 100,000 ids took 0.14 s.
    return json.dumps({k: [c.installed, c.closed, c.available] for k, c in counts.items()})


class Ledger:
    """Snapshots and the delivery ledger, within one transaction."""

    def __init__(self, conn: Connection, establishments: Establishments) -> None:
        self._conn = conn
        self._establishments = establishments

    def applied(self, finess: str | None = None) -> dict[str, Applied]:
        """finess → its applied snapshot (every establishment that has one, or just `finess`)."""
        e, s = establishments_t.c, snapshots_t.c
        q = select(e.finess, s.id, s.cycle_time, s.counts).join(
            snapshots_t, s.id == e.applied_snapshot_id
        )
        if finess is not None:
            q = q.where(e.finess == finess)
        return {
            f: Applied(int(sid), at, json.loads(counts))
            for f, sid, at, counts in self._conn.execute(q)
        }

    def add_snapshot_once(
        self, finess: str, cycle_time: datetime, counts: dict[str, BedCounts]
    ) -> int | None:
        """A new snapshot of `finess` at `cycle_time` (its id), unless files of that cycle
        time were written already.

        A cycle time can run twice — a daemon killed mid-cycle catches the same fire time up
        when restarted, a clock set back repeats a time: a file name is written once, so the
        files an earlier run staged stay as they are (None). An earlier snapshot with no file
        yet takes the new counts.
        """
        conn = self._conn
        payload = _snapshot_json(counts)
        earlier = conn.execute(
            select(snapshots_t.c.id).where(
                snapshots_t.c.finess == finess, snapshots_t.c.cycle_time == cycle_time
            )
        ).scalar_one_or_none()
        if earlier is None:
            result = conn.execute(
                insert(snapshots_t).values(finess=finess, cycle_time=cycle_time, counts=payload)
            )
            key = result.inserted_primary_key
            assert key is not None  # noqa: S101 - an insert always has one
            return int(key[0])
        staged = conn.execute(
            select(func.count()).select_from(files_t).where(files_t.c.snapshot_id == earlier)
        ).scalar_one()
        if staged:
            return None
        conn.execute(update(snapshots_t).where(snapshots_t.c.id == earlier).values(counts=payload))
        return int(earlier)

    def add_file(
        self,
        destination: str,
        file_name: str,
        snapshot_id: int,
        finess: str,
        cycle_time: datetime,
        size: int,
        now: datetime,
    ) -> None:
        self._conn.execute(
            insert(files_t).values(
                destination=destination,
                file_name=file_name,
                snapshot_id=snapshot_id,
                finess=finess,
                cycle_time=cycle_time,
                size=size,
                status=LedgerStatus.PENDING,
                attempts=0,
                last_error="",
                updated_at=now,
            )
        )

    def files(self, destination: str, statuses: tuple[str, ...]) -> list[LedgerRow]:
        q = (
            select(files_t)
            .where(files_t.c.destination == destination, files_t.c.status.in_(statuses))
            .order_by(files_t.c.cycle_time, files_t.c.file_name)
        )
        return [
            LedgerRow(
                r.id,
                r.destination,
                r.file_name,
                r.snapshot_id,
                r.finess,
                r.cycle_time,
                r.size,
                r.status,
                r.attempts,
            )
            for r in self._conn.execute(q)
        ]

    def newest_cycle_times(
        self, destination: str, statuses: tuple[str, ...]
    ) -> dict[str, datetime]:
        """finess → the cycle time of its newest file for `destination` in `statuses`."""
        q = (
            select(files_t.c.finess, func.max(files_t.c.cycle_time))
            .where(files_t.c.destination == destination, files_t.c.status.in_(statuses))
            .group_by(files_t.c.finess)
        )
        # max() keeps its argument's type: aware UTC times
        return dict(self._conn.execute(q).all())

    def purge_before(self, before: datetime) -> tuple[int, int]:
        """Forget the ledger rows of files done before `before`, then the snapshots no file
        and no establishment refers to; return how many of each.

        Without it the state grows every hour for ever (a 10,000-unit snapshot is some
        300 kB), and every delivery reads a longer ledger. A file still waiting or being
        uploaded keeps its row and its snapshot, whatever its age; so does the snapshot that
        gives units their last values sent.
        """
        s = LedgerStatus
        done = (s.DELIVERED, s.UNCERTAIN, s.SUPERSEDED, s.EXPIRED, s.WITHHELD)
        conn = self._conn
        files = conn.execute(
            delete(files_t).where(files_t.c.status.in_(done), files_t.c.cycle_time < before)
        ).rowcount
        applied = select(establishments_t.c.applied_snapshot_id).where(
            establishments_t.c.applied_snapshot_id.is_not(None)
        )
        snapshots = conn.execute(
            delete(snapshots_t).where(
                snapshots_t.c.cycle_time < before,
                snapshots_t.c.id.not_in(applied),
                snapshots_t.c.id.not_in(select(files_t.c.snapshot_id)),
            )
        ).rowcount
        return files, snapshots

    def set_file_status(
        self, file_id: int, status: str, now: datetime, error: str = "", attempt: bool = False
    ) -> None:
        values: dict[str, Any] = {"status": status, "updated_at": now, "last_error": error}
        if attempt:
            values["attempts"] = files_t.c.attempts + 1
        self._conn.execute(update(files_t).where(files_t.c.id == file_id).values(**values))

    def mark_delivered(self, row: LedgerRow, now: datetime, production: bool) -> None:
        """Record a delivery; for a production destination, the units' last values sent."""
        self._conn.execute(
            update(files_t)
            .where(files_t.c.id == row.id)
            .values(status=LedgerStatus.DELIVERED, updated_at=now, last_error="")
        )
        if production:
            self._apply_snapshot(row.finess, row.snapshot_id, row.cycle_time)

    def _apply_snapshot(self, finess: str, snapshot_id: int, cycle_time: datetime) -> None:
        """Make a delivered snapshot's values the last values sent of the units it carries.

        The newest delivered snapshot becomes the establishment's applied one: one row
        written, whatever the number of units. Only the units the previous applied snapshot
        carried and this one does not (rejected or manual this hour) get that snapshot's
        values in their own columns. A delivery older than the applied snapshot (a file that
        waited in the outbox) gives its values only to the units the applied one lacks, and
        only where they are newer: never does an older delivery overwrite newer values.
        """
        conn = self._conn
        self._establishments.ensure(finess)
        # FOR UPDATE: two processes delivering two hours to two destinations at once must not
        # both read the same applied snapshot and the older one win (PostgreSQL; a SQLite
        # transaction already holds the write lock from its start).
        applied_id = conn.execute(
            select(establishments_t.c.applied_snapshot_id)
            .where(establishments_t.c.finess == finess)
            .with_for_update()
        ).scalar_one()
        if applied_id == snapshot_id:
            return  # the same file in another format, or for another destination
        current = self.applied(finess).get(finess)
        counts: SnapshotCounts = json.loads(
            conn.execute(
                select(snapshots_t.c.counts).where(snapshots_t.c.id == snapshot_id)
            ).scalar_one()
        )
        if current is not None and cycle_time < current.cycle_time:
            self._write_last_values(
                finess, {r: v for r, v in counts.items() if r not in current.counts}, cycle_time
            )
            return
        if current is not None:
            self._write_last_values(
                finess,
                {r: v for r, v in current.counts.items() if r not in counts},
                current.cycle_time,
            )
        conn.execute(
            update(establishments_t)
            .where(establishments_t.c.finess == finess)
            .values(applied_snapshot_id=snapshot_id)
        )

    def _write_last_values(self, finess: str, counts: SnapshotCounts, cycle_time: datetime) -> None:
        """Units' own last values, where `cycle_time` is newer than what they hold."""
        if not counts:
            return
        # One batched statement: a 10,000-unit file is one round trip, not 10,000.
        executemany(
            self._conn,
            update(units_t)
            .where(
                units_t.c.finess == finess,
                units_t.c.ror_id == bindparam("b_ror_id"),
                (units_t.c.last_counts_at.is_(None)) | (units_t.c.last_counts_at <= cycle_time),
            )
            .values(
                last_installed=bindparam("b_installed"),
                last_closed=bindparam("b_closed"),
                last_available=bindparam("b_available"),
                last_counts_at=cycle_time,
            ),
            [
                {"b_ror_id": r, "b_installed": i, "b_closed": c, "b_available": a}
                for r, (i, c, a) in counts.items()
            ],
        )

    def unsendable_ror_ids(self, finess: str) -> set[str]:
        """The units of `finess` that must not be sent now (manual, or out of the mapping)."""
        q = select(units_t.c.ror_id).where(
            units_t.c.finess == finess,
            (units_t.c.mode != Mode.AUTO.value)
            | (units_t.c.declared_mode != Mode.AUTO.value)
            | units_t.c.in_mapping.is_(False),
        )
        return set(self._conn.execute(q).scalars())

    def snapshot_ror_ids(self, snapshot_id: int) -> set[str]:
        counts = self._conn.execute(
            select(snapshots_t.c.counts).where(snapshots_t.c.id == snapshot_id)
        ).scalar_one()
        return set(json.loads(counts))

    def outbox_counts(self) -> dict[str, int]:
        q = (
            select(files_t.c.destination, func.count())
            .where(files_t.c.status.in_((LedgerStatus.PENDING, LedgerStatus.UPLOADING)))
            .group_by(files_t.c.destination)
        )
        return {d: int(n) for d, n in self._conn.execute(q)}
