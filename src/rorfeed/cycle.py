"""One cycle, start to end: the only place where the pipeline's steps are wired together.

    source → mapping → validation → pivot files → outbox → transports → archive

Per establishment: read the mapping (and record its changes), skip it when a kill-switch is
on, extract from the source, judge every automated unit, write one file per destination and
format. Then deliver each destination's outbox. Nothing here catches anything but rorfeed's own
exceptions; an establishment's failure never stops the others.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from rorfeed import pivot
from rorfeed.config import Config, EstablishmentSection
from rorfeed.control import Control
from rorfeed.durable import write_atomic
from rorfeed.errors import MappingError, SourceError
from rorfeed.killswitch import (
    Thresholds,
    rejected_share_trips,
    units_to_switch,
    unreachable_trips,
)
from rorfeed.mapping import Mapping, parse_mapping_text, read_mapping_text
from rorfeed.model import (
    ACTOR_RORFEED,
    GLOBAL,
    CycleDetail,
    CycleOutcome,
    DeliveryDetail,
    EstablishmentDetail,
    EstablishmentStatus,
    Extraction,
    MappedUnit,
    Mode,
    Snapshot,
    SourceRow,
    UnitRecord,
)
from rorfeed.outbox import DeliveryReport, Outbox
from rorfeed.rules import Judge, RuleOptions, Verdict
from rorfeed.sources import open_source
from rorfeed.state import FeedState, LedgerRow, Store
from rorfeed.transports import open_transport

log = structlog.get_logger("rorfeed.cycle")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def file_timestamp(cycle_time: datetime) -> str:
    return cycle_time.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def file_name(template: str, finess: str, cycle_time: datetime, ext: str) -> str:
    return template.format(finess=finess, timestamp=file_timestamp(cycle_time), ext=ext)


# An establishment's part of the cycle failed: the cycle did not do its work.
_FAILED = (EstablishmentStatus.SOURCE_DOWN, EstablishmentStatus.MAPPING_ERROR)


@dataclass
class EstablishmentReport:
    finess: str
    name: str
    status: EstablishmentStatus = EstablishmentStatus.OK
    error: str = ""
    sent: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # rule → units
    rejected_units: dict[str, tuple[str, ...]] = field(default_factory=dict)
    warnings: Counter[str] = field(default_factory=Counter)
    unmapped: list[str] = field(default_factory=list)
    manual: int = 0
    files: list[Path] = field(default_factory=list)

    @property
    def rejected_count(self) -> int:
        return len(self.rejected_units)


@dataclass
class CycleReport:
    cycle_time: datetime
    establishments: list[EstablishmentReport] = field(default_factory=list)
    deliveries: list[DeliveryReport] = field(default_factory=list)
    duration: float = 0.0

    @property
    def sent(self) -> int:
        return sum(e.sent for e in self.establishments)

    @property
    def rejected(self) -> int:
        return sum(e.rejected_count for e in self.establishments)

    @property
    def failed(self) -> bool:
        """The work failed: a source unreachable, a mapping unreadable or a delivery failed."""
        return any(e.status in _FAILED for e in self.establishments) or any(
            not d.ok for d in self.deliveries
        )

    @property
    def outcome(self) -> CycleOutcome:
        if self.failed:
            return CycleOutcome.FAILED
        stopped = any(e.status is EstablishmentStatus.KILLSWITCH for e in self.establishments)
        if self.rejected or stopped:
            return CycleOutcome.PARTIAL
        return CycleOutcome.OK


def rule_options(config: Config) -> RuleOptions:
    r = config.file.rules
    return RuleOptions(
        max_beds_per_unit=r.max_beds_per_unit,
        coherence_rejects=r.coherence == "reject",
        max_source_age=timedelta(minutes=r.max_source_age_minutes),
        installed_change_warn=r.installed_change_warn,
    )


# A unit the store does not know yet (dry run of a new mapping): as a first reading creates
# it — sendable when declared auto, no streak, nothing accepted before.
def effective_states(mapping: Mapping, known: dict[str, FeedState]) -> dict[str, FeedState]:
    """Each mapped unit's state as the store has it, or as a first reading would create it."""
    return {
        u.ror_id: known.get(u.ror_id)
        or FeedState(
            u.declared_mode is Mode.AUTO, streak=0, last_rules="", last_accepted_installed=None
        )
        for u in mapping.units
    }


