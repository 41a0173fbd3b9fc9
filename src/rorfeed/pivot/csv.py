"""The CSV pivot file: one line per unit, `;`-separated, quoted only where needed.

CSV has no schema language of its own: each file is read back into the shape of the JSON
document (one line, one item of `unites`) and checked against the shipped JSON Schema, so both
formats obey the same rules.
"""

from __future__ import annotations

import csv
import io
import operator
import re
from collections.abc import Sequence
from itertools import islice, pairwise
from typing import Final

from rorfeed.errors import PivotInvalid
from rorfeed.pivot import _common
from rorfeed.pivot import json as json_pivot

extension: Final = "csv"

_DELIMITER = ";"
_ESTABLISHMENT_FIELDS = ("nom_etablissement", "finess_etablissement", "horodatage")
# Where each field sits in a line (the header is checked to be exactly FIELDS).
_WIDTH = len(_common.FIELDS)
_ID, _INSTALLED, _CLOSED, _AVAILABLE, _DATE_MAJ = (
    _common.FIELDS.index(field)
    for field in ("id_fiche_ror", "lits_installes", "lits_fermes", "lits_disponibles", "date_maj")
)
_ESTABLISHMENT_COLUMNS = tuple(_common.FIELDS.index(field) for field in _ESTABLISHMENT_FIELDS)
_establishment = operator.itemgetter(*_ESTABLISHMENT_COLUMNS)
# Unit lines checked at once by `validate`, and written and encoded at once by `write`.
_LINES_PER_LOT: Final = 2000
# Only the canonical spelling becomes an integer; " 7", "+7" or "07" stay text and fail the
# schema, since a consumer's parser may not read them as we do.
_COUNT = re.compile(r"0|[1-9][0-9]*")
# What makes csv.writer quote a text field in this dialect: the delimiter, the quote character
# and line ends. A field without any is written as it is. (Python 3.11 leaves a lone "\r"
# unquoted, newer versions quote it: a line holding one goes through csv.writer either way.)
_NEEDS_QUOTES = re.compile('[;"\r\n]')


def write(prepared: _common.Prepared) -> bytes:
    """What csv.writer (QUOTE_MINIMAL, `;`, "\\n") writes for these rows, made faster.

    A line whose text needs no quoting and whose counts are plain ints is formatted directly;
    any other line goes through csv.writer itself. Property tests hold the two byte for byte.
    """
    buffer = io.StringIO()
    writer = csv.writer(
        buffer, delimiter=_DELIMITER, quoting=csv.QUOTE_MINIMAL, lineterminator="\n"
    )
    writer.writerow(_common.FIELDS)
    name, finess = prepared.snapshot.establishment_name, prepared.snapshot.finess
    horodatage = prepared.horodatage
    shared_plain = not any(_NEEDS_QUOTES.search(text) for text in (name, finess, horodatage))
    lines = [buffer.getvalue()]
    # Encoded a lot of lines at a time: the file's text and its bytes are never whole at once.
    pieces: list[bytes] = []
    for unit, date in zip(prepared.units, prepared.dates, strict=True):
        if len(lines) >= _LINES_PER_LOT:
            pieces.append(_common.encode("".join(lines), "csv"))
            lines.clear()
        counts = unit.counts
        # date_maj is written by isoformat: digits, "-", ":", "T" and a sign, never quoted.
        date_maj = date or ""
        if (
            shared_plain
            and _NEEDS_QUOTES.search(unit.ror_id) is None
            and type(counts.installed) is int
            and type(counts.closed) is int
            and type(counts.available) is int
        ):
            lines.append(
                f"{name};{finess};{unit.ror_id};{counts.installed};{counts.closed};"
                f"{counts.available};{horodatage};{date_maj}\n"
            )
        else:
            buffer.seek(0)
            buffer.truncate()
            writer.writerow(
                (
                    name,
                    finess,
                    unit.ror_id,
                    counts.installed,
                    counts.closed,
                    counts.available,
                    horodatage,
                    date_maj,
                )
            )
            lines.append(buffer.getvalue())
    pieces.append(_common.encode("".join(lines), "csv"))
    return b"".join(pieces)


def validate(data: bytes) -> None:
    text = _common.decode(data, "csv")
    if not _plainly_valid(data):
        _check_whole(text)


def _plainly_valid(data: bytes) -> bool:
    """Whether the file passes every check of `_check_whole`, read a lot of lines at a time.

    At 100,000 units the whole-file check holds every line as a list and every unit as a
    dict (some 80 MB); a lot is a few hundred kB. True only where `_check_whole` finds
    nothing: the same lines, the same establishment fields, the schema's compiled check on
    each lot's document (the schema's one array, `unites`, has rules per item and a minimum
    count, so lots that pass make a whole that passes), and the same order. At the first
    doubt (a malformed line, a lot the compiled check refuses) it says False, and the
    whole-file check runs to name every problem, as it always has.
    """
    # Decoded as it is read (the caller has checked it is UTF-8 without a BOM), with the line
    # ends of io.StringIO(text, newline=""): a StringIO would hold the text four bytes a
    # character, 38 MB at 100,000 units.
    lines = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline="")
    reader = csv.reader(lines, delimiter=_DELIMITER, strict=True)
    establishment: tuple[str, ...] | None = None
    previous: str | None = None
    try:
        if tuple(next(reader, [])) != _common.FIELDS:
            return False
        while lot := list(islice(reader, _LINES_PER_LOT)):
            if any(len(row) != _WIDTH for row in lot):
                return False
            if establishment is None:
                establishment = _establishment(lot[0])
            if any(_establishment(row) != establishment for row in lot):
                return False
            ids = [row[_ID] for row in lot]
            if previous is not None and ids[0] <= previous:
                return False
            if any(later <= earlier for earlier, later in pairwise(ids)):
                return False
            previous = ids[-1]
            document = {
                "version": _common.FORMAT_VERSION,
                **dict(zip(_ESTABLISHMENT_FIELDS, establishment, strict=True)),
                "unites": _units(lot),
            }
            if not json_pivot.fast_accepts(document):
                return False
    except csv.Error:
        return False
    return establishment is not None  # at least one unit line


