"""The page's security: sessions, CSRF, who may do what, and the response headers.

A signed session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS or behind a loopback
reverse proxy that says `X-Forwarded-Proto: https`) whose key lives in the state store, shared
by every process. The cookie carries a random session id; the state store keeps its SHA-256,
and `guard` checks on every request that the session is still open there (SPEC §10.3). A
session ends after `web.session_minutes`, at logout, when the account (or a `lead`) closes all
its sessions, when its account is disabled or its password or role changed: its row is deleted,
so a copy of the cookie taken before is refused. A CSRF token in every form. Without a session
only the login page and the stylesheet are served. A view that changes something is
`lead_required`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import structlog
from flask import Flask, flash, g, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from werkzeug.exceptions import Forbidden

from rorfeed.state import WebUser
from rorfeed.web.auth import Role, password_fingerprint
from rorfeed.web.context import current
from rorfeed.web.french import SESSION_ENDED

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

log = structlog.get_logger("rorfeed.web")

LOGIN_ENDPOINT = "session.login"
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


@dataclass(frozen=True)
class SessionUser:
    name: str
    role: Role

    @property
    def lead(self) -> bool:
        return self.role is Role.LEAD


def user() -> SessionUser:
    """The account of this request (`guard` has let it through)."""
    found: SessionUser = g.user
    return found


class SessionInterface(SecureCookieSessionInterface):
    """`Secure` when the request came over HTTPS (directly, or through a loopback proxy)."""

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        # The key of the moment, read at each request: after `rorfeed users rotate-key` a
        # running page signs with the new one at once (`web.secret_file`: the file's).
        web = app.extensions["rorfeed"]
        key = web.config.secrets.get("web.secret", "").strip() or web.store.web_secret()
        return URLSafeTimedSerializer(
            key,
            salt=self.salt,
            serializer=self.serializer,
            signer_kwargs={
                "key_derivation": self.key_derivation,
                "digest_method": self.digest_method,
            },
        )

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


class LoopbackProxy:
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


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def _csrf_ok() -> bool:
    expected = session.get("csrf")
    sent = request.form.get("csrf", "")
    return isinstance(expected, str) and hmac.compare_digest(expected.encode(), sent.encode())


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start_session(account: WebUser) -> None:
    """A fresh session (id, recorded in the state store, and CSRF token) for `account`."""
    web = current()
    now = web.clock()
    session_id = secrets.token_urlsafe(32)
    expired = now - timedelta(minutes=web.section.session_minutes)
    web.store.open_web_session(account.name, _digest(session_id), now, expired)
    session.clear()
    session["user"] = account.name
    session["sid"] = session_id
    session["login_at"] = now.timestamp()
    session["pw"] = password_fingerprint(account)
    session["csrf"] = secrets.token_urlsafe(32)


def end_session() -> None:
    """Logout: this session ends in the state store (a copy of its cookie is refused too)."""
    session_id = session.get("sid")
    if isinstance(session_id, str):
        current().store.end_web_session(_digest(session_id))
    session.clear()


def session_user() -> SessionUser | None:
    """The account of this request's session, or None (expired, ended, disabled…)."""
    web = current()
    name, login_at = session.get("user"), session.get("login_at")
    session_id = session.get("sid")
    if (
        not isinstance(name, str)
        or not isinstance(login_at, int | float)
        or not isinstance(session_id, str)
    ):
        return None
    now = web.clock().timestamp()
    if not login_at - 60 <= now <= login_at + web.section.session_minutes * 60:
        session.clear()
        flash("Votre session a expiré : reconnectez-vous.", "info")
        return None
    account = web.store.web_session_user(name, _digest(session_id))
    if (
        account is None
        or account.disabled
        or account.role not in {r.value for r in Role}
        or session.get("pw") != password_fingerprint(account)
    ):
        session.clear()
        flash(SESSION_ENDED, "info")
        return None
    return SessionUser(account.name, Role(account.role))


def guard() -> Response | None:
    """Before every request: CSRF on every POST; without a session, only the login page."""
    if request.endpoint == "static":
        return None
    if request.method == "POST" and not _csrf_ok():
        log.warning("web_csrf_refused", path=request.path, ip=request.remote_addr)
        raise Forbidden(
            "Le formulaire a expiré ou ne vient pas de cette page (jeton de sécurité "
            "absent ou invalide) : rechargez la page et recommencez."
        )
    if request.endpoint == LOGIN_ENDPOINT:
        return None
    found = session_user()
    if found is None:
        return redirect(url_for(LOGIN_ENDPOINT), 303)
    g.user = found
    return None


P = ParamSpec("P")
R = TypeVar("R")


def lead_required(view: Callable[P, R]) -> Callable[P, R]:
    """Only a `lead` account may call `view`: a viewer gets 403 and the reason in French."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        if not user().lead:
            log.warning("web_change_refused", account=user().name, path=request.path)
            raise Forbidden(
                "Votre compte est en consultation seule : il ne permet aucune modification. "
                "Adressez-vous au chef de projet ROR de l'établissement."
            )
        return view(*args, **kwargs)

    return wrapped


def headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
    return response
