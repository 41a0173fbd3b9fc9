"""The JSON pivot file, and the JSON Schema check that the CSV writer shares."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from decimal import Decimal
from functools import cache
from importlib.resources import files
from typing import Any, Final

from jsonschema import Draft202012Validator

from rorfeed.errors import PivotInvalid
from rorfeed.model import Snapshot
from rorfeed.pivot import _common

extension: Final = "json"

# Where a schema error lies in a document, e.g. ("unites", 2, "lits_fermes").
Path = tuple[str | int, ...]


def render(snapshot: Snapshot) -> bytes:
    units: list[dict[str, object]] = []
    for unit in snapshot.sorted_units():
        entry: dict[str, object] = {
            "id_fiche_ror": unit.ror_id,
            "lits_installes": unit.counts.installed,
            "lits_fermes": unit.counts.closed,
            "lits_disponibles": unit.counts.available,
        }
        date_maj = _common.date_maj(unit, snapshot)
        if date_maj is not None:
            entry["date_maj"] = date_maj
        units.append(entry)
    document = {
        "version": _common.FORMAT_VERSION,
        "horodatage": _common.horodatage(snapshot),
        "nom_etablissement": snapshot.establishment_name,
        "finess_etablissement": snapshot.finess,
        "unites": units,
    }
    return _common.encode(json.dumps(document, ensure_ascii=False, indent=2) + "\n", "json")


def validate(data: bytes) -> None:
    text = _common.decode(data, "json")
    try:
        document = json.loads(
            text,
            # A float literal must not pass as a count: Decimal is never a JSON Schema integer,
            # whereas the float 3.0 would be.
            parse_float=Decimal,
            parse_constant=_refuse_constant,
            object_pairs_hook=_refuse_duplicate_keys,
        )
    except ValueError as err:
        raise PivotInvalid(f"json pivot file is not valid JSON: {err}") from err
    problems = [f"{path_text(path)}: {message}" for path, message in schema_errors(document)]
    if problems:
        raise PivotInvalid(_common.schema_report("json", problems))
    _common.check_unit_order((unit["id_fiche_ror"] for unit in document["unites"]), "json")


def schema_errors(document: object) -> Iterator[tuple[Path, str]]:
    """(path, message) for each way `document` breaks the schema, in document order."""
    errors = sorted(_validator().iter_errors(document), key=lambda e: _order(e.absolute_path))
    for error in errors:
        yield tuple(error.absolute_path), error.message


def path_text(path: Path) -> str:
    """`unites[2].lits_fermes`, as a person would point at it."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(document)"


@cache
def _validator() -> Draft202012Validator:
    schema = json.loads(files("rorfeed.pivot").joinpath("pivot.schema.json").read_text("utf-8"))
    return Draft202012Validator(_inline_refs(schema, schema["$defs"]))


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with its local `$ref`s replaced by their targets.

    Same rules, but jsonschema resolves a `$ref` on every use: inlined, a 10,000-unit file is
    checked about four times faster. The shipped file keeps `$defs` to stay readable.
    """
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        prefix = "#/$defs/"
        ref = node["$ref"]
        if len(node) != 1 or not isinstance(ref, str) or not ref.startswith(prefix):
            raise ValueError(f"pivot.schema.json: cannot inline {node!r}")
        return _inline_refs(defs[ref.removeprefix(prefix)], defs)
    out = {key: _inline_refs(value, defs) for key, value in node.items() if key != "$defs"}
    pattern = out.get("pattern")
    if isinstance(pattern, str) and pattern.endswith("$"):
        # jsonschema applies patterns with Python's re.search, where "$" also matches before
        # a final newline: \Z keeps a fiche id ending in a newline from passing.
        out["pattern"] = pattern[:-1] + "\\Z"
    return out


def _order(parts: Iterable[str | int]) -> list[tuple[int, int, str]]:
    # Numeric list indexes, so that unites[10] comes after unites[9].
    return [(1, part, "") if isinstance(part, int) else (0, 0, part) for part in parts]


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads would silently keep the last of two counts for the same field.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result
