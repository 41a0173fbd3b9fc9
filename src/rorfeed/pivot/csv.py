"""The CSV pivot file: one line per unit, `;`-separated, quoted only where needed.

CSV has no schema language of its own: each file is read back into the shape of the JSON
document (one line, one item of `unites`) and checked against the shipped JSON Schema, so both
formats obey the same rules.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Final

from rorfeed.errors import PivotInvalid
from rorfeed.model import Snapshot
from rorfeed.pivot import _common
from rorfeed.pivot import json as json_pivot

extension: Final = "csv"

_DELIMITER = ";"
_ESTABLISHMENT_FIELDS = ("nom_etablissement", "finess_etablissement", "horodatage")
_COUNT_FIELDS = ("lits_installes", "lits_fermes", "lits_disponibles")
# Only the canonical spelling becomes an integer; " 7", "+7" or "07" stay text and fail the
# schema, since a consumer's parser may not read them as we do.
_COUNT = re.compile(r"0|[1-9][0-9]*")


def render(snapshot: Snapshot) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(
        buffer, delimiter=_DELIMITER, quoting=csv.QUOTE_MINIMAL, lineterminator="\n"
    )
    writer.writerow(_common.FIELDS)
    horodatage = _common.horodatage(snapshot)
    for unit in snapshot.sorted_units():
        writer.writerow(
            (
                snapshot.establishment_name,
                snapshot.finess,
                unit.ror_id,
                unit.counts.installed,
                unit.counts.closed,
                unit.counts.available,
                horodatage,
                _common.date_maj(unit, snapshot) or "",
            )
        )
    return _common.encode(buffer.getvalue(), "csv")


def validate(data: bytes) -> None:
    text = _common.decode(data, "csv")
    lines, rows = _read(text)
    if not rows:
        raise PivotInvalid("csv pivot file has a header but no unit line")
    first = rows[0]
    for line, row in zip(lines[1:], rows[1:], strict=True):
        for field in _ESTABLISHMENT_FIELDS:
            if row[field] != first[field]:
                raise PivotInvalid(
                    f"csv pivot file: line {line}, {field}: {row[field]!r} differs from "
                    f"{first[field]!r} on line {lines[0]} (one file, one establishment, one time)"
                )
    document = {
        "version": _common.FORMAT_VERSION,
        **{field: first[field] for field in _ESTABLISHMENT_FIELDS},
        "unites": [_unit(row) for row in rows],
    }
    problems = [
        f"{_where(path, lines)}: {message}" for path, message in json_pivot.schema_errors(document)
    ]
    if problems:
        raise PivotInvalid(_common.schema_report("csv", problems))
    _common.check_unit_order((row["id_fiche_ror"] for row in rows), "csv")


def _read(text: str) -> tuple[list[int], list[dict[str, str]]]:
    """The unit lines as dicts, with the line number each one starts on."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_DELIMITER, strict=True)
    lines: list[int] = []
    rows: list[dict[str, str]] = []
    try:
        header = next(reader, [])
        if tuple(header) != _common.FIELDS:
            raise PivotInvalid(
                f"csv pivot file: line 1 must be the header {_DELIMITER.join(_common.FIELDS)!r}, "
                f"found {_DELIMITER.join(header)!r}"
            )
        for row in reader:
            start = reader.line_num - sum(field.count("\n") for field in row)
            if len(row) != len(_common.FIELDS):
                raise PivotInvalid(
                    f"csv pivot file: line {start} has {len(row)} fields, "
                    f"expected {len(_common.FIELDS)}"
                )
            lines.append(start)
            rows.append(dict(zip(_common.FIELDS, row, strict=True)))
    except csv.Error as err:
        raise PivotInvalid(f"csv pivot file: line {reader.line_num}: {err}") from err
    return lines, rows


def _unit(row: dict[str, str]) -> dict[str, object]:
    unit: dict[str, object] = {"id_fiche_ror": row["id_fiche_ror"]}
    for field in _COUNT_FIELDS:
        value = row[field]
        unit[field] = int(value) if _COUNT.fullmatch(value) else value
    if row["date_maj"]:
        unit["date_maj"] = row["date_maj"]
    return unit


def _where(path: json_pivot.Path, lines: list[int]) -> str:
    """A schema path in the CSV's own terms: the line and the column."""
    match path:
        case ("unites", int(index), str(field), *_):
            return f"line {lines[index]}, {field}"
        case (str(field), *_) if field in _ESTABLISHMENT_FIELDS:
            return f"line {lines[0]}, {field}"
        case _:
            return json_pivot.path_text(path)
