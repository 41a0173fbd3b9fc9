"""The web page (SPEC §10): a Flask application, server-rendered in French, run by cheroot.

Pages: Unités (with filters), a unit's page, Coupure, Historique, État, and the login page.
Every change goes through `Control` with the account's name as actor. A change always takes
two steps: the form (which units, which kill-switch), then a confirmation page that says what
it means for the ROR and asks for the mandatory reason.

Security: a signed session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS or behind
a loopback reverse proxy that says `X-Forwarded-Proto: https`) whose key lives in the state
store, shared by every process; a session ends after `web.session_minutes`, when its account
is disabled or its password changed; a CSRF token in every form; without a session only the
login page and the stylesheet are served; strict security headers (a CSP without any script).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

import structlog
from flask import Flask, current_app, flash, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from markupsafe import Markup
from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, NotFound

from rorfeed.config import Config, WebSection
from rorfeed.control import Control, ControlError
from rorfeed.errors import StateError
from rorfeed.listen import parse_listen
from rorfeed.model import GLOBAL, Mode
from rorfeed.state import AuditEntry, Store, UnitState, open_store
from rorfeed.web.auth import Accounts, LoginOutcome, Role, password_fingerprint
from rorfeed.wording import agreed

if TYPE_CHECKING:
    from argon2 import PasswordHasher
    from cheroot.wsgi import Server
    from werkzeug.wrappers import Response

log = structlog.get_logger("rorfeed.web")

Clock = Callable[[], datetime]

CSP = (
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
HISTORY_SIZES = (50, 200, 1000)
ROLE_NAMES = {Role.LEAD: "chef de projet", Role.VIEWER: "consultation"}
MODE_NAMES = {Mode.AUTO: "automatique", Mode.MANUAL: "manuel"}
OUTCOMES = {"ok": "réussi", "partial": "partiel", "failed": "en échec"}
ESTABLISHMENT_STATUSES = {
    "ok": "envoyé",
    "source_down": "source injoignable",
    "mapping_error": "mapping invalide",
    "killswitch": "coupure : rien envoyé",
    "nothing_to_send": "rien à envoyer",
}
MAX_REASON_CHARS = 500


# ---------------------------------------------------------------------------------------------
# The application's objects


@dataclass(frozen=True)
class SessionUser:
    name: str
    role: Role

    @property
    def lead(self) -> bool:
        return self.role is Role.LEAD


class _Flusher:
    """Hands queued e-mails to the relay after a change, off the request (one at a time)."""

    def __init__(self, control: Control, background: bool) -> None:
        self.control = control
        self.background = background
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        if not self.background:
            self.control.flush_notifications()
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="rorfeed-web-email", daemon=True
                )
                self._thread.start()
        self._event.set()

    def _run(self) -> None:
        while True:
            self._event.wait()
            self._event.clear()
            try:
                self.control.flush_notifications()
            except Exception:  # a failed flush must not end the thread
                log.exception("web_email_flush_failed")


@dataclass(frozen=True)
class _Web:
    config: Config
    section: WebSection
    store: Store
    control: Control
    accounts: Accounts
    clock: Clock
    flusher: _Flusher

    @property
    def zone(self) -> tzinfo:
        return self.control.directory.zone

    def name(self, finess: str) -> str:
        return self.control.directory.name(finess)


def _web() -> _Web:
    web: _Web = current_app.extensions["rorfeed"]
    return web


class _SessionInterface(SecureCookieSessionInterface):
    """`Secure` when the request came over HTTPS (directly, or through a loopback proxy)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


