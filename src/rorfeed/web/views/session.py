"""Connexion and déconnexion."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from flask import Blueprint, flash, redirect, render_template, request, url_for

from rorfeed.web.auth import LoginOutcome
from rorfeed.web.context import current
from rorfeed.web.french import format_local
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


@bp.post("/deconnexion")
def logout() -> Response:
    account = user()
    end_session()
    log.info("web_logout", account=account.name)
    flash("Vous êtes déconnecté.", "info")
    return redirect(url_for("session.login"), 303)
