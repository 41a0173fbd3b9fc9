"""The `fhir` destination (SPEC §12): code lists, bodies, the section, and the client against
the loopback ROR of tests/fhir_server.py (mutual TLS, the answers the ANS documents)."""

from __future__ import annotations

import copy
import itertools
import json
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
import structlog
from pydantic import ValidationError

from rorfeed.errors import AuthFailed, FhirBodyInvalid
from rorfeed.transports import DESTINATIONS
from rorfeed.transports.fhir import FhirDestinationSection, codes
from rorfeed.transports.fhir.body import (
    CAPACITY_PATH,
    Indicator,
    IndicatorCodes,
    IndicatorValue,
    Operation,
    build_body,
    check_body,
)
from rorfeed.transports.fhir.client import (
    Answer,
    Backoff,
    FhirSession,
    FhirTransport,
    Outcome,
    Phases,
    location_url,
    names_capacity,
)
from rorfeed.transports.fhir.tls import ssl_context
from tests.fhir_server import (
    CLIENT_ID,
    KEY_PASSPHRASE,
    Fault,
    Pki,
    RorServer,
    make_pki,
)

GOLDEN = Path(__file__).parent / "golden" / "fhir"
CONTEXT = Path("/work/shared/context/ror-national-fhir.md")
FINESS = "750712184"
CODE = "SSR38888"
PLACE = f"1{FINESS}/{CODE}"
PARIS = timezone(timedelta(hours=1))
UPDATED = datetime(2026, 11, 23, 14, 5, tzinfo=PARIS)
COUNTS = {Indicator.INSTALLED: 20, Indicator.CLOSED: 3, Indicator.AVAILABLE: 4}
# Small per-phase bounds and pauses: every wait of these tests ends in a second or two.
PHASES = Phases(connect=2.0, write=2.0, read=0.5, pool=2.0)
BACKOFF = Backoff(initial=0.01, maximum=0.05)


def value(indicator: Indicator = Indicator.AVAILABLE, count: int | None = None) -> IndicatorValue:
    return IndicatorValue(indicator, COUNTS[indicator] if count is None else count, UPDATED)


# -- the bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize("indicator", list(Indicator))
@pytest.mark.parametrize("operation", list(Operation))
def test_bodies_are_the_ans_documented_shape(indicator: Indicator, operation: Operation) -> None:
    """available/replace is the ANS's own example verbatim; the others are that example with
    the status, count, path and optional code of their indicator."""
    golden = json.loads((GOLDEN / f"{indicator.name.lower()}_{operation.value}.json").read_text())
    assert build_body(operation, value(indicator), IndicatorCodes()) == golden


def test_the_available_golden_is_the_example_of_the_documentation() -> None:
    text = CONTEXT.read_text(encoding="utf-8") if CONTEXT.exists() else None
    if text is None:
        pytest.skip("the shared context file is not on this machine")
    start = text.index('{\n  "resourceType": "Parameters"')
    example = json.loads(text[start : text.index("\n```", start)])
    assert json.loads((GOLDEN / "available_replace.json").read_text()) == example


def test_the_chosen_codes_go_in_the_body_and_its_path() -> None:
    chosen = IndicatorCodes(source_type="04", available_gender="01", closing_type="01")
    available = build_body(Operation.REPLACE, value(), chosen)
    closed = build_body(Operation.REPLACE, value(Indicator.CLOSED), chosen)
    assert "genderCapacityAvailable' and valueCodeableConcept.coding.code = '01'" in _path(
        available
    )
    assert "capacityClosingType' and valueCodeableConcept.coding.code = '01'" in _path(closed)
    assert _sub(available, "capacitySourceType")["valueCodeableConcept"]["coding"][0] == {
        "system": codes.SOURCE_TYPE.system,
        "code": "04",
        "display": "DPI",
    }


def _parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = body["parameter"][0]["part"]
    return parts


def _path(body: dict[str, Any]) -> str:
    return str(_parts(body)[1]["valueString"])


def _subs(body: dict[str, Any]) -> list[dict[str, Any]]:
    subs: list[dict[str, Any]] = _parts(body)[2]["part"][0]["extension"][0]["extension"]
    return subs


def _sub(body: dict[str, Any], url: str) -> dict[str, Any]:
    return next(s for s in _subs(body) if s["url"] == url)


def _golden(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text())
    return body


