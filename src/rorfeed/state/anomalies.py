"""Anomalies reported by people on a unit's page (SPEC §10.2), within one transaction.

A report and its audit entry are written together, and so are its closing and its entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from rorfeed.model import AnomalyDecision, BedCounts
from rorfeed.state.audit import Audit, AuditEntry
from rorfeed.state.schema import anomaly_reports_t

ACTION_REPORT = "anomaly_report"
ACTION_CLOSE = "anomaly_closed"


@dataclass(frozen=True)
class AnomalyReport:
    id: int
    finess: str
    ror_id: str
    at: datetime
    author: str
    text: str
    counts: BedCounts | None  # what the author believes right, if given
    closed_at: datetime | None = None
    closed_by: str | None = None
    decision: AnomalyDecision | None = None
    comment: str | None = None

    @property
    def open(self) -> bool:
        return self.closed_at is None


class Anomalies:
    def __init__(self, conn: Connection, audit: Audit) -> None:
        self._conn = conn
        self._audit = audit

    def report(
        self,
        finess: str,
        ror_id: str,
        local_code: str,
        text: str,
        counts: BedCounts | None,
        author: str,
        at: datetime,
    ) -> AnomalyReport:
        values: dict[str, int | None] = {"installed": None, "closed": None, "available": None}
        if counts is not None:
            values = {
                "installed": counts.installed,
                "closed": counts.closed,
                "available": counts.available,
            }
        result = self._conn.execute(
            insert(anomaly_reports_t).values(
                finess=finess, ror_id=ror_id, at=at, author=author, text=text, **values
            )
        )
        key = result.inserted_primary_key
        assert key is not None  # noqa: S101 - an insert always has one
        report = AnomalyReport(int(key[0]), finess, ror_id, at, author, text, counts)
        believed = "" if counts is None else f" (believed right: {counts.installed}/"
        believed += "" if counts is None else f"{counts.closed}/{counts.available})"
        self._audit.add_many(
            [
                AuditEntry(
                    at,
                    author,
                    ACTION_REPORT,
                    finess,
                    ror_id,
                    local_code,
                    None,
                    f"report {report.id}",
                    text + believed,
                )
            ]
        )
        return report

    def close(
        self,
        report: AnomalyReport,
        local_code: str,
        decision: AnomalyDecision,
        comment: str,
        by: str,
        at: datetime,
    ) -> bool:
        """Close `report`; False when someone closed it meanwhile (nothing written)."""
        t = anomaly_reports_t
        done = self._conn.execute(
            update(t)
            .where(t.c.id == report.id, t.c.closed_at.is_(None))
            .values(closed_at=at, closed_by=by, decision=decision.value, comment=comment)
        )
        if done.rowcount != 1:
            return False
        self._audit.add_many(
            [
                AuditEntry(
                    at,
                    by,
                    ACTION_CLOSE,
                    report.finess,
                    report.ror_id,
                    local_code,
                    f"report {report.id}",
                    decision.value,
                    comment,
                )
            ]
        )
        return True

    def get(self, report_id: int) -> AnomalyReport | None:
        row = self._conn.execute(
            select(anomaly_reports_t).where(anomaly_reports_t.c.id == report_id)
        ).first()
        return None if row is None else _report(row)

    def reports(
        self, finess: str | None = None, ror_id: str | None = None, *, only_open: bool = False
    ) -> list[AnomalyReport]:
        """Reports, newest first."""
        t = anomaly_reports_t
        q = select(t).order_by(t.c.id.desc())
        if finess is not None:
            q = q.where(t.c.finess == finess)
        if ror_id is not None:
            q = q.where(t.c.ror_id == ror_id)
        if only_open:
            q = q.where(t.c.closed_at.is_(None))
        return [_report(r) for r in self._conn.execute(q)]

    def open_by_establishment(self) -> list[tuple[str, int, datetime]]:
        """(finess, open reports, the oldest one's time), for the metrics."""
        t = anomaly_reports_t
        rows = self._conn.execute(
            select(t.c.finess, func.count(), func.min(t.c.at))
            .where(t.c.closed_at.is_(None))
            .group_by(t.c.finess)
        ).all()
        return [(str(f), int(n), oldest) for f, n, oldest in rows]


def _report(row: object) -> AnomalyReport:
    m = row._mapping  # type: ignore[attr-defined]
    counts = (
        None
        if m["installed"] is None
        else BedCounts(int(m["installed"]), int(m["closed"]), int(m["available"]))
    )
    return AnomalyReport(
        int(m["id"]),
        str(m["finess"]),
        str(m["ror_id"]),
        m["at"],
        str(m["author"]),
        str(m["text"]),
        counts,
        m["closed_at"],
        m["closed_by"],
        None if m["decision"] is None else AnomalyDecision(m["decision"]),
        m["comment"],
    )
