"""The cycles' record: one row per cycle run, its outcome and counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from rorfeed.model import CycleDetail, CycleOutcome
from rorfeed.state.schema import cycles_t


@dataclass(frozen=True)
class CycleRow:
    cycle_time: datetime
    started_at: datetime
    finished_at: datetime | None
    outcome: CycleOutcome
    sent: int
    rejected: int
    detail: CycleDetail


class Cycles:
    """The cycles table, within one transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def record(
        self,
        cycle_time: datetime,
        started_at: datetime,
        finished_at: datetime,
        outcome: CycleOutcome,
        sent: int,
        rejected: int,
        detail: CycleDetail,
    ) -> None:
        self._conn.execute(
            insert(cycles_t).values(
                cycle_time=cycle_time,
                started_at=started_at,
                finished_at=finished_at,
                outcome=outcome,
                sent=sent,
                rejected=rejected,
                detail=detail.to_json(),
            )
        )

    def recent(self, limit: int = 10) -> list[CycleRow]:
        """The last `limit` cycles, newest first."""
        q = select(cycles_t).order_by(cycles_t.c.id.desc()).limit(limit)
        return [
            CycleRow(
                r.cycle_time,
                r.started_at,
                r.finished_at,
                CycleOutcome(r.outcome),
                r.sent,
                r.rejected,
                CycleDetail.from_json(r.detail),
            )
            for r in self._conn.execute(q)
        ]
