"""The pivot writers' fast paths hold to the plain ones they replace, over generated input.

- The JSON Schema check: a compiled fastjsonschema validator says "valid" only where jsonschema
  does, and the verdict of `schema_errors` is always jsonschema's.
- The renderers: the same bytes (or the same refusal) as json.dumps(indent=2), an lxml tree
  serialized, and csv.writer, which is how the writers produced them before.
- The XML check, streamed a lot of units at a time: the verdict of the whole tree validated
  at once, which is how it was checked before.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from importlib.resources import files
from typing import Any, cast
from unittest.mock import patch
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lxml import etree

from rorfeed.errors import PivotInvalid
from rorfeed.model import BedCounts, Snapshot, UnitRecord
from rorfeed.pivot import _common, prepare, render_checked
from rorfeed.pivot import csv as csv_pivot
from rorfeed.pivot import json as json_pivot
from rorfeed.pivot import xml as xml_pivot

PARIS = ZoneInfo("Europe/Paris")
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- generated snapshots ------------------------------------------------------------------------

ZONES = st.sampled_from(
    [
        UTC,
        PARIS,  # before 1911, Paris time is LMT, +00:09:21: an offset with seconds
        ZoneInfo("America/Sao_Paulo"),
        timezone(timedelta(hours=5, minutes=30)),
        timezone(timedelta(hours=-3, seconds=17)),
    ]
)
MOMENTS = st.datetimes(
    min_value=datetime(1890, 1, 1), max_value=datetime(2100, 1, 1), timezones=ZONES
)
# Text as a careless source could give it: quotes, backslashes, the CSV delimiter, markup,
# line ends, control characters (C0, DEL, C1), what XML cannot carry (U+FFFE, lone surrogates),
# line separators, letters outside Latin-1 and outside the BMP.
AWKWARD = "\"\\;,<>&'\n\r\t\x00\x01\x1f\x7f\x85\u2028\ufeff\ufffe\uffff\ud800\udfffÉé中😀 "
TEXT = st.text(
    alphabet=st.one_of(st.sampled_from(AWKWARD), st.characters(codec="utf-8")), max_size=12
)
PLAIN_TEXT = st.text(alphabet="abcXYZ0123456789/-_ éÉ'", min_size=1, max_size=10)
FINESS = st.from_regex(r"([0-9]{2}|2A|2B)[0-9]{7}", fullmatch=True)


COUNTS = st.integers(min_value=-3, max_value=2**40)
# Times that fit the schema: whole-minute offsets, four-digit years.
SANE_MOMENTS = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2099, 12, 31),
    timezones=st.sampled_from([UTC, PARIS]),
)


@st.composite
def snapshots(
    draw: st.DrawFn,
    text: st.SearchStrategy[str] = TEXT,
    finess: st.SearchStrategy[str] = FINESS | TEXT,
    counts: st.SearchStrategy[int] = COUNTS,
    moments: st.SearchStrategy[datetime] = MOMENTS,
    min_units: int = 0,
) -> Snapshot:
    ids = draw(st.lists(text, min_size=min_units, max_size=5, unique=True))
    units = tuple(
        UnitRecord(
            ror_id,
            BedCounts(draw(counts), draw(counts), draw(counts)),
            draw(st.none() | moments),
        )
        for ror_id in ids
    )
    return Snapshot(
        establishment_name=draw(text),
        finess=draw(finess),
        horodatage=draw(moments),
        units=units,
    )


# --- the writers as they were: json.dumps, an lxml tree, csv.writer ------------------------------


def _old_iso(moment: datetime, zone: Any) -> str:
    return moment.astimezone(zone).replace(microsecond=0).isoformat()


def _old_date_maj(unit: UnitRecord, snapshot: Snapshot) -> str | None:
    if unit.date_maj is None:
        return None
    return _old_iso(unit.date_maj, snapshot.horodatage.tzinfo)


def reference_json(snapshot: Snapshot) -> bytes:
    units: list[dict[str, object]] = []
    for unit in snapshot.sorted_units():
        entry: dict[str, object] = {
            "id_fiche_ror": unit.ror_id,
            "lits_installes": unit.counts.installed,
            "lits_fermes": unit.counts.closed,
            "lits_disponibles": unit.counts.available,
        }
        date_maj = _old_date_maj(unit, snapshot)
        if date_maj is not None:
            entry["date_maj"] = date_maj
        units.append(entry)
    document = {
        "version": 1,
        "horodatage": _old_iso(snapshot.horodatage, snapshot.horodatage.tzinfo),
        "nom_etablissement": snapshot.establishment_name,
        "finess_etablissement": snapshot.finess,
        "unites": units,
    }
    return _common.encode(json.dumps(document, ensure_ascii=False, indent=2) + "\n", "json")


def reference_xml(snapshot: Snapshot) -> bytes:
    try:
        root = etree.Element(
            "disponibilite_lits",
            version="1",
            horodatage=_old_iso(snapshot.horodatage, snapshot.horodatage.tzinfo),
        )
        etree.SubElement(root, "nom_etablissement").text = snapshot.establishment_name
        etree.SubElement(root, "finess_etablissement").text = snapshot.finess
        for unit in snapshot.sorted_units():
            element = etree.SubElement(root, "unite")
            etree.SubElement(element, "id_fiche_ror").text = unit.ror_id
            etree.SubElement(element, "lits_installes").text = str(unit.counts.installed)
            etree.SubElement(element, "lits_fermes").text = str(unit.counts.closed)
            etree.SubElement(element, "lits_disponibles").text = str(unit.counts.available)
            date_maj = _old_date_maj(unit, snapshot)
            if date_maj is not None:
                etree.SubElement(element, "date_maj").text = date_maj
    except ValueError as err:
        raise PivotInvalid(str(err)) from err
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def reference_csv(snapshot: Snapshot) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(_common.FIELDS)
    horodatage = _old_iso(snapshot.horodatage, snapshot.horodatage.tzinfo)
    for unit in snapshot.sorted_units():
        counts = unit.counts
        date_maj = _old_date_maj(unit, snapshot) or ""
        writer.writerow(
            (
                snapshot.establishment_name,
                snapshot.finess,
                unit.ror_id,
                counts.installed,
                counts.closed,
                counts.available,
                horodatage,
                date_maj,
            )
        )
    return _common.encode(buffer.getvalue(), "csv")


REFERENCES = {"json": reference_json, "xml": reference_xml, "csv": reference_csv}
RENDERERS = {
    name: (lambda snapshot, module=module: module.write(prepare(snapshot)))
    for name, module in (("json", json_pivot), ("xml", xml_pivot), ("csv", csv_pivot))
}


def outcome(render: Any, snapshot: Snapshot) -> bytes | str:
    try:
        data: bytes = render(snapshot)
    except PivotInvalid:
        return "refused"
    return data


@pytest.mark.parametrize("fmt", sorted(REFERENCES))
@SETTINGS
@given(snapshot=snapshots())
def test_render_gives_the_bytes_of_the_plain_writer_or_refuses_alike(
    fmt: str, snapshot: Snapshot
) -> None:
    assert outcome(RENDERERS[fmt], snapshot) == outcome(REFERENCES[fmt], snapshot)


@pytest.mark.parametrize("fmt", sorted(REFERENCES))
@settings(max_examples=50, deadline=None)
@given(snapshot=snapshots(text=PLAIN_TEXT, finess=FINESS | PLAIN_TEXT))
def test_render_of_ordinary_text_is_the_plain_writers_bytes(fmt: str, snapshot: Snapshot) -> None:
    # The generated text above is refused more often than not; this keeps the common case
    # exercised: text that every writer takes as it is.
    assert RENDERERS[fmt](snapshot) == REFERENCES[fmt](snapshot)


@pytest.mark.parametrize(("fmt", "lot"), [("json", "_UNITS_PER_LOT"), ("csv", "_LINES_PER_LOT")])
@pytest.mark.parametrize("per_lot", [1, 2, 3])
@settings(max_examples=30, deadline=None)
@given(snapshot=snapshots())
def test_render_in_lots_gives_the_same_bytes_or_refuses_alike(
    fmt: str, lot: str, per_lot: int, snapshot: Snapshot
) -> None:
    # The default lot (1,000 or 2,000 units) is larger than any generated snapshot: small lots
    # put lot boundaries, and a refused unit, anywhere in the file.
    with patch.object({"json": json_pivot, "csv": csv_pivot}[fmt], lot, per_lot):
        assert outcome(RENDERERS[fmt], snapshot) == outcome(REFERENCES[fmt], snapshot)


@pytest.mark.parametrize(
    ("name", "character"), [("C0", "\x01"), ("U+FFFE", "\ufffe"), ("surrogate", "\ud800")]
)
def test_xml_render_refuses_what_xml_cannot_carry_naming_the_field(
    name: str, character: str
) -> None:
    snapshot = Snapshot(
        "Clinique",
        "750712184",
        datetime(2026, 11, 23, 14, 5, tzinfo=PARIS),
        (UnitRecord(f"52/{character}1", BedCounts(1, 0, 1)),),
    )
    with pytest.raises(PivotInvalid, match=r"cannot hold the text of unit '52/"):
        xml_pivot.write(prepare(snapshot))


# --- the JSON Schema check: fast and jsonschema agree -------------------------------------------


def json_loads(data: bytes) -> Any:
    """A document as json_pivot.validate parses it (floats as Decimal)."""
    return json.loads(data, parse_float=Decimal)


VALID_SNAPSHOTS = snapshots(
    text=PLAIN_TEXT,
    finess=FINESS,
    counts=st.integers(min_value=0, max_value=2**40),
    moments=SANE_MOMENTS,
    min_units=1,
)


@st.composite
def valid_documents(draw: st.DrawFn) -> Any:
    return json_loads(json_pivot.write(prepare(draw(VALID_SNAPSHOTS))))


# Values that break (or nearly break) a field: floats that are whole, Decimal as json.loads
# gives a JSON float, booleans (True == 1 in Python), negatives, huge ints, text with a final
# newline, counts and finess as the wrong type, empty text, control characters.
NASTY = st.one_of(
    st.sampled_from(
        [
            0,
            1,
            -1,
            2**70,
            3.0,
            2.5,
            -0.0,
            float("nan"),
            float("inf"),
            True,
            False,
            None,
            Decimal("3"),
            Decimal("3.0"),
            Decimal("1"),
            Decimal("1.0"),
            Decimal("-0"),
            Decimal("1E+2"),
            "",
            "3",
            "x",
            "52/1\n",
            "52/1\n\n",
            "\n52/1",
            "750712184",
            "750712184\n",
            "2A1234567",
            "2C1234567",
            750712184,
            "75071218",
            "2026-11-23T14:05:00+01:00",
            "2026-11-23T14:05:00+01:00\n",
            "2026-11-23T14:05:00Z",
            "2026-11-23T14:05:00.5+01:00",
            "2026-02-30T14:05:00+01:00",
            "2026-11-23T24:05:00+01:00",
            "\x7f",
            "a\x85b",
            "a\u2028b",
            "a\tb",
            [],
            {},
            [1],
            {"id_fiche_ror": "1"},
        ]
    ),
    st.integers(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False),
    TEXT,
)
TOP_KEYS = ["version", "horodatage", "nom_etablissement", "finess_etablissement", "unites"]
UNIT_KEYS = ["id_fiche_ror", "lits_installes", "lits_fermes", "lits_disponibles", "date_maj"]


# Near misses of a valid value: what a writer's bug would most likely produce.
STRING_CHANGES: dict[str, Callable[[str], object]] = {
    "final newline": lambda v: v + "\n",
    "leading newline": lambda v: "\n" + v,
    "NUL": lambda v: v + "\x00",
    "C1 control": lambda v: v[:1] + "\x85" + v[1:],
    "DEL": lambda v: "\x7f" + v,
    "no-break space": lambda v: v + "\xa0",  # not a control character: stays valid text
    "one character short": lambda v: v[:-1],
    "doubled": lambda v: v + v,
    "empty": lambda v: "",
    "Z for the offset": lambda v: v[:-6] + "Z",
    "as a number": lambda v: int(v) if v.isdigit() else 0,
}
NUMBER_CHANGES: dict[str, Callable[[int], object]] = {
    "negative": lambda v: -1 - v,
    "float": float,
    "Decimal (a JSON float)": Decimal,
    "Decimal with a fraction": lambda v: Decimal(v) + Decimal("0.5"),
    "bool": lambda v: v == 1,
    "text": str,
    "huge": lambda v: v + 2**64,
    "null": lambda v: None,
    "list": lambda v: [v],
}


@st.composite
def near_miss(draw: st.DrawFn, value: object) -> object:
    if isinstance(value, str) and value:
        return draw(st.sampled_from(list(STRING_CHANGES.values())))(value)
    if isinstance(value, int):
        return draw(st.sampled_from(list(NUMBER_CHANGES.values())))(value)
    return draw(NASTY)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """A valid document with one to three things changed, most of them near misses."""
    document = draw(valid_documents())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        units = document.get("unites") if isinstance(document, dict) else None
        if isinstance(units, list) and units and draw(st.integers(0, 3)):  # units: 3 in 4
            target = units[draw(st.integers(min_value=0, max_value=len(units) - 1))]
            keys = UNIT_KEYS
        else:
            target = document
            keys = TOP_KEYS
        if not isinstance(target, dict):
            break
        action = draw(st.sampled_from(["near miss"] * 4 + ["set", "delete", "extra", "structure"]))
        key = draw(st.sampled_from(keys))
        if action == "near miss" and key in target:
            target[key] = draw(near_miss(target[key]))
        elif action in {"near miss", "set"}:
            target[key] = draw(NASTY)
        elif action == "delete" and key in target:
            del target[key]
        elif action == "extra":
            target[draw(st.sampled_from(["commentaire", "lits_supplementaires", "Version"]))] = 1
        elif action == "structure" and isinstance(units, list):
            choice = draw(st.sampled_from(["empty", "tuple", "text", "object", "outer list"]))
            if choice == "outer list":
                return [document]
            document["unites"] = {
                "empty": [],
                "tuple": tuple(units),
                "text": "unites",
                "object": {"0": units[0]} if units else {},
            }[choice]
    return document


def jsonschema_accepts(document: Any) -> bool:
    """jsonschema's verdict alone: the public schema_errors with its fast check switched off,
    so that it asks jsonschema for every error."""
    with patch.object(json_pivot, "fast_accepts", lambda _document: False):
        return not any(json_pivot.schema_errors(document))


def is_the_decimal_version_case(document: Any) -> bool:
    """The one place the fast check is stricter: `"version": 1.0`.

    JSON Schema's `const` compares numbers by value, so jsonschema takes Decimal("1.0") for 1;
    fastjsonschema wants an int or a float. The document then goes to jsonschema, whose verdict
    (valid) stands, as it always has.
    """
    if not isinstance(document, dict):
        return False
    version = document.get("version")
    return (
        isinstance(version, Decimal)
        and version == 1
        and json_pivot.fast_accepts({**document, "version": 1})
    )


@SETTINGS
@given(documents())
def test_fast_schema_check_is_never_more_lenient_than_jsonschema(document: Any) -> None:
    fast = json_pivot.fast_accepts(document)
    slow = jsonschema_accepts(document)
    if fast:
        assert slow, f"fastjsonschema accepted what jsonschema refuses: {document!r}"
    else:
        assert not slow or is_the_decimal_version_case(document), document
    # Whatever the fast check said, the verdict given out is jsonschema's.
    assert (not list(json_pivot.schema_errors(document))) == slow


@settings(max_examples=100, deadline=None)
@given(valid_documents())
def test_valid_documents_pass_the_fast_check(document: Any) -> None:
    # Without this, a fast check that refused everything would pass the test above.
    assert json_pivot.fast_accepts(document)
    assert jsonschema_accepts(document)


@pytest.mark.parametrize(
    ("field", "value", "fast", "slow"),
    [
        ("lits_fermes", 3, True, True),
        ("lits_fermes", 3.0, True, True),  # a whole float is an integer to both (never parsed)
        ("lits_fermes", Decimal("3"), False, False),  # what json.loads makes of 3.0 here
        ("lits_fermes", Decimal("3.0"), False, False),
        ("lits_fermes", True, False, False),
        ("lits_fermes", -1, False, False),
        ("lits_fermes", "3", False, False),
        ("id_fiche_ror", "52/1\n", False, False),
        ("id_fiche_ror", "", False, False),
        ("finess_etablissement", 750712184, False, False),
        ("finess_etablissement", "750712184\n", False, False),
        ("horodatage", "2026-11-23T14:05:00+01:00\n", False, False),
        ("version", True, False, False),
        ("version", 1.0, True, True),
        ("version", Decimal("1.0"), False, True),  # the one known difference: see above
    ],
)
def test_fast_and_slow_schema_checks_on_known_cases(
    field: str, value: object, fast: bool, slow: bool
) -> None:
    document = json_loads(json_pivot.write(prepare(_small())))
    target = document["unites"][0] if field.startswith(("lits", "id")) else document
    target[field] = value
    assert (json_pivot.fast_accepts(document), jsonschema_accepts(document)) == (fast, slow)


def test_a_tuple_of_units_is_not_taken_for_an_array() -> None:
    # fastjsonschema alone would accept it; jsonschema does not, and decides.
    document = json_loads(json_pivot.write(prepare(_small())))
    document["unites"] = tuple(document["unites"])
    assert not json_pivot.fast_accepts(document)
    assert list(json_pivot.schema_errors(document)) == [
        (("unites",), f"{document['unites']!r} is not of type 'array'")
    ]


def test_the_schema_asserts_no_format() -> None:
    # Neither check asserts "format" (jsonschema as called here treats it as an annotation; the
    # fast check is compiled with use_formats=False), so a "format" added to the schema would
    # silently check nothing: write the rule as a pattern, as horodatage does.
    assert '"format"' not in shipped("pivot.schema.json").decode("utf-8")


def test_a_valid_cycle_never_imports_jsonschema() -> None:
    # jsonschema and referencing cost about 0.1 s to import: only a failing file needs them.
    code = (
        "import sys\n"
        "from datetime import datetime\n"
        "from zoneinfo import ZoneInfo\n"
        "from rorfeed.model import BedCounts, Snapshot, UnitRecord\n"
        "from rorfeed.pivot import WRITERS, render_checked\n"
        "s = Snapshot('C', '750712184', datetime(2026, 1, 1, tzinfo=ZoneInfo('Europe/Paris')),"
        " (UnitRecord('1', BedCounts(1, 0, 1)),))\n"
        "for fmt in WRITERS: render_checked(s, fmt)\n"
        "print(sorted(m for m in ('jsonschema', 'referencing') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


# --- the XML check: streamed, a lot at a time, and on the whole tree agree ----------------------


def shipped(name: str) -> bytes:
    """A schema file as the package ships it (rorfeed/pivot/)."""
    return files("rorfeed.pivot").joinpath(name).read_bytes()


def reference_xml_validate(data: bytes) -> None:
    """The XML check as it was: the whole file parsed into one tree, the tree validated."""
    _common.decode(data, "xml")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as err:
        raise PivotInvalid(f"xml pivot file is not well-formed XML: {err}") from err
    schema = etree.XMLSchema(etree.fromstring(shipped("pivot.xsd"), parser))
    valid = schema.validate(root)
    entries = cast("Iterable[Any]", schema.error_log)  # lxml-stubs: not declared iterable
    problems = [f"line {entry.line}: {entry.message}" for entry in entries]
    if not valid:
        raise PivotInvalid(_common.schema_report("xml", problems))
    _common.check_unit_order((e.text or "" for e in root.iter("id_fiche_ror")), "xml")


# What a broken writer might leave between the lines of a valid file.
XML_SNIPPETS = [
    "<unite>",
    "</unite>",
    "<x/>",
    "text",
    "<!-- note -->",
    "<?pi data?>",
    "&amp;",
    "&undefined;",
    "<lits_fermes>1</lits_fermes>",
    "<nom_etablissement>A</nom_etablissement>",
    "<finess_etablissement>750712184</finess_etablissement>",
    "<unite><id_fiche_ror>0</id_fiche_ror><lits_installes>1</lits_installes>"
    "<lits_fermes>0</lits_fermes><lits_disponibles>1</lits_disponibles></unite>",
]


def damaged(
    draw: st.DrawFn,
    lines: list[str],
    *,
    at_least: int,
    keep: int,
    edits: Sequence[str],
    more: Sequence[tuple[str, Callable[[int], None]]] = (),
) -> bytes:
    """`lines` (a valid file's, without their ends) after `at_least` to three damages: a line
    deleted (while more than `keep` are left), repeated, swapped, edited (one of `edits` put in
    at some place, up to three characters cut there) or any of `more` (by name: a name given
    twice is drawn twice as often), then joined back into a file."""
    extra = dict(more)
    names = ["delete", "repeat", "swap", "edit", *(name for name, _ in more)]
    for _ in range(draw(st.integers(min_value=at_least, max_value=3))):
        action = draw(st.sampled_from(names))
        i, j = (draw(st.integers(min_value=0, max_value=len(lines) - 1)) for _ in range(2))
        if action == "delete" and len(lines) > keep:
            del lines[i]
        elif action == "repeat":
            lines.insert(j, lines[i])
        elif action == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif action == "edit":
            at = draw(st.integers(min_value=0, max_value=len(lines[i])))
            cut = draw(st.integers(min_value=0, max_value=3))
            new = draw(st.sampled_from(edits))
            lines[i] = lines[i][:at] + new + lines[i][at + cut :]
        elif action in extra:
            extra[action](i)
    return ("\n".join(lines) + "\n").encode()


@st.composite
def damaged_xml(draw: st.DrawFn) -> bytes:
    """A valid file with one to three lines deleted, repeated, swapped, inserted or edited."""
    lines = xml_pivot.write(prepare(draw(VALID_SNAPSHOTS))).decode().split("\n")[:-1]

    def insert(i: int) -> None:
        lines.insert(i, draw(st.sampled_from(XML_SNIPPETS)))

    edits = ["", "-", "x", "9", "<", ">", "</a>", " "]
    return damaged(draw, lines, at_least=1, keep=2, edits=edits, more=[("insert", insert)])


def xml_verdict(validate: Any, data: bytes) -> tuple[str, str]:
    try:
        validate(data)
    except PivotInvalid as err:
        message = str(err)
    else:
        return ("valid", "")
    if "not well-formed" in message:
        # Where lxml reports an undefined entity only as "no element found (line 0)", the
        # streamed check words it from the parser's log, without lxml's "(<string>, line N)".
        return ("not well-formed", message.split(" (<string>", maxsplit=1)[0])
    if "does not match its schema" in message:
        return ("schema", message)
    return ("other", message)


def schema_lines(message: str) -> set[str]:
    # xs:unique sees one lot at a time: a repeat across lots is the order check's to report.
    return {line for line in message.split("\n")[1:] if "Duplicate key-sequence" not in line}


@SETTINGS
@given(data=damaged_xml(), per_batch=st.sampled_from([1, 2, 3, 2000]))
def test_streamed_xml_check_gives_the_verdict_of_the_whole_tree(
    data: bytes, per_batch: int
) -> None:
    plain = xml_verdict(reference_xml_validate, data)
    with patch.object(xml_pivot, "_CHILDREN_PER_BATCH", per_batch):
        streamed = xml_verdict(xml_pivot.validate, data)
    if plain[0] == "schema" and not schema_lines(plain[1]):
        # Only a repeated id: refused all the same, by the schema or by the order check.
        assert streamed[0] in {"schema", "other"}, (plain, streamed)
    elif plain[0] == "schema":
        # The whole tree's check stops at the first child out of place; the streamed one goes
        # on in the next lot and may find more: never fewer.
        assert streamed[0] == "schema", (plain, streamed)
        assert schema_lines(plain[1]) <= schema_lines(streamed[1]), (plain, streamed)
    else:
        assert streamed == plain


# --- the CSV check: a lot at a time, and on the whole file, agree --------------------------------


@st.composite
def damaged_csv(draw: st.DrawFn) -> bytes:
    """A valid file with up to three lines deleted, repeated, swapped or edited, or one of
    their fields replaced."""
    lines = csv_pivot.write(prepare(draw(VALID_SNAPSHOTS))).decode().split("\n")[:-1]

    def field(i: int) -> None:
        fields = lines[i].split(";")
        at = draw(st.integers(min_value=0, max_value=len(fields) - 1))
        fields[at] = draw(st.sampled_from(CSV_FIELD_DAMAGE))
        lines[i] = ";".join(fields)

    edits = ["", ";", '"', "-", "x", "0", "9", " ", "1.5", "\t"]
    more = [("field", field), ("field", field)]
    return damaged(draw, lines, at_least=0, keep=1, edits=edits, more=more)


# What a broken writer might put in one field.
CSV_FIELD_DAMAGE = [
    "", "-1", "1.5", "07", " 7", "+7", "x", "\t", "1e3", "99999999999999999999",
    "2026-11-23T14:05:00", "2026-13-01T00:00:00+01:00", "2026-11-23T14:05:00+01:00",
    "7507121840", "2A1234567", '"quoted"', "a;b",
]  # fmt: skip


def csv_verdict(check: Any, data: str | bytes) -> str:
    try:
        check(data)
    except PivotInvalid as err:
        return str(err)
    return "valid"


@SETTINGS
@given(data=damaged_csv(), per_lot=st.sampled_from([1, 2, 3, 2000]))
def test_csv_check_by_lots_accepts_only_what_the_whole_file_check_accepts(
    data: bytes, per_lot: int
) -> None:
    text = data.decode()
    with patch.object(csv_pivot, "_LINES_PER_LOT", per_lot):
        plainly_valid = csv_pivot._plainly_valid(data)
        verdict = csv_verdict(csv_pivot.validate, text.encode())
    whole = csv_verdict(csv_pivot._check_whole, text)
    event(whole.split(":")[0] if whole == "valid" else whole.split("\n")[0][:60])
    # The lots say "valid" exactly where the whole file is (so the undamaged files, at least,
    # never pay for the whole-file check), and the report is always the whole-file check's.
    assert plainly_valid == (whole == "valid"), (whole, per_lot)
    assert verdict == whole


# --- CSV: line numbers on the fast and the slow reading ------------------------------------------


def _small(**changes: Any) -> Snapshot:
    units = (
        UnitRecord("52/1", BedCounts(20, 3, 4), datetime(2026, 11, 23, 12, 30, tzinfo=UTC)),
        UnitRecord("52/2", BedCounts(8, 0, 2)),
        UnitRecord("52/3", BedCounts(9, 1, 2)),
    )
    fields: dict[str, Any] = {
        "establishment_name": "Clinique",
        "finess": "750712184",
        "horodatage": datetime(2026, 11, 23, 14, 5, tzinfo=PARIS),
        "units": units,
    }
    return Snapshot(**(fields | changes))


def test_csv_error_names_the_line_after_a_field_that_spans_two_lines() -> None:
    # Unit 52/1's id holds a newline (quoted, so the record spans lines 2 and 3): the next
    # unit starts on line 4, and the bad count of the third unit is on line 5.
    snapshot = _small()
    units = (
        UnitRecord("52/1\nbis", BedCounts(20, 3, 4)),
        snapshot.units[1],
        UnitRecord("52/3", BedCounts(9, -1, 2)),
    )
    data = csv_pivot.write(prepare(_small(units=units)))
    with pytest.raises(PivotInvalid) as caught:
        csv_pivot.validate(data)
    message = str(caught.value)
    assert "line 2, id_fiche_ror: '52/1\\nbis' does not match" in message
    assert "line 5, lits_fermes: '-1' is not of type 'integer'" in message


def test_csv_with_too_few_fields_names_its_line() -> None:
    data = csv_pivot.write(prepare(_small())).replace(b";8;0;2;", b";8;0;", 1)
    with pytest.raises(PivotInvalid, match="line 3 has 7 fields, expected 8"):
        csv_pivot.validate(data)


def test_csv_reports_the_first_problem_in_file_order() -> None:
    # Line 3 has too few fields, line 4 is not CSV at all: line 3 is reported, as when the file
    # was read line by line.
    data = csv_pivot.write(prepare(_small())).replace(b";8;0;2;", b";8;0;", 1)
    data = data.replace(b"52/3", b'"52/3"x', 1)
    with pytest.raises(PivotInvalid, match="line 3 has 7 fields"):
        csv_pivot.validate(data)


def test_csv_blank_line_is_refused_with_its_number() -> None:
    data = csv_pivot.write(prepare(_small())) + b"\n"
    with pytest.raises(PivotInvalid, match="line 5 has 0 fields"):
        csv_pivot.validate(data)


@pytest.mark.parametrize("fmt", ["json", "xml", "csv"])
def test_render_checked_accepts_a_thousand_units(fmt: str) -> None:
    units = tuple(
        UnitRecord(f"52/{i}", BedCounts(i % 50, i % 3, 0), None if i % 4 else _small().horodatage)
        for i in range(1000)
    )
    data = render_checked(_small(units=units), fmt)
    assert data == REFERENCES[fmt](_small(units=units))
