"""The XML pivot file, checked against the shipped XSD.

`render` writes unit by unit with lxml's `xmlfile`: a file of 100,000 units never exists as
a tree on the way out (about 600,000 elements, some 170 MB of lxml nodes). `validate` parses
the whole file and hands the tree to the schema: the check that stands between rorfeed and the
ROR stays the plain one.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable
from functools import cache
from importlib.resources import files
from typing import Any, Final, cast

from lxml import etree

from rorfeed.errors import PivotInvalid
from rorfeed.model import Snapshot
from rorfeed.pivot import _common

extension: Final = "xml"

# One compiled schema is shared; its error_log is per object, so two threads validating at once
# would read each other's errors.
_schema_lock = threading.Lock()


def render(snapshot: Snapshot) -> bytes:
    """The bytes `etree.tostring(tree, xml_declaration=True, encoding="UTF-8",
    pretty_print=True)` gives for the tree of this snapshot, written without the tree.

    lxml's incremental writer holds the root open; each unit is one small element, reused from
    unit to unit, its text set and written out. So the text passes the same checks as on the
    whole tree (`.text = ...` refuses, as ValueError, what XML 1.0 cannot carry: control
    characters, U+FFFE/U+FFFF, lone surrogates) and is escaped by the same serializer as
    tostring. The indentation pretty_print would add (two spaces a level, one element a line)
    is written as the whitespace it is.
    """
    horodatage = _common.horodatage(snapshot)
    plain, dated = _unit_template(with_date_maj=False), _unit_template(with_date_maj=True)
    plain_fields, dated_fields = list(plain), list(dated)
    out = io.BytesIO()
    where = "the establishment's name"
    try:
        with etree.xmlfile(out, encoding="UTF-8") as xf:
            xf.write_declaration()  # ends with its own newline
            with xf.element(
                "disponibilite_lits", version=str(_common.FORMAT_VERSION), horodatage=horodatage
            ):
                xf.write("\n  ", _leaf("nom_etablissement", snapshot.establishment_name))
                where = "the establishment's finess"
                xf.write("\n  ", _leaf("finess_etablissement", snapshot.finess))
                for unit in snapshot.sorted_units():
                    where = f"unit {unit.ror_id!r}"
                    date_maj = _common.date_maj(unit, snapshot)
                    element, fields = (
                        (plain, plain_fields) if date_maj is None else (dated, dated_fields)
                    )
                    fields[0].text = unit.ror_id
                    fields[1].text = str(unit.counts.installed)
                    fields[2].text = str(unit.counts.closed)
                    fields[3].text = str(unit.counts.available)
                    if date_maj is not None:
                        fields[4].text = date_maj
                    xf.write("\n  ", element)
                xf.write("\n")
    except ValueError as err:  # lxml refuses control characters, which XML 1.0 cannot carry
        raise PivotInvalid(f"xml pivot file cannot hold the text of {where}: {err}") from err
    # xmlfile refuses any text after the root element, even a newline: tostring ends with one.
    out.write(b"\n")
    return out.getvalue()


def _leaf(tag: str, text: str) -> etree._Element:
    element = etree.Element(tag)
    element.text = text
    return element


def _unit_template(*, with_date_maj: bool) -> etree._Element:
    """A `unite` laid out as pretty_print lays it out one level down: its children indented
    by four spaces, its end tag by two."""
    unit = etree.Element("unite")
    unit.text = "\n    "
    names = ["id_fiche_ror", "lits_installes", "lits_fermes", "lits_disponibles"]
    for name in [*names, "date_maj"] if with_date_maj else names:
        etree.SubElement(unit, name).tail = "\n    "
    unit[-1].tail = "\n  "
    return unit


def validate(data: bytes) -> None:
    _common.decode(data, "xml")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as err:
        raise PivotInvalid(f"xml pivot file is not well-formed XML: {err}") from err
    schema = _schema()
    with _schema_lock:
        try:
            valid = schema.validate(root)
        except etree.XMLSchemaValidateError as err:
            # libxml2's validator gives up on what it cannot follow (an entity reference, kept
            # as such by resolve_entities=False): a refusal like any other, not a crash.
            raise PivotInvalid(
                f"xml pivot file cannot be checked against its schema: {err}"
            ) from err
        # lxml-stubs does not declare the error log iterable; its entries are _LogEntry objects.
        entries = cast("Iterable[Any]", schema.error_log)
        problems = [f"line {entry.line}: {entry.message}" for entry in entries]
    if not valid:
        raise PivotInvalid(_common.schema_report("xml", problems))
    # The file has passed the schema, so every id_fiche_ror is a child of a unite: a walk of
    # the whole tree (in C) finds the same elements as the path unite/id_fiche_ror, far cheaper.
    ids = (element.text or "" for element in root.iter("id_fiche_ror"))
    _common.check_unit_order(ids, "xml")


@cache
def _schema() -> etree.XMLSchema:
    source = files("rorfeed.pivot").joinpath("pivot.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(source, _parser()))


def _parser() -> etree.XMLParser:
    # A new parser each time: lxml parsers must not be shared between threads.
    # Our own output, but parsed as if hostile: no entity expansion, no network, no DTD loading.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
