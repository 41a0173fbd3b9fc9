"""The cycles' record: one row per cycle run, its outcome and counts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from rorfeed.state.schema import cycles_t


@dataclass(frozen=True)
class CycleRow:
    cycle_time: datetime
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    sent: int
    rejected: int
    detail: dict[str, Any]


class Cycles:
    """The cycles table, within one transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def record(
        self,
        cycle_time: datetime,
        started_at: datetime,
        finished_at: datetime,
        outcome: str,
        sent: int,
        rejected: int,
        detail: dict[str, Any],
    ) -> None:
        self._conn.execute(
            insert(cycles_t).values(
                cycle_time=cycle_time,
                started_at=started_at,
                finished_at=finished_at,
                outcome=outcome,
                sent=sent,
                rejected=rejected,
                detail=json.dumps(detail, ensure_ascii=False, sort_keys=True),
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
                r.outcome,
                r.sent,
                r.rejected,
                json.loads(r.detail),
            )
            for r in self._conn.execute(q)
        ]
