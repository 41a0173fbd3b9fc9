"""The named validation rules (SPEC §6): pure functions of a unit's rows and its previous state.

`check_unit` never raises: it returns a `Verdict` holding either the validated record or the
names of every rule that fired. A record is sent only when no hard rule fired; a warning
(`installed_change`, or `incoherent_*` when coherence = "warn") is sent but counted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal

from rorfeed.model import BedCounts, SourceRow, UnitRecord

# Rule names: stable, they appear in logs, metrics (label `rule`) and the audit trail.
COUNT_MISSING = "count_missing"
COUNT_NOT_INTEGER = "count_not_integer"
COUNT_NEGATIVE = "count_negative"
COUNT_ABOVE_MAX = "count_above_max"
CLOSED_ABOVE_INSTALLED = "closed_above_installed"
AVAILABLE_ABOVE_OPEN = "available_above_open"
DUPLICATE_UNIT = "duplicate_unit"
UNIT_MISSING = "unit_missing"
UPDATED_AT_STALE = "updated_at_stale"
UPDATED_AT_FUTURE = "updated_at_future"
UPDATED_AT_INVALID = "updated_at_invalid"
INSTALLED_CHANGE = "installed_change"  # warning only

HARD_RULES = (
    COUNT_MISSING,
    COUNT_NOT_INTEGER,
    COUNT_NEGATIVE,
    COUNT_ABOVE_MAX,
    CLOSED_ABOVE_INSTALLED,
    AVAILABLE_ABOVE_OPEN,
    DUPLICATE_UNIT,
    UNIT_MISSING,
    UPDATED_AT_STALE,
    UPDATED_AT_FUTURE,
    UPDATED_AT_INVALID,
)

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


class _NotCount:
    """Marker for a value that is present but not an integer (or negative)."""

    def __init__(self, rule: str) -> None:
        self.rule = rule


def parse_count(value: object) -> int | _NotCount | None:
    """The exact integer definition of SPEC §6; None means "missing"."""
    if value is None:
        return None
    if isinstance(value, bool):  # bool is an int subclass in Python: never a count
        return _NotCount(COUNT_NOT_INTEGER)
    if isinstance(value, int):
        return value if value >= 0 else _NotCount(COUNT_NEGATIVE)
    if isinstance(value, float | Decimal):
        if isinstance(value, float) and not math.isfinite(value):
            return _NotCount(COUNT_NOT_INTEGER)
        if isinstance(value, Decimal) and not value.is_finite():
            return _NotCount(COUNT_NOT_INTEGER)
        if value != int(value):
            return _NotCount(COUNT_NOT_INTEGER)
        number = int(value)
        return number if number >= 0 else _NotCount(COUNT_NEGATIVE)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if _ASCII_DIGITS.fullmatch(text):
            return int(text)
        if text.startswith("-") and _ASCII_DIGITS.fullmatch(text[1:]):
            return _NotCount(COUNT_NEGATIVE)
        return _NotCount(COUNT_NOT_INTEGER)
    return _NotCount(COUNT_NOT_INTEGER)


def parse_updated_at(value: object, zone: tzinfo) -> datetime | _NotCount | None:
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
            return _NotCount(UPDATED_AT_INVALID)
    else:
        return _NotCount(UPDATED_AT_INVALID)
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=zone, fold=0)
    return moment


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
    """Judge one mapped, automated unit from the rows the source returned for it."""
    if not rows:
        return Verdict(None, (UNIT_MISSING,))
    if len(rows) > 1:
        return Verdict(None, (DUPLICATE_UNIT,), raw={"rows": len(rows)})
    row = rows[0]
    fired: list[str] = []
    counts: list[int] = []
    for value in (row.installed, row.closed, row.available):
        # A database's integer column gives an int: the common case, tested first (`type is`,
        # not isinstance: a bool is an int to isinstance, and never a count).
        parsed = value if type(value) is int and value >= 0 else parse_count(value)
        if parsed is None:
            fired.append(COUNT_MISSING)
        elif isinstance(parsed, _NotCount):
            fired.append(parsed.rule)
        elif parsed > options.max_beds_per_unit:
            fired.append(COUNT_ABOVE_MAX)
        else:
            counts.append(parsed)

    warnings: list[str] = []
    if len(counts) == 3:
        installed, closed, available = counts
        incoherent = []
        if closed > installed:
            incoherent.append(CLOSED_ABOVE_INSTALLED)
        if available > installed - closed:
            incoherent.append(AVAILABLE_ABOVE_OPEN)
        if options.coherence_rejects:
            fired.extend(incoherent)
        else:
            warnings.extend(incoherent)
        if previous_installed is not None and abs(
            installed - previous_installed
        ) > options.installed_change_warn * max(previous_installed, 1):
            warnings.append(INSTALLED_CHANGE)

    updated = parse_updated_at(row.updated_at, zone)
    if updated is None:
        updated = file_mtime
    if isinstance(updated, _NotCount):
        fired.append(UPDATED_AT_INVALID)
        updated = None
    elif updated is not None:
        if updated < now - options.max_source_age:
            fired.append(UPDATED_AT_STALE)
        elif updated > now + FUTURE_TOLERANCE:
            fired.append(UPDATED_AT_FUTURE)

    if fired:
        # The values as read, for the log line and the audit trail: built only for a
        # rejected unit (most are accepted, and an ISO time costs as much as a rule).
        raw: dict[str, object] = {
            "installed": row.installed,
            "closed": row.closed,
            "available": row.available,
        }
        if UPDATED_AT_INVALID in fired:
            raw["updated_at"] = row.updated_at
        elif updated is not None:
            raw["updated_at"] = updated.isoformat()
        return Verdict(None, tuple(dict.fromkeys(fired)), tuple(warnings), raw)
    record = UnitRecord(ror_id, BedCounts(*counts), updated)
    return Verdict(record, (), tuple(warnings))
