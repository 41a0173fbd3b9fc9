"""Fuzzing the parsers that read what others wrote: the mapping CSV, the CSV source, the TOML
configuration.

Two kinds of input for each, from hypothesis:
- anything at all (bytes, or text mangled from a valid file): the parser gives a result or a
  `RorfeedError` of its own kind whose every line names the file — never another exception;
- well-formed files of random content (delimiters, quotes, BOM, padding, line ends): the
  parser gives back exactly what was written, so that no count changes on its way to a file.

The number of examples is the short pass's, or the long run's with `--faults-long`.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rorfeed.config import load
from rorfeed.errors import ConfigError, MappingError, RorfeedError, SourceError
from rorfeed.mapping import parse_mapping
from rorfeed.model import Mode
from rorfeed.sources.csv_file import CsvSource, CsvSourceSection


@pytest.fixture
def examples(request: pytest.FixtureRequest) -> int:
    marker = request.node.get_closest_marker("faults")
    long = request.config.getoption("--faults-long")
    count = int(marker.kwargs["long" if long else "short"])
    request.node.user_properties.append(("runs", count))
    return count


@pytest.fixture
def files(tmp_path: Path) -> Callable[[str, bytes], Path]:
    """Write `data` to a fresh file named `name` (a new folder each time)."""
    counter = itertools.count()

    def write(name: str, data: bytes) -> Path:
        folder = tmp_path / f"f{next(counter)}"
        folder.mkdir()
        path = folder / name
        path.write_bytes(data)
        return path

    return write


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def names_the_file(error: RorfeedError, path: Path) -> list[str]:
    lines = str(error).splitlines()
    return [
        f"a line of the error does not name {path}: {line!r}"
        for line in lines
        if str(path) not in line
    ] + (["an empty error message"] if not lines else [])


# Text that parsers trip on: delimiters, quotes, line ends, BOMs, spaces of all kinds, digits
# of other scripts, control characters.
TRICKY = ";,\"'\r\n\t \u00a0\u2007\ufeff\x00\\/#=[]{}.-+_٠١٢"
tricky_text = st.text(
    alphabet=st.one_of(st.sampled_from(TRICKY), st.characters(codec="utf-8")), max_size=40
)
line_end = st.sampled_from(["\n", "\r\n"])


def csv_text(rows: list[list[str]], delimiter: str, end: str) -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator=end).writerows(rows)
    return out.getvalue()


def mangled(valid: str) -> st.SearchStrategy[bytes]:
    """`valid`, then cut, spliced with tricky text, re-encoded, or replaced by random bytes."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        text = valid
        for _ in range(draw(st.integers(0, 4))):
            at = draw(st.integers(0, len(text)))
            cut = draw(st.integers(0, 12))
            text = text[:at] + draw(tricky_text) + text[at + cut :]
        encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
        data = text.encode(encoding, errors="replace")
        return draw(st.one_of(st.just(data), st.binary(max_size=200)))

    return build()


# -- the mapping CSV ---------------------------------------------------------------------------

MAPPING = "local_code;ror_id;label;mode\nREA;52/100;Réanimation;auto\nMED;52/200;Médecine;manual\n"


@pytest.mark.faults("fuzz: the mapping CSV, any input", short=300, long=3000)
def test_any_mapping_file_gives_a_mapping_or_an_error_naming_the_file(
    examples: int,
    files: Callable[[str, bytes], Path],
    record_violations: Callable[[list[str]], None],
) -> None:
    found: list[str] = []

    @fuzz_settings(examples)
    @given(mangled(MAPPING))
    def check(data: bytes) -> None:
        path = files("mapping.csv", data)
        try:
            mapping = parse_mapping(path)
        except MappingError as exc:
            found.extend(names_the_file(exc, path))
            return
        except Exception as exc:  # noqa: BLE001 - what the fuzzing looks for
            found.append(f"{type(exc).__name__} on {data!r}: {exc}")
            return
        ids = [u.ror_id for u in mapping.units]
        codes = [u.local_code for u in mapping.units if u.local_code]
        if len(set(ids)) != len(ids) or len(set(codes)) != len(codes):
            found.append(f"a mapping that is not one-to-one was accepted: {data!r}")
        if any(
            not u.ror_id or (not u.local_code and u.declared_mode is Mode.AUTO)
            for u in mapping.units
        ):
            found.append(f"a unit without ROR id, or automated without local code: {data!r}")

    check()
    record_violations(found[:20])


