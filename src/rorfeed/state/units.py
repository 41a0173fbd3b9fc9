"""The units: kept in line with the mapping, their modes, streaks and last verdicts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from rorfeed.errors import StateError
from rorfeed.model import ACTOR_RORFEED, BedCounts, MappedUnit, Mode, Priority
from rorfeed.state.audit import Audit, AuditEntry
from rorfeed.state.batched import executemany
from rorfeed.state.ledger import Applied, Ledger
from rorfeed.state.schema import units_t


@dataclass(frozen=True)
class UnitState:
    finess: str
    ror_id: str
    local_code: str
    label: str
    declared_mode: Mode
    in_mapping: bool
    mode: Mode
    mode_since: datetime
    mode_reason: str
    streak: int
    last_rules: tuple[str, ...]
    last_accepted_installed: int | None
    last_counts: BedCounts | None
    last_counts_at: datetime | None
    priority: Priority = Priority.OTHER
    id_externe_synchro: str = ""  # as the mapping writes it; "" = the local code

    @property
    def sync_code(self) -> str:
        """The code of the unit's place in the national ROR (SPEC §4)."""
        return self.id_externe_synchro or self.local_code

    @property
    def sendable(self) -> bool:
        return self.in_mapping and self.declared_mode is Mode.AUTO and self.mode is Mode.AUTO


# Kept apart from UnitState: every cycle reads it for every unit, and full UnitStates (times
# converted, enums built, last values joined from the applied snapshot) cost 0.2 s per 10,000.
@dataclass(frozen=True, slots=True)
class FeedState:
    """What a cycle needs of a unit's state: a light read of the units table (no times)."""

    sendable: bool
    streak: int
    last_rules: str  # comma-separated, as stored
    last_accepted_installed: int | None


def _unit_state(row: Any, applied: Applied | None) -> UnitState:
    if applied is not None and (sent := applied.counts.get(row.ror_id)) is not None:
        counts: BedCounts | None = BedCounts(*sent)
        counts_at = applied.cycle_time
    else:
        counts = (
            BedCounts(row.last_installed, row.last_closed, row.last_available)
            if row.last_installed is not None
            else None
        )
        counts_at = row.last_counts_at
    return UnitState(
        finess=row.finess,
        ror_id=row.ror_id,
        local_code=row.local_code,
        label=row.label,
        declared_mode=Mode(row.declared_mode),
        in_mapping=row.in_mapping,
        mode=Mode(row.mode),
        mode_since=row.mode_since,
        mode_reason=row.mode_reason,
        streak=row.streak,
        last_rules=tuple(r for r in row.last_rules.split(",") if r),
        last_accepted_installed=row.last_accepted_installed,
        last_counts=counts,
        last_counts_at=counts_at,
        priority=Priority(row.priority),
        id_externe_synchro=row.id_externe_synchro,
    )


# Where each column sits in a `_feed_query` row; `_MORE` is the first of its `more` columns.
# Rows are read by position: a Row's attribute costs ten times its index.
_ROR_ID, _IN_MAPPING, _DECLARED_MODE, _MODE, _STREAK, _LAST_RULES, _LAST_INSTALLED, _MORE = range(8)


def _feed_query(finess: str, *more: ColumnElement[Any]) -> Select[Any]:
    """The units of `finess` as `_feed_states` reads them, then any `more` columns."""
    c = units_t.c
    columns = (c.ror_id, c.in_mapping, c.declared_mode, c.mode, c.streak, c.last_rules)
    return select(*columns, c.last_accepted_installed, *more).where(c.finess == finess)


def _feed_states(rows: Iterable[Sequence[Any]]) -> dict[str, FeedState]:
    auto = Mode.AUTO.value
    return {
        r[_ROR_ID]: FeedState(
            bool(r[_IN_MAPPING]) and r[_DECLARED_MODE] == auto and r[_MODE] == auto,
            r[_STREAK],
            r[_LAST_RULES],
            r[_LAST_INSTALLED],
        )
        for r in rows
    }