class _LoopbackProxy:
    """Trust `X-Forwarded-Proto`/`-For` only from a reverse proxy on the same machine."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REMOTE_ADDR") in ("127.0.0.1", "::1"):
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
            forwarded = environ.get("HTTP_X_FORWARDED_FOR", "").split(",")[-1].strip()
            if forwarded:
                environ["REMOTE_ADDR"] = forwarded
        return self.app(environ, start_response)


def create_app(
    config: Config,
    store: Store,
    *,
    clock: Clock | None = None,
    hasher: PasswordHasher | None = None,
    background_email: bool = True,
) -> Flask:
    """The WSGI application; `clock` and `hasher` are for tests (time, hashing cost)."""
    now: Clock = clock or (lambda: datetime.now(UTC))
    control = Control.from_config(config, store, now)
    web = _Web(
        config=config,
        section=config.file.web or WebSection(),
        store=store,
        control=control,
        accounts=Accounts(store, now, hasher),
        clock=now,
        flusher=_Flusher(control, background_email),
    )
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=store.web_secret(),
        SESSION_COOKIE_NAME="rorfeed_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=bool(web.section.tls_cert),
        MAX_CONTENT_LENGTH=4 * 1024 * 1024,
        MAX_FORM_MEMORY_SIZE=4 * 1024 * 1024,
        MAX_FORM_PARTS=50_000,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.session_interface = _SessionInterface()
    app.wsgi_app = _LoopbackProxy(app.wsgi_app)  # type: ignore[method-assign]
    app.extensions["rorfeed"] = web
    app.jinja_env.filters.update(
        heure=_time_filter, mode=_mode_filter, valeurs=_counts_filter, role=_role_filter
    )
    app.jinja_env.globals.update(csrf_token=_csrf_token)
    app.before_request(_guard)
    app.after_request(_headers)
    app.context_processor(_context)
    app.register_error_handler(HTTPException, _error_page)
    for rule, endpoint, view, methods in (
        ("/connexion", "login", login, ("GET", "POST")),
        ("/deconnexion", "logout", logout, ("POST",)),
        ("/", "home", home, ("GET",)),
        ("/unites", "units", units, ("GET",)),
        ("/unites/basculer", "switch_units", switch_units, ("POST",)),
        ("/unite/<finess>/<path:ror_id>", "unit", unit, ("GET",)),
        ("/coupure", "killswitch", killswitch, ("GET",)),
        ("/coupure", "killswitch_change", killswitch_change, ("POST",)),
        ("/historique", "history", history, ("GET",)),
        ("/etat", "status", status, ("GET",)),
    ):
        app.add_url_rule(rule, endpoint, view, methods=list(methods))
    return app


# ---------------------------------------------------------------------------------------------
# Sessions, CSRF, headers


def _csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def _csrf_ok() -> bool:
    expected = session.get("csrf")
    sent = request.form.get("csrf", "")
    return isinstance(expected, str) and hmac.compare_digest(expected.encode(), sent.encode())


def _session_user() -> SessionUser | None:
    """The account of this request's session, or None (expired, disabled, password changed)."""
    web = _web()
    name, login_at = session.get("user"), session.get("login_at")
    if not isinstance(name, str) or not isinstance(login_at, int | float):
        return None
    now = web.clock().timestamp()
    if not login_at - 60 <= now <= login_at + web.section.session_minutes * 60:
        session.clear()
        flash("Votre session a expiré : reconnectez-vous.", "info")
        return None
    user = web.accounts.user(name)
    if (
        user is None
        or user.disabled
        or user.role not in {r.value for r in Role}
        or session.get("pw") != password_fingerprint(user)
    ):
        session.clear()
        return None
    return SessionUser(user.name, Role(user.role))


def _guard() -> Response | None:
    """Before every request: CSRF on every POST; without a session, only the login page."""
    if request.endpoint == "static":
        return None
    if request.method == "POST" and not _csrf_ok():
        log.warning("web_csrf_refused", path=request.path, ip=request.remote_addr)
        raise Forbidden(
            "Le formulaire a expiré ou ne vient pas de cette page (jeton de sécurité "
            "absent ou invalide) : rechargez la page et recommencez."
        )
    if request.endpoint == "login":
        return None
    user = _session_user()
    if user is None:
        return redirect(url_for("login"), 303)
    g.user = user
    return None


