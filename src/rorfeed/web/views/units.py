"""Unités: what the ROR gets and what the cell must enter by hand; a unit's page; switching."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest, NotFound

from rorfeed.control import ControlError
from rorfeed.model import Mode
from rorfeed.reads import UnitRow, unit_rows
from rorfeed.state import UnitState
from rorfeed.web.context import Web, current
from rorfeed.web.french import ACTIONS, DECISIONS, change_text, switched_message
from rorfeed.web.security import lead_required, user

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

MAX_REASON_CHARS = 500

bp = Blueprint("units", __name__)


def rows_of(web: Web, units: list[UnitState] | None = None) -> list[UnitRow]:
    return unit_rows(web.config, web.store, units)


def reason_problem(reason: str) -> str:
    """Why the mandatory reason of a change is refused, "" when it is fine."""
    if not reason:
        return "Le motif est obligatoire : il est gardé dans l'historique et envoyé à la cellule."
    if len(reason) > MAX_REASON_CHARS:
        return f"Le motif est trop long (au plus {MAX_REASON_CHARS} caractères)."
    return ""


@bp.get("/")
def home() -> Response:
    return redirect(url_for("units.index"), 303)


@bp.get("/unites")
def index() -> str:
    rows = rows_of(current())
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
        open_reports=len(current().store.anomaly_reports(only_open=True)),
    )


@bp.get("/unite/<finess>/<path:ror_id>")
def unit(finess: str, ror_id: str) -> str:
    return unit_page(finess, ror_id)


def unit_page(finess: str, ror_id: str, **report_form: str) -> str:
    """A unit's page; `report_form`: an anomaly report refused, shown again with its error."""
    web = current()
    found = [u for u in web.store.units(finess) if u.ror_id == ror_id]
    if not found:
        raise NotFound(f"Aucune unité {ror_id} pour l'établissement {finess}.")
    state = found[0]
    rows = rows_of(web, [state])
    entries = [e for e in web.store.history(ror_id, 500) if e.finess == finess]
    return render_template(
        "unite.html",
        active="unites",
        state=state,
        row=rows[0] if rows else None,
        establishment=web.name(finess),
        entries=entries,
        actions=ACTIONS,
        change_text=change_text,
        reports=web.store.anomaly_reports(finess, ror_id),
        decisions=DECISIONS,
        form=report_form,
    )


@bp.post("/unites/basculer")
@lead_required
def switch() -> Response | tuple[str, int]:
    """Step 1 (`etape=confirmer`): the confirmation page. Step 2 (`appliquer`): the switch."""
    web = current()
    form = request.form
    try:
        mode = Mode(form.get("mode", ""))
    except ValueError:
        raise BadRequest("Mode inconnu : « manual » ou « auto » attendu.") from None
    keys = list(dict.fromkeys(form.getlist("unite")))
    from_unit = form.get("depuis") == "unite"
    if not keys:
        flash("Cochez au moins une unité avant de choisir le basculement.", "erreur")
        return redirect(url_for("units.index"), 303)
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
        error = reason_problem(reason)
        if not error and not todo:
            error = "Aucune de ces unités n'est à basculer."
        elif not error:
            try:
                events = web.control.switch_units(
                    [u.ror_id for u in todo], mode, reason, user().name
                )
            except ControlError as exc:
                error = f"Rien n'a été changé : {exc}"
            else:
                web.flusher.kick()
                flash(switched_message(len(events), mode, web.emails), "succes")
                if from_unit and len(todo) == 1:
                    return redirect(
                        url_for("units.unit", finess=todo[0].finess, ror_id=todo[0].ror_id), 303
                    )
                return redirect(url_for("units.index"), 303)
    return (
        render_template(
            "confirmer_unites.html",
            active="unites",
            mode=mode,
            rows=rows_of(web, todo),
            unchanged=rows_of(web, unchanged),
            blocked=rows_of(web, blocked),
            reason=reason,
            error=error,
            from_unit=from_unit,
            email=web.emails,
        ),
        400 if error else 200,
    )
