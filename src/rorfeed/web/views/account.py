"""Compte: one's account and its open sessions; closing them, and for a `lead`, any account's.

Closing sessions is an account action like `rorfeed users`: logged (`web_sessions_ended`,
with who did it and from where), not written to the audit trail of modes and kill-switches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest

from rorfeed.state import WebUser
from rorfeed.web.context import current
from rorfeed.web.french import sessions_ended_message
from rorfeed.web.security import end_session, lead_required, user

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

log = structlog.get_logger("rorfeed.web")

bp = Blueprint("account", __name__)


@dataclass(frozen=True)
class AccountRow:
    name: str
    role: str
    state: str
    sessions: int


def _state(account: WebUser, now: datetime) -> str:
    if account.disabled:
        return "désactivé"
    if account.locked_until is not None and account.locked_until > now:
        return "bloqué"
    return "actif"


@bp.get("/compte")
def index() -> str:
    web = current()
    now = web.clock()
    counts = web.store.web_session_counts(now - timedelta(minutes=web.section.session_minutes))
    me = user()
    rows = [
        AccountRow(u.name, u.role, _state(u, now), counts.get(u.name, 0))
        for u in web.store.web_users()
        if me.lead or u.name == me.name
    ]
    return render_template("compte.html", active="compte", rows=rows, mine=counts.get(me.name, 0))


@bp.post("/compte/sessions")
def end_mine() -> Response:
    """« Fermer toutes mes sessions »: every session of this account, this one included."""
    me = user()
    ended = current().store.end_web_sessions(me.name)
    end_session()
    log.info(
        "web_sessions_ended", account=me.name, by=me.name, sessions=ended, ip=request.remote_addr
    )
    flash(sessions_ended_message(None, ended), "succes")
    return redirect(url_for("session.login"), 303)


@bp.post("/comptes/sessions")
@lead_required
def end_theirs() -> Response:
    """A `lead` closes every session of any account (its own included)."""
    web = current()
    me = user()
    name = request.form.get("compte", "")
    if web.store.web_user(name) is None:
        raise BadRequest("Compte inconnu : choisissez-le sur la page Compte.")
    ended = web.store.end_web_sessions(name)
    log.info("web_sessions_ended", account=name, by=me.name, sessions=ended, ip=request.remote_addr)
    if name == me.name:
        end_session()
        flash(sessions_ended_message(None, ended), "succes")
        return redirect(url_for("session.login"), 303)
    flash(sessions_ended_message(name, ended), "succes")
    return redirect(url_for("account.index"), 303)