def _lead_only() -> SessionUser:
    user: SessionUser = g.user
    if not user.lead:
        log.warning("web_change_refused", account=user.name, path=request.path)
        raise Forbidden(
            "Votre compte est en consultation seule : il ne permet aucune modification. "
            "Adressez-vous au chef de projet ROR de l'établissement."
        )
    return user


def _headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
    return response


def _error_page(exc: HTTPException) -> tuple[str, int]:
    code = exc.code or 500
    titles = {
        400: "Demande incorrecte",
        403: "Action refusée",
        404: "Page introuvable",
        405: "Méthode non permise",
        413: "Formulaire trop volumineux",
    }
    description = exc.description if isinstance(exc, BadRequest | Forbidden | NotFound) else ""
    return (
        render_template(
            "erreur.html",
            code=code,
            title=titles.get(code, "Erreur"),
            message=description if description and not description.startswith("The ") else "",
        ),
        code,
    )


def _context() -> dict[str, Any]:
    user: SessionUser | None = g.get("user")
    if user is None:
        return {"user": None, "lead": False, "stops": []}
    web = _web()
    details = web.store.killswitch_details()
    stops = [
        "tous les établissements" if k == GLOBAL else web.name(k)
        for k, (on, _since, _reason) in sorted(details.items(), key=lambda kv: kv[0] != GLOBAL)
        if on
    ]
    return {"user": user, "lead": user.lead, "stops": stops, "zone_name": str(web.zone)}


# ---------------------------------------------------------------------------------------------
# Formatting


def format_local(at: datetime | None, zone: tzinfo) -> str:
    """« 23/11/2026 14:05 » in the local zone; the offset added in the repeated autumn hour."""
    if at is None:
        return "—"
    local = at.astimezone(zone)
    text = local.strftime("%d/%m/%Y %H:%M")
    if local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset():
        offset = local.strftime("%z")
        text += f" (UTC{offset[:3]}:{offset[3:]})"
    return text


def _time_filter(at: datetime | None) -> Markup:
    if at is None:
        return Markup("—")
    zone = _web().zone
    iso = at.astimezone(zone).isoformat(timespec="seconds")
    return Markup('<time datetime="{}">{}</time>').format(iso, format_local(at, zone))


def _mode_filter(mode: Mode | str) -> str:
    return MODE_NAMES.get(Mode(mode), str(mode))


def _counts_filter(unit: UnitState) -> Markup:
    c = unit.last_counts
    if c is None:
        return Markup('<span class="discret">aucune valeur envoyée</span>')
    return Markup(
        '<span class="valeurs"><span>{} {}</span> <span>{} {}</span> <span>{} {}</span></span>'
    ).format(
        c.installed,
        agreed(c.installed, "installé"),
        c.closed,
        agreed(c.closed, "fermé"),
        c.available,
        agreed(c.available, "disponible"),
    )


def _role_filter(role: Role | str) -> str:
    return ROLE_NAMES.get(Role(role), str(role))


def _change_text(entry: AuditEntry) -> str:
    words = {"auto": "automatique", "manual": "manuel"}
    if entry.action == "killswitch":
        words = {"on": "coupée", "off": "en service"}
    before = words.get(entry.previous or "", entry.previous or "—")
    after = words.get(entry.new or "", entry.new or "—")
    return f"{before} → {after}"


ACTIONS = {"unit_mode": "Mode de l'unité", "killswitch": "Coupure", "mapping": "Mapping"}


# ---------------------------------------------------------------------------------------------
# Units: what the ROR gets, and what the cell must enter by hand


@dataclass(frozen=True)
class UnitRow:
    unit: UnitState
    establishment: str
    manual_reasons: tuple[str, ...]  # why the cell must enter it by hand; () = fed by rorfeed

    @property
    def needs_manual(self) -> bool:
        return bool(self.manual_reasons)


