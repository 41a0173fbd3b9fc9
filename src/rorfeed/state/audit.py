"""The audit trail: append-only entries, and reading them back (newest first)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from rorfeed.state.schema import audit_t


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    finess: str | None
    ror_id: str | None
    local_code: str | None
    previous: str | None
    new: str | None
    reason: str


class Audit:
    """The audit trail, within one transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(
        self,
        at: datetime,
        actor: str,
        action: str,
        finess: str | None,
        ror_id: str | None,
        local_code: str | None,
        previous: str | None,
        new: str | None,
        reason: str,
    ) -> AuditEntry:
        entry = AuditEntry(at, actor, action, finess, ror_id, local_code, previous, new, reason)
        self._conn.execute(insert(audit_t).values(**entry.__dict__))
        return entry

    def add_many(self, entries: Sequence[AuditEntry]) -> None:
        """Append `entries` in one batched statement."""
        self._conn.execute(insert(audit_t), [e.__dict__ for e in entries])

    def history(self, ror_or_local: str | None = None, limit: int = 100) -> list[AuditEntry]:
        q = select(audit_t).order_by(audit_t.c.id.desc()).limit(limit)
        if ror_or_local is not None:
            q = q.where((audit_t.c.ror_id == ror_or_local) | (audit_t.c.local_code == ror_or_local))
        return [
            AuditEntry(
                r.at,
                r.actor,
                r.action,
                r.finess,
                r.ror_id,
                r.local_code,
                r.previous,
                r.new,
                r.reason,
            )
            for r in self._conn.execute(q)
        ]
