"""The XML pivot file, checked against the shipped XSD.

Both directions stream, so that a file of 100,000 units never exists as a whole tree (about
600,000 elements, some 200 MB of lxml nodes): `write` writes unit by unit with lxml's
`xmlfile`; `validate` parses with `iterparse` and hands the schema a few thousand units at a
time.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Iterator
from copy import deepcopy
from functools import cache
from importlib.resources import files
from itertools import islice
from typing import Any, Final, cast

from lxml import etree

from rorfeed.errors import PivotInvalid
from rorfeed.pivot import _common

extension: Final = "xml"

# The root's children (units, mostly) handed to the schema at once in `validate`: a few MB of
# tree, and few enough calls that the cost of each (the header copied, a validation context)
# does not show.
_CHILDREN_PER_BATCH: Final = 2000

# Threads: each `validate` has its own iterparse parser and its own trees, nothing shared. The
# compiled schema is shared, and `XMLSchema.validate` (which lets go of the GIL) leaves its
# errors in the schema object's one error_log: two threads validating at once would read each
# other's errors, so each lot is validated and its errors read under this lock.
_schema_lock = threading.Lock()


def write(prepared: _common.Prepared) -> bytes:
    """The bytes `etree.tostring(tree, xml_declaration=True, encoding="UTF-8",
    pretty_print=True)` gives for the tree of this snapshot, written without the tree.

    lxml's incremental writer holds the root open; each unit is one small element, reused from
    unit to unit, its text set and written out. So the text passes the same checks as on the
    whole tree (`.text = ...` refuses, as ValueError, what XML 1.0 cannot carry: control
    characters, U+FFFE/U+FFFF, lone surrogates) and is escaped by the same serializer as
    tostring. The indentation pretty_print would add (two spaces a level, one element a line)
    is written as the whitespace it is.
    """
    snapshot, horodatage = prepared.snapshot, prepared.horodatage
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
                for unit, date_maj in zip(prepared.units, prepared.dates, strict=True):
                    where = f"unit {unit.ror_id!r}"
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
    problems: list[str] = []
    ids: list[str] = []
    for batch in _batches(data):
        # Every lot is checked, as the whole tree was: the report lists all it finds.
        problems += _schema_problems(batch)
        if not problems:
            # The lot has passed the schema, so every id_fiche_ror is a child of a unite: a
            # walk of the whole lot (in C) finds the same elements as the path
            # unite/id_fiche_ror, far cheaper.
            ids += (element.text or "" for element in batch.iter("id_fiche_ror"))
    if problems:
        # A fault of the root or the header is found again in every lot: said once.
        raise PivotInvalid(_common.schema_report("xml", list(dict.fromkeys(problems))))
    # Sorted also proves the ids unique across lots, which the schema's xs:unique, seeing one
    # lot at a time, no longer does on its own.
    _common.check_unit_order(ids, "xml")


def _batches(data: bytes) -> Iterator[etree._Element]:
    """The root's children in order, a few thousand at a time, each lot under a copy of the
    root (tag, attributes, line) and, after the first, behind copies of its first two elements.

    Checked one lot after another, they give the verdict of the whole document: the schema's
    root is (nom_etablissement, finess_etablissement, unite+), so when the first lot passes,
    its first two elements are the header, and each later lot passes exactly when the
    children it adds are valid units. The moved nodes keep their source lines, so the schema's
    messages name the lines of the file.

    The schema is not given to iterparse, although lxml can validate while parsing: with a
    schema plugged into the parser, lxml 6.1 / libxml2 2.14 lose the parser's own errors (a
    truncated file parses as valid), and the schema's errors carry no line (always 0).
    """
    parsed = etree.iterparse(
        io.BytesIO(data),
        events=("end",),
        tag="unite",
        # The options of _parser(): our own output, but parsed as if hostile.
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
    )
    root: etree._Element | None = None
    batch: etree._Element | None = None
    header: list[etree._Element] = []
    size = 0
    try:
        for _, unit in parsed:
            parent = unit.getparent()
            if parent is None:
                continue  # a unite as the root: the schema will say what it thinks of that
            if parent is not root:
                if root is not None or parent.getparent() is not None:
                    continue  # a unite out of place: it goes with the element that holds it
                root = parent
            # Only the children before this unit are complete. Not the unit itself: its tail
            # (the text up to the next child, moved along with it) may still be being parsed,
            # and a part left behind would never reach the schema. The parser may also be a
            # chunk ahead, with later children already in the tree.
            child = root[0]
            while child is not unit:
                if batch is None:
                    batch = _start_batch(root, header)
                    size = 0
                batch.append(child)
                size += 1
                child = root[0]
                if size < _CHILDREN_PER_BATCH:
                    continue
                # Every lot holds the header and at least one more element: the schema wants
                # at least one unit after the header. (Comments and processing instructions
                # are no children to the schema, so elements are counted, not children.)
                elements = list(islice(batch.iterchildren(etree.Element), 3))
                if len(elements) == 3:
                    header = header or [deepcopy(element) for element in elements[:2]]
                    yield batch
                    batch = None
    except etree.XMLSyntaxError as err:
        message = _syntax_error(err, parsed.error_log)
        raise PivotInvalid(f"xml pivot file is not well-formed XML: {message}") from err
    # The whole document is read: the rest of the root's children, at least its last unit
    # (all of them, if it has no unit).
    root = parsed.root
    if batch is None:
        batch = _start_batch(root, header)
    batch.extend(list(root))
    yield batch


def _syntax_error(err: etree.XMLSyntaxError, parser_log: object) -> str:
    # The push parser behind iterparse reports some faults (an undefined entity) only as "no
    # element found (line 0)"; the parser's own log still holds its words and line. (Not the
    # exception's error_log: that is a copy of the thread's log, with earlier documents' errors.)
    if err.lineno == 0:
        # lxml-stubs does not declare the error log iterable; its entries are _LogEntry objects.
        for entry in cast("Iterable[Any]", parser_log):
            if entry.level >= etree.ErrorLevels.ERROR:
                return f"{entry.message}, line {entry.line}, column {entry.column}"
    return str(err)


def _start_batch(root: etree._Element, header: list[etree._Element]) -> etree._Element:
    batch = etree.Element(root.tag)
    batch.attrib.update(root.attrib)
    # A fault in the root's tag or attributes names the root's own line, as on the whole tree.
    batch.sourceline = root.sourceline
    batch.text = root.text
    # sourceline is kept by deepcopy: a fault in the header names its own line in every lot.
    batch.extend(deepcopy(child) for child in header)
    return batch


def _schema_problems(batch: etree._Element) -> list[str]:
    schema = _schema()
    with _schema_lock:
        try:
            if schema.validate(batch):
                return []
        except etree.XMLSchemaValidateError as err:
            # libxml2's validator gives up on what it cannot follow (an entity reference, kept
            # as such by resolve_entities=False): a refusal like any other, not a crash.
            raise PivotInvalid(
                f"xml pivot file cannot be checked against its schema: {err}"
            ) from err
        # lxml-stubs does not declare the error log iterable; its entries are _LogEntry objects.
        entries = cast("Iterable[Any]", schema.error_log)
        return [f"line {entry.line}: {entry.message}" for entry in entries]


@cache
def _schema() -> etree.XMLSchema:
    source = files("rorfeed.pivot").joinpath("pivot.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(source, _parser()))


def _parser() -> etree.XMLParser:
    # A new parser each time: lxml parsers must not be shared between threads.
    # Our own output, but parsed as if hostile: no entity expansion, no network, no DTD loading.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
