"""Pivot files (SPEC §5): exact bytes, schema checks, ordering, time stamps, shipped samples."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from types import ModuleType
from zoneinfo import ZoneInfo

import pytest
from jsonschema import Draft202012Validator
from lxml import etree

from rorfeed.errors import PivotInvalid
from rorfeed.model import BedCounts, Snapshot, UnitRecord
from rorfeed.pivot import WRITERS, prepare, render_checked
from rorfeed.pivot import csv as csv_pivot
from rorfeed.pivot import json as json_pivot
from rorfeed.pivot import xml as xml_pivot

PARIS = ZoneInfo("Europe/Paris")
FORMATS = sorted(WRITERS)
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def small_snapshot() -> Snapshot:
    # Units given as "9" then "10": as text "10" sorts first. Unit "9" was updated at 12:30 UTC.
    return Snapshot(
        establishment_name="Clinique de l'Étang",
        finess="750712184",
        horodatage=datetime(2026, 11, 23, 14, 5, tzinfo=PARIS),
        units=(
            UnitRecord("9", BedCounts(20, 3, 4), datetime(2026, 11, 23, 12, 30, tzinfo=UTC)),
            UnitRecord("10", BedCounts(8, 0, 2)),
        ),
    )


EXPECTED_XML = """\
<?xml version='1.0' encoding='UTF-8'?>
<disponibilite_lits version="1" horodatage="2026-11-23T14:05:00+01:00">
  <nom_etablissement>Clinique de l'Étang</nom_etablissement>
  <finess_etablissement>750712184</finess_etablissement>
  <unite>
    <id_fiche_ror>10</id_fiche_ror>
    <lits_installes>8</lits_installes>
    <lits_fermes>0</lits_fermes>
    <lits_disponibles>2</lits_disponibles>
  </unite>
  <unite>
    <id_fiche_ror>9</id_fiche_ror>
    <lits_installes>20</lits_installes>
    <lits_fermes>3</lits_fermes>
    <lits_disponibles>4</lits_disponibles>
    <date_maj>2026-11-23T13:30:00+01:00</date_maj>
  </unite>
