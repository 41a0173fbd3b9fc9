"""The `fhir` destination, the code: httpx over mutual TLS, OAuth 2, one indicator per request.

What SPEC §12 asks, and where it is done:
- TLS (`tls.ssl_context`): the server is verified against `ca_bundle` only (never the system store,
  never "no verify") with its host name, TLS ≥ 1.2, and the client certificate is presented on
  every connection (the token server requires it; the API server may).
- OAuth 2 `client_credentials` (`_fetch_token`): the token is kept until shortly before its
  `expires_in`, fetched again after a 401, and the request sent again once; a second 401 is a
  failure of the destination.
- Requests (`FhirSession.send`): `PATCH …/Location?identifier=1<FINESS>/<code>` with only the two
  headers the ANS names (`_keep_only`: httpx adds `Accept`, `Accept-Encoding`, `Connection`,
  `User-Agent` and, from its cookie jar, `Cookie`; they are removed, and only `Host` and
  `Content-Length` — HTTP/1.1's framing — go with them), `replace` first and `add` only on the
  404 naming the capacity extension; after a lost answer the retry starts again at `replace`
  (an `add` is not idempotent: it may have been applied).
- At most `max_requests_per_second` requests (token requests included), one at a time, on
  kept-alive connections; every phase bounded by `Phases` and all of it by the session's
  deadline (`timeout_seconds`), retries and pauses included.
- Each answer of the §12 table becomes an `Answer` with a typed `Outcome`. Nothing here raises
  for an answer of the ROR: the caller (the cycle) decides what each outcome means for the unit.

The key's passphrase and the token are held in `_Secret` (whose repr hides them) and never put
in a log line, an exception message or an `Answer`.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlencode

import httpx
import structlog

from rorfeed.errors import AuthFailed, shown
from rorfeed.mapping import sync_code_problem
from rorfeed.transports.fhir import FhirDestinationSection
from rorfeed.transports.fhir.body import (
    CAPACITY_PATH,
    IndicatorCodes,
    IndicatorValue,
    Operation,
    build_body,
    encode,
)
from rorfeed.transports.fhir.tls import (
    ssl_cause,
    ssl_context,
    ssl_reason,
    tls_refusal,
    verify_message,
)

log = structlog.get_logger("rorfeed.fhir")
# httpx logs every request at INFO ("HTTP Request: PATCH …"); rorfeed writes its own line per
# indicator, with the outcome, so httpx's would only double each one.
logging.getLogger("httpx").setLevel(logging.WARNING)

API_PATH = "/ws-synchro-dispo-lits-fhir/Location"
FHIR_JSON = "application/fhir+json"
FORM = "application/x-www-form-urlencoded"
# Besides the headers rorfeed sets, only HTTP/1.1's framing goes out (SPEC §12: "only the
# headers Authorization and Content-Type").
_FRAMING = frozenset({"host", "content-length"})
# An answer larger than this is cut and treated as a broken connection: the ROR answers with a
# short OperationOutcome, never megabytes.
MAX_ANSWER_BYTES = 1 << 20
DIAGNOSTICS_CHARS = 500
# Token kept until this share of its lifetime before `expires_in`, at most 30 s before.
TOKEN_MARGIN_SHARE, TOKEN_MARGIN_MAX = 0.1, 30.0


class Outcome(StrEnum):
    """What an indicator's request came to (the answer table of SPEC §12)."""

    ACCEPTED = "accepted"  # 200: value, time and ETag to record
    UNIT_REFUSED = "unit_refused"  # 404 Location, 412 multiple-matches, 400: the unit to manual
    ESTABLISHMENT_REFUSED = "establishment_refused"  # 403: no write rights for this FINESS
    RETRYABLE = "retryable"  # 429, 5xx, timeout, cut connection until the deadline: next cycle
    DESTINATION_FAILED = "destination_failed"  # 401 twice, token refused, TLS, client certificate


@dataclass(frozen=True)
class Answer:
    """The end of one indicator's exchange. `reason` is a short stable label (metrics, logs);
    `diagnostics` the ROR's own words (its OperationOutcome), escaped and bounded."""

    outcome: Outcome
    reason: str
    status: int | None = None
    operation: Operation | None = None  # the last operation sent
    etag: str | None = None
    last_modified: str | None = None
    diagnostics: str = ""
    attempts: int = 0


@dataclass(frozen=True)
class Phases:
    """The longest each step may take (each also cut to what is left of the deadline)."""

    connect: float = 10.0  # TCP and TLS handshake
    write: float = 10.0
    read: float = 30.0  # the ROR applies the PATCH before answering
    pool: float = 10.0


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 30.0