def _check_whole(text: str) -> None:
    """Every check on the whole file at once; PivotInvalid naming what is wrong, and where."""
    lines, rows = _read(text)
    if not rows:
        raise PivotInvalid("csv pivot file has a header but no unit line")
    first = rows[0]
    establishment = _establishment(first)
    for line, row in zip(lines, rows, strict=True):
        if _establishment(row) != establishment:
            for field, column in zip(_ESTABLISHMENT_FIELDS, _ESTABLISHMENT_COLUMNS, strict=True):
                if row[column] != first[column]:
                    raise PivotInvalid(
                        f"csv pivot file: line {line}, {field}: {row[column]!r} differs from "
                        f"{first[column]!r} on line {lines[0]} "
                        "(one file, one establishment, one time)"
                    )
    document = {
        "version": _common.FORMAT_VERSION,
        **dict(zip(_ESTABLISHMENT_FIELDS, establishment, strict=True)),
        "unites": _units(rows),
    }
    problems = [
        f"{_where(path, lines)}: {message}" for path, message in json_pivot.schema_errors(document)
    ]
    if problems:
        raise PivotInvalid(_common.schema_report("csv", problems))
    _common.check_unit_order((row[_ID] for row in rows), "csv")


def _read(text: str) -> tuple[Sequence[int], list[list[str]]]:
    """The unit lines as lists of fields, in `FIELDS` order, with the line each one starts on."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_DELIMITER, strict=True)
    try:
        header = next(reader, [])
        _check_header(header)
        rows = list(reader)
    except csv.Error:
        return _read_line_by_line(text)  # to report the first problem in file order
    if reader.line_num != len(rows) + 1 or any(len(row) != _WIDTH for row in rows):
        return _read_line_by_line(text)  # a field holds a newline, or a line is malformed
    # Every record is one line: the n-th unit is on line n + 1, after the header.
    return range(2, len(rows) + 2), rows


def _read_line_by_line(text: str) -> tuple[list[int], list[list[str]]]:
    """`_read`, record by record: the line each record starts on, the first error where it is."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_DELIMITER, strict=True)
    lines: list[int] = []
    rows: list[list[str]] = []
    try:
        _check_header(next(reader, []))
        # A record starts on the line after the previous one ended (line_num counts the lines
        # read so far, including those inside a quoted field that holds a newline).
        end = reader.line_num
        for row in reader:
            if len(row) != _WIDTH:
                raise PivotInvalid(
                    f"csv pivot file: line {end + 1} has {len(row)} fields, expected {_WIDTH}"
                )
            lines.append(end + 1)
            rows.append(row)
            end = reader.line_num
    except csv.Error as err:
        raise PivotInvalid(f"csv pivot file: line {reader.line_num}: {err}") from err
    return lines, rows


def _check_header(header: list[str]) -> None:
    if tuple(header) != _common.FIELDS:
        raise PivotInvalid(
            f"csv pivot file: line 1 must be the header {_DELIMITER.join(_common.FIELDS)!r}, "
            f"found {_DELIMITER.join(header)!r}"
        )


def _units(rows: list[list[str]]) -> list[dict[str, object]]:
    """The `unites` of the JSON document, one per line."""
    # Counts repeat (a few hundred distinct texts in 30,000 cells): each text is judged once.
    texts = {row[column] for row in rows for column in (_INSTALLED, _CLOSED, _AVAILABLE)}
    count = {text: int(text) if _COUNT.fullmatch(text) else text for text in texts}
    units: list[dict[str, object]] = []
    for row in rows:
        unit: dict[str, object] = {
            "id_fiche_ror": row[_ID],
            "lits_installes": count[row[_INSTALLED]],
            "lits_fermes": count[row[_CLOSED]],
            "lits_disponibles": count[row[_AVAILABLE]],
        }
        if row[_DATE_MAJ]:
            unit["date_maj"] = row[_DATE_MAJ]
        units.append(unit)
    return units


def _where(path: json_pivot.Path, lines: Sequence[int]) -> str:
    """A schema path in the CSV's own terms: the line and the column."""
    match path:
        case ("unites", int(index), str(field), *_):
            return f"line {lines[index]}, {field}"
        case (str(field), *_) if field in _ESTABLISHMENT_FIELDS:
            return f"line {lines[0]}, {field}"
        case _:
            return json_pivot.path_text(path)