@pytest.mark.parametrize(
    "url",
    [
        "capacityType",
        "capacityStatus",
        "temporalityCapacity",
        "nbCapacity",
        "capacitySourceType",
        "capacityUpdateDate",
        "temporaryAssignement",
    ],
)
def test_a_body_missing_a_mandatory_sub_extension_is_refused(url: str) -> None:
    body = _golden("available_add")
    _subs(body).remove(_sub(body, url))
    with pytest.raises(FhirBodyInvalid, match=f"missing: {url}"):
        check_body(body)


@pytest.mark.parametrize("count", [4.0, "4", True, -1, None])
def test_a_count_that_is_not_an_integer_is_refused(count: object) -> None:
    body = _golden("installed_replace")
    _sub(body, "nbCapacity")["valueInteger"] = count
    with pytest.raises(FhirBodyInvalid, match="nbCapacity"):
        check_body(body)


def _set_code(body: dict[str, Any], url: str, code: str, display: str | None = None) -> None:
    coding = _sub(body, url)["valueCodeableConcept"]["coding"][0]
    coding["code"] = code
    if display is not None:
        coding["display"] = display


@pytest.mark.parametrize(
    ("name", "url", "code", "expected"),
    [
        ("available_add", "genderCapacityAvailable", "03", "not in the shipped list TRE_R332"),
        ("installed_add", "capacityStatus", "07", "not in the shipped list TRE_R330"),
        ("installed_add", "capacityType", "02", "TRE_R329"),
        ("installed_add", "temporalityCapacity", "02", "TRE_R331"),
        ("installed_add", "capacitySourceType", "01", "TRE_R335"),
        ("installed_add", "temporaryAssignement", "02", "TRE_R337"),
        ("closed_add", "capacityClosingType", "04", "TRE_R333"),
    ],
)
def test_a_code_outside_the_shipped_lists_is_refused(
    name: str, url: str, code: str, expected: str
) -> None:
    body = _golden(name)
    _set_code(body, url, code)
    with pytest.raises(FhirBodyInvalid, match=expected):
        check_body(body)


def test_a_code_of_another_system_is_refused() -> None:
    body = _golden("available_add")
    _sub(body, "capacityStatus")["valueCodeableConcept"]["coding"][0]["system"] = (
        "https://interop.esante.gouv.fr/ig/fhir/ror/ValueSet/JDV-J188-TypeStatutCapacite-ROR/"
    )
    with pytest.raises(FhirBodyInvalid, match="capacityStatus: system"):
        check_body(body)


def test_gender_only_on_available_and_closing_type_only_on_closed() -> None:
    gendered_installed = _golden("installed_add")
    _subs(gendered_installed).append(
        copy.deepcopy(_sub(_golden("available_add"), "genderCapacityAvailable"))
    )
    with pytest.raises(FhirBodyInvalid, match="genderCapacityAvailable goes with 02"):
        check_body(gendered_installed)
    closing_on_available = _golden("available_add")
    _subs(closing_on_available).append(
        copy.deepcopy(_sub(_golden("closed_add"), "capacityClosingType"))
    )
    with pytest.raises(FhirBodyInvalid, match="capacityClosingType goes with 05"):
        check_body(closing_on_available)
    # And each is required where it goes.
    no_gender = _golden("available_add")
    _subs(no_gender).remove(_sub(no_gender, "genderCapacityAvailable"))
    with pytest.raises(FhirBodyInvalid, match="genderCapacityAvailable"):
        check_body(no_gender)


def test_a_path_naming_another_indicator_than_its_value_is_refused() -> None:
    body = _golden("available_replace")
    _parts(body)[1]["valueString"] = _path(_golden("installed_replace"))
    with pytest.raises(FhirBodyInvalid, match="path does not name"):
        check_body(body)
    add = _golden("available_add")
    _parts(add)[1]["valueString"] = _path(_golden("available_replace"))
    with pytest.raises(FhirBodyInvalid, match="path does not name"):
        check_body(add)


def test_an_update_time_without_offset_is_refused() -> None:
    with pytest.raises(FhirBodyInvalid, match="offset"):
        build_body(
            Operation.ADD,
            IndicatorValue(Indicator.INSTALLED, 3, datetime(2026, 11, 23, 14, 5)),
            IndicatorCodes(),
        )
    body = _golden("installed_add")
    _sub(body, "capacityUpdateDate")["valueDateTime"] = "2026-11-23T14:05:00"
    with pytest.raises(FhirBodyInvalid, match="capacityUpdateDate"):
        check_body(body)


