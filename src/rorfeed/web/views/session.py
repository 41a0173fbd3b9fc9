"""Connexion and déconnexion."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from flask import Blueprint, flash, redirect, render_template, request, url_for

from rorfeed.web.auth import LoginOutcome
from rorfeed.web.context import current
from rorfeed.web.french import LOGIN_REFUSED
from rorfeed.web.security import end_session, session_user, start_session, user

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

log = structlog.get_logger("rorfeed.web")

bp = Blueprint("session", __name__)


@bp.route("/connexion", methods=["GET", "POST"])
def login() -> Response | tuple[str, int] | str:
    web = current()
    if request.method == "GET":
        if session_user() is not None:
            return redirect(url_for("units.index"), 303)
        return render_template("connexion.html", name="")
    name = request.form.get("identifiant", "").strip()
    password = request.form.get("mot_de_passe", "")
    result = web.accounts.authenticate(name, password)
    ip = request.remote_addr
    if result.outcome is LoginOutcome.OK and result.user is not None:
        start_session(result.user)
        log.info("web_login", account=result.user.name, role=result.user.role, ip=ip)
        return redirect(url_for("units.index"), 303)
    # One answer for an unknown name, a disabled or locked account and a wrong password
    # (SPEC §10.3): the page does not tell which names exist. The log says which it was, and
    # names only an account that exists: a password typed into the name field never is.
    known = web.accounts.user(name) if name else None
    reason = "locked" if result.outcome is LoginOutcome.LOCKED else "refused"
    log.warning("web_login_refused", account=known.name if known else None, reason=reason, ip=ip)
    return render_template("connexion.html", name=name, error=LOGIN_REFUSED), 401


@bp.post("/deconnexion")
def logout() -> Response:
    account = user()
    end_session()
    log.info("web_logout", account=account.name, ip=request.remote_addr)
    flash("Vous êtes déconnecté.", "info")
    return redirect(url_for("session.login"), 303)
