"""The read side shared by `rorfeed units|status|history` and the web page.

What a person asks of the feed, in plain data (no wording: the page says it in French, the
command line in English): each unit with why the cell must enter it by hand in the ROR, the
kill-switches, the destinations' last deliveries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from rorfeed.model import GLOBAL, Mode

if TYPE_CHECKING:
    from rorfeed.config import Config
    from rorfeed.state import CycleRow, Store, UnitState

ALL = "tous"  # the key of the global kill-switch's row, where a FINESS stands for the others


class ManualReason(StrEnum):
    """Why the bed-management cell must enter a unit by hand in the ROR."""

    DECLARED_MANUAL = "declared_manual"  # the mapping declares it manual
    MANUAL_MODE = "manual_mode"  # its mode in the state is manual
    GLOBAL_KILLSWITCH = "global_killswitch"
    KILLSWITCH = "killswitch"  # its establishment's kill-switch
    NO_PRODUCTION = "no_production_destination"  # nothing sends it to the production ROR


@dataclass(frozen=True)
class UnitRow:
    unit: UnitState
    establishment: str
    manual_reasons: tuple[ManualReason, ...]  # () = fed by rorfeed

    @property
    def needs_manual(self) -> bool:
        return bool(self.manual_reasons)


def establishment_name(config: Config, finess: str) -> str:
    return next((e.name for e in config.file.establishments if e.finess == finess), finess)


def unit_rows(
    config: Config, store: Store, units: Iterable[UnitState] | None = None
) -> list[UnitRow]:
    """The mapped units (all, or `units`), each with why it needs manual entry."""
    details = store.killswitch_details()
    global_on = details.get(GLOBAL, (False, None, ""))[0]
    production = {
        e.finess: any(d.environment == "production" for d in config.destinations_for(e.finess))
        for e in config.file.establishments
    }
    names = {e.finess: e.name for e in config.file.establishments}
    rows = []
    for u in store.units() if units is None else units:
        if not u.in_mapping:
            continue
        reasons = []
        if u.declared_mode is Mode.MANUAL:
            reasons.append(ManualReason.DECLARED_MANUAL)
        elif u.mode is Mode.MANUAL:
            reasons.append(ManualReason.MANUAL_MODE)
        if global_on:
            reasons.append(ManualReason.GLOBAL_KILLSWITCH)
        if details.get(u.finess, (False, None, ""))[0]:
            reasons.append(ManualReason.KILLSWITCH)
        if not production.get(u.finess, False):
            reasons.append(ManualReason.NO_PRODUCTION)
        rows.append(UnitRow(u, names.get(u.finess, u.finess), tuple(reasons)))
    return rows


@dataclass(frozen=True)
class SwitchRow:
    key: str  # a FINESS, or ALL for the global kill-switch
    name: str  # the establishment's name; "" for the global kill-switch
    on: bool
    since: datetime | None
    reason: str
    automated: int  # units fed automatically when the switch is off


def switch_rows(config: Config, store: Store) -> list[SwitchRow]:
    """The global kill-switch, then each establishment's."""
    details = store.killswitch_details()
    units = [u for u in store.units() if u.sendable]
    on, since, reason = details.get(GLOBAL, (False, None, ""))
    rows = [SwitchRow(ALL, "", on, since, reason, len(units))]
    for e in config.file.establishments:
        on, since, reason = details.get(e.finess, (False, None, ""))
        automated = sum(1 for u in units if u.finess == e.finess)
        rows.append(SwitchRow(e.finess, e.name, on, since, reason, automated))
    return rows


@dataclass(frozen=True)
class DestinationRow:
    name: str
    production: bool
    establishments: tuple[str, ...]  # the names of those it receives; () = every one
    waiting: int  # files in its outbox
    last_delivery: datetime | None  # cycle time of the newest cycle that delivered a file
    # The newest cycle's delivery to it, None when no recent cycle delivered to it.
    delivered: int | None
    failed: int
    error: str


def destination_rows(config: Config, store: Store, cycles: list[CycleRow]) -> list[DestinationRow]:
    """Each destination's outbox and last deliveries, from the newest `cycles` first."""
    waiting = store.outbox_counts()
    rows = []
    for d in config.file.destinations:
        last = next(
            (c.cycle_time for c in cycles if _delivered(c, d.name)),
            None,
        )
        info = next(
            (c.detail.deliveries[d.name] for c in cycles if d.name in c.detail.deliveries),
            None,
        )
        rows.append(
            DestinationRow(
                d.name,
                d.environment == "production",
                tuple(establishment_name(config, f) for f in d.establishments),
                waiting.get(d.name, 0),
                last,
                None if info is None else info.delivered,
                0 if info is None else info.failed,
                "" if info is None else info.error,
            )
        )
    return rows


def _delivered(cycle: CycleRow, destination: str) -> bool:
    """Whether `cycle` delivered at least one file to `destination`."""
    delivery = cycle.detail.deliveries.get(destination)
    return delivery is not None and delivery.delivered > 0