def _unit_rows(web: _Web, units: Iterable[UnitState] | None = None) -> list[UnitRow]:
    details = web.store.killswitch_details()
    global_on = details.get(GLOBAL, (False, None, ""))[0]
    production = {
        e.finess: any(d.environment == "production" for d in web.config.destinations_for(e.finess))
        for e in web.config.file.establishments
    }
    rows = []
    for u in web.store.units() if units is None else units:
        if not u.in_mapping:
            continue
        reasons = []
        if u.declared_mode is Mode.MANUAL:
            reasons.append("déclarée manuelle dans le mapping")
        elif u.mode is Mode.MANUAL:
            reasons.append("mode manuel")
        if global_on:
            reasons.append("coupure générale")
        if details.get(u.finess, (False, None, ""))[0]:
            reasons.append("coupure de l'établissement")
        if not production.get(u.finess, False):
            reasons.append("aucune destination de production")
        rows.append(UnitRow(u, web.name(u.finess), tuple(reasons)))
    return rows


def home() -> Response:
    return redirect(url_for("units"), 303)


def units() -> str:
    web = _web()
    rows = _unit_rows(web)
    establishments = sorted({(r.unit.finess, r.establishment) for r in rows}, key=lambda e: e[1])
    finess = request.args.get("etablissement", "")
    mode = request.args.get("mode", "")
    shown = [
        r
        for r in rows
        if (not finess or r.unit.finess == finess)
        and (
            not mode
            or (mode == "auto" and r.unit.mode is Mode.AUTO)
            or (mode == "manuel" and r.unit.mode is Mode.MANUAL)
            or (mode == "a-saisir" and r.needs_manual)
        )
    ]
    return render_template(
        "unites.html",
        active="unites",
        rows=shown,
        total=len(rows),
        to_enter=sum(1 for r in rows if r.needs_manual),
        establishments=establishments,
        finess=finess,
        mode=mode,
        check_all=request.args.get("cocher") == "tout",
    )


def unit(finess: str, ror_id: str) -> str:
    web = _web()
    found = [u for u in web.store.units(finess) if u.ror_id == ror_id]
    if not found:
        raise NotFound(f"Aucune unité {ror_id} pour l'établissement {finess}.")
    state = found[0]
    rows = _unit_rows(web, [state])
    entries = [e for e in web.store.history(ror_id, 500) if e.finess == finess]
    return render_template(
        "unite.html",
        active="unites",
        state=state,
        row=rows[0] if rows else None,
        establishment=web.name(finess),
        entries=entries,
        actions=ACTIONS,
        change_text=_change_text,
    )


def switch_units() -> Response | tuple[str, int]:
    """Step 1 (`etape=confirmer`): the confirmation page. Step 2 (`appliquer`): the switch."""
    user = _lead_only()
    web = _web()
    form = request.form
    try:
        mode = Mode(form.get("mode", ""))
    except ValueError:
        raise BadRequest("Mode inconnu : « manual » ou « auto » attendu.") from None
    keys = list(dict.fromkeys(form.getlist("unite")))
    from_unit = form.get("depuis") == "unite"
    if not keys:
        flash("Cochez au moins une unité avant de choisir le basculement.", "erreur")
        return redirect(url_for("units"), 303)
    by_key = {u.ror_id: u for u in web.store.units() if u.in_mapping}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise BadRequest(f"Unité(s) inconnue(s) : {', '.join(unknown)}.")
    chosen = [by_key[k] for k in keys]
    blocked = [u for u in chosen if mode is Mode.AUTO and u.declared_mode is Mode.MANUAL]
    unchanged = [u for u in chosen if u.mode is mode and u not in blocked]
    todo = [u for u in chosen if u not in blocked and u not in unchanged]
    reason = form.get("motif", "").strip()
    error = ""
    if form.get("etape") == "appliquer":
        if not reason:
            error = (
                "Le motif est obligatoire : il est gardé dans l'historique et envoyé à la cellule."
            )
        elif len(reason) > MAX_REASON_CHARS:
            error = f"Le motif est trop long (au plus {MAX_REASON_CHARS} caractères)."
        elif not todo:
            error = "Aucune de ces unités n'est à basculer."
        else:
            try:
                events = web.control.switch_units([u.ror_id for u in todo], mode, reason, user.name)
            except ControlError as exc:
                error = f"Rien n'a été changé : {exc}"
            else:
                web.flusher.kick()
                flash(_switched_message(len(events), mode, web), "succes")
                if from_unit and len(todo) == 1:
                    return redirect(
                        url_for("unit", finess=todo[0].finess, ror_id=todo[0].ror_id), 303
                    )
                return redirect(url_for("units"), 303)
    return (
        render_template(
            "confirmer_unites.html",
            active="unites",
            mode=mode,
            rows=_unit_rows(web, todo),
            unchanged=_unit_rows(web, unchanged),
            blocked=_unit_rows(web, blocked),
            reason=reason,
            error=error,
            from_unit=from_unit,
            email=web.control.notifier is not None and web.control.notifier.enabled,
        ),
        400 if error else 200,
    )


