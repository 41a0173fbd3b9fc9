"""The named validation rules (SPEC §6): small pure callables over one unit's reading.

`RULES` is the one list of them — its names are the ones logs, metrics (label `rule`), the
audit trail and the README table use. A rule is a function of a `Reading` (the unit's rows,
parsed once) and the `RuleOptions`, marked hard (the record is not sent) or warning (sent,
counted, logged); a new rule is one function here and its test.

A `Judge` takes the options once and never raises: it returns a `Verdict` holding either the
validated record or the names of every rule that fired.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from enum import StrEnum

from rorfeed.model import BedCounts, SourceRow, UnitRecord

FUTURE_TOLERANCE = timedelta(minutes=5)

# Any whitespace around a textual count is trimmed, Unicode spaces included (NBSP from a
# spreadsheet export); the digits themselves must be ASCII — "١٢" is not a count.
_ASCII_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class RuleOptions:
    max_beds_per_unit: int = 500
    coherence_rejects: bool = True
    max_source_age: timedelta = timedelta(minutes=120)
    installed_change_warn: float = 0.5


@dataclass(frozen=True, slots=True)
class Verdict:
    record: UnitRecord | None  # None when rejected
    rejected: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # The raw values as read, for the audit trail and logs when rejected.
    raw: dict[str, object] = field(default_factory=dict)


class Unreadable(StrEnum):
    """A value that is present but is not what its column must hold."""

    NOT_INTEGER = "not_integer"
    NEGATIVE = "negative"
    NOT_A_TIME = "not_a_time"


def parse_count(value: object) -> int | Unreadable | None:
    """The exact integer definition of SPEC §6; None means "missing"."""
    if value is None:
        return None
    if isinstance(value, bool):  # bool is an int subclass in Python: never a count
        return Unreadable.NOT_INTEGER
    if isinstance(value, int):
        return value if value >= 0 else Unreadable.NEGATIVE
    if isinstance(value, float | Decimal):
        if isinstance(value, float) and not math.isfinite(value):
            return Unreadable.NOT_INTEGER
        if isinstance(value, Decimal) and not value.is_finite():
            return Unreadable.NOT_INTEGER
        if value != int(value):
            return Unreadable.NOT_INTEGER
        number = int(value)
        return number if number >= 0 else Unreadable.NEGATIVE
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if _ASCII_DIGITS.fullmatch(text):
            return int(text)
        if text.startswith("-") and _ASCII_DIGITS.fullmatch(text[1:]):
            return Unreadable.NEGATIVE
        return Unreadable.NOT_INTEGER
    return Unreadable.NOT_INTEGER


def parse_updated_at(value: object, zone: tzinfo) -> datetime | Unreadable | None:
    """A time, None when not given, or a marker when it is not a time at all.

    A naive time is read in `zone`; in the repeated autumn hour it is the earlier instant
    (fold=0), the reading that makes it older and so the safer one.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return Unreadable.NOT_A_TIME
    else:
        return Unreadable.NOT_A_TIME
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=zone, fold=0)
    return moment


# Not frozen: a frozen dataclass's __init__ costs twice as much, and one is built per unit.
@dataclass(slots=True)
class Reading:
    """One mapped unit as the source gave it, parsed once for every rule."""

    rows: int  # how many rows the source returned for the unit
    counts: tuple[int | Unreadable | None, ...]  # installed, closed, available; () unless 1 row
    # The three counts when each is a count within the maximum: what coherence is judged on.
    valid: tuple[int, int, int] | None
    updated_at: datetime | Unreadable | None  # the row's time, else the export file's
    previous_installed: int | None  # the installed count last accepted for the unit
    now: datetime


class Severity(StrEnum):
    HARD = "hard"  # the record is not sent
    WARNING = "warning"  # the record is sent, the rule counted and logged


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    severity: Severity
    fires_when: str  # for people: the README table says the same (a drift test checks)
    test: Callable[[Reading, RuleOptions], bool]
    # A hard rule that `rules.coherence = "warn"` turns into a warning.
    coherence: bool = False

    def __call__(self, reading: Reading, options: RuleOptions) -> bool:
        return self.test(reading, options)

    def hard_under(self, options: RuleOptions) -> bool:
        if self.coherence:
            return options.coherence_rejects
        return self.severity is Severity.HARD


