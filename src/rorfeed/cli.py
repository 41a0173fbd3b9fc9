"""`rorfeed` command line: argument parsing and output formatting only.

Exit codes: 0 success (rejections and kill-switches included), 1 the work failed, 2 usage or
configuration error. stdout carries only what a command is asked to print; summaries and logs
go to stderr. Heavy modules (SQLAlchemy, paramiko, lxml) are imported inside the commands so
that `rorfeed --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rorfeed import __version__
from rorfeed import config as config_mod
from rorfeed.errors import ConfigError, RorfeedError, StateError

if TYPE_CHECKING:
    from rorfeed.config import Config
    from rorfeed.cycle import CycleReport
    from rorfeed.state import Store

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors: keep that
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rorfeed",
        description="Hourly feed of bed availability to the regional ROR.",
    )
    parser.add_argument("--version", action="version", version=f"rorfeed {__version__}")
    parser.add_argument(
        "--config",
        help="configuration file (default: $RORFEED_CONFIG, else /etc/rorfeed/rorfeed.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("check", help="validate the configuration and test every source and destination")
    run = sub.add_parser("run-once", help="run one full cycle now")
    run.add_argument("--dry-run", action="store_true", help="write files locally, deliver nothing")
    run.add_argument("--output", type=Path, help="folder for --dry-run files")
    status = sub.add_parser("status", help="last cycles, files waiting, kill-switch state")
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rorfeed import logging as rlog

    rlog.configure()
    path = config_mod.config_path(args.config)
    try:
        config = config_mod.load(path)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "check":
            from rorfeed.check import run_checks

            return run_checks(config)
        if args.command == "run-once":
            return _run_once(config, args.dry_run, args.output)
        if args.command == "status":
            return _status(config, args.json)
    except StateError as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RorfeedError as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE


def _open_store(config: Config, *, read_only_if_missing: bool = False) -> Store:
    from rorfeed.state import open_store

    url = config.state_url
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        if read_only_if_missing and not db.exists():
            # A dry run changes no state: not even by creating an empty store.
            return open_store("sqlite://")
    return open_store(url)


def _run_once(config: Config, dry_run: bool, output: Path | None) -> int:
    from rorfeed.cycle import Cycle, utc_now

    now = utc_now().replace(microsecond=0)
    dry_dir = None
    if dry_run:
        stamp = now.astimezone(config.zone).strftime("%Y%m%d-%H%M%S")
        dry_dir = output if output is not None else Path.cwd() / f"rorfeed-dry-run-{stamp}"
        dry_dir.mkdir(parents=True, exist_ok=True)
    elif output is not None:
        print("rorfeed: --output goes with --dry-run", file=sys.stderr)
        return EXIT_USAGE
    store = _open_store(config, read_only_if_missing=dry_run)
    report = Cycle(config, store).run(now, dry_run_dir=dry_dir)
    print(format_summary(report), file=sys.stderr)
    if dry_dir is not None:
        print(dry_dir.absolute())
    if report.failed:
        reasons = [
            f"{e.finess}: {e.error.splitlines()[0]}"
            for e in report.establishments
            if e.status in ("source_down", "mapping_error")
        ] + [f"{d.destination}: {d.error}" for d in report.deliveries if not d.ok]
        print(f"rorfeed: cycle failed — {'; '.join(reasons)}", file=sys.stderr)
        return EXIT_FAILED
    stopped = [e.finess for e in report.establishments if e.status == "killswitch"]
    if stopped:
        print(f"rorfeed: kill-switch on, nothing sent for {', '.join(stopped)}", file=sys.stderr)
    return EXIT_OK


def format_summary(report: CycleReport) -> str:
    lines = [f"Cycle {report.cycle_time.isoformat()} — {report.outcome}"]
    for e in report.establishments:
        head = f"  {e.name} ({e.finess}): "
        if e.status in ("source_down", "mapping_error", "killswitch"):
            what = {
                "source_down": "source unreachable",
                "mapping_error": "mapping invalid",
                "killswitch": "kill-switch on, nothing sent",
            }[e.status]
            lines.append(head + what + (f": {e.error.splitlines()[0]}" if e.error else ""))
            continue
        lines.append(
            head + f"{e.sent} sent, {e.rejected_count} rejected, {e.manual} manual, "
            f"{len(e.unmapped)} unmapped, {len(e.files)} files"
        )
        for rule, n in sorted(e.rejected.items()):
            lines.append(f"    rejected by {rule}: {n}")
        for rule, n in sorted(e.warnings.items()):
            lines.append(f"    warning {rule}: {n}")
        if e.unmapped:
            lines.append(f"    unmapped source units: {', '.join(e.unmapped)}")
    for d in report.deliveries:
        line = f"  → {d.destination}: {len(d.delivered)} delivered"
        for label, items in (
            ("superseded", d.superseded),
            ("expired", d.expired),
            ("uncertain", d.uncertain),
            ("waiting", d.failed),
        ):
            if items:
                line += f", {len(items)} {label}"
        if d.error:
            line += f" ({d.error})"
        lines.append(line)
    return "\n".join(lines)


def _iso(value: datetime | None, config: Config) -> str | None:
    return None if value is None else value.astimezone(config.zone).isoformat()


def _status(config: Config, as_json: bool) -> int:
    from rorfeed.state import GLOBAL

    store = _open_store(config)
    cycles = [
        {
            "cycle_time": _iso(c.cycle_time, config),
            "started_at": _iso(c.started_at, config),
            "finished_at": _iso(c.finished_at, config),
            "outcome": c.outcome,
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
        return EXIT_OK
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
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
