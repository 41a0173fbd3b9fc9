"""`rorfeed` command line: argument parsing and output formatting only.

Exit codes: 0 success (rejections and kill-switches included), 1 the work failed, 2 usage or
configuration error. stdout carries only what a command is asked to print; summaries and logs
go to stderr. Heavy modules (SQLAlchemy, paramiko, lxml) are imported inside the commands so
that `rorfeed --help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rorfeed import __version__
from rorfeed.errors import ConfigError, RorfeedError, StateError
from rorfeed.exit_codes import ExitCode

if TYPE_CHECKING:
    from rorfeed.config import Config
    from rorfeed.control import Control
    from rorfeed.cycle import CycleReport
    from rorfeed.emergency_config import EmergencyConfig
    from rorfeed.state import Store


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors: keep that
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


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
    sub.add_parser("serve", help="the daemon: cycles on schedule, metrics, signals, systemd")
    run = sub.add_parser("run-once", help="run one full cycle now")
    run.add_argument("--dry-run", action="store_true", help="write files locally, deliver nothing")
    run.add_argument("--output", type=Path, help="folder for --dry-run files")
    status = sub.add_parser("status", help="last cycles, files waiting, kill-switch state")
    status.add_argument("--json", action="store_true", help="one JSON document on stdout")

    units = sub.add_parser("units", help="every mapped unit and its mode; switch units")
    units.add_argument("--json", action="store_true", help="one JSON document on stdout")
    units_sub = units.add_subparsers(dest="units_command", parser_class=_Parser)
    for mode, text in (
        ("manual", "stop feeding units: manual entry in the ROR"),
        ("auto", "feed units automatically again"),
    ):
        switch = units_sub.add_parser(mode, help=text)
        switch.add_argument("unit", nargs="+", help="local code or ROR fiche id")
        _change_arguments(switch)

    kill = sub.add_parser("killswitch", help="stop or resume the automated feed")
    kill.add_argument("position", choices=("on", "off"))
    kill.add_argument("--establishment", metavar="FINESS", help="one establishment (default: all)")
    _change_arguments(kill)

    sub.add_parser("web", help="the web page for the chef de projet and the bed-management cell")
    accounts = sub.add_parser("users", help="accounts of the web page")
    accounts.add_argument(
        "action", choices=("add", "passwd", "disable", "end-sessions", "list", "rotate-key")
    )
    accounts.add_argument("name", nargs="?", help="account name (for list: only this one)")
    accounts.add_argument(
        "--role",
        choices=("lead", "viewer"),
        help="lead: may switch units and kill-switches; viewer: reads only (add needs it)",
    )
    accounts.add_argument(
        "--password-file",
        metavar="PATH",
        help="read the password from PATH ('-' = stdin) instead of asking twice",
    )

    mapping = sub.add_parser("mapping", help="show, compare and change the mappings")
    mapping_sub = mapping.add_subparsers(
        dest="mapping_command", required=True, parser_class=_Parser
    )
    show = mapping_sub.add_parser("show", help="the mappings as read now, modes beside (JSON)")
    show.add_argument("finess", nargs="?", help="one establishment (default: all)")
    show.add_argument("--version", type=int, help="print this kept version's file instead")
    kept = mapping_sub.add_parser("versions", help="the kept versions of a mapping")
    kept.add_argument("finess")
    compared = mapping_sub.add_parser("diff", help="the changes from OLD to NEW")
    compared.add_argument("finess")
    for name in ("old", "new"):
        compared.add_argument(name, help="a version number, `current`, or a file")
    for name, text, what in (
        ("apply", "preview a new mapping file, then write it", "file"),
        ("restore", "preview a kept version, then write it back", "version"),
    ):
        change = mapping_sub.add_parser(name, help=text)
        change.add_argument("finess")
        change.add_argument(what, type=int if what == "version" else str)
        change.add_argument("--yes", action="store_true", help="apply without asking")
        _change_arguments(change)

    history = sub.add_parser("history", help="the audit trail, newest first")
    history.add_argument("--unit", help="local code or ROR fiche id")
    history.add_argument("--limit", type=int, default=50)
    history.add_argument("--json", action="store_true", help="one JSON document on stdout")
    return parser


def _change_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", required=True, help="why (mandatory, kept in the audit trail)")
    parser.add_argument("--by", help="who (default: $SUDO_USER, else the current user)")


def default_actor() -> str:
    import getpass

    return os.environ.get("SUDO_USER") or getpass.getuser()


def _is_emergency(args: argparse.Namespace) -> bool:
    """`units manual` and `killswitch on` act even when the configuration is invalid."""
    return bool(args.command == "units" and args.units_command == "manual") or bool(
        args.command == "killswitch" and args.position == "on"
    )


def main(argv: Sequence[str] | None = None) -> int:
    # Every file and folder rorfeed creates is its owner's only (SPEC §10.3), whatever the umask
    # of the shell that runs it: the state store holds the page's signing key and the password
    # hashes, the outbox the files about to be sent. The systemd units say UMask=0077 too.
    os.umask(0o077)
    args = build_parser().parse_args(argv)
    # Imported after parsing: `rorfeed --help` must not pay for pydantic and structlog.
    from rorfeed import config as config_mod
    from rorfeed import logging as rlog

    rlog.configure()
    path = config_mod.config_path(args.config)
    if args.command == "serve":
        from rorfeed.daemon import serve as serve_daemon

        return serve_daemon(path)  # it validates the configuration itself, and again at each SIGHUP
    try:
        config = config_mod.load(path, for_web=args.command == "web")
    except ConfigError as exc:
        if not _is_emergency(args):
            print("\n".join(exc.problems), file=sys.stderr)
            return ExitCode.USAGE
        from rorfeed.emergency_config import load_emergency

        return _emergency(load_emergency(path, exc.problems), args)
    rlog.register_secrets(config.secrets.values())
    try:
        if args.command == "check":
            from rorfeed.check import run_checks

            return run_checks(config)
        if args.command == "run-once":
            return _run_once(config, args.dry_run, args.output)
        if args.command == "status":
            from rorfeed.reads_cli import status

            return status(config, _open_store(config), args.json)
        if args.command == "units" and args.units_command is None:
            from rorfeed.reads_cli import units

            return units(config, _open_store(config), args.json)
        if args.command == "history":
            from rorfeed.reads_cli import history

            return history(config, _open_store(config), args.unit, args.limit, args.json)
        if args.command == "web":
            from rorfeed.web.server import serve as serve_web

            return serve_web(config)
        if args.command == "users":
            from rorfeed.users_cli import users

            return users(config, args.action, args.name, args.role, args.password_file)
        if args.command == "mapping":
            return _mapping(config, args)
        if args.command in ("units", "killswitch"):
            from rorfeed.control import Control

            return _change(Control.from_config(config, _open_store(config)), args)
    except StateError as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except RorfeedError as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.USAGE


def _emergency(partial: EmergencyConfig, args: argparse.Namespace) -> int:
    from rorfeed.control import Control, Directory
    from rorfeed.notify import Notifier
    from rorfeed.state import open_store

    try:
        store = open_store(partial.state_url, partial.state_password)
        notifier = Notifier(partial.notify, partial.notify_password)
        control = Control(store, Directory(partial.names, partial.zone), notifier)
        code = _change(control, args, lenient_finess=True)
    except RorfeedError as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        code = ExitCode.FAILED
    print(
        "rorfeed: warning: the configuration is invalid (the emergency change was still made):",
        file=sys.stderr,
    )
    for problem in partial.problems:
        print(f"  {problem}", file=sys.stderr)
    return code


def _change(control: Control, args: argparse.Namespace, lenient_finess: bool = False) -> int:
    """`units manual|auto` and `killswitch on|off`, through the one implementation."""
    from rorfeed.control import ControlError
    from rorfeed.model import Mode

    actor = args.by if args.by is not None else default_actor()
    try:
        if args.command == "units":
            mode = Mode(args.units_command)
            events = control.switch_units(args.unit, mode, args.reason, actor)
            for e in events:
                print(
                    f"{e.unit.finess} {e.unit.ror_id} ({e.unit.local_code or '-'}, "
                    f"{e.unit.label}): {e.previous.value} → {e.new.value}",
                    file=sys.stderr,
                )
            print(
                f"{len(events)} unit(s) switched to {mode.value}, "
                f"{len(args.unit) - len(events)} already {mode.value}"
                + (
                    " — manual entry in the ROR is required for them from now on"
                    if mode is Mode.MANUAL and events
                    else ""
                ),
                file=sys.stderr,
            )
        else:
            on = args.position == "on"
            if lenient_finess and args.establishment:
                control.directory.names.setdefault(args.establishment, args.establishment)
            event = control.killswitch(args.establishment, on, args.reason, actor)
            scope = args.establishment or "all establishments"
            if event is None:
                print(f"kill-switch of {scope} already {args.position}", file=sys.stderr)
            else:
                print(
                    f"kill-switch of {scope} turned {args.position}"
                    + (" — manual entry in the ROR is required" if on else ""),
                    file=sys.stderr,
                )
    except ControlError as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    control.flush_notifications()
    return ExitCode.OK


def _mapping(config: Config, args: argparse.Namespace) -> int:
    from rorfeed import mapping_cli

    store = _open_store(config)
    command = args.mapping_command
    if command == "show":
        return mapping_cli.show(config, store, args.finess, args.version)
    if command == "versions":
        return mapping_cli.versions(store, args.finess)
    if command == "diff":
        return mapping_cli.diff(config, store, args.finess, args.old, args.new)
    from rorfeed.control import Control

    source = args.file if command == "apply" else f"version:{args.version}"
    return mapping_cli.apply(
        config,
        store,
        Control.from_config(config, store),
        args.finess,
        source,
        reason=args.reason,
        actor=args.by or default_actor(),
        yes=args.yes,
    )


def _open_store(config: Config, *, read_only_if_missing: bool = False) -> Store:
    from rorfeed.state import open_store

    url = config.state_url
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        if read_only_if_missing and not db.exists():
            # A dry run changes no state: not even by creating an empty store.
            return open_store("sqlite://")
    return open_store(url, config.state_password)


def _run_once(config: Config, dry_run: bool, output: Path | None) -> int:
    from rorfeed import heap
    from rorfeed.cycle import Cycle, utc_now

    now = utc_now().replace(microsecond=0)
    dry_dir = None
    if dry_run:
        stamp = now.astimezone(config.zone).strftime("%Y%m%d-%H%M%S")
        dry_dir = output if output is not None else Path.cwd() / f"rorfeed-dry-run-{stamp}"
        dry_dir.mkdir(parents=True, exist_ok=True)
    elif output is not None:
        print("rorfeed: --output goes with --dry-run", file=sys.stderr)
        return ExitCode.USAGE
    store = _open_store(config, read_only_if_missing=dry_run)
    last = store.recent_cycles(1)
    if not dry_run and last and last[0].cycle_time == now:
        # File names carry the cycle time to the second: two runs in the same second would
        # write the same names. Wait for the next second rather than collide. (A last cycle
        # ahead of the clock — a clock set back — is no reason to wait for hours: the cycle
        # runs, and its files, older than those delivered, are superseded.)
        time.sleep(1.0)
        now = utc_now().replace(microsecond=0)
    heap.freeze()  # see rorfeed.heap: the libraries stay out of the collector's walks
    from rorfeed.model import EstablishmentStatus

    report = Cycle(config, store).run(now, dry_run_dir=dry_dir)
    print(format_summary(report), file=sys.stderr)
    if dry_dir is not None:
        print(dry_dir.absolute())
    if report.failed:
        reasons = [
            f"{e.finess}: {e.error.splitlines()[0]}"
            for e in report.establishments
            if e.status in (EstablishmentStatus.SOURCE_DOWN, EstablishmentStatus.MAPPING_ERROR)
        ] + [f"{d.destination}: {d.error}" for d in report.deliveries if not d.ok]
        print(f"rorfeed: cycle failed — {'; '.join(reasons)}", file=sys.stderr)
        return ExitCode.FAILED
    stopped = [
        e.finess for e in report.establishments if e.status is EstablishmentStatus.KILLSWITCH
    ]
    if stopped:
        print(f"rorfeed: kill-switch on, nothing sent for {', '.join(stopped)}", file=sys.stderr)
    return ExitCode.OK


# The establishments whose units were not judged, and why, in the summary's words; a
# kill-switch tripped in this cycle (rejections seen) is said with the counts instead.
_NOTHING_READ = {
    "source_down": "source unreachable",
    "mapping_error": "mapping invalid",
    "killswitch": "kill-switch on, nothing sent",
}  # keyed by EstablishmentStatus values: rorfeed.model stays off `--help`'s path


def format_summary(report: CycleReport) -> str:
    from rorfeed.model import EstablishmentStatus

    lines = [f"Cycle {report.cycle_time.isoformat()} — {report.outcome}"]
    for e in report.establishments:
        head = f"  {e.name} ({e.finess}): "
        what = _NOTHING_READ.get(e.status)
        if what is not None and not (e.status is EstablishmentStatus.KILLSWITCH and e.rejected):
            lines.append(head + what + (f": {e.error.splitlines()[0]}" if e.error else ""))
            continue
        lines.append(
            head + f"{e.sent} sent, {e.rejected_count} rejected, {e.manual} manual, "
            f"{len(e.unmapped)} unmapped, {len(e.files)} files"
            + (
                " — kill-switch tripped, nothing sent"
                if e.status is EstablishmentStatus.KILLSWITCH
                else ""
            )
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
            ("withheld", d.withheld),
            ("waiting", d.failed),
        ):
            if items:
                line += f", {len(items)} {label}"
        if d.error:
            line += f" ({d.error})"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