def _switched_message(n: int, mode: Mode, web: _Web) -> str:
    if n == 0:
        return "Rien n'a changé : ces unités étaient déjà dans ce mode."
    units_text = "1 unité passée" if n == 1 else f"{n} unités passées"
    if mode is Mode.MANUAL:
        text = (
            f"{units_text} en saisie manuelle : la saisie manuelle dans le ROR redevient "
            "nécessaire pour " + ("elle." if n == 1 else "elles.")
        )
    else:
        text = (
            f"{units_text} en automatique : la saisie manuelle dans le ROR n'est plus "
            "nécessaire pour " + ("elle" if n == 1 else "elles") + " dès le prochain cycle."
        )
    notifier = web.control.notifier
    if notifier is not None and notifier.enabled:
        return text + " La cellule de gestion des lits est prévenue par courriel."
    return text + (
        " Aucun relais de courriel n'est configuré : prévenez vous-même la cellule de "
        "gestion des lits."
    )


# ---------------------------------------------------------------------------------------------
# Kill-switch


@dataclass(frozen=True)
class SwitchRow:
    key: str  # a FINESS, or "tous" for the global kill-switch
    name: str
    on: bool
    since: datetime | None
    reason: str
    automated: int  # units fed automatically when the switch is off


def _switch_rows(web: _Web) -> list[SwitchRow]:
    details = web.store.killswitch_details()
    units = [u for u in web.store.units() if u.sendable]
    rows = []
    on, since, reason = details.get(GLOBAL, (False, None, ""))
    rows.append(SwitchRow("tous", "Tous les établissements", on, since, reason, len(units)))
    for e in web.config.file.establishments:
        on, since, reason = details.get(e.finess, (False, None, ""))
        automated = sum(1 for u in units if u.finess == e.finess)
        rows.append(SwitchRow(e.finess, e.name, on, since, reason, automated))
    return rows


def killswitch() -> str:
    return render_template("coupure.html", active="coupure", rows=_switch_rows(_web()))


