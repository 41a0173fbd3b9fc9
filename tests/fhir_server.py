"""A loopback stand-in for the national ROR's bed-capacity write path, over mutual TLS.

One `http.server` in a thread, TLS by Python's `ssl`, a test PKI made at test time with
`trustme` (no key is committed): a CA, the server's certificate for 127.0.0.1, rorfeed's client
certificate, and a second CA for the certificates that must be refused.

It serves the two endpoints the ANS documents (ror-national-fhir.md §1, §3):
- `POST /auth/realms/ror/protocol/openid-connect/token`: `client_credentials`, over mTLS;
- `PATCH /ws-synchro-dispo-lits-fhir/Location?identifier=<IdNatStruct>/<code>`: the indicator
  protocol, answering as the capacity page documents.

Each answer is marked DOCUMENTED (the ANS's capacity page gives it, with its body shape) or
ASSUMPTION (the ANS says nothing: chosen here as the likeliest or the worst case for rorfeed).
Per-test settings: known places and the indicators they hold, duplicated codes (412),
establishments without write rights (403), indicator statuses the ROR refuses (400), token
lifetime, revoked or refused tokens (401), and a queue of faults (a status such as 429 or 500,
a delay, a cut connection, an operation applied whose answer is lost). Every request is logged
with its time, headers, body and answer, so that tests assert on what the server saw.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import itertools
import json
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trustme
from cryptography.hazmat.primitives import serialization

from rorfeed.transports.fhir.codes import CAPACITY_EXTENSION_URL

TOKEN_PATH = "/auth/realms/ror/protocol/openid-connect/token"
API_PATH = "/ws-synchro-dispo-lits-fhir/Location"
CAPACITY_PATH = f"Location.extension.where(url='{CAPACITY_EXTENSION_URL}')"
CLIENT_ID = "rorfeed-test"
KEY_PASSPHRASE = "correct horse battery staple"
# The server's key tuple, in the order of the ROR's 400 diagnostics (DOCUMENTED).
KEY_NAMES = (
    "capacityStatus",
    "temporalityCapacity",
    "genderCapacityAvailable",
    "capacityClosingType",
    "additionalBedType",
    "crisisType",
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
_CRITERION = re.compile(
    r"extension\.where\(url = '(\w+)' and valueCodeableConcept\.coding\.code = '(\w+)'\)"
)
IO_SECONDS = 10.0  # every socket wait of the server


@dataclass
class Pki:
    """The files of the test PKI, in a test's temporary folder."""

    ca: Path  # the trust rorfeed is given (`ca_bundle`)
    client_cert: Path
    client_key: Path
    encrypted_key: Path  # the same key, encrypted with KEY_PASSPHRASE
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path
    authority: trustme.CA
    other_authority: trustme.CA


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    client = ca.issue_cert("rorfeed.test", common_name="rorfeed-test-client")
    rogue = other.issue_cert("rorfeed.test", common_name="rorfeed-rogue-client")
    paths = {name: folder / name for name in ("ca.pem", "client.pem", "client.key", "enc.key")}
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client.pem"]))
    client.private_key_pem.write_to_path(str(paths["client.key"]))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    paths["enc.key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSPHRASE.encode()),
        )
    )
    rogue.cert_chain_pems[0].write_to_path(str(folder / "rogue.pem"))
    rogue.private_key_pem.write_to_path(str(folder / "rogue.key"))
    return Pki(
        paths["ca.pem"],
        paths["client.pem"],
        paths["client.key"],
        paths["enc.key"],
        folder / "rogue.pem",
        folder / "rogue.key",
        ca,
        other,
    )


@dataclass
class Fault:
    """What the server does to the next matching PATCH instead of (or besides) answering.

    kind: `status` (answer `status`, with `Retry-After` when given), `delay` (wait `seconds`,
    then apply and answer — to a client that has given up), `cut` (close the connection
    without applying or answering), `apply_then_cut` (apply, then close without answering: the
    answer of an applied request is lost). `on`: only for that operation (`replace`/`add`).
    """

    kind: str
    status: int = 500
    seconds: float = 0.0
    on: str | None = None
    retry_after: str | None = None


