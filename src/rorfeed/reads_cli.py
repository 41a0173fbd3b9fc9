"""The read commands, `rorfeed status`, `units` and `history`: what the state holds, as a table
for people or one JSON document on stdout; counts and notes go to stderr.

The rows come from `rorfeed.reads`, the read side the web page shares.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime

from rorfeed.config import Config
from rorfeed.errors import shown
from rorfeed.exit_codes import ExitCode
from rorfeed.model import GLOBAL
from rorfeed.reads import unit_rows
from rorfeed.state import Store


def _iso(value: datetime | None, config: Config) -> str | None:
    return None if value is None else value.astimezone(config.zone).isoformat()


def status(config: Config, store: Store, as_json: bool) -> int:
    """`rorfeed status`: the last cycles, the files waiting, the kill-switches, the streaks."""
    cycles = [
        {
            "cycle_time": _iso(c.cycle_time, config),
            "started_at": _iso(c.started_at, config),
            "finished_at": _iso(c.finished_at, config),
            "outcome": c.outcome.value,
            "sent": c.sent,
            "rejected": c.rejected,
        }
        for c in store.recent_cycles(10)
    ]
    waiting = store.outbox_counts()
    outbox = {d.name: waiting.get(d.name, 0) for d in config.file.destinations}
    switches = store.killswitches()
    per_establishment = {
        e.finess: switches.get(e.finess, False) for e in config.file.establishments
    }
    units = [u for u in store.units() if u.in_mapping]
    if as_json:
        doc = {
            "cycles": cycles,
            "outbox": outbox,
            "killswitch": {
                "global": switches.get(GLOBAL, False),
                "establishments": per_establishment,
            },
            "units": [
                {
                    "finess": u.finess,
                    "ror_id": u.ror_id,
                    "local_code": u.local_code,
                    "mode": u.mode.value,
                    "streak": u.streak,
                    "last_rules": list(u.last_rules),
                }
                for u in units
            ],
        }
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return ExitCode.OK
    print("Last cycles:")
    if not cycles:
        print("  none yet")
    for c in cycles:
        print(f"  {c['cycle_time']}  {c['outcome']:<8} sent {c['sent']}  rejected {c['rejected']}")
    print("Files waiting in the outbox:")
    for name, n in outbox.items():
        print(f"  {name}: {n}")
    print(f"Kill-switch: global {'ON' if switches.get(GLOBAL) else 'off'}")
    for finess, on in per_establishment.items():
        print(f"  {finess}: {'ON' if on else 'off'}")
    streaks = [u for u in units if u.streak]
    if streaks:
        print("Units with an anomaly streak:")
        for u in streaks:
            print(
                f"  {u.finess} {u.ror_id} ({u.local_code}): {u.streak} cycle(s), "
                f"{', '.join(u.last_rules)}"
            )
    return ExitCode.OK


def units(config: Config, store: Store, as_json: bool) -> int:
    """`rorfeed units`: every mapped unit, its mode, and whether it is entered by hand."""
    rows = unit_rows(config, store)
    doc = [
        {
            "finess": u.finess,
            "establishment": r.establishment,
            "local_code": u.local_code,
            "ror_id": u.ror_id,
            "label": u.label,
            "mode": u.mode.value,
            "mode_since": _iso(u.mode_since, config),
            "mode_reason": u.mode_reason,
            "declared_manual": u.declared_mode.value == "manual",
            "priority": int(u.priority),
            "id_externe_synchro": u.sync_code,
            # Why the bed-management cell must enter it by hand in the ROR; [] = fed by rorfeed.
            "manual_entry": [reason.value for reason in r.manual_reasons],
            "last_counts": None
            if u.last_counts is None
            else {
                "installed": u.last_counts.installed,
                "closed": u.last_counts.closed,
                "available": u.last_counts.available,
            },
            "last_counts_at": _iso(u.last_counts_at, config),
            "streak": u.streak,
        }
        for r in rows
        for u in (r.unit,)
    ]
    if as_json:
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return ExitCode.OK
    table = [
        [
            u.finess,
            u.local_code or "-",
            u.ror_id,
            u.label,
            str(int(u.priority)),
            ("MANUEL" if u.mode.value == "manual" else "auto")
            + (" (mapping)" if u.declared_mode.value == "manual" else ""),
            _short(u.mode_since, config),
            u.mode_reason,
            "-"
            if u.last_counts is None
            else f"{u.last_counts.installed}/{u.last_counts.closed}/{u.last_counts.available}",
            _short(u.last_counts_at, config),
            str(u.streak),
            ", ".join(reason.value for reason in r.manual_reasons) or "-",
        ]
        for r in rows
        for u in (r.unit,)
    ]
    header = [
        "FINESS",
        "LOCAL",
        "ROR ID",
        "LABEL",
        "PRIO",
        "MODE",
        "SINCE",
        "WHY",
        "LAST SENT I/C/A",
        "SENT AT",
        "STREAK",
        "ENTER BY HAND",
    ]
    print(_table(header, table))
    manual = sum(1 for r in rows if r.unit.mode.value == "manual")
    by_hand = sum(1 for r in rows if r.needs_manual)
    print(
        f"{len(doc)} unit(s), {manual} in manual mode, {by_hand} to enter by hand in the ROR",
        file=sys.stderr,
    )
    return ExitCode.OK


def history(config: Config, store: Store, unit: str | None, limit: int, as_json: bool) -> int:
    """`rorfeed history`: the audit trail, newest first."""
    entries = store.history(unit, limit)
    doc = [
        {
            "at": _iso(e.at, config),
            "actor": e.actor,
            "action": e.action,
            "finess": e.finess,
            "ror_id": e.ror_id,
            "local_code": e.local_code,
            "previous": e.previous,
            "new": e.new,
            "reason": e.reason,
        }
        for e in entries
    ]
    if as_json:
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return ExitCode.OK
    rows = [
        [
            _short(e.at, config),
            str(d["actor"]),
            str(d["action"]),
            str(d["finess"] or "*"),
            str(d["ror_id"] or "-"),
            f"{d['previous'] or '-'} → {d['new'] or '-'}",
            str(d["reason"]),
        ]
        for e, d in zip(entries, doc, strict=True)
    ]
    print(_table(["AT", "WHO", "ACTION", "FINESS", "ROR ID", "CHANGE", "WHY"], rows))
    print(f"{len(doc)} entr{'y' if len(doc) == 1 else 'ies'}", file=sys.stderr)
    return ExitCode.OK


def _short(at: datetime | None, config: Config) -> str:
    """A table cell for a time: local date and minute, the offset kept (never a relative age)."""
    if at is None:
        return "-"
    return at.astimezone(config.zone).isoformat(sep=" ", timespec="minutes")


def _table(header: list[str], rows: list[list[str]]) -> str:
    # Cells come from the state store and the mapping: a control character (an escape
    # sequence in a label written before the mapping refused them) is shown, never run.
    rows = [[shown(str(c)) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)
