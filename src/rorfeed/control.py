"""The operations that change modes and kill-switches, one implementation for every door.

The CLI (`units manual|auto`, `killswitch on|off`), the web page and the cycle (applying the
decisions of killswitch.py) all call `Control`: the audit entry (written with the change, in
one transaction), the e-mail to the bed-management cell and the log line are the same
whichever door was used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

import structlog

from rorfeed.config import Config
from rorfeed.errors import RorfeedError
from rorfeed.model import (
    ACTOR_RORFEED,
    GLOBAL,
    AnomalyDecision,
    Audience,
    BedCounts,
    KillswitchEvent,
    Mode,
    UnitModeEvent,
    UnitRef,
)
from rorfeed.notify import (
    Notifier,
    compose_anomaly_report,
    compose_killswitch,
    compose_unit_changes,
)
from rorfeed.state import AnomalyReport, Store, UnitState

log = structlog.get_logger("rorfeed.control")

# A report is what a person saw, in a few sentences: not a document.
MAX_REPORT_CHARS = 4000


class ControlError(RorfeedError):
    """A change was refused (unknown unit, missing reason, …); nothing was changed."""


@dataclass(frozen=True)
class Directory:
    """What control needs to know of the configuration: establishment names, the zone."""

    names: dict[str, str]  # FINESS → establishment name
    zone: tzinfo

    def name(self, finess: str) -> str:
        return self.names.get(finess, finess)


def unit_ref(state: UnitState, directory: Directory) -> UnitRef:
    return UnitRef(
        finess=state.finess,
        establishment=directory.name(state.finess),
        ror_id=state.ror_id,
        local_code=state.local_code,
        label=state.label,
        last_counts=state.last_counts,
        last_counts_at=state.last_counts_at,
    )


def check_actor(actor: str) -> str:
    actor = actor.strip()
    if not actor:
        raise ControlError("the person making the change must be named (--by)")
    if actor == ACTOR_RORFEED:
        raise ControlError(f'"{ACTOR_RORFEED}" is reserved for rorfeed\'s own automatic changes')
    return actor


class Control:
    def __init__(
        self,
        store: Store,
        directory: Directory,
        notifier: Notifier | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.directory = directory
        self.notifier = notifier
        self.clock = clock

    @classmethod
    def from_config(
        cls, config: Config, store: Store, clock: Callable[[], datetime] | None = None
    ) -> Control:
        """The Control every door builds: names and zone from the configuration, e-mail."""
        directory = Directory({e.finess: e.name for e in config.file.establishments}, config.zone)
        notifier = Notifier.from_config(config)
        if clock is None:
            return cls(store, directory, notifier)
        return cls(store, directory, notifier, clock)

    # -- resolution -----------------------------------------------------------------------

    def resolve(self, keys: Sequence[str], finess: str | None = None) -> list[UnitState]:
        """Units by ROR id or local code; every key must name exactly one mapped unit."""
        units = [u for u in self.store.units(finess) if u.in_mapping]
        found: list[UnitState] = []
        problems = []
        for raw_key in keys:
            key = raw_key.strip()
            by_id = [u for u in units if u.ror_id == key]
            matches = by_id or [u for u in units if u.local_code and u.local_code == key]
            if not matches:
                problems.append(
                    f"unknown unit {key!r}: not a ROR fiche id or local code of the mapping"
                )
            elif len(matches) > 1:
                where = ", ".join(f"{u.finess}/{u.ror_id}" for u in matches)
                problems.append(f"unit {key!r} is ambiguous ({where}): use the ROR fiche id")
            elif matches[0] not in found:
                found.append(matches[0])
        if problems:
            raise ControlError("; ".join(problems) + " — nothing changed")
        return found

    # -- units ----------------------------------------------------------------------------

    def switch_units(
        self, keys: Sequence[str], mode: Mode, reason: str, actor: str
    ) -> list[UnitModeEvent]:
        """A person switches units; returns the changes made (already-in-mode units skipped)."""
        reason = _reason(reason)
        return self._switch(self.resolve(keys), mode, reason, check_actor(actor))

    def auto_switch_to_manual(self, units: Sequence[UnitState], reason: str) -> list[UnitModeEvent]:
        """rorfeed's own switch of persistently rejected units (never back to automated)."""
        return self._switch(list(units), Mode.MANUAL, reason, ACTOR_RORFEED)

    def _switch(
        self, units: list[UnitState], mode: Mode, reason: str, actor: str
    ) -> list[UnitModeEvent]:
        now = self.clock()
        try:
            before = self.store.set_units_mode(
                [(u.finess, u.ror_id) for u in units], mode, reason, actor, now
            )
        except RorfeedError as exc:
            raise ControlError(f"{exc} — nothing changed") from exc
        events = [
            UnitModeEvent(unit_ref(u, self.directory), u.mode, mode, reason, actor, now)
            for u in before
        ]
        for e in events:
            log.warning(
                "unit_mode_changed",
                finess=e.unit.finess,
                ror_id=e.unit.ror_id,
                local_code=e.unit.local_code,
                previous=e.previous.value,
                new=e.new.value,
                actor=actor,
                reason=reason,
            )
        if events:
            self._notify_units(events)
        return events

    def notify_removed(self, units: Sequence[UnitState], reason: str) -> None:
        """A unit removed from the mapping is reported to the cell like a switch to manual."""
        self.notify_left_feed(units, (), reason, ACTOR_RORFEED)

    def notify_left_feed(
        self,
        removed: Sequence[UnitState],
        redeclared: Sequence[UnitState],
        reason: str,
        actor: str,
    ) -> None:
        """Units that a mapping change took out of the automated feed (`removed` from it, or
        `redeclared` manual in it), reported to the cell like switches to manual; the states
        are those before the change."""
        now = self.clock()
        events = [
            UnitModeEvent(
                unit_ref(u, self.directory), u.mode, Mode.MANUAL, reason, actor, now, removed=gone
            )
            for units, gone in ((removed, True), (redeclared, False))
            for u in units
        ]
        if events:
            self._notify_units(events)

    def _notify_units(self, events: list[UnitModeEvent]) -> None:
        if self.notifier is None:
            return
        for subject, body in compose_unit_changes(events, self.directory.zone):
            self.notifier.queue(self.store, subject, body, self.clock())

    # -- kill-switch ----------------------------------------------------------------------

    def killswitch(
        self, finess: str | None, on: bool, reason: str, actor: str
    ) -> KillswitchEvent | None:
        """A person turns a kill-switch on or off; None when it already was so."""
        if finess is not None and finess not in self.directory.names:
            raise ControlError(f"unknown establishment FINESS {finess} — nothing changed")
        return self._killswitch(finess, on, _reason(reason), check_actor(actor))

    def auto_killswitch(self, finess: str, reason: str) -> KillswitchEvent | None:
        return self._killswitch(finess, True, reason, ACTOR_RORFEED)

    def _killswitch(
        self, finess: str | None, on: bool, reason: str, actor: str
    ) -> KillswitchEvent | None:
        now = self.clock()
        if not self.store.set_killswitch(finess or GLOBAL, on, reason, actor, now):
            return None
        units = tuple(unit_ref(u, self.directory) for u in self.store.units(finess) if u.sendable)
        event = KillswitchEvent(
            finess,
            self.directory.name(finess) if finess else None,
            on,
            reason,
            actor,
            now,
            units,
        )
        log.warning(
            "killswitch_changed", finess=finess or GLOBAL, on=on, actor=actor, reason=reason
        )
        if self.notifier is not None:
            subject, body = compose_killswitch(event, self.directory.zone)
            self.notifier.queue(self.store, subject, body, now)
        return event

    # -- anomalies reported by people (SPEC §10.2) --------------------------------------

    def report_anomaly(
        self, finess: str, ror_id: str, text: str, believed: BedCounts | None, actor: str
    ) -> AnomalyReport:
        """Any account reports what it saw on a unit: stored, audited, e-mailed to the lead."""
        text = text.strip()
        if not text:
            raise ControlError("say what was seen: the report's text is mandatory")
        if len(text) > MAX_REPORT_CHARS:
            raise ControlError(f"the report is {len(text)} characters, at most {MAX_REPORT_CHARS}")
        unit = self._unit(finess, ror_id)
        actor = check_actor(actor)
        report = self.store.report_anomaly(unit, text, believed, actor, self.clock())
        log.warning("anomaly_reported", finess=finess, ror_id=ror_id, report=report.id, actor=actor)
        if self.notifier is not None:
            subject, body = compose_anomaly_report(
                unit_ref(unit, self.directory),
                report.id,
                actor,
                text,
                believed,
                report.at,
                self.directory.zone,
            )
            self.notifier.queue(self.store, subject, body, self.clock(), Audience.LEAD)
        return report

    def close_anomaly(
        self, report_id: int, decision: AnomalyDecision, comment: str, actor: str
    ) -> list[UnitModeEvent]:
        """A lead closes a report with a decision and a comment, both audited; "switched to
        manual" switches the unit too, as every switch (its own entry and e-mail). Returns the
        switch made, if any."""
        comment = _reason(comment)
        actor = check_actor(actor)
        report = self.store.anomaly_report(report_id)
        if report is None or not report.open:
            raise ControlError(f"report {report_id} is not open (closed meanwhile?)")
        unit = self._unit(report.finess, report.ror_id)
        events: list[UnitModeEvent] = []
        if decision is AnomalyDecision.SWITCHED_MANUAL:
            events = self._switch(
                [unit], Mode.MANUAL, f"signalement {report_id} : {comment}", actor
            )
        if not self.store.close_anomaly(
            report, unit.local_code, decision, comment, actor, self.clock()
        ):
            raise ControlError(f"report {report_id} was closed meanwhile by someone else")
        log.info("anomaly_closed", report=report_id, decision=decision.value, actor=actor)
        return events

    def _unit(self, finess: str, ror_id: str) -> UnitState:
        for unit in self.store.units(finess):
            if unit.ror_id == ror_id and unit.in_mapping:
                return unit
        raise ControlError(f"unknown unit {finess}/{ror_id}: not in the mapping")

    def flush_notifications(self) -> None:
        if self.notifier is not None:
            self.notifier.flush(self.store, self.clock())


def _reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise ControlError("a reason is mandatory for every change (--reason)")
    return reason
