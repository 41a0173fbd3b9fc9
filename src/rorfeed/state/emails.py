"""The queue of e-mails to the bed-management cell: queued, claimed by one sender, settled."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from rorfeed.model import Audience
from rorfeed.state.schema import emails_t

# A claim older than this is a crashed sender's: another process takes the e-mail over.
EMAIL_CLAIM_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class EmailRow:
    id: int
    created_at: datetime
    subject: str
    body: str
    attempts: int
    audience: Audience = Audience.CELL


class Emails:
    """The e-mail queue, within one transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def queue(
        self, subject: str, body: str, now: datetime, audience: Audience = Audience.CELL
    ) -> None:
        self._conn.execute(
            insert(emails_t).values(
                created_at=now,
                subject=subject,
                body=body,
                attempts=0,
                last_error="",
                audience=audience.value,
            )
        )

    def pending(self) -> list[EmailRow]:
        q = select(emails_t).where(emails_t.c.sent_at.is_(None)).order_by(emails_t.c.id)
        return [
            EmailRow(
                r.id, r.created_at, r.subject, r.body, r.attempts, Audience(r.audience or "cell")
            )
            for r in self._conn.execute(q)
        ]

    def claim(self, email_id: int, now: datetime) -> bool:
        """Take the e-mail for sending; False when sent, or being sent by another process."""
        result = self._conn.execute(
            update(emails_t)
            .where(
                emails_t.c.id == email_id,
                emails_t.c.sent_at.is_(None),
                emails_t.c.claimed_at.is_(None)
                | (emails_t.c.claimed_at < now - EMAIL_CLAIM_TIMEOUT),
            )
            .values(claimed_at=now)
        )
        return result.rowcount == 1

    def sent(self, email_id: int, now: datetime) -> None:
        self._conn.execute(
            update(emails_t)
            .where(emails_t.c.id == email_id)
            .values(sent_at=now, attempts=emails_t.c.attempts + 1, last_error="")
        )

    def failed(self, email_id: int, error: str) -> None:
        self._conn.execute(
            update(emails_t)
            .where(emails_t.c.id == email_id)
            .values(attempts=emails_t.c.attempts + 1, last_error=error, claimed_at=None)
        )