def _group_rows(extraction: Extraction) -> dict[str, list[SourceRow]]:
    rows: dict[str, list[SourceRow]] = defaultdict(list)
    for row in extraction.rows:
        rows[row.unit.strip()].append(row)
    return rows


class Cycle:
    """Runs cycles for one configuration against one state store."""

    def __init__(self, config: Config, store: Store, clock: Clock = utc_now) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.outbox = Outbox(config.work_dir, store)
        self.control = Control.from_config(config, store, clock)
        r = config.file.rules
        self.thresholds = Thresholds(
            r.manual_after_cycles, r.killswitch_after_cycles, r.killswitch_rejected_share
        )

    def run(self, cycle_time: datetime, dry_run_dir: Path | None = None) -> CycleReport:
        started = time.monotonic()
        started_at = self.clock()
        report = CycleReport(cycle_time)
        switches = self.store.killswitches()
        for index, est in enumerate(self.config.file.establishments):
            stopped = switches.get(GLOBAL, False) or switches.get(est.finess, False)
            report.establishments.append(
                self._establishment(index, est, cycle_time, stopped, dry_run_dir)
            )
        if dry_run_dir is None:
            report.deliveries = self._deliver()
            self._purge()
            # E-mails never block a cycle: a relay that is down keeps them for the next one.
            self.control.flush_notifications()
        report.duration = time.monotonic() - started
        if dry_run_dir is None:
            self.store.record_cycle(
                cycle_time,
                started_at,
                self.clock(),
                report.outcome,
                report.sent,
                report.rejected,
                _cycle_detail(report),
            )
        log.info(
            "cycle_end",
            cycle_time=cycle_time.isoformat(),
            outcome=report.outcome,
            sent=report.sent,
            rejected=report.rejected,
            duration_s=round(report.duration, 3),
            dry_run=dry_run_dir is not None,
        )
        return report

    # -- one establishment ----------------------------------------------------------------

    def _establishment(
        self,
        index: int,
        est: EstablishmentSection,
        cycle_time: datetime,
        stopped: bool,
        dry_run_dir: Path | None,
    ) -> EstablishmentReport:
        rep = EstablishmentReport(est.finess, est.name)
        bound = log.bind(finess=est.finess)
        dry = dry_run_dir is not None
        mapping_path = self.config.resolve(est.mapping)
        try:
            mapping_text = read_mapping_text(mapping_path)
            mapping = parse_mapping_text(mapping_text, mapping_path)
        except MappingError as exc:
            rep.status, rep.error = EstablishmentStatus.MAPPING_ERROR, str(exc)
            bound.error("mapping_invalid", error=str(exc))
            return rep
        if dry:
            known = self.store.feed_states(est.finess)
        else:
            # Every version a cycle reads is kept (SPEC §10.1): one edited on the server too.
            self.store.keep_mapping_version(
                est.finess, mapping_text, self.clock(), ACTOR_RORFEED, "lu par un cycle"
            )
            entries, known = self.store.sync_mapping(est.finess, mapping.units, self.clock())
            removed = {e.ror_id for e in entries if e.new == "removed"}
            if removed:
                self.control.notify_removed(
                    [u for u in self.store.units(est.finess) if u.ror_id in removed],
                    "fiche retirée du mapping",
                )
        states = effective_states(mapping, known)
        sendable = [m for m in mapping.units if states[m.ror_id].sendable]
        rep.manual = len(mapping.units) - len(sendable)
        if stopped:
            rep.status = EstablishmentStatus.KILLSWITCH
            bound.warning("killswitch_on", units=len(sendable))
            return rep

        try:
            extraction = open_source(self.config, index).fetch()
        except SourceError as exc:
            rep.status, rep.error = EstablishmentStatus.SOURCE_DOWN, str(exc)
            bound.error("source_down", error=str(exc))
            if not dry:
                streak = self.store.source_unreachable(est.finess, down=True)
                if unreachable_trips(streak, self.thresholds):
                    self.control.auto_killswitch(
                        est.finess,
                        f"source injoignable {streak} cycles consécutifs : {exc}",
                    )
            return rep
        if not dry:
            self.store.source_unreachable(est.finess, down=False)

        rows = _group_rows(extraction)
        mapped_codes = set(mapping.by_local_code())
        rep.unmapped = sorted(code for code in rows if code not in mapped_codes)
        verdicts = self._judge(sendable, states, rows, extraction, cycle_time)
        accepted: list[UnitRecord] = []
        for ror_id, verdict in verdicts.items():
            rep.warnings.update(verdict.warnings)
            if verdict.record is None:
                rep.rejected_units[ror_id] = verdict.rejected
                rep.rejected.update(verdict.rejected)
                bound.warning(
                    "unit_rejected", ror_id=ror_id, rules=list(verdict.rejected), raw=verdict.raw
                )
            else:
                accepted.append(verdict.record)
        if not dry:
            self.store.record_verdicts(
                est.finess,
                rep.rejected_units,
                # Only what changes: in a calm hour that is no unit at all, not 10,000 writes.
                {
                    r.ror_id: r.counts.installed
                    for r in accepted
                    if _changes(states[r.ror_id], r.counts.installed)
                },
            )
            self._apply_decisions(est.finess, verdicts)
            if rejected_share_trips(len(rep.rejected_units), len(sendable), self.thresholds):
                self.control.auto_killswitch(
                    est.finess,
                    f"{len(rep.rejected_units)} unités rejetées sur {len(sendable)} "
                    "automatisées dans le même cycle",
                )
                rep.status = EstablishmentStatus.KILLSWITCH
                bound.error("killswitch_tripped", rejected=len(rep.rejected_units))
                return rep
        if not accepted:
            rep.status = EstablishmentStatus.NOTHING_TO_SEND
            bound.warning("nothing_to_send", rejected=rep.rejected_count)
            return rep
        rep.sent = len(accepted)
        # What was read to judge the units can go before the files are written: at 100,000
        # units the mapping, the source's rows and the verdicts hold about 150 MB, on top of
        # which each writer's own peak would otherwise stack.
        del mapping, states, sendable, extraction, rows, verdicts
        snapshot = Snapshot(
            est.name, est.finess, cycle_time.astimezone(self.config.zone), tuple(accepted)
        )
        rep.files = self._write(snapshot, cycle_time, dry_run_dir)
        bound.info(
            "establishment_done",
            sent=rep.sent,
            rejected=rep.rejected_count,
            unmapped=len(rep.unmapped),
            files=len(rep.files),
        )
        return rep

    def _purge(self) -> None:
        """Archived files, then the ledger rows and snapshots, older than the retention.

        The state keeps at least as long as a file may wait to be delivered, so that a file
        still waiting is always compared with every newer file of its establishment.
        """
        daemon = self.config.file.daemon
        self.outbox.purge_archive(daemon.archive_days)
        keep = max(
            timedelta(days=daemon.archive_days),
            timedelta(minutes=self.config.file.rules.max_file_age_minutes),
        )
        files, snapshots = self.store.purge_before(self.clock() - keep)
        if files or snapshots:
            log.info("state_purged", ledger_rows=files, snapshots=snapshots, older_than=str(keep))

    def _apply_decisions(self, finess: str, verdicts: dict[str, Verdict]) -> None:
        """Units rejected for too many consecutive cycles leave the feed (SPEC §6)."""
        rejected = {ror for ror, v in verdicts.items() if v.record is None}
        if not rejected:
            return  # the common case: no need to read every unit back
        states = [u for u in self.store.units(finess) if u.ror_id in rejected]
        due = set(units_to_switch({u.ror_id: u.streak for u in states}, self.thresholds))
        for unit in (u for u in states if u.ror_id in due):
            verdict = verdicts[unit.ror_id]
            raw = ", ".join(f"{k}={v!r}" for k, v in verdict.raw.items()) or "aucune"
            self.control.auto_switch_to_manual(
                [unit],
                f"rejetée {unit.streak} cycles consécutifs ({', '.join(verdict.rejected)}) ; "
                f"dernières valeurs lues : {raw}",
            )

    def _judge(
        self,
        units: list[MappedUnit],
        states: dict[str, FeedState],
        rows: dict[str, list[SourceRow]],
        extraction: Extraction,
        cycle_time: datetime,
    ) -> dict[str, Verdict]:
        judge = Judge(rule_options(self.config))
        now = self.clock()
        # Looked up once, not once per unit (the zone is built from its name at each lookup).
        zone, file_mtime = self.config.zone, extraction.file_mtime
        return {
            u.ror_id: judge(
                rows.get(u.local_code, []),
                u.ror_id,
                now=now,
                zone=zone,
                file_mtime=file_mtime,
                previous_installed=states[u.ror_id].last_accepted_installed,
            )
            for u in units
        }

    def _write(
        self, snapshot: Snapshot, cycle_time: datetime, dry_run_dir: Path | None
    ) -> list[Path]:
        written: list[Path] = []
        snapshot_id = None
        if dry_run_dir is None:
            snapshot_id = self.store.add_snapshot_once(
                snapshot.finess, cycle_time, {u.ror_id: u.counts for u in snapshot.units}
            )
            if snapshot_id is None:
                # This cycle time ran before (a daemon killed mid-cycle, restarted, catches the
                # same fire time up; a clock set back): its files keep their first content,
                # and the delivery below sends those still waiting.
                log.warning(
                    "files_already_written",
                    finess=snapshot.finess,
                    cycle_time=cycle_time.isoformat(),
                    detail="an earlier run of this cycle time wrote them; they are not rewritten",
                )
                return written
        destinations = self.config.destinations_for(snapshot.finess)
        # One format at a time, rendered once for every destination that takes it, then let
        # go: at 100,000 units a file is 10 to 25 MB, and its checks hold a parsed copy.
        formats = dict.fromkeys(fmt for dest in destinations for fmt in dest.formats)
        prepared = pivot.prepare(snapshot)
        for fmt in formats:
            data = pivot.render_checked(prepared, fmt)
            for dest in (d for d in destinations if fmt in d.formats):
                name = file_name(
                    dest.file_name, snapshot.finess, cycle_time, pivot.WRITERS[fmt].extension
                )
                if dry_run_dir is not None:
                    path = dry_run_dir / name
                    write_atomic(path, data)
                else:
                    assert snapshot_id is not None  # noqa: S101 - set above when not dry
                    path = self.outbox.stage(
                        dest.name,
                        name,
                        data,
                        snapshot_id,
                        snapshot.finess,
                        cycle_time,
                        self.clock(),
                    )
                written.append(path)
            del data
        return written

    # -- delivery -------------------------------------------------------------------------

    def _deliver(self) -> list[DeliveryReport]:
        reports = []
        max_age = timedelta(minutes=self.config.file.rules.max_file_age_minutes)
        # A snapshot's units never change: read once per delivery, not once per format.
        snapshot_units: dict[int, set[str]] = {}
        for index, dest in enumerate(self.config.file.destinations):
            report = self.outbox.deliver(
                dest.name,
                open_transport(self.config, index),
                timeout=dest.timeout_seconds,
                max_age=max_age,
                production=dest.environment == "production",
                clock=self.clock,
                hold=lambda row: _hold_reason(self.store, row, snapshot_units),
            )
            if not report.ok:
                log.error(
                    "delivery_failed",
                    destination=dest.name,
                    cause=report.error_cause,
                    error=report.error,
                    waiting=len(report.failed),
                )
            reports.append(report)
        return reports


