"""The domain, as plain data: what the pipeline carries from source to pivot file.

No I/O here. Times are timezone-aware datetimes; counts in a `UnitRecord` have passed
validation, raw values in a `SourceRow` have not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum


class Mode(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class Priority(IntEnum):
    """The ARS's priority of a unit (SPEC §4): the follow-up report counts by it."""

    CRITICAL_CARE = 1  # soins critiques: réanimation, soins intensifs, surveillance continue
    OTHER = 2


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One row as the bed-management database gave it: values are untrusted and unparsed."""

    unit: str
    installed: object
    closed: object
    available: object
    updated_at: object = None


@dataclass(frozen=True, slots=True)
class Extraction:
    """Everything one source returned in one cycle.

    `file_mtime` is set by file-based sources: it stands for `updated_at` on rows without one.
    """

    rows: tuple[SourceRow, ...]
    file_mtime: datetime | None = None
    origin: str = ""


@dataclass(frozen=True, slots=True)
class MappedUnit:
    """One line of an establishment's mapping: a local unit onto exactly one ROR fiche."""

    local_code: str
    ror_id: str
    label: str
    declared_mode: Mode = Mode.AUTO
    line: int = 0
    priority: Priority = Priority.OTHER
    # The mapping's `id_externe_synchro` column as written; "" when not given (`sync_code`).
    id_externe_synchro: str = ""

    @property
    def sync_code(self) -> str:
        """The code the unit's place carries in the national ROR (SPEC §4, §12): the
        `id_externe_synchro` column, by default the local code ("" for a manual fiche without
        one). A defaulted local code is not checked against the column's rules when the mapping
        is read (a mapping only delivered as files may hold local codes with spaces): a `fhir`
        destination checks it with `mapping.sync_code_problem` before using it."""
        return self.id_externe_synchro or self.local_code


@dataclass(frozen=True, slots=True)
class BedCounts:
    installed: int
    closed: int
    available: int


@dataclass(frozen=True, slots=True)
class UnitRecord:
    """A unit's validated counts, ready to be written to a pivot file."""

    ror_id: str
    counts: BedCounts
    date_maj: datetime | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The content of one pivot file: one establishment at one cycle time."""

    establishment_name: str
    finess: str
    horodatage: datetime  # cycle time, in the local zone of `daemon.timezone`
    units: tuple[UnitRecord, ...] = field(default_factory=tuple)

    def sorted_units(self) -> tuple[UnitRecord, ...]:
        return tuple(sorted(self.units, key=lambda u: u.ror_id))


@dataclass(frozen=True, slots=True)
class UnitRef:
    """A unit as the bed-management cell must see it named: with what the ROR still shows."""

    finess: str
    establishment: str
    ror_id: str
    local_code: str
    label: str
    last_counts: BedCounts | None  # the last values sent to the ROR (production), if any
    last_counts_at: datetime | None  # the cycle time of those values


@dataclass(frozen=True, slots=True)
class UnitModeEvent:
    """A unit switched between automated and manual (or removed from the mapping)."""

    unit: UnitRef
    previous: Mode
    new: Mode
    reason: str
    actor: str
    at: datetime
    removed: bool = False  # left the mapping: reported to the cell like a switch to manual


@dataclass(frozen=True, slots=True)
class KillswitchEvent:
    """An establishment's (or the global, finess None) automated feed stopped or resumed."""

    finess: str | None
    establishment: str | None
    on: bool
    reason: str
    actor: str
    at: datetime
    units: tuple[UnitRef, ...] = ()  # the units whose feed this stops or resumes


GLOBAL = "*"  # the key of the global kill-switch, beside the establishments' FINESS
ACTOR_RORFEED = "rorfeed"  # the actor of rorfeed's own changes; reserved for people's names


class LedgerStatus(StrEnum):
    """Where a pivot file stands in the delivery ledger of its destination."""

    PENDING = "pending"  # in the outbox, not delivered yet
    UPLOADING = "uploading"  # being uploaded: outcome unknown until settled
    DELIVERED = "delivered"
    UNCERTAIN = "uncertain"  # the rename may or may not have happened: never sent again
    SUPERSEDED = "superseded"  # a newer file of the same establishment was delivered
    EXPIRED = "expired"  # older than rules.max_file_age_minutes
    WITHHELD = "withheld"  # a unit went manual (or a kill-switch on) before its upload


class EstablishmentStatus(StrEnum):
    """How one establishment's part of a cycle ended."""

    OK = "ok"
    SOURCE_DOWN = "source_down"
    MAPPING_ERROR = "mapping_error"
    KILLSWITCH = "killswitch"
    NOTHING_TO_SEND = "nothing_to_send"


class Audience(StrEnum):
    """Who an e-mail is for: the bed-management cell (`notify.recipients`) or the chef de
    projet (`notify.lead_recipients`)."""

    CELL = "cell"
    LEAD = "lead"


class AnomalyDecision(StrEnum):
    """How a lead closes an anomaly reported by a person (SPEC §10.2)."""

    SWITCHED_MANUAL = "switched to manual"
    CORRECTED_AT_SOURCE = "corrected at the source"
    VALUES_RIGHT = "values were right"


class CycleOutcome(StrEnum):
    """A whole cycle: `failed` when the work failed, `partial` when something was held back."""

    OK = "ok"
    PARTIAL = "partial"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class EstablishmentDetail:
    """One establishment's part of a recorded cycle."""

    status: EstablishmentStatus
    sent: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # rule → units
    unmapped: int = 0  # source units not in the mapping
    error: str = ""


@dataclass(frozen=True, slots=True)
class DeliveryDetail:
    """One destination's delivery in a recorded cycle: files by how they ended."""

    delivered: int = 0
    failed: int = 0
    superseded: int = 0
    expired: int = 0
    uncertain: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class CycleDetail:
    """What a cycle did, as the state records it (JSON) and the metrics and pages read it."""

    establishments: dict[str, EstablishmentDetail] = field(default_factory=dict)  # by FINESS
    deliveries: dict[str, DeliveryDetail] = field(default_factory=dict)  # by destination

    def to_json(self) -> str:
        return json.dumps(
            {
                "establishments": {k: asdict(v) for k, v in self.establishments.items()},
                "deliveries": {k: asdict(v) for k, v in self.deliveries.items()},
            },
            ensure_ascii=False,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> CycleDetail:
        """The detail `to_json` wrote (rorfeed has always written these keys)."""
        doc = json.loads(text)
        return cls(
            {
                finess: EstablishmentDetail(
                    EstablishmentStatus(e["status"]),
                    int(e.get("sent", 0)),
                    {str(rule): int(n) for rule, n in (e.get("rejected") or {}).items()},
                    int(e.get("unmapped", 0)),
                    str(e.get("error") or ""),
                )
                for finess, e in (doc.get("establishments") or {}).items()
            },
            {
                name: DeliveryDetail(
                    **{k: int(d.get(k, 0)) for k in _DELIVERY_COUNTS},
                    error=str(d.get("error") or ""),
                )
                for name, d in (doc.get("deliveries") or {}).items()
            },
        )


_DELIVERY_COUNTS = ("delivered", "failed", "superseded", "expired", "uncertain")