def test_an_unknown_or_repeated_sub_extension_is_refused() -> None:
    body = _golden("installed_add")
    _subs(body).append({"url": "comment", "valueString": "x"})
    with pytest.raises(FhirBodyInvalid, match="unknown sub-extension"):
        check_body(body)
    body = _golden("installed_add")
    _subs(body).append(copy.deepcopy(_sub(body, "nbCapacity")))
    with pytest.raises(FhirBodyInvalid, match="appears twice"):
        check_body(body)


# -- the code lists ---------------------------------------------------------------------------


def test_the_code_systems_are_those_of_the_ans_example() -> None:
    example = _golden("available_replace")
    systems = {
        s["url"]: s["valueCodeableConcept"]["coding"][0]["system"]
        for s in _subs(example)
        if "valueCodeableConcept" in s
    }
    for url, system in systems.items():
        assert codes.CODED[url].system == system
    assert codes.CLOSING_TYPE.system == (
        "https://mos.esante.gouv.fr/NOS/TRE_R333-TypeFermetureCapacite/FHIR/"
        "TRE-R333-TypeFermetureCapacite"
    )


def test_withdrawn_codes_are_not_shipped_and_versions_are_described() -> None:
    assert "03" not in codes.GENDER.codes  # withdrawn 2025-08-28
    assert "07" not in codes.CAPACITY_STATUS.codes  # withdrawn 2025-01-31
    described = codes.describe()
    assert "TRE_R330-TypeStatutCapacite 20250328120000" in described
    assert "TRE_R332-GenreCapacite 20250828" in described


# -- the section ------------------------------------------------------------------------------


def _section_data(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "ror-national",
        "kind": "fhir",
        "environment": "test",
        "base_url": "https://bas-api-fhir.qualif.ror.esante.gouv.fr",
        "token_url": "https://bas-auth-api.qualif.ror.esante.gouv.fr/auth/realms/ror/protocol/"
        "openid-connect/token",
        "client_id": "writer",
        "client_cert": "auth_cli.pem",
        "client_key": "auth_cli.key",
        "ca_bundle": "igc-sante.pem",
    }
    data.update(overrides)
    return data