def _changes(state: FeedState, installed: int) -> bool:
    """Whether accepting `installed` changes what the store holds for the unit."""
    return (state.streak, state.last_rules, state.last_accepted_installed) != (0, "", installed)


def _hold_reason(store: Store, row: LedgerRow, snapshot_units: dict[int, set[str]]) -> str | None:
    """Why a file written earlier must not leave now: a switch made since (SPEC §2).

    The switches are read afresh for every file; `snapshot_units` keeps the units of each
    snapshot already read (they never change).
    """
    switches = store.killswitches()
    if switches.get(GLOBAL) or switches.get(row.finess):
        return "kill-switch turned on after the file was written"
    unsendable = store.unsendable_ror_ids(row.finess)
    if not unsendable:
        return None
    units = snapshot_units.get(row.snapshot_id)
    if units is None:
        units = snapshot_units[row.snapshot_id] = store.snapshot_ror_ids(row.snapshot_id)
    stopped = unsendable & units
    if stopped:
        shown = ", ".join(sorted(stopped)[:5]) + (" …" if len(stopped) > 5 else "")
        return f"unit(s) switched to manual after the file was written: {shown}"
    return None


def _cycle_detail(report: CycleReport) -> CycleDetail:
    return CycleDetail(
        {
            e.finess: EstablishmentDetail(
                e.status, e.sent, dict(e.rejected), len(e.unmapped), e.error
            )
            for e in report.establishments
        },
        {
            d.destination: DeliveryDetail(
                delivered=len(d.delivered),
                failed=len(d.failed),
                superseded=len(d.superseded),
                expired=len(d.expired),
                uncertain=len(d.uncertain),
                error=d.error,
            )
            for d in report.deliveries
        },
    )