class _Secret:
    """A secret string that no repr, str or f-string shows."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


@dataclass(frozen=True)
class _Token:
    value: _Secret
    renew_at: float  # on the session's clock


class _Retry(Exception):
    """The request may succeed later: pause, then start again with `replace`."""

    def __init__(
        self,
        reason: str,
        detail: str,
        status: int | None = None,
        operation: Operation | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason, self.detail, self.status = reason, detail, status
        self.operation, self.retry_after = operation, retry_after


class _Final(Exception):
    """The exchange ends here with `answer` (a refusal of the destination)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.reason)
        self.answer = answer


def identifier_of(finess: str, sync_code: str) -> str:
    """The unit's key in the national ROR: IdNatStruct of the geographic entity (`1` + FINESS
    ET), `/`, the place's synchronisation code (SPEC §12)."""
    return f"1{finess}/{sync_code}"


def location_url(base_url: str, identifier: str) -> str:
    """`/` stays literal as the ANS writes it (RFC 3986 allows it in a query); anything else
    that could change the query's meaning (`&`, `+`, `#`, `%`, …) is percent-encoded."""
    return f"{base_url}{API_PATH}?identifier={quote(identifier, safe='/')}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def _issues(response: httpx.Response) -> list[dict[str, Any]]:
    try:
        outcome = json.loads(response.content)
    except ValueError:
        return []
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    return [i for i in issues if isinstance(i, dict)] if isinstance(issues, list) else []


def _expressions(issue: dict[str, Any]) -> list[str]:
    # The ANS's examples give `expression` as a string (the capacity 404) or a list (`Location`).
    found = issue.get("expression")
    items = found if isinstance(found, list) else [found]
    return [e for e in items if isinstance(e, str)]


def names_capacity(response: httpx.Response) -> bool:
    """The 404 meaning "no such indicator yet" (then `add`), not "no such Location"."""
    return any(CAPACITY_PATH in _expressions(i) for i in _issues(response))


def diagnostics_of(response: httpx.Response) -> str:
    """The ROR's words: each issue's code, diagnostics and expression, escaped and bounded."""
    issues = _issues(response)
    if issues:
        text = "; ".join(
            " ".join(
                part
                for part in (
                    str(i.get("code") or ""),
                    str(i.get("diagnostics") or ""),
                    f"({', '.join(_expressions(i))})" if _expressions(i) else "",
                )
                if part
            )
            for i in issues
        )
    else:
        text = response.content[:DIAGNOSTICS_CHARS].decode("utf-8", "replace")
    text = shown(text)
    return text if len(text) <= DIAGNOSTICS_CHARS else text[: DIAGNOSTICS_CHARS - 1] + "…"


def _keep_only(request: httpx.Request, names: set[str]) -> None:
    for name in {k.lower() for k in request.headers} - names - _FRAMING:
        del request.headers[name]


class FhirTransport:
    """Speaks to one `fhir` destination; `open()` gives the session of a cycle."""

    def __init__(
        self,
        section: FhirDestinationSection,
        *,
        client_cert: Path,
        client_key: Path,
        ca_bundle: Path,
        passphrase: str | None,
        phases: Phases | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.section = section
        self.client_cert, self.client_key, self.ca_bundle = client_cert, client_key, ca_bundle
        self._passphrase = None if passphrase is None else _Secret(passphrase)
        self.phases = phases or Phases()
        self.backoff = backoff or Backoff()
        self.clock, self.sleep = clock, sleep
        self.codes = IndicatorCodes(
            section.source_type, section.available_gender, section.closing_type
        )
        self.where = f'destination "{section.name}" (fhir {section.base_url})'

    def __repr__(self) -> str:
        return f"FhirTransport({self.where})"

    def open(self, timeout: float) -> FhirSession:
        """A session whose every request ends within `timeout` seconds from now. Nothing is
        sent yet; raises `TransportError` when the certificate, key or CA bundle cannot be
        loaded."""
        passphrase = None if self._passphrase is None else self._passphrase.reveal()
        context = ssl_context(
            self.where, self.client_cert, self.client_key, self.ca_bundle, passphrase
        )
        client = httpx.Client(
            verify=context,
            http2=False,
            trust_env=False,  # no proxy, netrc or SSL_CERT_FILE from the environment
            follow_redirects=False,
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=2),
            timeout=httpx.Timeout(
                connect=self.phases.connect,
                read=self.phases.read,
                write=self.phases.write,
                pool=self.phases.pool,
            ),
        )
        return FhirSession(self, client, self.clock() + timeout)