@st.composite
def mapping_rows(draw: st.DrawFn) -> list[tuple[str, str, str, str]]:
    # Well-formed: no control character anywhere, no ROR id or label a spreadsheet would run
    # as a formula (SPEC §4; refusing those is tested in tests/test_mapping.py).
    printable = st.characters(codec="utf-8", exclude_categories=["Cc"])
    cell = st.text(alphabet=printable, min_size=1, max_size=12).map(str.strip).filter(bool)
    not_formula = cell.filter(lambda s: not s.startswith(("=", "+", "-", "@")))
    n = draw(st.integers(0, 12))
    codes = draw(st.lists(cell, min_size=n, max_size=n, unique=True))
    ids = draw(st.lists(not_formula, min_size=n, max_size=n, unique=True))
    label = st.text(alphabet=printable, max_size=15).filter(
        lambda s: not s.strip().startswith(("=", "+", "-", "@"))
    )
    labels = draw(st.lists(label, min_size=n, max_size=n))
    mode = st.sampled_from(["auto", "manual", "AUTO", " Manual "])
    modes = draw(st.lists(mode, min_size=n, max_size=n))
    return list(zip(codes, ids, labels, modes, strict=True))


@pytest.mark.faults("fuzz: the mapping CSV, well-formed", short=200, long=2000)
def test_a_well_formed_mapping_reads_back_exactly(
    examples: int,
    files: Callable[[str, bytes], Path],
    record_violations: Callable[[list[str]], None],
) -> None:
    found: list[str] = []

    @fuzz_settings(examples)
    @given(mapping_rows(), st.sampled_from([";", ","]), line_end, st.booleans(), st.booleans())
    def check(
        rows: list[tuple[str, str, str, str]], delimiter: str, end: str, bom: bool, pad: bool
    ) -> None:
        header = ["local_code", "ror_id", "label", "mode"]
        if pad:
            header = [f" {h.upper()} " for h in header]
        text = csv_text([header, *[list(r) for r in rows]], delimiter, end)
        path = files("mapping.csv", (b"\xef\xbb\xbf" if bom else b"") + text.encode())
        try:
            mapping = parse_mapping(path)
        except MappingError as exc:
            found.append(f"a valid mapping refused: {exc} — {text!r}")
            return
        got = [(u.local_code, u.ror_id, u.label, u.declared_mode.value) for u in mapping.units]
        want = [(c, i, label.strip(), m.strip().lower()) for c, i, label, m in rows]
        if got != want:
            found.append(f"read {got}, written {want}")

    check()
    record_violations(found[:20])


# -- the CSV source ----------------------------------------------------------------------------

EXPORT = "unit;installed;closed;available;updated_at\nREA;10;1;2;2026-11-23T14:00:00+01:00\n"


def csv_source(path: Path, encoding: str = "utf-8", delimiter: str = "") -> CsvSource:
    section = CsvSourceSection(
        kind="csv",
        path=str(path),
        encoding=encoding,
        delimiter=delimiter,
        timeout_seconds=10,
    )
    return CsvSource(section, path)


@pytest.mark.faults("fuzz: the CSV source, any input", short=300, long=3000)
def test_any_csv_export_gives_rows_or_an_error_naming_the_file(
    examples: int,
    files: Callable[[str, bytes], Path],
    record_violations: Callable[[list[str]], None],
) -> None:
    found: list[str] = []

    @fuzz_settings(examples)
    @given(
        mangled(EXPORT),
        st.sampled_from(["utf-8", "cp1252", "latin-1"]),
        st.sampled_from(["", ";", ","]),
    )
    def check(data: bytes, encoding: str, delimiter: str) -> None:
        path = files("export.csv", data)
        try:
            extraction = csv_source(path, encoding, delimiter).fetch()
        except SourceError as exc:
            found.extend(names_the_file(exc, path))
            return
        except Exception as exc:  # noqa: BLE001 - what the fuzzing looks for
            found.append(f"{type(exc).__name__} on {data!r}: {exc}")
            return
        for row in extraction.rows:
            if row.unit != row.unit.strip():
                found.append(f"a unit code kept its padding: {row.unit!r}")

    check()
    record_violations(found[:20])


count_text = st.one_of(
    st.integers(0, 999).map(str),
    st.sampled_from(["", " 7 ", "\u00a012\u00a0", "3.5", "12.0", "+5", "1_000", "١٢", "-1", "x"]),
)


@st.composite
def export_rows(draw: st.DrawFn) -> list[tuple[str, str, str, str]]:
    code = st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"),
        min_size=1,
        max_size=10,
    ).filter(lambda s: s.strip() != "" and s.strip() == s)
    n = draw(st.integers(0, 15))
    codes = draw(st.lists(code, min_size=n, max_size=n))
    return [(c, draw(count_text), draw(count_text), draw(count_text)) for c in codes]


