"""The JSON pivot file, and the JSON Schema check that the CSV writer shares."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Final

# fastjsonschema ships type hints only in its recent releases (the floor, 2.19, has none): the
# ignore serves the older ones, and is itself ignored when the installed one is typed.
import fastjsonschema  # type: ignore[import-untyped, unused-ignore]

from rorfeed.errors import PivotInvalid
from rorfeed.model import UnitRecord
from rorfeed.pivot import _common

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

extension: Final = "json"

# Where a schema error lies in a document, e.g. ("unites", 2, "lits_fermes").
Path = tuple[str | int, ...]

# json.dumps(..., ensure_ascii=False)'s own encoder for one value: for a string, the C
# `encode_basestring`; for a number, its repr. The same bytes as in an indented dump, since only
# containers are laid out differently.
_value: Callable[[object], str] = json.JSONEncoder(ensure_ascii=False).encode

# Units written and encoded at once by `write`: few enough to keep the lot's text small,
# enough that the calls per lot do not show.
_UNITS_PER_LOT: Final = 1000


def write(prepared: _common.Prepared) -> bytes:
    """The bytes of `json.dumps(document, ensure_ascii=False, indent=2) + "\\n"`, made faster.

    With an indent, json.dumps walks every unit with its pure-Python encoder; here each value
    goes through the C encoder and the fixed indent-2 layout is written around it. The units
    are encoded a lot at a time: at 100,000 units, the units' text, its join, the whole text
    and its encoding held four copies of a 17 MB file at once; now the encoded lots and the
    file are two. tests/test_pivot_fast.py holds the two byte for byte.
    """
    snapshot = prepared.snapshot
    head = (
        "{\n"
        f'  "version": {_value(_common.FORMAT_VERSION)},\n'
        f'  "horodatage": {_value(prepared.horodatage)},\n'
        f'  "nom_etablissement": {_value(snapshot.establishment_name)},\n'
        f'  "finess_etablissement": {_value(snapshot.finess)},\n'
        '  "unites": '
    )
    units, dates = prepared.units, prepared.dates
    if not units:
        # json.dumps writes an empty list as "[]"; such a file fails the schema (minItems).
        return _common.encode(head + "[]\n}\n", "json")
    pieces = [_common.encode(head + "[\n", "json")]
    for start in range(0, len(units), _UNITS_PER_LOT):
        end = start + _UNITS_PER_LOT
        text = ",\n".join(map(_unit, units[start:end], dates[start:end]))
        pieces.append(_common.encode(text if start == 0 else ",\n" + text, "json"))
    pieces.append(b"\n  ]\n}\n")
    return b"".join(pieces)


def _unit(unit: UnitRecord, date_maj: str | None) -> str:
    counts = unit.counts
    text = (
        "    {\n"
        f'      "id_fiche_ror": {_value(unit.ror_id)},\n'
        f'      "lits_installes": {_count(counts.installed)},\n'
        f'      "lits_fermes": {_count(counts.closed)},\n'
        f'      "lits_disponibles": {_count(counts.available)}'
    )
    if date_maj is not None:
        text += f',\n      "date_maj": {_value(date_maj)}'
    return text + "\n    }"


def _count(value: int) -> str:
    # str() is what json writes for a plain int, and the cheapest call; anything else (a bool
    # that slipped through is `true`, not `1`) goes through json's encoder like the rest.
    return str(value) if type(value) is int else _value(value)


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
    """(path, message) for each way `document` breaks the schema, in document order.

    `document` is a value as json.loads gives it (dict, list, str, int, Decimal, bool, None).
    A compiled fastjsonschema check runs first; only when it refuses the document does
    jsonschema run, to list every error with its place, in the same words as ever. The verdict
    is always jsonschema's: the fast check only says "valid" where jsonschema does too
    (tests/test_pivot_fast.py holds them together over generated documents).
    """
    if fast_accepts(document):
        return
    errors = sorted(_validator().iter_errors(document), key=lambda e: _order(e.absolute_path))
    for error in errors:
        yield tuple(error.absolute_path), error.message


def path_text(path: Path) -> str:
    """`unites[2].lits_fermes`, as a person would point at it."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(document)"


def fast_accepts(document: object) -> bool:
    """Whether the compiled check passes `document`: True only where jsonschema agrees."""
    # fastjsonschema takes a tuple for a JSON array where jsonschema does not. JSON cannot give
    # a tuple, but this function must never be the more lenient of the two: such a document
    # goes to jsonschema, which decides. `unites` is the schema's only array.
    if isinstance(document, dict) and isinstance(document.get("unites"), tuple):
        return False
    try:
        _fast_validator()(document)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


@cache
def _fast_validator() -> Callable[[object], object]:
    # The generated code has fastjsonschema's draft 2019-09 semantics (it has no 2020-12); every
    # keyword the schema uses (type, const, pattern, required, properties, additionalProperties,
    # items as one schema, minItems, minimum) means the same in both drafts.
    # use_default=False: the check must not write defaults into the document it checks.
    # use_formats=False: jsonschema, as called here, treats "format" as an annotation; the fast
    # check does the same, so that neither is stricter. (The schema uses patterns, not format.)
    validator: Callable[[object], object] = fastjsonschema.compile(
        _schema(), use_default=False, use_formats=False
    )
    return validator


@cache
def _validator() -> Draft202012Validator:
    # Imported here, on the failure path only: jsonschema and referencing take about 0.1 s to
    # import, which a cycle whose files are valid never needs to pay.
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_schema())


@cache
def _schema() -> dict[str, Any]:
    schema = json.loads(files("rorfeed.pivot").joinpath("pivot.schema.json").read_text("utf-8"))
    inlined: dict[str, Any] = _inline_refs(schema, schema["$defs"])
    return inlined


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
        # a final newline: \Z keeps a fiche id ending in a newline from passing. (The fast
        # check compiles this same inlined schema, and also searches with re.search.)
        out["pattern"] = pattern[:-1] + "\\Z"
    return out


def _order(parts: Iterable[str | int]) -> list[tuple[int, int, str]]:
    # Numeric list indexes, so that unites[10] comes after unites[9].
    return [(1, part, "") if isinstance(part, int) else (0, 0, part) for part in parts]


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads would silently keep the last of two counts for the same field.
    result = dict(pairs)
    if len(result) != len(pairs):  # dict() at C speed; the slow search only to name the key
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"key {key!r} appears twice in one object")
            seen.add(key)
    return result