def test_the_section_has_the_keys_and_defaults_of_the_spec() -> None:
    section = FhirDestinationSection.model_validate(_section_data())
    assert (section.source_type, section.available_gender, section.closing_type) == (
        "02",
        "04",
        "03",
    )
    assert (section.resync_hours, section.max_requests_per_second) == (24, 5)
    assert section.timeout_seconds == 300
    assert set(FhirDestinationSection.model_fields) == {
        "kind",
        "name",
        "environment",
        "establishments",
        "base_url",
        "token_url",
        "client_id",
        "client_cert",
        "client_key",
        "client_key_passphrase_file",
        "client_key_passphrase_env",
        "ca_bundle",
        "source_type",
        "available_gender",
        "closing_type",
        "resync_hours",
        "max_requests_per_second",
        "timeout_seconds",
    }


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"available_gender": "03"}, 'available_gender\n  Value error, "03" is not in TRE_R332'),
        ({"closing_type": "04"}, "closing_type"),
        ({"source_type": "01"}, "source_type"),
        ({"base_url": "http://bas-api-fhir.qualif.ror.esante.gouv.fr"}, "must start with https://"),
        ({"token_url": "https://u:pw@auth.example.org/token"}, "must not hold a user or password"),
        ({"base_url": "https://"}, "names no host"),
        ({"base_url": "https://x.example.org?a=1"}, "query"),
        ({"formats": ["xml"]}, "Extra inputs are not permitted"),
        ({"file_name": "x_{timestamp}.{ext}"}, "Extra inputs are not permitted"),
        ({"client_id": ""}, "client_id"),
        ({"environment": "production"}, 'is the ANS test server but environment = "production"'),
        ({"resync_hours": 0}, "resync_hours"),
        ({"max_requests_per_second": 0}, "max_requests_per_second"),
    ],
)
def test_the_section_is_validated_strictly(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        FhirDestinationSection.model_validate(_section_data(**overrides))
    assert expected in str(info.value)


def test_the_configuration_does_not_accept_the_kind_before_a_cycle_delivers_with_it() -> None:
    assert "fhir" not in DESTINATIONS


# -- the client, against the loopback ROR -----------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("fhir-pki"))


@pytest.fixture
def ror(pki: Pki) -> Iterator[RorServer]:
    with RorServer(pki) as server:
        server.add_place(PLACE)
        yield server


def _section(ror: RorServer, pki: Pki, **overrides: object) -> FhirDestinationSection:
    data = _section_data(
        base_url=ror.url,
        token_url=ror.token_url,
        client_id=CLIENT_ID,
        client_cert=str(pki.client_cert),
        client_key=str(pki.client_key),
        ca_bundle=str(pki.ca),
        max_requests_per_second=100,
    )
    data.update(overrides)
    return FhirDestinationSection.model_validate(data)


def _transport(
    ror: RorServer,
    pki: Pki,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    passphrase: str | None = None,
    clock: Any = time.monotonic,
    **overrides: object,
) -> FhirTransport:
    return FhirTransport(
        _section(ror, pki, **overrides),
        client_cert=cert or pki.client_cert,
        client_key=key or pki.client_key,
        ca_bundle=pki.ca,
        passphrase=passphrase,
        phases=PHASES,
        backoff=BACKOFF,
        clock=clock,
    )


def _session(ror: RorServer, pki: Pki, timeout: float = 10.0, **options: Any) -> FhirSession:
    return _transport(ror, pki, **options).open(timeout)


def _operations(ror: RorServer) -> list[str | None]:
    return [r.operation for r in ror.patches()]


def test_200_is_accepted_with_its_etag(ror: RorServer, pki: Pki) -> None:
    with _session(ror, pki) as session:
        first = session.send(FINESS, CODE, value())
        second = session.send(FINESS, CODE, value(count=2))
    assert (first.outcome, first.operation, first.status) == (
        Outcome.ACCEPTED,
        Operation.ADD,
        200,
    )
    assert (second.outcome, second.operation, second.etag) == (
        Outcome.ACCEPTED,
        Operation.REPLACE,
        'W/"2"',
    )
    assert second.last_modified
    (held,) = ror.indicators(PLACE)
    assert next(s for s in held.extension["extension"] if s["url"] == "nbCapacity") == {
        "url": "nbCapacity",
        "valueInteger": 2,
    }


def test_replace_first_then_add_on_the_404_naming_the_capacity_extension(
    ror: RorServer, pki: Pki
) -> None:
    with _session(ror, pki) as session:
        answers = [session.send(FINESS, CODE, value(i)) for i in Indicator]
        again = [session.send(FINESS, CODE, value(i)) for i in Indicator]
    assert [a.outcome for a in answers + again] == [Outcome.ACCEPTED] * 6
    # Each indicator: replace (404 on the extension), add; the next cycle: replace only.
    assert _operations(ror) == ["replace", "add"] * 3 + ["replace"] * 3
    assert ror.patches()[0].status == 404
    assert sorted(i.key[0] or "" for i in ror.indicators(PLACE)) == ["01", "02", "05"]
    # What the server received is what the golden files hold.
    bodies = [json.loads(r.body) for r in ror.patches()[:2]]
    assert bodies == [_golden("installed_replace"), _golden("installed_add")]


def test_404_on_location_refuses_the_unit_with_the_ror_diagnostics(
    ror: RorServer, pki: Pki
) -> None:
    with _session(ror, pki) as session:
        answer = session.send(FINESS, "UNKNOWN", value())
    assert (answer.outcome, answer.reason, answer.status) == (
        Outcome.UNIT_REFUSED,
        "location_not_found",
        404,
    )
    assert f"1{FINESS}/UNKNOWN n'a pas été trouvée" in answer.diagnostics
    assert "(Location)" in answer.diagnostics
    assert _operations(ror) == ["replace"]  # no add, no retry


def test_412_multiple_matches_refuses_the_unit(ror: RorServer, pki: Pki) -> None:
    ror.settings.duplicates.add(PLACE)
    with _session(ror, pki) as session:
        answer = session.send(FINESS, CODE, value())
    assert (answer.outcome, answer.reason) == (Outcome.UNIT_REFUSED, "multiple_matches")
    assert "multiple-matches La Location recherchée n'est pas unique" in answer.diagnostics
    assert _operations(ror) == ["replace"]


def test_400_business_rule_refuses_the_unit(ror: RorServer, pki: Pki) -> None:
    ror.settings.refused_statuses.add("05")
    with _session(ror, pki) as session:
        answer = session.send(FINESS, CODE, value(Indicator.CLOSED))
    assert (answer.outcome, answer.reason, answer.status) == (
        Outcome.UNIT_REFUSED,
        "business_rule",
        400,
    )
    assert "capacityStatus: 05 / temporalityCapacity: 01 / genderCapacityAvailable: null" in (
        answer.diagnostics
    )
    assert len(ror.patches()) == 1


def test_401_once_fetches_a_new_token_and_sends_the_request_again(ror: RorServer, pki: Pki) -> None:
    with _session(ror, pki) as session:
        assert session.send(FINESS, CODE, value()).outcome is Outcome.ACCEPTED
        ror.revoke_tokens()
        answer = session.send(FINESS, CODE, value())
    assert answer.outcome is Outcome.ACCEPTED
    assert [r.status for r in ror.patches()] == [404, 200, 401, 200]
    assert len(ror.token_requests()) == 2


def test_401_twice_is_a_failure_of_the_destination(ror: RorServer, pki: Pki) -> None:
    ror.settings.refuse_every_token = True
    with _session(ror, pki) as session:
        answer = session.send(FINESS, CODE, value())
        after = session.send(FINESS, CODE, value(Indicator.INSTALLED))
    assert (answer.outcome, answer.reason, answer.status) == (
        Outcome.DESTINATION_FAILED,
        "unauthorized",
        401,
    )
    assert [r.status for r in ror.patches()] == [401, 401]  # once again, never more
    assert len(ror.token_requests()) == 2
    # The destination failed: nothing more is sent in this session.
    assert (after.outcome, after.attempts) == (Outcome.DESTINATION_FAILED, 0)
    assert len(ror.log) == 4


def test_a_token_refused_by_the_token_endpoint_is_a_failure_of_the_destination(
    ror: RorServer, pki: Pki
) -> None:
    with _session(ror, pki, client_id="someone-else") as session:
        answer = session.send(FINESS, CODE, value())
    assert (answer.outcome, answer.reason, answer.status) == (
        Outcome.DESTINATION_FAILED,
        "token",
        401,
    )
    assert "invalid_client" in answer.diagnostics
    assert ror.patches() == []


def test_403_refuses_the_establishment_and_only_it(ror: RorServer, pki: Pki) -> None:
    other = "920000650"
    ror.add_place(f"1{other}/{CODE}")
    ror.settings.forbidden.add(FINESS)
    with _session(ror, pki) as session:
        refused = session.send(FINESS, CODE, value())
        again = session.send(FINESS, CODE, value(Indicator.INSTALLED))
        elsewhere = session.send(other, CODE, value())
    assert (refused.outcome, refused.reason, refused.status) == (
        Outcome.ESTABLISHMENT_REFUSED,
        "forbidden",
        403,
    )
    assert (again.outcome, again.attempts) == (Outcome.ESTABLISHMENT_REFUSED, 0)
    assert elsewhere.outcome is Outcome.ACCEPTED
    assert [r.query["identifier"][0][1:10] for r in ror.patches()] == [FINESS, other, other]


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", status=429, retry_after="0"),
        Fault("status", status=500),
        Fault("status", status=503),
        Fault("delay", seconds=1.5),  # longer than the read phase (0.5 s): a timeout
        Fault("cut"),
    ],
    ids=["429", "500", "503", "timeout", "cut-connection"],
)
def test_transient_failures_are_retried_with_backoff(
    ror: RorServer, pki: Pki, fault: Fault
) -> None:
    ror.settings.faults = [fault, copy.copy(fault)]
    with _session(ror, pki) as session:
        answer = session.send(FINESS, CODE, value(Indicator.INSTALLED))
    assert (answer.outcome, answer.attempts) == (Outcome.ACCEPTED, 3)
    # Every attempt starts again with replace.
    assert _operations(ror) == ["replace", "replace", "replace", "add"]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (415, Outcome.DESTINATION_FAILED),  # the request's very shape: every unit alike
        (302, Outcome.DESTINATION_FAILED),  # never followed
        (204, Outcome.DESTINATION_FAILED),  # only a 200 is an acceptance
        (409, Outcome.UNIT_REFUSED),
    ],
)
def test_an_answer_outside_the_table_is_never_taken_for_an_acceptance(
    ror: RorServer, pki: Pki, status: int, outcome: Outcome
) -> None:
    ror.settings.faults = [Fault("status", status=status)]
    with _session(ror, pki) as session:
        answer = session.send(FINESS, CODE, value())
    assert (answer.outcome, answer.reason, answer.status) == (outcome, "unexpected_status", status)
    assert len(ror.patches()) == 1