def killswitch_change() -> Response | tuple[str, int]:
    user = _lead_only()
    web = _web()
    form = request.form
    rows = {r.key: r for r in _switch_rows(web)}
    row = rows.get(form.get("cible", ""))
    position = form.get("position", "")
    if row is None or position not in ("on", "off"):
        raise BadRequest("Coupure inconnue : choisissez-la sur la page Coupure.")
    on = position == "on"
    if row.on == on:
        flash(f"La coupure de « {row.name} » est déjà {'active' if on else 'levée'}.", "info")
        return redirect(url_for("killswitch"), 303)
    finess = None if row.key == "tous" else row.key
    reason = form.get("motif", "").strip()
    error = ""
    if form.get("etape") == "appliquer":
        if not reason:
            error = (
                "Le motif est obligatoire : il est gardé dans l'historique et envoyé à la cellule."
            )
        elif len(reason) > MAX_REASON_CHARS:
            error = f"Le motif est trop long (au plus {MAX_REASON_CHARS} caractères)."
        else:
            try:
                web.control.killswitch(finess, on, reason, user.name)
            except ControlError as exc:
                error = f"Rien n'a été changé : {exc}"
            else:
                web.flusher.kick()
                flash(_killswitch_message(row, on, web), "succes")
                return redirect(url_for("killswitch"), 303)
    units = [u for u in web.store.units(finess) if u.sendable]
    still_stopped = [
        r.name for r in rows.values() if not on and r.on and r.key not in (row.key, "tous")
    ]
    global_on = rows["tous"].on
    return (
        render_template(
            "confirmer_coupure.html",
            active="coupure",
            row=row,
            on=on,
            units=_unit_rows(web, units),
            reason=reason,
            error=error,
            global_on=global_on,
            still_stopped=still_stopped if finess is None else [],
            email=web.control.notifier is not None and web.control.notifier.enabled,
        ),
        400 if error else 200,
    )


def _killswitch_message(row: SwitchRow, on: bool, web: _Web) -> str:
    if on:
        text = (
            f"Coupure activée pour « {row.name} » : rorfeed n'envoie plus rien au ROR ; la "
            "saisie manuelle dans le ROR redevient nécessaire."
        )
    else:
        text = (
            f"Coupure levée pour « {row.name} » : rorfeed reprend l'envoi au prochain cycle ; "
            "la saisie manuelle dans le ROR n'est plus nécessaire pour les unités en mode "
            "automatique."
        )
    notifier = web.control.notifier
    if notifier is not None and notifier.enabled:
        return text + " La cellule de gestion des lits est prévenue par courriel."
    return text + (
        " Aucun relais de courriel n'est configuré : prévenez vous-même la cellule de "
        "gestion des lits."
    )


# ---------------------------------------------------------------------------------------------
# History and status


def history() -> str:
    web = _web()
    key = request.args.get("unite", "").strip()
    try:
        size = int(request.args.get("nombre", "200"))
    except ValueError:
        size = 200
    size = size if size in HISTORY_SIZES else 200
    entries = web.store.history(key or None, size)
    return render_template(
        "historique.html",
        active="historique",
        entries=entries,
        key=key,
        size=size,
        sizes=HISTORY_SIZES,
        actions=ACTIONS,
        change_text=_change_text,
        name=web.name,
    )


@dataclass(frozen=True)
class DestinationRow:
    name: str
    environment: str
    establishments: str
    waiting: int
    last_delivery: datetime | None  # cycle time of the newest cycle that delivered a file
    last_result: str


def status() -> str:
    web = _web()
    cycles = web.store.recent_cycles(50)
    waiting = web.store.outbox_counts()
    destinations = []
    for d in web.config.file.destinations:
        last = next(
            (
                c.cycle_time
                for c in cycles
                if c.detail.get("deliveries", {}).get(d.name, {}).get("delivered", 0)
            ),
            None,
        )
        result = ""
        for c in cycles:
            info = c.detail.get("deliveries", {}).get(d.name)
            if info is not None:
                result = f"{info.get('delivered', 0)} livré(s), {info.get('failed', 0)} en attente"
                if info.get("error"):
                    result += f" — {info['error']}"
                break
        destinations.append(
            DestinationRow(
                d.name,
                "production" if d.environment == "production" else "test",
                ", ".join(web.name(f) for f in d.establishments) or "tous",
                waiting.get(d.name, 0),
                last,
                result,
            )
        )
    streaks = [r for r in _unit_rows(web) if r.unit.streak]
    return render_template(
        "etat.html",
        active="etat",
        cycles=cycles[:20],
        outcomes=OUTCOMES,
        statuses=ESTABLISHMENT_STATUSES,
        destinations=destinations,
        switches=_switch_rows(web),
        streaks=streaks,
        emails_waiting=len(web.store.pending_emails()),
        name=web.name,
    )


