"""`rorfeed check`: every check prints one line on stdout, `OK`, `WARN` or `FAIL`; nothing is sent.

    OK   config: /etc/rorfeed/rorfeed.toml (1 establishment, 1 destination)
    OK   750712184 Hôpital Exemple: mapping: 42 fiches (40 auto, 2 manual)
    WARN 750712184 Hôpital Exemple: source: unit NEUR is not in the mapping (its rows are ignored)
    FAIL destination "sesan" (sftp etab@sftp.example.org:22): host key not trusted: ...

Checks, in order: the configuration (already validated when we get here), then per establishment
its mapping, its referential (when configured) and its source (connect and extract, nothing
written), then per destination: connect, verify the host key, authenticate, prove the remote
folder writable with a probe under a temporary name, removed at once. A missing remote folder is
reported, never created. Warnings (unmapped source units, mapped units absent from the source,
perimeter fiches not in the mapping) do not fail the check; any `FAIL` makes it exit 1, with a
one-line summary on stderr.
"""

from __future__ import annotations

import sys

from rorfeed.config import Config
from rorfeed.errors import MappingError, RorfeedError
from rorfeed.exit_codes import ExitCode
from rorfeed.mapping import Mapping, compare_referential, parse_mapping, parse_referential
from rorfeed.model import Mode
from rorfeed.sources import open_source
from rorfeed.transports import open_transport
from rorfeed.wording import counted_en, one_line


class _Printer:
    def __init__(self) -> None:
        self.failures = 0
        self.warnings = 0
        # Failures that are the configuration's (a mapping that is not one-to-one): exit 2, as
        # `run-once` and `serve` treat them (SPEC §2, §4).
        self.config_errors = 0

    def ok(self, what: str, detail: str) -> None:
        self._print("OK  ", what, detail)

    def fail(self, what: str, detail: str) -> None:
        self.failures += 1
        self._print("FAIL", what, detail)

    def warn(self, what: str, detail: str) -> None:
        self.warnings += 1
        self._print("WARN", what, detail)

    @staticmethod
    def _print(tag: str, what: str, detail: str) -> None:
        print(f"{tag} {what}: {one_line(detail)}", flush=True)


def run_checks(config: Config) -> int:
    """Run every check; return 0 when all pass (warnings allowed), 2 when a mapping is
    invalid (a configuration error), else 1."""
    out = _Printer()
    n_est, n_dest = len(config.file.establishments), len(config.file.destinations)
    out.ok(
        "config",
        f"{config.path} ({counted_en(n_est, 'establishment')},"
        f" {counted_en(n_dest, 'destination')})",
    )
    for index, est in enumerate(config.file.establishments):
        what = f"{est.finess} {est.name}"
        mapping = _check_mapping(config, index, what, out)
        _check_source(config, index, what, mapping, out)
    for index, dest in enumerate(config.file.destinations):
        transport = open_transport(config, index)
        try:
            with transport.open(dest.timeout_seconds) as session:
                session.probe()
                detail = session.describe()
        except RorfeedError as exc:
            message = str(exc)
            # The message starts with the destination's description: not twice on the line.
            out.fail(transport.where, message.removeprefix(f"{transport.where}: "))
        else:
            out.ok(transport.where, detail)
    if out.failures:
        print(
            f"rorfeed: check failed: {counted_en(out.failures, 'problem')},"
            f" {counted_en(out.warnings, 'warning')} (see the FAIL lines)",
            file=sys.stderr,
        )
        return ExitCode.USAGE if out.config_errors else ExitCode.FAILED
    print(
        f"rorfeed: check passed ({counted_en(out.warnings, 'warning')})",
        file=sys.stderr,
    )
    return ExitCode.OK


def _check_mapping(config: Config, index: int, what: str, out: _Printer) -> Mapping | None:
    est = config.file.establishments[index]
    try:
        mapping = parse_mapping(config.resolve(est.mapping))
    except MappingError as exc:
        out.config_errors += 1
        for problem in exc.problems:
            out.fail(f"{what}: mapping", problem)
        return None
    manual = sum(u.declared_mode is Mode.MANUAL for u in mapping.units)
    out.ok(
        f"{what}: mapping",
        f"{counted_en(len(mapping.units), 'fiche')} ({len(mapping.units) - manual} auto,"
        f" {manual} manual)",
    )
    if not est.referential:
        return mapping
    path = config.resolve(est.referential)
    try:
        report = compare_referential(mapping, parse_referential(path))
    except MappingError as exc:
        out.fail(f"{what}: referential", "; ".join(exc.problems))
        return mapping
    for ror_id in report.not_in_referential:
        out.fail(
            f"{what}: referential",
            f"mapped fiche {ror_id} is not in the referential {path} — fix its id in the"
            " mapping, or remove it if it left the « Disponibilité en lits » perimeter",
        )
    for ror_id in report.not_mapped:
        out.warn(
            f"{what}: referential",
            f"fiche {ror_id} is in the perimeter but not in the mapping: it needs manual entry"
            " in the ROR — declare it with mode = manual to acknowledge it",
        )
    if not report.not_in_referential:
        out.ok(f"{what}: referential", "every mapped fiche is in the perimeter")
    return mapping


def _check_source(
    config: Config, index: int, what: str, mapping: Mapping | None, out: _Printer
) -> None:
    try:
        extraction = open_source(config, index).fetch()
    except RorfeedError as exc:
        out.fail(f"{what}: source", f"unreachable: {exc}")
        return
    codes = {row.unit.strip() for row in extraction.rows}
    out.ok(
        f"{what}: source",
        f"{counted_en(len(extraction.rows), 'row')}, {counted_en(len(codes), 'unit')}",
    )
    if mapping is None:
        return
    mapped = mapping.by_local_code()
    for code in sorted(codes - set(mapped)):
        out.warn(f"{what}: source", f"unit {code} is not in the mapping (its rows are ignored)")
    for code, unit in sorted(mapped.items()):
        if unit.declared_mode is Mode.AUTO and code not in codes:
            out.warn(
                f"{what}: source",
                f"mapped unit {code} (fiche {unit.ror_id}) is absent from the extraction:"
                " it would be rejected (unit_missing)",
            )