class Units:
    """The units table, within one transaction (audited through `audit`; last values sent
    read from `ledger`'s applied snapshots)."""

    def __init__(self, conn: Connection, audit: Audit, ledger: Ledger) -> None:
        self._conn = conn
        self._audit = audit
        self._ledger = ledger

    def states(self, finess: str | None = None) -> list[UnitState]:
        """Every stored unit (of `finess`, if given), by establishment then ROR id."""
        q = select(units_t).order_by(units_t.c.finess, units_t.c.ror_id)
        if finess is not None:
            q = q.where(units_t.c.finess == finess)
        applied = self._ledger.applied(finess)
        return [_unit_state(r, applied.get(r.finess)) for r in self._conn.execute(q)]

    def feed_states(self, finess: str) -> dict[str, FeedState]:
        """ROR id → what the cycle needs to judge and record the unit, for every stored unit
        of `finess`. Only plain columns: reading 10,000 full `UnitState`s (times converted,
        enums built) costs a cycle about 0.2 s."""
        return _feed_states(self._conn.execute(_feed_query(finess)))

    def sync_mapping(
        self,
        finess: str,
        units: tuple[MappedUnit, ...],
        now: datetime,
        *,
        actor: str = ACTOR_RORFEED,
        reason: str | None = None,
    ) -> tuple[list[AuditEntry], dict[str, FeedState]]:
        """Bring the units table in line with the mapping; audit each change as `actor`
        (`rorfeed` when a cycle reads the file; the account that confirmed a change on the page
        or with `rorfeed mapping apply`, with its `reason`).

        Returns the audit entries written (removed units and re-declarations to manual are
        what the bed-management cell must hear about) and then `feed_states`, read in the
        same transaction. Every change to the units table is audited, so an hour without
        audit entries changed nothing: the states come from the comparison's own read (at
        100,000 units a second read of the table is about 0.4 s).
        """
        conn = self._conn
        entries: list[AuditEntry] = []
        added: list[dict[str, Any]] = []
        c = units_t.c
        # Only plain columns: no time to convert for 10,000 unchanged units.
        columns = (c.local_code, c.label, c.priority, c.id_externe_synchro)
        known = {r[0]: r for r in conn.execute(_feed_query(finess, *columns)).all()}
        seen = {u.ror_id for u in units}

        def entry(
            action: str, ror_id: str, code: str, previous: str | None, new: str, why: str
        ) -> AuditEntry:
            why = why if reason is None else f"{reason} ({why})"
            return AuditEntry(now, actor, action, finess, ror_id, code, previous, new, why)

        for u in units:
            old = known.get(u.ror_id)
            # The common case first: a unit as it was (StrEnum ==). By position: by
            # attribute, these four reads took 0.05 s over 10,000 units.
            if (
                old is not None
                and old[_IN_MAPPING]
                and old[_MORE] == u.local_code
                and old[_MORE + 1] == u.label
                and old[_MORE + 2] == u.priority
                and old[_MORE + 3] == u.id_externe_synchro
                and old[_DECLARED_MODE] == u.declared_mode
            ):
                continue
            if old is None:
                added.append(
                    {
                        "finess": finess,
                        "ror_id": u.ror_id,
                        "local_code": u.local_code,
                        "label": u.label,
                        "declared_mode": u.declared_mode.value,
                        "in_mapping": True,
                        "mode": u.declared_mode.value,
                        "mode_since": now,
                        "mode_reason": "ajoutée au mapping",
                        "streak": 0,
                        "last_rules": "",
                        "priority": int(u.priority),
                        "id_externe_synchro": u.id_externe_synchro,
                    }
                )
                entries.append(
                    entry(
                        "mapping",
                        u.ror_id,
                        u.local_code,
                        None,
                        f"added ({u.declared_mode.value})",
                        f"mapping line {u.line}",
                    )
                )
                continue
            changes: dict[str, Any] = {}
            if not old.in_mapping:
                changes["in_mapping"] = True
                entries.append(
                    entry(
                        "mapping",
                        u.ror_id,
                        u.local_code,
                        "removed",
                        "added back",
                        f"mapping line {u.line}",
                    )
                )
            if old.local_code != u.local_code or old.label != u.label:
                changes.update(local_code=u.local_code, label=u.label)
                entries.append(
                    entry(
                        "mapping",
                        u.ror_id,
                        u.local_code,
                        f"{old.local_code} ({old.label})",
                        f"{u.local_code} ({u.label})",
                        f"re-mapped, mapping line {u.line}",
                    )
                )
            if old.priority != u.priority:
                changes["priority"] = int(u.priority)
                entries.append(
                    entry(
                        "mapping",
                        u.ror_id,
                        u.local_code,
                        f"priority {old.priority}",
                        f"priority {int(u.priority)}",
                        f"re-prioritised, mapping line {u.line}",
                    )
                )
            if old.id_externe_synchro != u.id_externe_synchro:
                changes["id_externe_synchro"] = u.id_externe_synchro
                entries.append(
                    entry(
                        "mapping",
                        u.ror_id,
                        u.local_code,
                        f"id_externe_synchro {old.id_externe_synchro or '(local code)'}",
                        f"id_externe_synchro {u.id_externe_synchro or '(local code)'}",
                        f"re-synchronised, mapping line {u.line}",
                    )
                )
            if old.declared_mode != u.declared_mode.value:
                changes["declared_mode"] = u.declared_mode.value
                entries.append(
                    entry(
                        "mapping",
                        u.ror_id,
                        u.local_code,
                        f"declared {old.declared_mode}",
                        f"declared {u.declared_mode.value}",
                        f"re-declared, mapping line {u.line}",
                    )
                )
                # Re-declaring manual switches the unit to manual; re-declaring auto does
                # not switch it back: a person does, with `units auto`.
                if u.declared_mode is Mode.MANUAL and old.mode != Mode.MANUAL.value:
                    changes.update(
                        mode=Mode.MANUAL.value,
                        mode_since=now,
                        mode_reason="déclarée manuelle dans le mapping",
                    )
                    entries.append(
                        entry(
                            "unit_mode",
                            u.ror_id,
                            u.local_code,
                            old.mode,
                            Mode.MANUAL.value,
                            "déclarée manuelle dans le mapping",
                        )
                    )
            if changes:
                conn.execute(
                    update(units_t)
                    .where(units_t.c.finess == finess, units_t.c.ror_id == u.ror_id)
                    .values(**changes)
                )
        for ror_id, old in known.items():
            if ror_id not in seen and old.in_mapping:
                conn.execute(
                    update(units_t)
                    .where(units_t.c.finess == finess, units_t.c.ror_id == ror_id)
                    .values(in_mapping=False)
                )
                entries.append(
                    entry(
                        "mapping", ror_id, old.local_code, "mapped", "removed", "retirée du mapping"
                    )
                )
        # Batched: the first reading of a 10,000-unit mapping is two statements.
        if added:
            conn.execute(insert(units_t), added)
        if entries:
            self._audit.add_many(entries)
            return entries, _feed_states(conn.execute(_feed_query(finess)))
        return entries, _feed_states(known.values())

    def record_verdicts(
        self, finess: str, rejected: dict[str, tuple[str, ...]], accepted: dict[str, int]
    ) -> None:
        """Lengthen the streak of each rejected unit, reset it for each accepted one.

        `accepted` maps ROR id → installed beds accepted (the warning rule compares to it).
        """
        if rejected:
            executemany(
                self._conn,
                update(units_t)
                .where(units_t.c.finess == finess, units_t.c.ror_id == bindparam("b_ror_id"))
                .values(streak=units_t.c.streak + 1, last_rules=bindparam("b_rules")),
                [{"b_ror_id": r, "b_rules": ",".join(rules)} for r, rules in rejected.items()],
            )
        if accepted:
            executemany(
                self._conn,
                update(units_t)
                .where(units_t.c.finess == finess, units_t.c.ror_id == bindparam("b_ror_id"))
                .values(streak=0, last_rules="", last_accepted_installed=bindparam("b_installed")),
                [{"b_ror_id": r, "b_installed": n} for r, n in accepted.items()],
            )

    def set_mode(
        self,
        targets: list[tuple[str, str]],
        mode: Mode,
        reason: str,
        actor: str,
        now: datetime,
    ) -> list[UnitState]:
        """Switch the units `(finess, ror_id)` to `mode`, audited.

        Returns the units as they were before, for those that actually changed. Refuses
        (StateError) to put a fiche declared manual back to automated: the caller's
        transaction then changes nothing.
        """
        conn = self._conn
        changed: list[UnitState] = []
        applied: dict[str, Applied | None] = {}
        for finess, ror_id in targets:
            if finess not in applied:  # read once per establishment, not once per unit
                applied[finess] = self._ledger.applied(finess).get(finess)
            row = conn.execute(
                select(units_t).where(units_t.c.finess == finess, units_t.c.ror_id == ror_id)
            ).first()
            if row is None:
                raise StateError(f"unit {finess} {ror_id} is not in the state store")
            before = _unit_state(row, applied[finess])
            if mode is Mode.AUTO and before.declared_mode is Mode.MANUAL:
                raise StateError(
                    f"fiche {ror_id} ({before.label}) is declared manual in the mapping: "
                    "change its mode column there first"
                )
            if before.mode is mode:
                continue
            values: dict[str, Any] = {
                "mode": mode.value,
                "mode_since": now,
                "mode_reason": reason,
            }
            if mode is Mode.AUTO:
                values["streak"] = 0  # back to automated: a fresh streak
            conn.execute(
                update(units_t)
                .where(units_t.c.finess == finess, units_t.c.ror_id == ror_id)
                .values(**values)
            )
            self._audit.add(
                now,
                actor,
                "unit_mode",
                finess,
                ror_id,
                before.local_code,
                before.mode.value,
                mode.value,
                reason,
            )
            changed.append(before)
        return changed
