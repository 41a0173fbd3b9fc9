"""The cron grammar of `daemon.schedule` (SPEC §9): checked, turned into a trigger, looked back.

One grammar for the configuration's check (`schedule_problem`, without importing the
scheduler: `rorfeed check` and every command load the configuration) and for the daemon
(`make_trigger`, APScheduler 3's triggers with cron's own semantics; `previous_fire_time` and
`missed_run` for the catch-up at start).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from rorfeed.errors import ConfigError

if TYPE_CHECKING:
    from rorfeed.config import Config

Trigger = Any  # an APScheduler 3 trigger (the library ships no type hints)

# The five fields, with the range of each (a weekday of 0 or 7 is Sunday, as in cron).
_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 7),
)
_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# One comma-separated item of a field: `*`, `n` or `n-m`, each with an optional `/step`.
_CRON_ITEM = re.compile(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?")


def schedule_problem(expr: str) -> str | None:
    """What is wrong with the five-field cron expression `expr`, or None."""
    parts = expr.split()
    if len(parts) != 5:
        return f'found "{expr}", expected 5 fields: minute hour day month weekday'
    for (fname, lo, hi), part in zip(_CRON_FIELDS, parts, strict=True):
        for item in part.split(","):
            m = _CRON_ITEM.fullmatch(item)
            if not m or (m.group(4) is not None and int(m.group(4)) == 0):
                return f'found "{expr}": {fname} field "{part}" is not valid cron syntax'
            for num in (m.group(2), m.group(3)):
                if num is not None and not lo <= int(num) <= hi:
                    return f'found "{expr}": {fname} {num} is outside {lo}-{hi}'
            if m.group(3) is not None and int(m.group(2)) > int(m.group(3)):
                return f'found "{expr}": {fname} range "{item}" runs backwards'
    return None


_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_ITEM = re.compile(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?")


def _weekdays(field: str) -> str:
    """A cron weekday field (0 or 7 = Sunday) as APScheduler 3 day names.

    APScheduler 3 numbers weekdays from 0 = Monday, even in `CronTrigger.from_crontab`: giving
    it cron's numbers would shift every weekday by one. Names are unambiguous.
    """
    days: set[int] = set()
    for item in field.split(","):
        m = _CRON_ITEM.fullmatch(item)
        if m is None:
            raise ValueError(f'weekday field "{field}" is not valid cron syntax')
        step = int(m.group(4) or 1)
        if m.group(1) == "*":
            lo, hi = 0, 6
        else:
            lo = int(m.group(2))
            hi = int(m.group(3)) if m.group(3) is not None else (7 if m.group(4) else lo)
        if lo > hi or hi > 7:
            raise ValueError(f'weekday field "{field}": range {lo}-{hi} is not within 0-7')
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_CRON_WEEKDAYS[d] for d in sorted(days))


def make_trigger(schedule: str, zone: tzinfo) -> Trigger:
    """APScheduler trigger of a five-field cron expression, with cron's own semantics.

    Two differences from `CronTrigger.from_crontab` are corrected: weekday numbers (see
    `_weekdays`), and cron's rule that when both the day of month and the weekday are
    restricted, a time matching *either* fires. Raises ValueError on an invalid expression.
    """
    from apscheduler.triggers.combining import OrTrigger  # type: ignore[import-untyped]
    from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

    fields = schedule.split()
    if len(fields) != 5:
        raise ValueError(f'"{schedule}": expected 5 fields: minute hour day month weekday')
    minute, hour, day, month, weekday = fields
    dow = "*" if weekday == "*" else _weekdays(weekday)

    def cron(day: str, dow: str) -> Trigger:
        return CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=dow, timezone=zone
        )

    if not day.startswith("*") and not weekday.startswith("*"):
        return OrTrigger([cron(day, "*"), cron("*", dow)])
    return cron(day, dow)


def schedule_trigger(config: Config) -> Trigger:
    """The configuration's schedule; an expression APScheduler refuses is a ConfigError."""
    try:
        return make_trigger(config.file.daemon.schedule, config.zone)
    except ValueError as exc:
        raise ConfigError([f"{config.path.name}: daemon.schedule: {exc}"]) from None


# Enough to find the previous fire time of any cron schedule, the 29th of February included.
_LOOKBACK = (
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=32),
    timedelta(days=367),
    timedelta(days=8 * 366),
)


def previous_fire_time(trigger: Trigger, now: datetime) -> datetime | None:
    """The latest fire time of `trigger` not after `now` (None if there is none), in UTC.

    Computed forward with the trigger's own arithmetic from a point far enough back, so that
    daylight-saving changes are handled exactly as the scheduler handles them.
    """
    # In UTC: arithmetic and comparisons of datetimes sharing a zone are wall-clock ones,
    # which the repeated autumn hour would fool.
    now = now.astimezone(UTC)
    for back in _LOOKBACK:
        fire: datetime | None = trigger.get_next_fire_time(None, now - back)
        if fire is None or fire.astimezone(UTC) > now:
            continue
        while True:
            following: datetime | None = trigger.get_next_fire_time(fire, fire)
            if following is None or following.astimezone(UTC) > now:
                return fire.astimezone(UTC)
            fire = following
    return None


def missed_run(trigger: Trigger, last_cycle: datetime | None, now: datetime) -> datetime | None:
    """The fire time to catch up at start, if any (SPEC §9).

    A run was missed when the state's last cycle is older than the schedule's previous fire
    time; a fresh state (`last_cycle` None) has missed nothing. Only the latest missed run is
    caught up, once.
    """
    if last_cycle is None:
        return None
    previous = previous_fire_time(trigger, now)
    if previous is None or last_cycle.astimezone(UTC) >= previous:
        return None
    return previous