def rule(
    severity: Severity, fires_when: str, *, coherence: bool = False
) -> Callable[[Callable[[Reading, RuleOptions], bool]], Rule]:
    """Make a function a `Rule` named after it."""

    def make(test: Callable[[Reading, RuleOptions], bool]) -> Rule:
        return Rule(test.__name__, severity, fires_when, test, coherence)

    return make


HARD, WARNING = Severity.HARD, Severity.WARNING


@rule(HARD, "a count is NULL or empty")
def count_missing(r: Reading, o: RuleOptions) -> bool:
    return None in r.counts


@rule(HARD, 'a count is not an integer (`3.5`, `"12a"`, `"12.0"`, `"+5"`, `true`, NaN …)')
def count_not_integer(r: Reading, o: RuleOptions) -> bool:
    return Unreadable.NOT_INTEGER in r.counts


@rule(HARD, "a count is negative")
def count_negative(r: Reading, o: RuleOptions) -> bool:
    return Unreadable.NEGATIVE in r.counts


@rule(HARD, "a count is above `rules.max_beds_per_unit`")
def count_above_max(r: Reading, o: RuleOptions) -> bool:
    # Three valid counts are within the maximum: the common case answers without a loop.
    return r.valid is None and any(type(c) is int and c > o.max_beds_per_unit for c in r.counts)


@rule(HARD, 'closed > installed (`rules.coherence = "warn"` only warns)', coherence=True)
def closed_above_installed(r: Reading, o: RuleOptions) -> bool:
    return r.valid is not None and r.valid[1] > r.valid[0]


@rule(HARD, "available > installed \u2212 closed (idem)", coherence=True)
def available_above_open(r: Reading, o: RuleOptions) -> bool:
    return r.valid is not None and r.valid[2] > r.valid[0] - r.valid[1]


@rule(HARD, "the source returned the unit more than once")
def duplicate_unit(r: Reading, o: RuleOptions) -> bool:
    return r.rows > 1


@rule(HARD, "the unit is mapped but absent from the extraction")
def unit_missing(r: Reading, o: RuleOptions) -> bool:
    return r.rows == 0


@rule(
    HARD,
    "`updated_at` older than `rules.max_source_age_minutes`"
    " (for a CSV export without it: the file's age)",
)
def updated_at_stale(r: Reading, o: RuleOptions) -> bool:
    return isinstance(r.updated_at, datetime) and r.updated_at < r.now - o.max_source_age


@rule(HARD, "`updated_at` more than 5 minutes in the future")
def updated_at_future(r: Reading, o: RuleOptions) -> bool:
    return isinstance(r.updated_at, datetime) and r.updated_at > r.now + FUTURE_TOLERANCE


@rule(HARD, "`updated_at` is not a time")
def updated_at_invalid(r: Reading, o: RuleOptions) -> bool:
    return r.updated_at is Unreadable.NOT_A_TIME


@rule(
    WARNING,
    "installed beds changed by more than `rules.installed_change_warn`"
    " since the last accepted value",
)
def installed_change(r: Reading, o: RuleOptions) -> bool:
    if r.valid is None or r.previous_installed is None:
        return False
    return abs(r.valid[0] - r.previous_installed) > o.installed_change_warn * max(
        r.previous_installed, 1
    )


# In this order in a verdict, the README table and the metrics.
RULES: tuple[Rule, ...] = (
    count_missing,
    count_not_integer,
    count_negative,
    count_above_max,
    closed_above_installed,
    available_above_open,
    duplicate_unit,
    unit_missing,
    updated_at_stale,
    updated_at_future,
    updated_at_invalid,
    installed_change,
)
# The names, stable: they appear in logs, metrics (label `rule`) and the audit trail.
HARD_RULES = tuple(r.name for r in RULES if r.severity is HARD)
# The rules that can let a record through with a warning (coherence = "warn" for some).
WARNING_RULES = tuple(r.name for r in RULES if r.severity is WARNING or r.coherence)
COUNT_MISSING = count_missing.name
COUNT_NOT_INTEGER = count_not_integer.name
COUNT_NEGATIVE = count_negative.name
COUNT_ABOVE_MAX = count_above_max.name
CLOSED_ABOVE_INSTALLED = closed_above_installed.name
AVAILABLE_ABOVE_OPEN = available_above_open.name
DUPLICATE_UNIT = duplicate_unit.name
UNIT_MISSING = unit_missing.name
UPDATED_AT_STALE = updated_at_stale.name
UPDATED_AT_FUTURE = updated_at_future.name
UPDATED_AT_INVALID = updated_at_invalid.name
INSTALLED_CHANGE = installed_change.name


