"""The body of one request to the national ROR: a `Parameters` holding one indicator (pure).

The shape is the ANS's, not standard FHIR Patch (ror-national-fhir.md §1.2): one `operation`
whose parts are `type`, `path` and `value`, the value's single part holding the
`ror-location-supported-capacity` extension with every mandatory sub-extension. A `replace`
names the indicator by a FHIRPath filter on its key sub-extensions; an `add` has the bare
extension path and no `name` part. The nested `part` entries carry no `name`, so the body is not
valid R4 `Parameters`: `check_body` is rorfeed's own check, run on every body before it is sent.

Only one indicator per request: the ANS advises updating indicators one by one, and whether a
body of several operations is applied atomically is not documented.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any

from rorfeed.errors import FhirBodyInvalid
from rorfeed.transports.fhir import codes
from rorfeed.transports.fhir.codes import CAPACITY_EXTENSION_URL

Json = dict[str, Any]

# The path of the capacity extensions of a Location, as the ANS writes it; also the
# `expression` of the 404 that means "no such indicator yet" (then `add`).
CAPACITY_PATH = f"Location.extension.where(url='{CAPACITY_EXTENSION_URL}')"
# The indicator key, in the order of the ROR's own diagnostics (capacityStatus /
# temporalityCapacity / genderCapacityAvailable / capacityClosingType / additionalBedType /
# crisisType / temporaryAssignement): the server parses the path's criteria into that tuple, so
# the criteria are written in that order and with the ANS's spelling, spaces included.
KEY_ORDER = (
    "capacityStatus",
    "temporalityCapacity",
    "genderCapacityAvailable",
    "capacityClosingType",
    "temporaryAssignement",
)
MANDATORY = (
    "capacityType",
    "capacityStatus",
    "temporalityCapacity",
    "nbCapacity",
    "capacitySourceType",
    "capacityUpdateDate",
    "temporaryAssignement",
)
OPTIONAL = ("genderCapacityAvailable", "capacityClosingType")


class Operation(StrEnum):
    REPLACE = "replace"
    ADD = "add"


class Indicator(Enum):
    """The three counts rorfeed reads, each one indicator of the unit's place."""

    INSTALLED = codes.INSTALLED  # counts the closed beds too (TRE_R330 01 "fermés compris")
    CLOSED = codes.CLOSED
    AVAILABLE = codes.AVAILABLE

    @property
    def status(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class IndicatorCodes:
    """The codes a destination chooses (its section): where the counts come from, the gender
    of the available beds and the closing type of the closed ones."""

    source_type: str = "02"
    available_gender: str = "04"
    closing_type: str = "03"


@dataclass(frozen=True)
class IndicatorValue:
    """One indicator to send: its count and when that count changed in the source."""

    indicator: Indicator
    count: int
    updated_at: datetime  # aware; written with its own offset (the caller picks the zone)


def key_of(indicator: Indicator, chosen: IndicatorCodes) -> dict[str, str]:
    """The key sub-extensions of `indicator`, in `KEY_ORDER`: what the path filters on."""
    key = {"capacityStatus": indicator.status, "temporalityCapacity": codes.CURRENT}
    if indicator is Indicator.AVAILABLE:
        key["genderCapacityAvailable"] = chosen.available_gender
    if indicator is Indicator.CLOSED:
        key["capacityClosingType"] = chosen.closing_type
    key["temporaryAssignement"] = codes.NO_TEMPORARY_ASSIGNMENT
    return key


def path_of(operation: Operation, key: dict[str, str]) -> str:
    """The `path` part, written exactly as the ANS does (scenario 2bis, the capacity page)."""
    if operation is Operation.ADD:
        return CAPACITY_PATH
    criteria = " and ".join(
        f"extension.where(url = '{name}' and valueCodeableConcept.coding.code = '{key[name]}')"
        for name in KEY_ORDER
        if name in key
    )
    return f"{CAPACITY_PATH}.where({criteria})"


def _coded(url: str, code: str) -> Json:
    code_list = codes.CODED[url]
    coding = {"system": code_list.system, "code": code, "display": code_list.display(code)}
    return {"url": url, "valueCodeableConcept": {"coding": [coding]}}


def date_time(moment: datetime) -> str:
    """`capacityUpdateDate`: ISO 8601 to the second, with the offset `moment` carries."""
    if moment.utcoffset() is None:
        raise FhirBodyInvalid(f"capacityUpdateDate {moment.isoformat()} has no offset")
    return moment.isoformat(timespec="seconds")


def extension_of(value: IndicatorValue, chosen: IndicatorCodes) -> Json:
    """The `ror-location-supported-capacity` extension of `value`, sub-extensions in the order
    of the ANS example (the key's optional codes last)."""
    key = key_of(value.indicator, chosen)
    subs = [
        _coded("capacityType", codes.BEDS),
        _coded("capacityStatus", key["capacityStatus"]),
        _coded("temporalityCapacity", key["temporalityCapacity"]),
        {"url": "nbCapacity", "valueInteger": value.count},
        _coded("capacitySourceType", chosen.source_type),
        {"url": "capacityUpdateDate", "valueDateTime": date_time(value.updated_at)},
        _coded("temporaryAssignement", key["temporaryAssignement"]),
    ]
    subs.extend(_coded(name, key[name]) for name in OPTIONAL if name in key)
    return {"url": CAPACITY_EXTENSION_URL, "extension": subs}


def build_body(operation: Operation, value: IndicatorValue, chosen: IndicatorCodes) -> Json:
    """The `Parameters` body sending `value` with `operation`; checked (`check_body`)."""
    body: Json = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueString": operation.value},
                    {
                        "name": "path",
                        "valueString": path_of(operation, key_of(value.indicator, chosen)),
                    },
                    {"name": "value", "part": [{"extension": [extension_of(value, chosen)]}]},
                ],
            }
        ],
    }
    check_body(body)
    return body