# ---------------------------------------------------------------------------------------------
# Login


def login() -> Response | tuple[str, int] | str:
    web = _web()
    if request.method == "GET":
        if _session_user() is not None:
            return redirect(url_for("units"), 303)
        return render_template("connexion.html", name="")
    name = request.form.get("identifiant", "").strip()
    password = request.form.get("mot_de_passe", "")
    result = web.accounts.authenticate(name, password)
    ip = request.remote_addr
    if result.outcome is LoginOutcome.OK and result.user is not None:
        session.clear()  # a fresh session (and CSRF token) at each login
        session["user"] = result.user.name
        session["login_at"] = web.clock().timestamp()
        session["pw"] = password_fingerprint(result.user)
        session["csrf"] = secrets.token_urlsafe(32)
        log.info("web_login", account=result.user.name, role=result.user.role, ip=ip)
        return redirect(url_for("units"), 303)
    if result.outcome is LoginOutcome.LOCKED:
        log.warning("web_login_refused", account=name, reason="locked", ip=ip)
        until = format_local(result.locked_until, web.zone)
        message = (
            f"Trop d'échecs de connexion : ce compte est bloqué jusqu'à {until}. Réessayez "
            "ensuite, ou demandez à l'exploitation de changer le mot de passe."
        )
        return render_template("connexion.html", name=name, error=message), 429
    # Only a name that exists is logged: a password typed into the name field never is.
    known = web.accounts.user(name) if name else None
    log.warning("web_login_refused", account=known.name if known else None, reason="refused", ip=ip)
    message = "Identifiant ou mot de passe incorrect (ou compte désactivé)."
    return render_template("connexion.html", name=name, error=message), 401


def logout() -> Response:
    user: SessionUser = g.user
    session.clear()
    log.info("web_logout", account=user.name)
    flash("Vous êtes déconnecté.", "info")
    return redirect(url_for("login"), 303)


# ---------------------------------------------------------------------------------------------
# Serving


def make_server(config: Config, app: Flask, listen: str | None = None) -> Server:
    """A cheroot WSGI server for `app` on `web.listen` (or `listen`), HTTPS with tls_cert."""
    from cheroot import wsgi

    section = config.file.web or WebSection()

    class _Server(wsgi.Server):
        def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
            if traceback:
                log.error("web_server", message=msg, exc_info=True)
            elif level >= logging.ERROR:
                log.error("web_server", message=msg)
            else:
                log.info("web_server", message=msg)

    server = _Server(
        parse_listen(listen or section.listen),
        app,
        numthreads=8,
        server_name="rorfeed",
        timeout=30,
        shutdown_timeout=5,
    )
    server.software = "rorfeed"
    if section.tls_cert:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server.ssl_adapter = BuiltinSSLAdapter(
            str(config.resolve(section.tls_cert)), str(config.resolve(section.tls_key))
        )
    return server


def serve(config: Config) -> int:
    """`rorfeed web`: serve until SIGTERM/SIGINT (exit 0); 1 when it cannot start."""
    from rorfeed import systemd

    section = config.file.web or WebSection()
    try:
        store = open_store(config.state_url)
        app = create_app(config, store)
    except StateError as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return 1
    server = make_server(config, app)
    try:
        server.prepare()
    except OSError as exc:
        print(f"rorfeed: web: cannot listen on {section.listen}: {exc}", file=sys.stderr)
        return 1

    def _stop(signum: int, _frame: object) -> None:
        log.info("web_stopping", signal=signal.Signals(signum).name)
        threading.Thread(target=server.stop, name="rorfeed-web-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    scheme = "https" if section.tls_cert else "http"
    log.info("web_listening", url=f"{scheme}://{section.listen}/")
    notifier = systemd.Notifier.from_env()
    notifier.ready(f"web page on {scheme}://{section.listen}/")
    try:
        server.serve()
    finally:
        server.stop()
        notifier.stopping("stopped")
    log.info("web_stopped")
    return 0