def test_what_is_not_accepted_by_the_deadline_is_retryable(ror: RorServer, pki: Pki) -> None:
    ror.settings.faults = [Fault("status", status=502) for _ in range(1000)]
    started = time.monotonic()
    with _session(ror, pki, timeout=1.0) as session:
        answer = session.send(FINESS, CODE, value())
        late = session.send(FINESS, CODE, value(Indicator.INSTALLED))
    # The last attempt may end on the deadline itself (its phases are cut to what is left).
    assert answer.outcome is Outcome.RETRYABLE
    assert answer.reason in ("server_error", "timeout", "deadline")
    assert {r.status for r in ror.patches()} <= {502, None}
    assert answer.attempts > 2
    assert late.outcome is Outcome.RETRYABLE
    assert time.monotonic() - started < 3.0


def test_a_slow_server_never_holds_the_delivery_past_its_deadline(ror: RorServer, pki: Pki) -> None:
    ror.settings.faults = [Fault("delay", seconds=5) for _ in range(10)]
    started = time.monotonic()
    with _session(ror, pki, timeout=1.2) as session:
        answer = session.send(FINESS, CODE, value())
    assert (answer.outcome, answer.reason) == (Outcome.RETRYABLE, "timeout")
    assert time.monotonic() - started < 2.5