def encode(body: Json) -> bytes:
    """The bytes sent: compact JSON in UTF-8 (the displays hold accented letters)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# -- the check --------------------------------------------------------------------------------

_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def _only(items: object, what: str) -> Json:
    if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], dict):
        raise FhirBodyInvalid(f"{what}: expected exactly one object")
    return items[0]


def _named_parts(operation: Json) -> dict[str, Json]:
    parts = operation.get("part")
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise FhirBodyInvalid("operation: no list of parts")
    names = [p.get("name") for p in parts]
    if names != ["type", "path", "value"]:
        raise FhirBodyInvalid(f"operation: parts {names}, expected type, path, value")
    return {str(p["name"]): p for p in parts}


def _code(sub: Json, url: str) -> str:
    concept = sub.get("valueCodeableConcept")
    if set(sub) != {"url", "valueCodeableConcept"} or not isinstance(concept, dict):
        raise FhirBodyInvalid(f"{url}: expected a valueCodeableConcept")
    coding = _only(concept.get("coding"), f"{url}.coding")
    code_list = codes.CODED[url]
    code = coding.get("code")
    if coding.get("system") != code_list.system:
        raise FhirBodyInvalid(
            f"{url}: system {coding.get('system')!r}, expected {code_list.system}"
        )
    if not isinstance(code, str) or code not in code_list.codes:
        raise FhirBodyInvalid(
            f"{url}: code {code!r} is not in the shipped list {code_list.name}"
            f" ({', '.join(code_list.codes)})"
        )
    if coding.get("display") != code_list.codes[code]:
        raise FhirBodyInvalid(f"{url}: display {coding.get('display')!r} of code {code}")
    return code


def check_body(body: Json) -> None:
    """Refuse (`FhirBodyInvalid`) a body rorfeed must not send: not the ANS shape, a mandatory
    sub-extension missing or repeated, a count that is not an integer ≥ 0, a code outside the
    shipped lists, a gender on another status than 02 (available) or a closing type on another
    than 05 (closed) — or missing there —, an update time without offset, or a `path` that
    does not name the indicator the value holds."""
    if body.get("resourceType") != "Parameters" or set(body) != {"resourceType", "parameter"}:
        raise FhirBodyInvalid("not a Parameters body of one operation")
    operation = _only(body.get("parameter"), "parameter")
    if operation.get("name") != "operation":
        raise FhirBodyInvalid(f"parameter named {operation.get('name')!r}, expected operation")
    parts = _named_parts(operation)
    kind = parts["type"].get("valueString")
    if kind not in (Operation.REPLACE.value, Operation.ADD.value):
        raise FhirBodyInvalid(f"type {kind!r}, expected replace or add")
    op = Operation(kind)
    holder = _only(parts["value"].get("part"), "value.part")
    extension = _only(holder.get("extension"), "value.part.extension")
    if extension.get("url") != CAPACITY_EXTENSION_URL:
        raise FhirBodyInvalid(f"extension url {extension.get('url')!r}")
    subs = extension.get("extension")
    if not isinstance(subs, list) or not all(isinstance(s, dict) for s in subs):
        raise FhirBodyInvalid("the capacity extension holds no sub-extensions")
    by_url: dict[str, Json] = {}
    for sub in subs:
        url = sub.get("url")
        if url not in (*MANDATORY, *OPTIONAL):
            raise FhirBodyInvalid(f"unknown sub-extension {url!r}")
        if url in by_url:
            raise FhirBodyInvalid(f"sub-extension {url} appears twice")
        by_url[str(url)] = sub
    missing = [name for name in MANDATORY if name not in by_url]
    if missing:
        raise FhirBodyInvalid(f"mandatory sub-extension(s) missing: {', '.join(missing)}")
    found = {url: _code(sub, url) for url, sub in by_url.items() if url in codes.CODED}
    count = by_url["nbCapacity"]
    number = count.get("valueInteger")
    if set(count) != {"url", "valueInteger"} or type(number) is not int or number < 0:
        raise FhirBodyInvalid(f"nbCapacity {number!r} is not an integer ≥ 0")
    when = by_url["capacityUpdateDate"]
    stamp = when.get("valueDateTime")
    if set(when) != {"url", "valueDateTime"} or not (
        isinstance(stamp, str) and _DATE_TIME.fullmatch(stamp)
    ):
        raise FhirBodyInvalid(f"capacityUpdateDate {stamp!r} is not a date-time with offset")
    status = found["capacityStatus"]
    if ("genderCapacityAvailable" in found) != (status == codes.AVAILABLE):
        raise FhirBodyInvalid(
            f"capacityStatus {status}: genderCapacityAvailable goes with 02 (available) only,"
            " and always there"
        )
    if ("capacityClosingType" in found) != (status == codes.CLOSED):
        raise FhirBodyInvalid(
            f"capacityStatus {status}: capacityClosingType goes with 05 (closed) only, and always"
            " there"
        )
    key = {name: found[name] for name in KEY_ORDER if name in found}
    if parts["path"].get("valueString") != path_of(op, key):
        raise FhirBodyInvalid(f"{op.value} path does not name the indicator the value holds")
