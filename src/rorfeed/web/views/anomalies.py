"""Signaler une anomalie (every account) and closing a report (a lead), SPEC §10.2."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest, NotFound

from rorfeed.control import MAX_REPORT_CHARS, ControlError
from rorfeed.model import AnomalyDecision, BedCounts
from rorfeed.web.context import current
from rorfeed.web.french import DECISIONS
from rorfeed.web.security import lead_required, user
from rorfeed.web.views.units import reason_problem, rows_of, unit_page

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

bp = Blueprint("anomalies", __name__)

COUNT_FIELDS = (
    ("installes", "lits installés"),
    ("fermes", "lits fermés"),
    ("disponibles", "lits disponibles"),
)


def believed_counts(form: dict[str, str]) -> tuple[BedCounts | None, str]:
    """The counts the person believes right (all three or none), or why they are refused."""
    given = {k: form.get(k, "").strip() for k, _ in COUNT_FIELDS}
    if not any(given.values()):
        return None, ""
    if not all(v.isdigit() and len(v) <= 4 for v in given.values()):
        return None, (
            "Les valeurs justes sont facultatives ; si vous les donnez, donnez les trois "
            "(lits installés, fermés, disponibles), en nombres entiers positifs ou nuls."
        )
    return BedCounts(*(int(given[k]) for k, _ in COUNT_FIELDS)), ""


@bp.post("/unite/<finess>/<path:ror_id>/signaler")
def report(finess: str, ror_id: str) -> Response | tuple[str, int]:
    web = current()
    form = {k: request.form.get(k, "") for k in ("constat", *(k for k, _ in COUNT_FIELDS))}
    text = form["constat"].strip()
    counts, error = believed_counts(form)
    if not text:
        error = "Décrivez ce que vous avez constaté : c'est ce que lira le chef de projet."
    elif len(text) > MAX_REPORT_CHARS:
        error = f"Le constat est trop long (au plus {MAX_REPORT_CHARS} caractères)."
    if not error:
        try:
            made = web.control.report_anomaly(finess, ror_id, text, counts, user().name)
        except ControlError as exc:
            error = f"Rien n'a été enregistré : {exc}"
        else:
            web.flusher.kick()
            told = (
                "le chef de projet est prévenu par courriel"
                if web.emails
                else ("aucun courriel n'est configuré : prévenez le chef de projet")
            )
            flash(f"Signalement n° {made.id} enregistré : {told}.", "succes")
            return redirect(url_for("units.unit", finess=finess, ror_id=ror_id), 303)
    return unit_page(finess, ror_id, erreur=error, **form), 400


@bp.post("/signalement/<int:report_id>/clore")
@lead_required
def close(report_id: int) -> Response | tuple[str, int]:
    """A decision and a comment; "passée en saisie manuelle" is confirmed first (step
    `confirmer`, the page says what it means for the ROR), then applied (`appliquer`)."""
    web = current()
    found = web.store.anomaly_report(report_id)
    if found is None:
        raise NotFound(f"Aucun signalement n° {report_id}.")
    try:
        decision = AnomalyDecision(request.form.get("decision", ""))
    except ValueError:
        raise BadRequest("Décision inconnue.") from None
    comment = request.form.get("commentaire", "").strip()
    error = reason_problem(comment)
    switching = decision is AnomalyDecision.SWITCHED_MANUAL
    if not error and (not switching or request.form.get("etape") == "appliquer"):
        try:
            web.control.close_anomaly(report_id, decision, comment, user().name)
        except ControlError as exc:
            error = f"Rien n'a été changé : {exc}"
        else:
            web.flusher.kick()
            flash(f"Signalement n° {report_id} clos : {DECISIONS[decision]}.", "succes")
            return redirect(url_for("units.unit", finess=found.finess, ror_id=found.ror_id), 303)
    if not switching or not found.open:
        flash(error or "Rien n'a été changé.", "erreur")
        return redirect(url_for("units.unit", finess=found.finess, ror_id=found.ror_id), 303)
    units = [u for u in web.store.units(found.finess) if u.ror_id == found.ror_id]
    return (
        render_template(
            "confirmer_cloture.html",
            active="unites",
            report=found,
            rows=rows_of(web, units),
            comment=comment,
            error=error,
            email=web.emails,
        ),
        400 if error else 200,
    )
