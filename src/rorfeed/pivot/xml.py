"""The XML pivot file, checked against the shipped XSD."""

from __future__ import annotations

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
    where = "the establishment's name"
    try:
        root = etree.Element(
            "disponibilite_lits",
            version=str(_common.FORMAT_VERSION),
            horodatage=_common.horodatage(snapshot),
        )
        etree.SubElement(root, "nom_etablissement").text = snapshot.establishment_name
        etree.SubElement(root, "finess_etablissement").text = snapshot.finess
        for unit in snapshot.sorted_units():
            where = f"unit {unit.ror_id!r}"
            element = etree.SubElement(root, "unite")
            etree.SubElement(element, "id_fiche_ror").text = unit.ror_id
            etree.SubElement(element, "lits_installes").text = str(unit.counts.installed)
            etree.SubElement(element, "lits_fermes").text = str(unit.counts.closed)
            etree.SubElement(element, "lits_disponibles").text = str(unit.counts.available)
            date_maj = _common.date_maj(unit, snapshot)
            if date_maj is not None:
                etree.SubElement(element, "date_maj").text = date_maj
    except ValueError as err:  # lxml refuses control characters, which XML 1.0 cannot carry
        raise PivotInvalid(f"xml pivot file cannot hold the text of {where}: {err}") from err
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def validate(data: bytes) -> None:
    _common.decode(data, "xml")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as err:
        raise PivotInvalid(f"xml pivot file is not well-formed XML: {err}") from err
    schema = _schema()
    with _schema_lock:
        valid = schema.validate(root)
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
