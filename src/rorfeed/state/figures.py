"""What the metrics collector exposes of the state, read in one transaction at each scrape."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from rorfeed.model import LedgerStatus
from rorfeed.state.anomalies import Anomalies
from rorfeed.state.audit import Audit
from rorfeed.state.schema import emails_t, establishments_t, files_t, units_t


@dataclass(frozen=True)
class StateFigures:
    """Plain figures; the empty default is what a store with nothing in it gives."""

    # (finess, mode, how many) of the units in the mapping
    units: list[tuple[str, str, int]] = field(default_factory=list)
    # (finess or GLOBAL, kill-switch on, unreachable streak) of each establishment's row
    establishments: list[tuple[str, bool, int]] = field(default_factory=list)
    # (destination, how many) of the files waiting in the outbox
    outbox: list[tuple[str, int]] = field(default_factory=list)
    # (finess, destination, when) of each one's last file delivered
    delivered: list[tuple[str, str, datetime | None]] = field(default_factory=list)
    emails_waiting: int = 0
    # (finess, open anomaly reports, the oldest one's time)
    anomalies: list[tuple[str, int, datetime]] = field(default_factory=list)


class Figures:
    """The metrics' read of the state, within one transaction (read-only selects)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def read(self) -> StateFigures:
        conn = self._conn
        units = conn.execute(
            select(units_t.c.finess, units_t.c.mode, func.count())
            .where(units_t.c.in_mapping.is_(True))
            .group_by(units_t.c.finess, units_t.c.mode)
        ).all()
        establishments = conn.execute(
            select(
                establishments_t.c.finess,
                establishments_t.c.killswitch,
                establishments_t.c.unreachable_streak,
            )
        ).all()
        outbox = conn.execute(
            select(files_t.c.destination, func.count())
            .where(files_t.c.status.in_((LedgerStatus.PENDING, LedgerStatus.UPLOADING)))
            .group_by(files_t.c.destination)
        ).all()
        delivered = conn.execute(
            select(files_t.c.finess, files_t.c.destination, func.max(files_t.c.updated_at))
            .where(files_t.c.status == LedgerStatus.DELIVERED)
            .group_by(files_t.c.finess, files_t.c.destination)
        ).all()
        emails = conn.execute(
            select(func.count()).select_from(emails_t).where(emails_t.c.sent_at.is_(None))
        ).scalar_one()
        return StateFigures(
            units=[(finess, mode, int(n)) for finess, mode, n in units],
            establishments=[
                (finess, bool(on), int(streak or 0)) for finess, on, streak in establishments
            ],
            outbox=[(dest, int(n)) for dest, n in outbox],
            delivered=[(finess, dest, at) for finess, dest, at in delivered],
            emails_waiting=int(emails),
            anomalies=Anomalies(conn, Audit(conn)).open_by_establishment(),
        )