@pytest.mark.faults("fuzz: the CSV source, well-formed", short=200, long=2000)
def test_a_well_formed_export_reads_back_exactly(
    examples: int,
    files: Callable[[str, bytes], Path],
    record_violations: Callable[[list[str]], None],
) -> None:
    found: list[str] = []

    @fuzz_settings(examples)
    @given(
        export_rows(),
        st.sampled_from([";", ","]),
        line_end,
        st.sampled_from(["utf-8", "cp1252"]),
        st.permutations(["unit", "installed", "closed", "available"]),
    )
    def check(
        rows: list[tuple[str, str, str, str]],
        delimiter: str,
        end: str,
        encoding: str,
        order: list[str],
    ) -> None:
        by_name = [
            dict(zip(["unit", "installed", "closed", "available"], r, strict=True)) for r in rows
        ]
        text = csv_text([order, *[[r[c] for c in order] for r in by_name]], delimiter, end)
        try:
            data = text.encode(encoding)
        except UnicodeEncodeError:
            return  # not a file this encoding can hold
        path = files("export.csv", data)
        try:
            got = csv_source(path, encoding).fetch().rows
        except SourceError as exc:
            found.append(f"a valid export refused: {exc} — {text!r}")
            return
        want = [(r["unit"], r["installed"], r["closed"], r["available"]) for r in by_name]
        if [(r.unit, r.installed, r.closed, r.available) for r in got] != want:
            found.append(f"read {got}, written {want}")

    check()
    record_violations(found[:20])


# -- the TOML configuration ---------------------------------------------------------------------

CONFIG = """\
[daemon]
schedule = "5 * * * *"
timezone = "Europe/Paris"
work_dir = "work"
archive_days = 30

[metrics]
listen = "127.0.0.1:9464"

[rules]
max_beds_per_unit = 500
coherence = "reject"
killswitch_rejected_share = 0.5

[[establishments]]
name = "Hôpital Exemple"
finess = "750712184"
mapping = "mapping.csv"

[establishments.source]
kind = "csv"
path = "export.csv"

[[destinations]]
name = "depot"
kind = "directory"
path = "depot"
formats = ["xml", "csv"]
"""

toml_value = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).replace("inf", "inf")),
    st.booleans().map(lambda b: str(b).lower()),
    st.text(max_size=20).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.sampled_from(["[]", '["xml", "json"]', "{}", "{ a = 1 }", "1979-05-27T07:32:00Z", '"∞"']),
)


@st.composite
def mutated_config(draw: st.DrawFn) -> bytes:
    lines = CONFIG.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["value", "delete", "unknown", "duplicate", "text"]))
        line = lines[at]
        if action == "value" and " = " in line:
            lines[at] = line.split(" = ")[0] + " = " + draw(toml_value)
        elif action == "delete":
            del lines[at]
        elif action == "unknown":
            lines.insert(
                at, draw(st.sampled_from(["colour", "timeout", "x"])) + " = " + draw(toml_value)
            )
        elif action == "duplicate":
            lines.insert(at, line)
        else:
            lines[at] = line[: draw(st.integers(0, len(line)))] + draw(tricky_text)
        if not lines:
            break
    return "\n".join(lines).encode("utf-8", errors="replace")


@pytest.mark.faults("fuzz: the TOML configuration", short=300, long=3000)
def test_any_config_file_gives_a_config_or_an_error_naming_file_and_key(
    examples: int,
    files: Callable[[str, bytes], Path],
    record_violations: Callable[[list[str]], None],
) -> None:
    found: list[str] = []

    @fuzz_settings(examples)
    @given(st.one_of(mutated_config(), mangled(CONFIG)))
    def check(data: bytes) -> None:
        path = files("rorfeed.toml", data)
        (path.parent / "mapping.csv").write_text("local_code;ror_id;label\n", encoding="utf-8")
        try:
            load(path)
        except ConfigError as exc:
            if not exc.problems:
                found.append(f"a ConfigError without any problem: {data!r}")
            for problem in exc.problems:
                if not problem.startswith((f"{path.name}: ", f"{path}: ")):
                    found.append(f"a problem that does not name the file first: {problem!r}")
        except Exception as exc:  # noqa: BLE001 - what the fuzzing looks for
            found.append(f"{type(exc).__name__} on {data!r}: {exc}")

    check()
    record_violations(found[:20])
