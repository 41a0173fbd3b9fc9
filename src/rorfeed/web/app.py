"""The web page (SPEC §10): a Flask application, server-rendered in French.

Pages: Unités (with filters), a unit's page, Coupure, Historique, État, Compte (closing
sessions) and the login page, one blueprint per area (`rorfeed.web.views`). Every change goes
through `Control` with the account's name as actor. A change always takes two steps: the form
(which units, which kill-switch), then a confirmation page that says what it means for the ROR
and asks for the mandatory reason. Security (sessions, CSRF, roles, headers) is
`rorfeed.web.security`; the French, `rorfeed.web.french`; serving, `rorfeed.web.server`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Flask, g, render_template
from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, NotFound

from rorfeed.config import Config, WebSection
from rorfeed.control import Control
from rorfeed.model import GLOBAL
from rorfeed.state import Store
from rorfeed.web import security
from rorfeed.web.auth import Accounts
from rorfeed.web.context import Clock, Flusher, Web, current
from rorfeed.web.french import FILTERS
from rorfeed.web.views import account, anomalies, journal, killswitch, mapping, session, units

if TYPE_CHECKING:
    from argon2 import PasswordHasher

MAX_BODY_BYTES = 4 * 1024 * 1024


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
    web = Web(
        config=config,
        section=config.file.web or WebSection(),
        store=store,
        control=control,
        accounts=Accounts(store, now, hasher),
        clock=now,
        flusher=Flusher(control, background_email),
    )
    app = Flask(__name__)
    app.config.update(
        SESSION_COOKIE_NAME="rorfeed_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=bool(web.section.tls_cert),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_BODY_BYTES,
        MAX_FORM_PARTS=50_000,
        TEMPLATES_AUTO_RELOAD=False,
    )
    # No SECRET_KEY: the session interface reads the key of the moment at each request
    # (`web.secret_file`, else the state store's), see security.SessionInterface.
    app.session_interface = security.SessionInterface()
    app.wsgi_app = security.LoopbackProxy(app.wsgi_app)  # type: ignore[method-assign]
    app.extensions["rorfeed"] = web
    app.jinja_env.filters.update(FILTERS)
    app.jinja_env.globals.update(csrf_token=security.csrf_token)
    app.before_request(security.guard)
    app.after_request(security.headers)
    app.context_processor(_context)
    app.register_error_handler(HTTPException, _error_page)
    for area in (
        session.bp,
        units.bp,
        mapping.bp,
        killswitch.bp,
        journal.bp,
        anomalies.bp,
        account.bp,
    ):
        app.register_blueprint(area)
    return app


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
    user: security.SessionUser | None = g.get("user")
    if user is None:
        return {"user": None, "lead": False, "stops": []}
    web = current()
    details = web.store.killswitch_details()
    stops = [
        "tous les établissements" if k == GLOBAL else web.name(k)
        for k, (on, _since, _reason) in sorted(details.items(), key=lambda kv: kv[0] != GLOBAL)
        if on
    ]
    return {"user": user, "lead": user.lead, "stops": stops, "zone_name": str(web.zone)}