def _count(value: object) -> int | Unreadable | None:
    # A database's integer column gives an int: the common case, tested first (`type is`,
    # not isinstance: a bool is an int to isinstance, and never a count).
    return value if type(value) is int and value >= 0 else parse_count(value)


class Judge:
    """The rules under one cycle's options: `judge(rows, ror_id, ...)` gives a `Verdict`."""

    def __init__(self, options: RuleOptions) -> None:
        self.options = options
        # The rules' own functions, called directly: this loop runs for every unit.
        self._tests = tuple((r.test, r.name, r.hard_under(options)) for r in RULES)

    def read(
        self,
        rows: list[SourceRow],
        *,
        now: datetime,
        zone: tzinfo,
        file_mtime: datetime | None,
        previous_installed: int | None,
    ) -> Reading:
        if len(rows) != 1:
            return Reading(len(rows), (), None, None, previous_installed, now)
        row = rows[0]
        i, c, a = _count(row.installed), _count(row.closed), _count(row.available)
        limit = self.options.max_beds_per_unit
        valid = None
        if type(i) is int and type(c) is int and type(a) is int and max(i, c, a) <= limit:
            valid = (i, c, a)
        updated = parse_updated_at(row.updated_at, zone)
        if updated is None:
            updated = file_mtime
        return Reading(1, (i, c, a), valid, updated, previous_installed, now)

    def __call__(
        self,
        rows: list[SourceRow],
        ror_id: str,
        *,
        now: datetime,
        zone: tzinfo,
        file_mtime: datetime | None = None,
        previous_installed: int | None = None,
    ) -> Verdict:
        reading = self.read(
            rows,
            now=now,
            zone=zone,
            file_mtime=file_mtime,
            previous_installed=previous_installed,
        )
        fired: list[str] = []
        warnings: list[str] = []
        options = self.options
        for test, name, hard in self._tests:
            if test(reading, options):
                (fired if hard else warnings).append(name)
        if fired:
            return Verdict(None, tuple(fired), tuple(warnings), _as_read(rows, reading))
        if reading.valid is None:  # cannot be: the count rules are hard under any options
            raise RuntimeError(f"unit {ror_id}: no rule fired on counts that are not counts")
        updated = reading.updated_at if isinstance(reading.updated_at, datetime) else None
        return Verdict(UnitRecord(ror_id, BedCounts(*reading.valid), updated), (), tuple(warnings))


def _as_read(rows: list[SourceRow], reading: Reading) -> dict[str, object]:
    """The values as read, for the log line and the audit trail of a rejected unit.

    Built only for a rejected unit: most are accepted, and an ISO time costs as much as a rule.
    """
    if len(rows) != 1:
        return {"rows": len(rows)} if rows else {}
    row = rows[0]
    raw: dict[str, object] = {
        "installed": row.installed,
        "closed": row.closed,
        "available": row.available,
    }
    if reading.updated_at is Unreadable.NOT_A_TIME:
        raw["updated_at"] = row.updated_at
    elif isinstance(reading.updated_at, datetime):
        raw["updated_at"] = reading.updated_at.isoformat()
    return raw


def check_unit(
    rows: list[SourceRow],
    ror_id: str,
    *,
    now: datetime,
    zone: tzinfo,
    options: RuleOptions,
    file_mtime: datetime | None = None,
    previous_installed: int | None = None,
) -> Verdict:
    """Judge one mapped, automated unit (a one-off `Judge`; a cycle keeps one)."""
    return Judge(options)(
        rows,
        ror_id,
        now=now,
        zone=zone,
        file_mtime=file_mtime,
        previous_installed=previous_installed,
    )
