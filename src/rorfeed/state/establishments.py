"""The establishments' rows: kill-switches (GLOBAL's too) and the source's unreachable streak.

(The row's applied snapshot is the ledger's: see `rorfeed.state.ledger`.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from rorfeed.model import GLOBAL
from rorfeed.state.audit import Audit
from rorfeed.state.schema import establishments_t


class Establishments:
    """The establishments table, within one transaction (audited through `audit`)."""

    def __init__(self, conn: Connection, audit: Audit) -> None:
        self._conn = conn
        self._audit = audit

    def ensure(self, finess: str) -> None:
        """Create the row of `finess` (or GLOBAL) if it has none yet."""
        conn = self._conn
        exists = conn.execute(
            select(establishments_t.c.finess).where(establishments_t.c.finess == finess)
        ).first()
        if exists is None:
            conn.execute(
                insert(establishments_t).values(
                    finess=finess, killswitch=False, killswitch_reason="", unreachable_streak=0
                )
            )

    def killswitches(self) -> dict[str, bool]:
        return {r.finess: bool(r.killswitch) for r in self._conn.execute(select(establishments_t))}

    def killswitch_details(self) -> dict[str, tuple[bool, datetime | None, str]]:
        """finess (or GLOBAL) → (on, since, reason)."""
        return {
            r.finess: (bool(r.killswitch), r.killswitch_since, r.killswitch_reason)
            for r in self._conn.execute(select(establishments_t))
        }

    def set_killswitch(self, finess: str, on: bool, reason: str, actor: str, now: datetime) -> bool:
        """Turn the kill-switch of `finess` (or GLOBAL) on or off, with its audit entry.

        Returns False (and writes nothing) when it already was in that position. Turning it
        off starts the establishment's counts afresh.
        """
        conn = self._conn
        self.ensure(finess)
        current = conn.execute(
            select(establishments_t.c.killswitch).where(establishments_t.c.finess == finess)
        ).scalar_one()
        if bool(current) == on:
            return False
        values: dict[str, Any] = {
            "killswitch": on,
            "killswitch_since": now,
            "killswitch_reason": reason,
        }
        if not on:
            values["unreachable_streak"] = 0
        conn.execute(
            update(establishments_t).where(establishments_t.c.finess == finess).values(**values)
        )
        self._audit.add(
            now,
            actor,
            "killswitch",
            None if finess == GLOBAL else finess,
            None,
            None,
            "on" if current else "off",
            "on" if on else "off",
            reason,
        )
        return True

    def source_unreachable(self, finess: str, down: bool) -> int:
        """Count a cycle whose source was (not) reachable; return the current streak."""
        conn = self._conn
        self.ensure(finess)
        value = establishments_t.c.unreachable_streak + 1 if down else 0
        conn.execute(
            update(establishments_t)
            .where(establishments_t.c.finess == finess)
            .values(unreachable_streak=value)
        )
        streak = conn.execute(
            select(establishments_t.c.unreachable_streak).where(establishments_t.c.finess == finess)
        ).scalar_one()
        return int(streak)