class FhirSession:
    """One delivery: the kept-alive connections, the token, the deadline, the request pace."""

    def __init__(self, transport: FhirTransport, client: httpx.Client, deadline: float) -> None:
        self.transport = transport
        self.section = transport.section
        self.where = transport.where
        self._client = client
        self._deadline = deadline
        self._clock, self._sleep = transport.clock, transport.sleep
        self._interval = 1.0 / self.section.max_requests_per_second
        self._next_start = float("-inf")
        self._token: _Token | None = None
        self._failed: Answer | None = None  # the destination failed: nothing more is sent
        self._refused: dict[str, Answer] = {}  # FINESS → the 403 that refused its writes

    def __repr__(self) -> str:
        return f"FhirSession({self.where})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the connections; never raises."""
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing is best effort, the delivery is over
            log.debug("fhir_close_failed", destination=self.section.name)

    def remaining(self) -> float:
        return self._deadline - self._clock()

    # -- the one public operation -------------------------------------------------------------

    def send(self, finess: str, sync_code: str, value: IndicatorValue) -> Answer:
        """Send one indicator of the unit keyed `1<finess>/<sync_code>`; never raises for an
        answer of the ROR (only `FhirBodyInvalid`, a bug, when the body fails its check)."""
        identifier = identifier_of(finess, sync_code)
        bodies = {op: encode(build_body(op, value, self.transport.codes)) for op in Operation}
        started = self._clock()
        # A code defaulted from a local code is only checked here (mapping.MappedUnit.sync_code).
        bad_code = sync_code_problem(sync_code)
        if bad_code is not None:
            answer = Answer(
                Outcome.UNIT_REFUSED,
                "invalid_sync_code",
                diagnostics=f'synchronisation code "{shown(sync_code)}" {bad_code} (set the'
                " mapping's id_externe_synchro column)",
            )
        elif self._failed is not None:
            answer = replace(self._failed, attempts=0)
        elif finess in self._refused:
            answer = replace(self._refused[finess], attempts=0)
        else:
            answer = self._send(location_url(self.section.base_url, identifier), bodies)
            if answer.outcome is Outcome.DESTINATION_FAILED:
                self._failed = answer
            elif answer.outcome is Outcome.ESTABLISHMENT_REFUSED:
                self._refused[finess] = answer
        level = log.info if answer.outcome is Outcome.ACCEPTED else log.warning
        level(
            "fhir_indicator",
            destination=self.section.name,
            identifier=identifier,
            indicator=value.indicator.name.lower(),
            count=value.count,
            outcome=answer.outcome.value,
            reason=answer.reason,
            status=answer.status,
            operation=answer.operation.value if answer.operation else None,
            etag=answer.etag,
            diagnostics=answer.diagnostics or None,
            attempts=answer.attempts,
            seconds=round(self._clock() - started, 3),
        )
        return answer

    def authenticate(self) -> None:
        """Obtain a token now (for `rorfeed check`); raises `AuthFailed` with the reason."""
        try:
            self._token_value()
        except _Final as final:
            raise AuthFailed(f"{self.where}: {final.answer.diagnostics}") from None
        except _Retry as retry:
            raise AuthFailed(f"{self.where}: token endpoint: {retry.detail}") from None

    # -- the exchange ---------------------------------------------------------------------------

    def _send(self, url: str, bodies: dict[Operation, bytes]) -> Answer:
        attempt = 0
        while True:
            attempt += 1
            try:
                return replace(self._replace_then_add(url, bodies), attempts=attempt)
            except _Final as final:
                return replace(final.answer, attempts=attempt)
            except _Retry as retry:
                pause = self._pause(attempt, retry.retry_after)
                if self.remaining() <= pause:
                    return Answer(
                        Outcome.RETRYABLE,
                        retry.reason,
                        retry.status,
                        retry.operation,
                        diagnostics=retry.detail,
                        attempts=attempt,
                    )
                log.info(
                    "fhir_retry",
                    destination=self.section.name,
                    reason=retry.reason,
                    status=retry.status,
                    detail=retry.detail,
                    attempt=attempt,
                    pause=round(pause, 3),
                )
                self._sleep(pause)

    def _pause(self, attempt: int, retry_after: float | None) -> float:
        backoff = self.transport.backoff
        pause = min(backoff.maximum, backoff.initial * 2.0 ** (attempt - 1))
        # Jitter, so that the destinations of several hospitals do not retry in step.
        pause *= random.uniform(0.5, 1.0)  # noqa: S311 - not a secret, a spread
        return pause if retry_after is None else max(pause, retry_after)

    def _replace_then_add(self, url: str, bodies: dict[Operation, bytes]) -> Answer:
        # Always `replace` first, also on a retry after an `add` whose answer was lost: that
        # `add` may have been applied, and a second one would make a duplicate indicator.
        operation = Operation.REPLACE
        response = self._patch(url, bodies[operation], operation)
        if response.status_code == 404 and names_capacity(response):
            operation = Operation.ADD
            response = self._patch(url, bodies[operation], operation)
        return self._classify(response, operation)

    def _patch(self, url: str, body: bytes, operation: Operation) -> httpx.Response:
        response = self._exchange(url, body, self._api_headers(), operation)
        if response.status_code != 401:
            return response
        # The token may have been revoked or expired early: a new one, the same request once.
        self._token = None
        response = self._exchange(url, body, self._api_headers(), operation)
        if response.status_code == 401:
            raise _Final(
                Answer(
                    Outcome.DESTINATION_FAILED,
                    "unauthorized",
                    401,
                    operation,
                    diagnostics="401 again with a new token — check client_id and the"
                    f" certificate's rights; ROR: {diagnostics_of(response)}",
                )
            )
        return response

    def _api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token_value()}", "Content-Type": FHIR_JSON}

    def _classify(self, response: httpx.Response, operation: Operation) -> Answer:
        status = response.status_code
        said = diagnostics_of(response) if status != 200 else ""
        if status == 200:
            return Answer(
                Outcome.ACCEPTED,
                "accepted",
                200,
                operation,
                etag=response.headers.get("ETag"),
                last_modified=response.headers.get("Last-Modified"),
            )
        refused = {404: "location_not_found", 412: "multiple_matches", 400: "business_rule"}
        if status in refused:
            # A capacity 404 here answers an `add`: the ROR will not create the indicator.
            capacity = status == 404 and names_capacity(response)
            return Answer(
                Outcome.UNIT_REFUSED,
                "indicator_not_found" if capacity else refused[status],
                status,
                operation,
                diagnostics=said,
            )
        if status == 403:
            return Answer(
                Outcome.ESTABLISHMENT_REFUSED, "forbidden", 403, operation, diagnostics=said
            )
        if status in (408, 429) or status >= 500:
            raise _Retry(
                "rate_limited" if status == 429 else "server_error",
                f"HTTP {status} {said}".rstrip(),
                status,
                operation,
                _retry_after(response),
            )
        if 400 <= status < 500 and status not in (405, 406, 415):
            return Answer(
                Outcome.UNIT_REFUSED, "unexpected_status", status, operation, diagnostics=said
            )
        # A redirect, another success code, or the server refusing the request's very shape
        # (method, media type): the same for every unit, so the destination's problem.
        return Answer(
            Outcome.DESTINATION_FAILED,
            "unexpected_status",
            status,
            operation,
            diagnostics=f"HTTP {status} {said}".rstrip(),
        )

    def _token_value(self) -> str:
        token = self._token
        if token is None or self._clock() >= token.renew_at:
            token = self._token = self._fetch_token()
        return token.value.reveal()

    def _fetch_token(self) -> _Token:
        asked = self._clock()
        form = {"client_id": self.section.client_id, "grant_type": "client_credentials"}
        response = self._exchange(
            self.section.token_url, urlencode(form).encode("ascii"), {"Content-Type": FORM}, None
        )
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retry("token_unavailable", f"token endpoint: HTTP {status}", status)
        if status != 200:
            raise _Final(
                Answer(
                    Outcome.DESTINATION_FAILED,
                    "token",
                    status,
                    diagnostics=f"token endpoint refused client_id {self.section.client_id}:"
                    f" HTTP {status} {_oauth_error(response)}".rstrip(),
                )
            )
        # Never show this body: it holds the token.
        try:
            grant = json.loads(response.content)
        except ValueError:
            grant = None
        if not isinstance(grant, dict):
            grant = {}
        value = grant.get("access_token")
        # RFC 6749 makes expires_in only RECOMMENDED: without it, a minute, then a new token.
        lifetime = grant.get("expires_in", 60)
        kind = str(grant.get("token_type", "Bearer"))
        if (
            not isinstance(value, str)
            or not value
            or not value.isascii()
            or not value.isprintable()
            or not isinstance(lifetime, int | float)
            or isinstance(lifetime, bool)
            or lifetime <= 0
            or kind.lower() != "bearer"
        ):
            raise _Final(
                Answer(
                    Outcome.DESTINATION_FAILED,
                    "token",
                    status,
                    diagnostics="token endpoint answered 200 without a usable bearer token"
                    " (access_token, expires_in)",
                )
            )
        margin = min(TOKEN_MARGIN_MAX, float(lifetime) * TOKEN_MARGIN_SHARE)
        return _Token(_Secret(value), asked + float(lifetime) - margin)

    def _exchange(
        self, url: str, body: bytes, headers: dict[str, str], operation: Operation | None
    ) -> httpx.Response:
        """One request: its turn in the pace, each phase bounded, the answer read whole (at most
        `MAX_ANSWER_BYTES`, before the deadline). Failures of the network become `_Retry`, a
        refused certificate `_Final`."""
        wait = self._next_start - self._clock()
        if wait > 0:
            if wait >= self.remaining():
                raise _Retry("deadline", "timeout_seconds reached", operation=operation)
            self._sleep(wait)
        remaining = self.remaining()
        if remaining <= 0:
            raise _Retry("deadline", "timeout_seconds reached", operation=operation)
        phases = self.transport.phases
        timeout = httpx.Timeout(
            connect=min(phases.connect, remaining),
            read=min(phases.read, remaining),
            write=min(phases.write, remaining),
            pool=min(phases.pool, remaining),
        )
        method = "PATCH" if operation is not None else "POST"
        # The pace counts from the moment the request's first byte leaves, not from the call:
        # a request that first waits for its connection's TLS handshake would otherwise reach
        # the server closer to the next one than the interval.
        self._next_start = self._clock() + self._interval

        def trace(event: str, info: dict[str, Any]) -> None:
            if event == "http11.send_request_headers.started":
                self._next_start = self._clock() + self._interval

        request = self._client.build_request(
            method, url, content=body, headers=headers, timeout=timeout, extensions={"trace": trace}
        )
        _keep_only(request, {name.lower() for name in headers})
        what = f"{method} {url.split('?', 1)[0]}"
        try:
            response = self._client.send(request, stream=True)
            try:
                content = bytearray()
                for chunk in response.iter_raw():
                    content += chunk
                    if len(content) > MAX_ANSWER_BYTES or self.remaining() <= 0:
                        raise _Retry(
                            "connection",
                            f"{what}: answer larger than {MAX_ANSWER_BYTES} bytes or"
                            " slower than the deadline",
                            response.status_code,
                            operation,
                        )
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            raise _Retry(
                "timeout", f"{what}: {type(exc).__name__} (no answer in time)", None, operation
            ) from exc
        except httpx.TransportError as exc:
            refusal = tls_refusal(exc)
            if refusal == "tls_verify":
                raise _Final(
                    Answer(
                        Outcome.DESTINATION_FAILED,
                        refusal,
                        operation=operation,
                        diagnostics=f"{what}: the server's certificate does not verify against"
                        f" ca_bundle ({verify_message(exc)}) — never retried without"
                        " verification",
                    )
                ) from exc
            if refusal == "client_certificate":
                raise _Final(
                    Answer(
                        Outcome.DESTINATION_FAILED,
                        refusal,
                        operation=operation,
                        diagnostics=f"{what}: the server refused the client certificate"
                        f" ({ssl_reason(ssl_cause(exc))})",
                    )
                ) from exc
            raise _Retry(
                "connection", f"{what}: {type(exc).__name__} {shown(str(exc))}", None, operation
            ) from exc
        # Decoded as httpx would have (gzip is never asked for: no Accept-Encoding goes out).
        return httpx.Response(
            response.status_code, headers=response.headers, content=bytes(content)
        )


def _oauth_error(response: httpx.Response) -> str:
    """`error` and `error_description` of an OAuth 2 error answer (RFC 6749 §5.2)."""
    try:
        said = json.loads(response.content)
    except ValueError:
        return ""
    if not isinstance(said, dict):
        return ""
    text = " ".join(str(said[k]) for k in ("error", "error_description") if said.get(k))
    return shown(text[:DIAGNOSTICS_CHARS])


def from_section(
    section: FhirDestinationSection,
    resolve: Callable[[str], Path],
    passphrase: str | None,
    **options: Any,
) -> FhirTransport:
    """The transport of a `fhir` section whose paths `resolve` makes absolute (for the cycle
    slice: `config.resolve`, `config.secrets["destinations[i].client_key_passphrase"]`)."""
    return FhirTransport(
        section,
        client_cert=resolve(section.client_cert),
        client_key=resolve(section.client_key),
        ca_bundle=resolve(section.ca_bundle),
        passphrase=passphrase,
        **options,
    )