def test_an_add_applied_whose_answer_is_lost_is_not_added_twice(ror: RorServer, pki: Pki) -> None:
    ror.settings.faults = [Fault("apply_then_cut", on="add")]
    with _session(ror, pki) as session:
        answer = session.send(FINESS, CODE, value())
    assert (answer.outcome, answer.operation, answer.attempts) == (
        Outcome.ACCEPTED,
        Operation.REPLACE,
        2,
    )
    assert _operations(ror) == ["replace", "add", "replace"]
    assert [r.status for r in ror.patches()] == [404, None, 200]
    assert len(ror.indicators(PLACE)) == 1  # the server would have held two after a second add


def test_a_server_certificate_from_another_ca_is_refused_at_once(pki: Pki) -> None:
    rogue = pki.other_authority.issue_cert("127.0.0.1")
    with RorServer(pki, server_cert=rogue) as ror, _session(ror, pki) as session:
        answer = session.send(FINESS, CODE, value())
        after = session.send(FINESS, CODE, value())
    assert (answer.outcome, answer.reason, answer.attempts) == (
        Outcome.DESTINATION_FAILED,
        "tls_verify",
        1,
    )
    assert "does not verify" in answer.diagnostics
    assert (after.outcome, after.attempts) == (Outcome.DESTINATION_FAILED, 0)
    assert ror.log == []  # no token asked, nothing sent
    # One connection, never retried (`send` returns once every request it makes is over).
    assert len(ror.refused_handshakes()) == 1


def test_a_server_certificate_for_another_host_is_refused(pki: Pki) -> None:
    elsewhere = pki.authority.issue_cert("ror.example.org")
    with RorServer(pki, server_cert=elsewhere) as ror, _session(ror, pki) as session:
        answer = session.send(FINESS, CODE, value())
    assert (answer.outcome, answer.reason) == (Outcome.DESTINATION_FAILED, "tls_verify")
    assert "mismatch" in answer.diagnostics or "match" in answer.diagnostics
    assert ror.log == []


def test_a_client_certificate_from_another_ca_is_refused_by_the_server(
    ror: RorServer, pki: Pki
) -> None:
    with _session(ror, pki, cert=pki.rogue_cert, key=pki.rogue_key) as session:
        answer = session.send(FINESS, CODE, value())
    assert (answer.outcome, answer.reason) == (Outcome.DESTINATION_FAILED, "client_certificate")
    assert ror.log == []
    assert ror.refused_handshakes()