@dataclass
class Logged:
    at: float  # time.monotonic() when the request's headers were read
    method: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    body: bytes
    connection: int
    operation: str | None = None
    status: int | None = None  # None: no answer (cut)


@dataclass
class Indicator:
    key: tuple[str | None, ...]
    extension: dict[str, Any]


@dataclass
class Settings:
    places: dict[str, list[Indicator]] = field(default_factory=dict)  # identifier → indicators
    duplicates: set[str] = field(default_factory=set)  # identifiers matching two Locations
    forbidden: set[str] = field(default_factory=set)  # FINESS without write rights
    refused_statuses: set[str] = field(default_factory=set)  # capacityStatus codes → 400
    faults: list[Fault] = field(default_factory=list)
    token_lifetime: int = 300
    refuse_every_token: bool = False  # every bearer token is answered 401


class RorServer:
    """Start with `with RorServer(pki) as ror:`; `ror.url` is https://127.0.0.1:<port>."""

    def __init__(self, pki: Pki, *, server_cert: trustme.LeafCert | None = None) -> None:
        self.pki = pki
        self.settings = Settings()
        self.log: list[Logged] = []
        self.handshake_failures: list[str] = []
        self.tokens: dict[str, float] = {}  # token → expiry (monotonic)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._versions: dict[str, int] = {}
        self._connections = itertools.count(1)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        (server_cert or pki.authority.issue_cert("127.0.0.1", "localhost")).configure_cert(context)
        pki.authority.configure_trust(context)  # the client certificates it accepts
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no certificate, no connection
        self._httpd = _Server(("127.0.0.1", 0), _Handler, self, context)
        self.port = self._httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.token_url = f"{self.url}{TOKEN_PATH}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> RorServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=IO_SECONDS)

    # -- per-test settings ------------------------------------------------------------------

    def add_place(self, identifier: str) -> None:
        with self.lock:
            self.settings.places.setdefault(identifier, [])

    def indicators(self, identifier: str) -> list[Indicator]:
        with self.lock:
            return list(self.settings.places[identifier])

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def refused_handshakes(self, at_least: int = 1, timeout: float = 5.0) -> list[str]:
        """The handshakes the server refused, once there are `at_least` (or `timeout` passed):
        the server records a refusal in its own thread, maybe after the client saw it."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = list(self.handshake_failures)
            if len(found) >= at_least or time.monotonic() >= deadline:
                return found
            time.sleep(0.01)

    def patches(self) -> list[Logged]:
        return [r for r in self.log if r.method == "PATCH"]

    def token_requests(self) -> list[Logged]:
        return [r for r in self.log if r.path == TOKEN_PATH]

    # -- the endpoints ----------------------------------------------------------------------

    def token(self, handler: _Handler, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != ["client_credentials"] or form.get("client_id") != [CLIENT_ID]:
            # ASSUMPTION: Keycloak's answer to an unknown client (the ANS does not document it).
            return 401, {"error": "invalid_client", "error_description": "Invalid client"}
        token = secrets.token_urlsafe(24)
        with self.lock:
            lifetime = self.settings.token_lifetime
            self.tokens[token] = time.monotonic() + lifetime
        return 200, {"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}

    def patch(
        self, handler: _Handler, query: dict[str, list[str]], body: bytes, logged: Logged
    ) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        """The answer (status, body, headers), or None to close the connection unanswered."""
        with self.lock:
            auth = handler.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ")
            expiry = self.tokens.get(token) if auth.startswith("Bearer ") else None
            if self.settings.refuse_every_token or expiry is None or expiry < time.monotonic():
                # ASSUMPTION: the generic page only says 4XX covers "absence ou invalidité du
                # jeton d'accès", with an OperationOutcome.
                return 401, _outcome("security", "Jeton d'accès absent ou invalide"), {}
            identifier = (query.get("identifier") or [""])[0]
            finess = identifier[1:10]
            try:
                parsed = _parse_body(body)
            except ValueError as exc:
                return 400, _outcome("invalid", f"Corps invalide : {exc}"), {}
            operation, path, extension = parsed
            logged.operation = operation
            fault = self._take_fault(operation)
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return fault.status, _outcome("transient", f"Erreur {fault.status}"), headers
        if fault is not None and fault.kind == "cut":
            return None
        if fault is not None and fault.kind == "delay":
            self.stopping.wait(fault.seconds)
        with self.lock:
            answer = self._apply(identifier, finess, operation, path, extension)
        if fault is not None and fault.kind == "apply_then_cut":
            return None
        return answer

    def _take_fault(self, operation: str) -> Fault | None:
        for i, fault in enumerate(self.settings.faults):
            if fault.on in (None, operation):
                return self.settings.faults.pop(i)
        return None

    def _apply(
        self, identifier: str, finess: str, operation: str, path: str, extension: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        s = self.settings
        if finess in s.forbidden:
            # ASSUMPTION: not documented for this endpoint ("droits insuffisants" is a 4XX).
            return 403, _outcome("forbidden", "Droits d'écriture absents pour cette structure"), {}
        if identifier in s.duplicates:
            # DOCUMENTED: 412 multiple-matches.
            return (
                412,
                _outcome(
                    "multiple-matches",
                    "La Location recherchée n'est pas unique, il y a '2' résultats",
                ),
                {},
            )
        if identifier not in s.places:
            # DOCUMENTED: 404 with the expression as a list.
            return (
                404,
                _outcome(
                    "not-found",
                    f"La Location avec l'identifiant externe de synchro {identifier} n'a pas été"
                    " trouvée.",
                    ["Location"],
                ),
                {},
            )
        subs = {s_["url"]: s_ for s_ in extension.get("extension", [])}
        missing = [name for name in MANDATORY if name not in subs]
        key = tuple(_code(subs.get(name)) for name in KEY_NAMES)
        status, gender, closing = key[0], key[2], key[3]
        if (
            missing
            or status in s.refused_statuses
            or gender == "03"
            or (gender is not None and status != "02")
            or (closing is not None and status != "05")
        ):
            # DOCUMENTED: the 400 business-rule text and its key tuple, "null" for an absent
            # code. ASSUMPTION: which combinations the ROR refuses besides gender 03.
            shown = " / ".join(f"{n}: {c or 'null'}" for n, c in zip(KEY_NAMES, key, strict=True))
            return (
                400,
                _outcome(
                    "business-rule",
                    "Les valeurs du nouvel objet ne correspondent pas à un indicateur valide : "
                    + shown,
                ),
                {},
            )
        if _code(subs.get("capacityType")) != "01":
            # DOCUMENTED.
            return (
                400,
                _outcome(
                    "business-rule",
                    "L'attribut 'natureCapacite' a un code différent de celui attendu",
                ),
                {},
            )
        held = s.places[identifier]
        if operation == "replace":
            criteria = _criteria(path)
            if criteria is None or criteria != {
                n: c for n, c in zip(KEY_NAMES, key, strict=True) if c
            }:
                # DOCUMENTED wording.
                return (
                    400,
                    _outcome(
                        "business-rule",
                        "Les critères du FhirPath ne correspondent pas à un indicateur valide",
                    ),
                    {},
                )
            matching = [i for i in held if i.key == key]
            if not matching:
                # DOCUMENTED: 404 with the expression as a string.
                return (
                    404,
                    _outcome(
                        "not-found",
                        "Aucun indicateur présent en base ne correspond",
                        CAPACITY_PATH,
                    ),
                    {},
                )
            for indicator in matching:
                indicator.extension = extension
        elif path == CAPACITY_PATH:
            # ASSUMPTION: an `add` of an indicator the place already holds is applied (a second
            # indicator with the same key): the worst case, so that a client re-sending an `add`
            # whose answer was lost would be caught by the tests.
            held.append(Indicator(key, extension))
        else:
            return 400, _outcome("business-rule", "Chemin d'ajout invalide"), {}
        version = self._versions.get(identifier, 0) + 1
        self._versions[identifier] = version
        # DOCUMENTED: 200 with ETag and Last-Modified. ASSUMPTION: the body (the ANS only says it
        # holds "l'identifiant fonctionnel de la ressource mise à jour").
        return (
            200,
            {"resourceType": "Location", "identifier": [{"value": identifier}]},
            {"ETag": f'W/"{version}"', "Last-Modified": email.utils.formatdate(usegmt=True)},
        )


def _outcome(code: str, diagnostics: str, expression: object = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression is not None:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _code(sub: dict[str, Any] | None) -> str | None:
    if sub is None:
        return None
    return str(sub["valueCodeableConcept"]["coding"][0]["code"])


def _criteria(path: str) -> dict[str, str] | None:
    """The key a `replace` path names. Read with a pattern, as the ROR's diagnostics suggest it
    does (a key tuple), rather than by evaluating FHIRPath."""
    prefix = f"{CAPACITY_PATH}.where("
    if not path.startswith(prefix) or not path.endswith(")"):
        return None
    inner = path[len(prefix) : -1]
    found = _CRITERION.findall(inner)
    if (
        " and ".join(
            f"extension.where(url = '{n}' and valueCodeableConcept.coding.code = '{c}')"
            for n, c in found
        )
        != inner
    ):
        return None
    return dict(found)


def _parse_body(body: bytes) -> tuple[str, str, dict[str, Any]]:
    data = json.loads(body)
    if data.get("resourceType") != "Parameters":
        raise ValueError("not a Parameters")
    (operation,) = data["parameter"]
    parts = {p["name"]: p for p in operation["part"]}
    (holder,) = parts["value"]["part"]
    (extension,) = holder["extension"]
    if extension["url"] != CAPACITY_EXTENSION_URL:
        raise ValueError("not the capacity extension")
    return str(parts["type"]["valueString"]), str(parts["path"]["valueString"]), extension


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[_Handler],
        ror: RorServer,
        context: ssl.SSLContext,
    ) -> None:
        self.ror, self.context = ror, context
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        sock.settimeout(IO_SECONDS)
        # The handshake runs in the request's thread (`_Handler.setup`), not in the accept loop.
        return self.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        ), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A refused handshake or a client gone is part of the tests, not an error to print.
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the ROR's servers
    server: _Server
    timeout = IO_SECONDS

    def setup(self) -> None:
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            with self.server.ror.lock:
                self.server.ror.handshake_failures.append(str(getattr(exc, "reason", exc)))
            raise
        self.connection_id = next(self.server.ror._connections)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read(self) -> tuple[Logged, bytes]:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        parts = urlsplit(self.path)
        logged = Logged(
            time.monotonic(),
            self.command,
            parts.path,
            parse_qs(parts.query),
            list(self.headers.items()),
            body,
            self.connection_id,
        )
        with self.server.ror.lock:
            self.server.ror.log.append(logged)
        return logged, body

    def _answer(
        self,
        logged: Logged,
        status: int,
        payload: dict[str, Any],
        headers: dict[str, str],
        kind: str,
    ) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        logged.status = status
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(data)

    def do_POST(self) -> None:
        logged, body = self._read()
        if logged.path != TOKEN_PATH:
            self._answer(logged, 404, {"error": "not_found"}, {}, "application/json")
            return
        status, payload = self.server.ror.token(self, parse_qs(body.decode()))
        self._answer(logged, status, payload, {}, "application/json")

    def do_PATCH(self) -> None:
        logged, body = self._read()
        if logged.path != API_PATH:
            self._answer(
                logged, 404, _outcome("not-found", "no such endpoint"), {}, "application/fhir+json"
            )
            return
        answer = self.server.ror.patch(self, logged.query, body, logged)
        if answer is None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.request.shutdown(socket.SHUT_RDWR)
            return
        status, payload, headers = answer
        self._answer(logged, status, payload, headers, "application/fhir+json")


@contextlib.contextmanager
def running(pki: Pki, **options: Any) -> Iterator[RorServer]:
    with RorServer(pki, **options) as ror:
        yield ror
