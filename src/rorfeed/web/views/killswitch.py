"""Coupure: the kill-switches, global and per establishment, and turning one on or off."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest

from rorfeed.control import ControlError
from rorfeed.reads import ALL, SwitchRow, switch_rows
from rorfeed.web.context import Web, current
from rorfeed.web.french import ALL_ESTABLISHMENTS, killswitch_message
from rorfeed.web.security import lead_required, user
from rorfeed.web.views.units import reason_problem, rows_of

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

bp = Blueprint("killswitch", __name__)


def rows(web: Web) -> list[SwitchRow]:
    """The kill-switches as the page names them."""
    return [
        replace(r, name=ALL_ESTABLISHMENTS) if r.key == ALL else r
        for r in switch_rows(web.config, web.store)
    ]


@bp.get("/coupure")
def index() -> str:
    return render_template("coupure.html", active="coupure", rows=rows(current()))


@bp.post("/coupure")
@lead_required
def change() -> Response | tuple[str, int]:
    web = current()
    form = request.form
    by_key = {r.key: r for r in rows(web)}
    row = by_key.get(form.get("cible", ""))
    position = form.get("position", "")
    if row is None or position not in ("on", "off"):
        raise BadRequest("Coupure inconnue : choisissez-la sur la page Coupure.")
    on = position == "on"
    if row.on == on:
        flash(f"La coupure de « {row.name} » est déjà {'active' if on else 'levée'}.", "info")
        return redirect(url_for("killswitch.index"), 303)
    finess = None if row.key == ALL else row.key
    reason = form.get("motif", "").strip()
    error = ""
    if form.get("etape") == "appliquer":
        error = reason_problem(reason)
        if not error:
            try:
                web.control.killswitch(finess, on, reason, user().name)
            except ControlError as exc:
                error = f"Rien n'a été changé : {exc}"
            else:
                web.flusher.kick()
                flash(killswitch_message(row.name, on, web.emails), "succes")
                return redirect(url_for("killswitch.index"), 303)
    units = [u for u in web.store.units(finess) if u.sendable]
    still_stopped = [
        r.name for r in by_key.values() if not on and r.on and r.key not in (row.key, ALL)
    ]
    return (
        render_template(
            "confirmer_coupure.html",
            active="coupure",
            row=row,
            on=on,
            units=rows_of(web, units),
            reason=reason,
            error=error,
            global_on=by_key[ALL].on,
            still_stopped=still_stopped if finess is None else [],
            email=web.emails,
        ),
        400 if error else 200,
    )