</disponibilite_lits>
"""

EXPECTED_JSON = """\
{
  "version": 1,
  "horodatage": "2026-11-23T14:05:00+01:00",
  "nom_etablissement": "Clinique de l'Étang",
  "finess_etablissement": "750712184",
  "unites": [
    {
      "id_fiche_ror": "10",
      "lits_installes": 8,
      "lits_fermes": 0,
      "lits_disponibles": 2
    },
    {
      "id_fiche_ror": "9",
      "lits_installes": 20,
      "lits_fermes": 3,
      "lits_disponibles": 4,
      "date_maj": "2026-11-23T13:30:00+01:00"
    }
  ]
}
"""

EXPECTED_CSV = """\
nom_etablissement;finess_etablissement;id_fiche_ror;lits_installes;lits_fermes;lits_disponibles;horodatage;date_maj
Clinique de l'Étang;750712184;10;8;0;2;2026-11-23T14:05:00+01:00;
Clinique de l'Étang;750712184;9;20;3;4;2026-11-23T14:05:00+01:00;2026-11-23T13:30:00+01:00
"""

EXPECTED = {"xml": EXPECTED_XML, "json": EXPECTED_JSON, "csv": EXPECTED_CSV}


# --- editing a rendered file, to feed the validators something wrong --------------------------

REMOVE = object()


def edited(fmt: str, data: bytes, field: str, value: object, unit: int | None = 0) -> bytes:
    """`data` with `field` of unit number `unit` (of the establishment when None) set to
    `value`, added when absent, or removed when `value` is REMOVE."""
    if fmt == "json":
        document = json.loads(data)
        target = document if unit is None else document["unites"][unit]
        if value is REMOVE:
            del target[field]
        else:
            target[field] = value
        return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode()
    if fmt == "xml":
        root = etree.fromstring(data)
        target = root if unit is None else root.findall("unite")[unit]
        if field in target.attrib:
            target.set(field, str(value))
        else:
            element = target.find(field)
            if value is REMOVE:
                assert element is not None
                target.remove(element)
            else:
                if element is None:
                    element = etree.SubElement(target, field)
                element.text = str(value)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8") + b"\n"
    rows = list(csv.reader(io.StringIO(data.decode(), newline=""), delimiter=";"))
    column = rows[0].index(field)
    for row in rows[1:] if unit is None else [rows[1 + unit]]:
        if value is REMOVE:
            del row[column]
        else:
            row[column] = str(value)
    out = io.StringIO()
    csv.writer(out, delimiter=";", lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def unit_ids(fmt: str, data: bytes) -> list[str]:
    if fmt == "json":
        return [unit["id_fiche_ror"] for unit in json.loads(data)["unites"]]
    if fmt == "xml":
        return [e.text or "" for e in etree.fromstring(data).iterfind("unite/id_fiche_ror")]
    rows = csv.DictReader(io.StringIO(data.decode(), newline=""), delimiter=";")
    return [row["id_fiche_ror"] for row in rows]


def rendered(fmt: str, snapshot: Snapshot | None = None) -> bytes:
    return WRITERS[fmt].write(prepare(snapshot or small_snapshot()))


def load_samples_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- rendering --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_renders_the_exact_expected_bytes(fmt: str) -> None:
    assert rendered(fmt) == EXPECTED[fmt].encode("utf-8")


@pytest.mark.parametrize("fmt", FORMATS)
def test_rendered_file_validates_against_its_schema(fmt: str) -> None:
    WRITERS[fmt].validate(rendered(fmt))
    assert render_checked(small_snapshot(), fmt) == rendered(fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_rendering_twice_gives_the_same_bytes_whatever_the_input_order(fmt: str) -> None:
    snapshot = small_snapshot()
    reversed_units = replace(snapshot, units=tuple(reversed(snapshot.units)))
    assert rendered(fmt, snapshot) == rendered(fmt, snapshot) == rendered(fmt, reversed_units)


@pytest.mark.parametrize("fmt", FORMATS)
def test_units_come_out_sorted_by_id_as_text(fmt: str) -> None:
    ids = ("9", "10", "52/98765", "52/192675", "2A/1")
    snapshot = replace(
        small_snapshot(), units=tuple(UnitRecord(i, BedCounts(1, 0, 1)) for i in ids)
    )
    data = render_checked(snapshot, fmt)
    assert unit_ids(fmt, data) == ["10", "2A/1", "52/192675", "52/98765", "9"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_date_maj_is_omitted_or_empty_when_the_source_gives_none(fmt: str) -> None:
    snapshot = replace(small_snapshot(), units=(UnitRecord("10", BedCounts(8, 0, 2)),))
    data = render_checked(snapshot, fmt)
    if fmt == "csv":
        assert data.decode().splitlines()[1].endswith("+01:00;")
    else:
        assert b"date_maj" not in data


@pytest.mark.parametrize("fmt", FORMATS)
def test_date_maj_given_in_utc_is_written_in_the_local_zone(fmt: str) -> None:
    snapshot = replace(
        small_snapshot(),
        units=(UnitRecord("1", BedCounts(1, 0, 1), datetime(2026, 11, 23, 9, 0, tzinfo=UTC)),),
    )
    data = render_checked(snapshot, fmt)
    assert b"2026-11-23T10:00:00+01:00" in data
    assert b"09:00:00" not in data


@pytest.mark.parametrize("fmt", FORMATS)
def test_date_maj_keeps_its_own_offset_across_a_daylight_saving_change(fmt: str) -> None:
    # Cycle just after the spring change (UTC+2); the unit changed just before it (UTC+1).
    snapshot = Snapshot(
        establishment_name="Hôpital Exemple",
        finess="750712184",
        horodatage=datetime(2026, 3, 29, 4, 0, tzinfo=PARIS),
        units=(UnitRecord("1", BedCounts(1, 0, 1), datetime(2026, 3, 29, 0, 30, tzinfo=UTC)),),
    )
    data = render_checked(snapshot, fmt)
    assert b"2026-03-29T04:00:00+02:00" in data
    assert b"2026-03-29T01:30:00+01:00" in data


@pytest.mark.parametrize("fmt", FORMATS)
def test_time_stamps_drop_fractions_of_a_second_without_rounding_up(fmt: str) -> None:
    snapshot = replace(
        small_snapshot(),
        horodatage=datetime(2026, 11, 23, 14, 5, 59, 999_999, tzinfo=PARIS),
        units=(
            UnitRecord(
                "1", BedCounts(1, 0, 1), datetime(2026, 11, 23, 12, 0, 0, 500_000, tzinfo=UTC)
            ),
        ),
    )
    data = render_checked(snapshot, fmt)
    assert b"2026-11-23T14:05:59+01:00" in data
    assert b"2026-11-23T13:00:00+01:00" in data


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_naive_time_is_refused_rather_than_read_in_the_host_zone(fmt: str) -> None:
    naive_unit = replace(
        small_snapshot(), units=(UnitRecord("1", BedCounts(1, 0, 1), datetime(2026, 11, 23)),)
    )
    with pytest.raises(PivotInvalid, match="date_maj of unit '1' is a naive datetime"):
        render_checked(naive_unit, fmt)
    naive_cycle = replace(small_snapshot(), horodatage=datetime(2026, 11, 23, 14, 5))
    with pytest.raises(PivotInvalid, match="horodatage is a naive datetime"):
        render_checked(naive_cycle, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_line_ends_with_a_newline_and_there_is_no_bom(fmt: str) -> None:
    data = rendered(fmt)
    assert not data.startswith(b"\xef\xbb\xbf")
    assert data.endswith(b"\n")
    assert b"\r" not in data
    assert all(line for line in data.split(b"\n")[:-1])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"\xef\xbb\xbf" + data, "BOM"),
        (lambda data: data.rstrip(b"\n"), "last line does not end with a newline"),
        (lambda data: data.replace(b"\n", b"\r\n"), "line 1 contains a carriage return"),
        (lambda data: data.replace("É".encode(), b"\xc9"), "not valid UTF-8"),
    ],
)
def test_validation_refuses_bytes_that_break_the_line_and_encoding_rules(
    fmt: str, damage: Callable[[bytes], bytes], message: str
) -> None:
    with pytest.raises(PivotInvalid, match=message):
        WRITERS[fmt].validate(damage(rendered(fmt)))


def test_csv_quotes_a_name_with_a_semicolon_or_quote_and_it_round_trips() -> None:
    name = 'Clinique "Les Pins"; site B'
    data = render_checked(replace(small_snapshot(), establishment_name=name), "csv")
    lines = data.decode().splitlines()
    assert lines[1].startswith('"Clinique ""Les Pins""; site B";750712184;10;')
    rows = list(csv.reader(io.StringIO(data.decode(), newline=""), delimiter=";"))
    assert [row[0] for row in rows[1:]] == [name, name]
    assert all(len(row) == 8 for row in rows)


@pytest.mark.parametrize("fmt", FORMATS)
def test_markup_characters_in_the_name_survive_every_format(fmt: str) -> None:
    name = 'Centre <A&B> "d\'Été"; Nord'
    data = render_checked(replace(small_snapshot(), establishment_name=name), fmt)
    if fmt == "json":
        assert json.loads(data)["nom_etablissement"] == name
    elif fmt == "xml":
        assert etree.fromstring(data).findtext("nom_etablissement") == name
    else:
        assert (
            next(csv.reader(io.StringIO(data.decode().splitlines()[1]), delimiter=";"))[0] == name
        )


# --- the schemas ------------------------------------------------------------------------------


def test_shipped_schemas_are_themselves_valid() -> None:
    package = files("rorfeed.pivot")
    Draft202012Validator.check_schema(json.loads(package.joinpath("pivot.schema.json").read_text()))
    etree.XMLSchema(etree.fromstring(package.joinpath("pivot.xsd").read_bytes()))


def test_every_format_has_its_extension_and_a_shipped_schema() -> None:
    package = files("rorfeed.pivot")
    assert {fmt: writer.extension for fmt, writer in WRITERS.items()} == {
        "xml": "xml",
        "json": "json",
        "csv": "csv",
    }
    # CSV is checked against the JSON Schema (one line, one item of `unites`).
    assert package.joinpath("pivot.xsd").is_file()
    assert package.joinpath("pivot.schema.json").is_file()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("field", "value", "unit", "message"),
    [
        ("lits_fermes", -1, 0, "lits_fermes"),
        ("lits_disponibles", 2.5, 0, "lits_disponibles"),
        ("lits_installes", "huit", 0, "lits_installes"),
        ("lits_installes", REMOVE, 0, "lits_installes|has 7 fields"),
        ("id_fiche_ror", "", 0, "id_fiche_ror"),
        ("finess_etablissement", "75071218", None, "finess_etablissement"),
        ("finess_etablissement", "2C0712184", None, "finess_etablissement"),
        ("nom_etablissement", "", None, "nom_etablissement"),
        ("nom_etablissement", "Ligne\nsuivante", None, "nom_etablissement"),
        ("horodatage", "2026-11-23T14:05:00", None, "horodatage"),
        ("date_maj", "2026-11-23T13:30:00Z", 1, "date_maj"),
        ("date_maj", "2026-11-23T13:30:00.5+01:00", 1, "date_maj"),
        ("date_maj", "2026-13-23T13:30:00+01:00", 1, "date_maj"),
    ],
)
def test_schema_rejects_a_bad_value(
    fmt: str, field: str, value: object, unit: int | None, message: str
) -> None:
    with pytest.raises(PivotInvalid, match=message):
        WRITERS[fmt].validate(edited(fmt, rendered(fmt), field, value, unit))


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize(
    ("field", "unit", "message"),
    [
        ("lits_supplementaires", 0, "lits_supplementaires"),
        ("commentaire", None, "commentaire"),
    ],
)
def test_schema_rejects_an_extra_field(
    fmt: str, field: str, unit: int | None, message: str
) -> None:
    with pytest.raises(PivotInvalid, match=message):
        WRITERS[fmt].validate(edited(fmt, rendered(fmt), field, "x", unit))


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_schema_rejects_another_version(fmt: str) -> None:
    with pytest.raises(PivotInvalid, match=r"version"):
        WRITERS[fmt].validate(edited(fmt, rendered(fmt), "version", 2, None))


def test_json_schema_message_points_at_the_unit_and_field() -> None:
    with pytest.raises(
        PivotInvalid, match=r"unites\[1\]\.lits_fermes: -3 is less than the minimum"
    ):
        json_pivot.validate(edited("json", rendered("json"), "lits_fermes", -3, 1))


def test_csv_schema_message_points_at_the_line_and_column() -> None:
    with pytest.raises(PivotInvalid, match=r"line 3, lits_fermes: '-3' is not of type 'integer'"):
        csv_pivot.validate(edited("csv", rendered("csv"), "lits_fermes", -3, 1))


def test_xml_schema_message_points_at_the_line() -> None:
    with pytest.raises(PivotInvalid, match=r"line 14: Element 'lits_fermes': '-3'"):
        xml_pivot.validate(edited("xml", rendered("xml"), "lits_fermes", -3, 1))


# --- XML: validation streams, a lot of units at a time ------------------------------------------


def many_units(count: int) -> Snapshot:
    units = tuple(UnitRecord(f"52/{i:06d}", BedCounts(3, 1, 2)) for i in range(count))
    return replace(small_snapshot(), establishment_name="Clinique", units=units)


def xml_line_of(data: bytes, text: bytes) -> int:
    return data.count(b"\n", 0, data.index(text)) + 1


def test_xml_bad_unit_deep_in_a_large_file_is_reported_with_its_line() -> None:
    # 12,000 units: several lots, and lines past 65,535 (where libxml2 once stopped counting).
    data = xml_pivot.write(prepare(many_units(12_000)))
    bad = data.replace(
        b"<id_fiche_ror>52/011000</id_fiche_ror>\n    <lits_installes>3</lits_installes>",
        b"<id_fiche_ror>52/011000</id_fiche_ror>\n    <lits_installes>-3</lits_installes>",
    )
    line = xml_line_of(bad, b"<lits_installes>-3<")
    assert line > 65_535
    with pytest.raises(PivotInvalid) as caught:
        xml_pivot.validate(bad)
    assert str(caught.value) == (
        "xml pivot file does not match its schema:\n"
        f"line {line}: Element 'lits_installes': '-3' is not a valid value of the atomic type "
        "'lits'."
    )


@pytest.mark.parametrize("per_batch", [1, 2, 3, 2000])
def test_xml_units_out_of_order_or_repeated_across_lots_are_refused(
    per_batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The schema's xs:unique sees one lot at a time: the order check sees the whole file.
    monkeypatch.setattr(xml_pivot, "_CHILDREN_PER_BATCH", per_batch)
    data = xml_pivot.write(prepare(many_units(7)))
    repeated = data.replace(b">52/000005<", b">52/000001<")
    # In one lot, the schema finds the repeat first, as it did on the whole tree.
    found = (
        r"unit 6 id_fiche_ror '52/000001' is out of order|Duplicate key-sequence \['52/000001'\]"
    )
    with pytest.raises(PivotInvalid, match=found):
        xml_pivot.validate(repeated)
    last_twice = data.replace(b">52/000006<", b">52/000005<")
    with pytest.raises(PivotInvalid, match=r"unit 7 id_fiche_ror '52/000005' repeats|Duplicate"):
        xml_pivot.validate(last_twice)
    xml_pivot.validate(data)


@pytest.mark.parametrize("per_batch", [1, 2, 2000])
def test_xml_header_fault_is_reported_once_however_many_lots(
    per_batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xml_pivot, "_CHILDREN_PER_BATCH", per_batch)
    data = xml_pivot.write(prepare(many_units(7))).replace(b">750712184<", b">75071218<")
    with pytest.raises(PivotInvalid) as caught:
        xml_pivot.validate(data)
    assert str(caught.value) == (
        "xml pivot file does not match its schema:\n"
        "line 4: Element 'finess_etablissement': [facet 'pattern'] The value '75071218' is not "
        "accepted by the pattern '([0-9]{2}|2A|2B)[0-9]{7}'."
    )


@pytest.mark.parametrize("per_batch", [1, 3, 2000])
def test_xml_file_cut_short_anywhere_is_refused(
    per_batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the schema plugged into iterparse, lxml 6.1 / libxml2 2.14 took a truncated file for
    # a valid one: the parser's own errors were lost.
    monkeypatch.setattr(xml_pivot, "_CHILDREN_PER_BATCH", per_batch)
    data = xml_pivot.write(prepare(many_units(3)))
    for end in range(1, len(data) - 1):
        cut = data[:end] if data[end - 1 : end] == b"\n" else data[:end] + b"\n"
        with pytest.raises(PivotInvalid, match="not well-formed XML"):
            xml_pivot.validate(cut)


def test_xml_text_between_units_is_refused_wherever_the_parser_reads_it() -> None:
    # The parser reads 32 KiB at a time and may stop inside a long run of text: all of it must
    # still reach the schema, not only the part read with the unit before it.
    data = xml_pivot.write(prepare(many_units(400)))
    ends = [i + len(b"</unite>") for i in range(len(data)) if data.startswith(b"</unite>", i)]
    for end in ends[150:200]:
        for blank in (400, 5_000, 40_000):
            junk = data[:end] + b" " * blank + b"X" + data[end:]
            with pytest.raises(PivotInvalid, match="Character content other than whitespace"):
                xml_pivot.validate(junk)


def test_xml_undefined_entity_is_not_well_formed_and_named() -> None:
    data = rendered("xml").replace(
        b"<lits_fermes>0</lits_fermes>", b"<lits_fermes>&x;</lits_fermes>"
    )
    with pytest.raises(PivotInvalid, match=r"not well-formed XML: Entity 'x' not defined, line 8"):
        xml_pivot.validate(data)


def test_xml_entity_the_schema_cannot_follow_is_a_refusal_not_a_crash() -> None:
    # Declared, so well-formed; kept as a reference (resolve_entities=False), which libxml2's
    # schema validator gives up on with its own exception.
    data = (
        rendered("xml")
        .replace(b"?>\n", b"?>\n<!DOCTYPE disponibilite_lits [<!ENTITY x 'y'>]>\n", 1)
        .replace(b"<lits_fermes>0</lits_fermes>", b"<lits_fermes>0</lits_fermes>&x;")
    )
    with pytest.raises(PivotInvalid, match="cannot be checked against its schema"):
        xml_pivot.validate(data)


def test_xml_finess_xml_cannot_carry_is_refused_naming_the_finess() -> None:
    with pytest.raises(PivotInvalid, match="cannot hold the text of the establishment's finess"):
        xml_pivot.write(prepare(replace(small_snapshot(), finess="75071218\x01")))


@pytest.mark.parametrize("literal", ["3.0", "3e0", "NaN"])
def test_json_count_written_as_a_float_is_not_an_integer(literal: str) -> None:
    data = rendered("json").replace(b'"lits_fermes": 3,', f'"lits_fermes": {literal},'.encode())
    assert data != rendered("json")
    with pytest.raises(PivotInvalid, match=r"lits_fermes|NaN"):
        json_pivot.validate(data)


def test_json_with_a_field_given_twice_is_refused() -> None:
    data = rendered("json").replace(b'"lits_fermes": 3,', b'"lits_fermes": 3, "lits_fermes": 1,')
    with pytest.raises(PivotInvalid, match="'lits_fermes' appears twice"):
        json_pivot.validate(data)


@pytest.mark.parametrize("value", ["07", "+7", " 7"])
def test_csv_count_must_be_written_plainly(value: str) -> None:
    with pytest.raises(PivotInvalid, match="lits_installes"):
        csv_pivot.validate(edited("csv", rendered("csv"), "lits_installes", value, 0))


def test_csv_lines_of_one_file_share_establishment_and_time() -> None:
    data = edited("csv", rendered("csv"), "horodatage", "2026-11-23T15:05:00+01:00", 1)
    with pytest.raises(PivotInvalid, match=r"line 3, horodatage: .* differs"):
        csv_pivot.validate(data)


def test_csv_header_must_be_exact() -> None:
    data = rendered("csv").replace(b"lits_installes", b"lits", 1)
    with pytest.raises(PivotInvalid, match="line 1 must be the header"):
        csv_pivot.validate(data)


def test_finess_of_corsica_is_accepted() -> None:
    for fmt in FORMATS:
        render_checked(replace(small_snapshot(), finess="2A0000012"), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unsorted_or_repeated_units_are_refused(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Snapshot, "sorted_units", lambda self: self.units)
    snapshot = small_snapshot()
    with pytest.raises(PivotInvalid, match="'10' is out of order after '9'"):
        render_checked(snapshot, fmt)
    twice = replace(snapshot, units=(snapshot.units[0], snapshot.units[0]))
    with pytest.raises(PivotInvalid, match=r"repeats|Duplicate key"):
        render_checked(twice, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_snapshot_without_units_gives_no_file(fmt: str) -> None:
    with pytest.raises(PivotInvalid):
        render_checked(replace(small_snapshot(), units=()), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_control_character_in_the_name_is_refused(fmt: str) -> None:
    with pytest.raises(PivotInvalid, match=r"nom_etablissement|XML compatible"):
        render_checked(replace(small_snapshot(), establishment_name="Clinique\x01"), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_render_checked_refuses_what_a_broken_writer_produced(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = edited(fmt, rendered(fmt), "lits_fermes", -1, 0)
    monkeypatch.setattr(WRITERS[fmt], "write", lambda prepared: broken)
    with pytest.raises(PivotInvalid, match="lits_fermes"):
        render_checked(small_snapshot(), fmt)


# --- the shipped samples ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_samples_are_what_rorfeed_renders_now_and_validate(fmt: str) -> None:
    make_samples = load_samples_module()
    snapshot = make_samples.sample_snapshot()
    path = make_samples.sample_paths(snapshot)[fmt]
    assert path.name == f"rorlits_750712184_20261123T130500Z.{fmt}"
    assert path.read_bytes() == render_checked(snapshot, fmt), (
        "samples/ is stale: run `python samples/make_samples.py`"
    )
    WRITERS[fmt].validate(path.read_bytes())


@pytest.mark.parametrize("field", ["nom_etablissement", "finess_etablissement"])
def test_json_schema_refuses_text_ending_in_a_newline(field: str) -> None:
    import json as std_json

    from rorfeed.errors import PivotInvalid
    from rorfeed.pivot import json as pivot_json

    doc = std_json.loads(WRITERS["json"].write(prepare(small_snapshot())))
    doc[field] += "\n"
    doc["unites"][0]["id_fiche_ror"] += "\n"
    with pytest.raises(PivotInvalid):
        pivot_json.validate(std_json.dumps(doc).encode() + b"\n")