def test_a_client_without_certificate_is_refused_by_the_server(ror: RorServer, pki: Pki) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca))
    with (
        socket.create_connection(("127.0.0.1", ror.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        pytest.raises((ssl.SSLError, ConnectionError)),
    ):
        # TLS 1.3: the server's refusal arrives after the client's side of the handshake.
        tls.sendall(b"POST /auth/realms/ror/protocol/openid-connect/token HTTP/1.1\r\n\r\n")
        if not tls.recv(1024):
            raise ConnectionResetError("closed without an answer")
    assert ror.log == []
    assert ror.refused_handshakes()


def test_only_the_two_headers_are_sent(ror: RorServer, pki: Pki) -> None:
    with _session(ror, pki) as session:
        session.send(FINESS, CODE, value())
    (token,) = ror.token_requests()
    assert {name.lower() for name, _ in token.headers} == {"host", "content-length", "content-type"}
    assert dict(token.headers)["Content-Type"] == "application/x-www-form-urlencoded"
    assert token.body == f"client_id={CLIENT_ID}&grant_type=client_credentials".encode()
    for patch in ror.patches():
        # Host and Content-Length are HTTP/1.1's framing; nothing else besides the two.
        assert {name.lower() for name, _ in patch.headers} == {
            "host",
            "content-length",
            "authorization",
            "content-type",
        }
        headers = dict(patch.headers)
        assert headers["Content-Type"] == "application/fhir+json"
        assert headers["Authorization"].startswith("Bearer ")


def test_the_identifier_keeps_its_slash_and_encodes_what_would_change_the_query(
    ror: RorServer, pki: Pki
) -> None:
    code = "A+B&C=%#?"
    ror.add_place(f"1{FINESS}/{code}")
    assert location_url("https://h", f"1{FINESS}/{code}").endswith(
        f"?identifier=1{FINESS}/A%2BB%26C%3D%25%23%3F"
    )
    with _session(ror, pki) as session:
        assert session.send(FINESS, code, value()).outcome is Outcome.ACCEPTED
    assert ror.patches()[0].query == {"identifier": [f"1{FINESS}/{code}"]}


def test_a_local_code_that_cannot_be_a_sync_code_is_refused_without_a_request(
    ror: RorServer, pki: Pki
) -> None:
    with _session(ror, pki) as session:
        answer = session.send(FINESS, "UF 12", value())
    assert (answer.outcome, answer.reason) == (Outcome.UNIT_REFUSED, "invalid_sync_code")
    assert "id_externe_synchro" in answer.diagnostics
    assert ror.log == []


def test_the_token_is_reused_on_one_kept_alive_connection(ror: RorServer, pki: Pki) -> None:
    with _session(ror, pki) as session:
        for indicator in Indicator:
            session.send(FINESS, CODE, value(indicator))
    assert len(ror.token_requests()) == 1
    assert len(ror.patches()) == 6
    assert len({r.connection for r in ror.log}) == 1


def test_the_token_is_fetched_again_shortly_before_it_expires(ror: RorServer, pki: Pki) -> None:
    ror.settings.token_lifetime = 100  # kept until 90 s (10 % margin)
    offset = [0.0]

    def clock() -> float:
        return time.monotonic() + offset[0]

    with _session(ror, pki, timeout=1000, clock=clock) as session:
        session.send(FINESS, CODE, value())
        offset[0] = 80.0
        session.send(FINESS, CODE, value())
        assert len(ror.token_requests()) == 1
        offset[0] = 91.0
        session.send(FINESS, CODE, value())
    assert len(ror.token_requests()) == 2
    assert all(r.status in (200, 404) for r in ror.patches())  # never a 401 for an old token


def test_the_request_rate_is_bounded(ror: RorServer, pki: Pki) -> None:
    with _session(ror, pki, max_requests_per_second=10) as session:
        for _ in range(4):
            session.send(FINESS, CODE, value())
    times = [r.at for r in ror.log]
    assert len(times) == 6  # a token, replace + add, then three replaces
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.1 s between starts, measured where the server received them (loopback jitter aside).
    assert min(gaps) >= 0.08, gaps
    assert times[-1] - times[0] >= 0.5 - 0.02


def test_an_encrypted_key_opens_with_its_passphrase(ror: RorServer, pki: Pki) -> None:
    with _session(ror, pki, key=pki.encrypted_key, passphrase=KEY_PASSPHRASE) as session:
        assert session.send(FINESS, CODE, value()).outcome is Outcome.ACCEPTED


@pytest.mark.parametrize(
    ("passphrase", "expected"),
    [
        (None, "is encrypted and no passphrase is configured — set client_key_passphrase_file"),
        ("wrong passphrase", "does not open with the configured passphrase"),
    ],
)
def test_a_key_that_does_not_open_is_said_without_its_passphrase(
    ror: RorServer, pki: Pki, passphrase: str | None, expected: str
) -> None:
    transport = _transport(ror, pki, key=pki.encrypted_key, passphrase=passphrase)
    with pytest.raises(AuthFailed) as info:
        transport.open(5)
    assert expected in str(info.value)
    assert "wrong passphrase" not in str(info.value)
    assert ror.log == []


def test_a_key_not_matching_the_certificate_is_refused(ror: RorServer, pki: Pki) -> None:
    with pytest.raises(AuthFailed, match="is not the key of client_cert"):
        _transport(ror, pki, key=pki.rogue_key).open(5)


def test_key_passphrase_and_token_never_in_a_log_a_message_or_a_repr(
    ror: RorServer, pki: Pki
) -> None:
    ror.settings.faults = [Fault("status", status=500), Fault("cut")]
    transport = _transport(ror, pki, key=pki.encrypted_key, passphrase=KEY_PASSPHRASE)
    answers: list[Answer] = []
    with structlog.testing.capture_logs() as logs, transport.open(10) as session:
        answers.append(session.send(FINESS, CODE, value()))
        ror.revoke_tokens()
        answers.append(session.send(FINESS, CODE, value()))
        ror.settings.refuse_every_token = True
        answers.append(session.send(FINESS, CODE, value()))
        shown = " ".join(
            [repr(transport), repr(session), repr(vars(session)), repr(vars(transport))]
            + [repr(a) for a in answers]
            + [repr(e) for e in logs]
        )
    tokens = [dict(r.headers)["Authorization"].removeprefix("Bearer ") for r in ror.patches()]
    assert len(set(tokens)) >= 2
    for secret in [KEY_PASSPHRASE, *tokens, pki.encrypted_key.read_text()]:
        assert secret not in shown
    assert any(e["event"] == "fhir_indicator" for e in logs)
    assert answers[-1].outcome is Outcome.DESTINATION_FAILED


def test_authenticate_obtains_a_token_without_writing(ror: RorServer, pki: Pki) -> None:
    with _session(ror, pki) as session:
        session.authenticate()
    assert len(ror.token_requests()) == 1
    assert ror.patches() == []
    with _session(ror, pki, client_id="nobody") as session, pytest.raises(AuthFailed) as info:
        session.authenticate()
    assert "invalid_client" in str(info.value)


def test_the_capacity_404_is_told_from_the_location_404_by_its_expression() -> None:
    # The ANS writes the capacity expression as a string, the Location one as a list.
    def answer(expression: object) -> httpx.Response:
        issue = {"severity": "error", "code": "not-found", "expression": expression}
        return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": [issue]})

    assert names_capacity(answer(CAPACITY_PATH))
    assert names_capacity(answer([CAPACITY_PATH]))
    assert not names_capacity(answer(["Location"]))
    assert not names_capacity(answer("Location"))
    assert not names_capacity(httpx.Response(404, text="<html>not found</html>"))


def test_the_section_declares_its_files_and_its_passphrase_to_the_configuration(
    tmp_path: Path,
) -> None:
    """What `config._check_section` derives from the fields once the kind is registered: the
    three files must be readable, the passphrase pair is read as a secret."""
    from rorfeed import config as config_module

    (tmp_path / "auth_cli.pem").write_text("x")
    (tmp_path / "pass").write_text("s3cret passphrase\n")
    section = FhirDestinationSection.model_validate(
        _section_data(client_key_passphrase_file="pass")
    )
    fake = SimpleNamespace(base_dir=tmp_path, resolve=lambda value: tmp_path / value)
    problems: list[str] = []
    secrets: dict[str, str] = {}
    config_module._check_section(
        cast(config_module.Config, fake), "destinations[0]", section, problems, secrets
    )
    assert secrets == {"destinations[0].client_key_passphrase": "s3cret passphrase"}
    assert [p.split(":")[0] for p in problems] == [
        "destinations[0].client_key",
        "destinations[0].ca_bundle",
    ]


def test_the_tls_context_verifies_against_the_bundle_only_with_tls_1_2_or_later(pki: Pki) -> None:
    context = ssl_context("test", pki.client_cert, pki.client_key, pki.ca, None)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert len(context.get_ca_certs()) == 1  # the configured trust only, never the system's
