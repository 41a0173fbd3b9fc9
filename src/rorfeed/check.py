"""`rorfeed check`: every check prints one line, `OK …` or the reason; nothing is sent."""

from __future__ import annotations

import sys

from rorfeed.config import Config
from rorfeed.errors import MappingError, RorfeedError
from rorfeed.mapping import compare_referential, parse_mapping, parse_referential
from rorfeed.sources import open_source
from rorfeed.transports import open_transport


def run_checks(config: Config) -> int:
    """Run every check; return 0 when all pass (warnings allowed), else 1."""
    failures = 0
    warnings = 0

    def line(ok: bool, what: str, detail: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'OK  ' if ok else 'FAIL'} {what}: {detail}")

    def warn(what: str, detail: str) -> None:
        nonlocal warnings
        warnings += 1
        print(f"WARN {what}: {detail}")

    line(True, "config", str(config.path))
    for index, est in enumerate(config.file.establishments):
        what = f"{est.finess} {est.name}"
        try:
            mapping = parse_mapping(config.resolve(est.mapping))
        except MappingError as exc:
            for problem in exc.problems:
                line(False, f"{what} mapping", problem)
            continue
        line(True, f"{what} mapping", f"{len(mapping.units)} fiches")
        if est.referential:
            try:
                report = compare_referential(
                    mapping, parse_referential(config.resolve(est.referential))
                )
            except MappingError as exc:
                line(False, f"{what} referential", "; ".join(exc.problems))
            else:
                for ror_id in report.not_in_referential:
                    line(False, f"{what} referential", f"mapped fiche {ror_id} is not in it")
                for ror_id in report.not_mapped:
                    warn(
                        f"{what} referential",
                        f"fiche {ror_id} is not in the mapping: it needs manual entry — "
                        "declare it with mode = manual to acknowledge it",
                    )
                if not report.not_in_referential:
                    line(True, f"{what} referential", "every mapped fiche is in the perimeter")
        try:
            extraction = open_source(config, index).fetch()
        except RorfeedError as exc:
            line(False, f"{what} source", str(exc))
            continue
        codes = {row.unit.strip() for row in extraction.rows}
        line(True, f"{what} source", f"{len(extraction.rows)} rows")
        mapped = set(mapping.by_local_code())
        for code in sorted(codes - mapped):
            warn(f"{what} source", f"unit {code} is not in the mapping (ignored)")
    for index, dest in enumerate(config.file.destinations):
        what = f"destination {dest.name}"
        try:
            with open_transport(config, index).open(dest.timeout_seconds) as session:
                session.probe()
        except RorfeedError as exc:
            line(False, what, str(exc))
        else:
            line(True, what, "reachable, authenticated, remote folder writable")
    summary = f"{failures} problem(s), {warnings} warning(s)"
    print(summary, file=sys.stderr)
    return 1 if failures else 0
