"""Correspondance: each establishment's mapping, changed by a lead through a preview (SPEC §10.1).

A change comes from an uploaded file, from the lines edited in a form, or from a kept version;
all three go through `mapping_changes.propose` (the cycle's parser: nothing is written before
the preview) and `confirm` (a mandatory reason; refused when the file changed since the
preview). Every account reads the page; only a lead changes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import NotFound

from rorfeed.errors import MappingError
from rorfeed.mapping import (
    HEADER_HINT,
    Mapping,
    compare_referential,
    decode_upload,
    parse_mapping_text,
    parse_referential,
    read_mapping_text,
)
from rorfeed.mapping_changes import (
    ChangeKind,
    FeedEffect,
    MappingChangeError,
    MappingConflict,
    Proposal,
    compare,
    confirm,
    propose,
    writable_problem,
)
from rorfeed.web.context import Web, current
from rorfeed.web.security import lead_required, user
from rorfeed.web.views.units import reason_problem

if TYPE_CHECKING:
    from werkzeug.wrappers import Response as BaseResponse

bp = Blueprint("mapping", __name__)

KINDS = {
    ChangeKind.ADDED: "ajoutée",
    ChangeKind.REMOVED: "retirée du mapping",
    ChangeKind.REMAPPED: "code local changé",
    ChangeKind.RELABELED: "libellé changé",
    ChangeKind.REDECLARED: "mode déclaré changé",
    ChangeKind.PRIORITY: "priorité changée",
    ChangeKind.SYNC_CODE: "identifiant externe de synchronisation changé",
}
EFFECTS = {
    FeedEffect.STARTS: "alimentée automatiquement dès le prochain cycle",
    FeedEffect.STOPS: "n'est plus alimentée : la saisie manuelle dans le ROR redevient nécessaire",
    FeedEffect.BY_HAND: "déclarée manuelle : saisie à la main dans le ROR",
    FeedEffect.STAYS_MANUAL: (
        "reste en saisie manuelle jusqu'à ce qu'un chef de projet la remette en automatique"
    ),
    FeedEffect.NEW_SOURCE: "toujours alimentée, avec les valeurs d'une autre unité locale",
    FeedEffect.NONE: "l'alimentation ne change pas",
}
# The columns the form edits, in the file's order: every column of the mapping, so that a
# change made in the form keeps what the file held.
COLUMNS = ("local_code", "ror_id", "label", "mode", "priority", "id_externe_synchro")
CHOSEN = ("mode", "priority")  # picked in a select, never empty
EMPTY_ROWS = 3  # blank lines offered at the end of the form, to add fiches


@dataclass(frozen=True)
class EstablishmentMapping:
    """What the Correspondance page shows of one establishment."""

    finess: str
    name: str
    path: str
    mapping: Mapping | None
    problems: tuple[str, ...]
    read_only: str  # why the page cannot change it, "" when it can
    not_in_referential: tuple[str, ...]
    not_mapped: tuple[str, ...]
    unmapped_last_cycle: int | None


def _establishment(web: Web, finess: str) -> EstablishmentMapping:
    for est in web.config.file.establishments:
        if est.finess == finess:
            break
    else:
        raise NotFound(f"Aucun établissement de FINESS {finess}.")
    path = web.config.resolve(est.mapping)
    mapping: Mapping | None = None
    problems: tuple[str, ...] = ()
    try:
        mapping = parse_mapping_text(read_mapping_text(path), path)
    except MappingError as exc:
        problems = tuple(exc.problems)
    missing: tuple[str, ...] = ()
    unmapped_fiches: tuple[str, ...] = ()
    if est.referential and mapping is not None:
        try:
            report = compare_referential(
                mapping, parse_referential(web.config.resolve(est.referential))
            )
        except MappingError as exc:
            problems += tuple(exc.problems)
        else:
            missing, unmapped_fiches = tuple(report.not_in_referential), tuple(report.not_mapped)
    unmapped = next(
        (
            c.detail.establishments[finess].unmapped
            for c in web.store.recent_cycles(1)
            if finess in c.detail.establishments
        ),
        None,
    )
    return EstablishmentMapping(
        finess,
        est.name,
        str(path),
        mapping,
        problems,
        writable_problem(path) or "",
        missing,
        unmapped_fiches,
        unmapped,
    )


@bp.get("/correspondance")
def index() -> str:
    web = current()
    shown = [_establishment(web, e.finess) for e in web.config.file.establishments]
    modes = {(u.finess, u.ror_id): u.mode for u in web.store.units()}
    return render_template(
        "correspondance.html", active="correspondance", establishments=shown, modes=modes
    )


@bp.get("/correspondance/<finess>/modifier")
@lead_required
def edit(finess: str) -> str:
    est = _establishment(current(), finess)
    lines = [] if est.mapping is None else list(est.mapping.units)
    return render_template(
        "correspondance_modifier.html",
        active="correspondance",
        est=est,
        lines=lines,
        empty=EMPTY_ROWS,
    )


@bp.post("/correspondance/<finess>/apercu")
@lead_required
def preview(finess: str) -> tuple[str, int]:
    """The preview of an uploaded file (`fichier`), of the edited lines, or of a version."""
    web = current()
    est = _establishment(web, finess)
    try:
        text = _proposed_text(web, finess)
    except MappingError as exc:
        return _preview_page(est, None, problems=tuple(exc.problems)), 400
    except MappingChangeError as exc:
        return _preview_page(est, None, problems=(str(exc),)), 400
    proposal = propose(web.config, web.store, finess, text)
    return _preview_page(est, proposal), 400 if proposal.problems else 200


@bp.post("/correspondance/<finess>/confirmer")
@lead_required
def apply(finess: str) -> BaseResponse | tuple[str, int]:
    web = current()
    est = _establishment(web, finess)
    text = request.form.get("texte", "")
    base = request.form.get("base") or None
    reason = request.form.get("motif", "").strip()
    # The preview's own base: a file changed since then is a conflict, never overwritten.
    proposal = dataclasses.replace(propose(web.config, web.store, finess, text), base=base)
    error = reason_problem(reason)
    if not error:
        try:
            entries = confirm(
                web.store,
                web.control,
                proposal,
                reason=reason,
                actor=user().name,
                now=web.clock(),
            )
        except MappingConflict:
            fresh = propose(web.config, web.store, finess, text)
            conflict = (
                "Le mapping a changé depuis l'aperçu (une autre personne, ou une modification"
                " sur le serveur) : rien n'a été écrit. Voici l'aperçu par rapport au mapping"
                " tel qu'il est maintenant."
            )
            return _preview_page(est, fresh, reason=reason, error=conflict), 409
        except MappingChangeError as exc:
            error = f"Rien n'a été écrit : {exc}"
        else:
            web.flusher.kick()
            flash(
                f"Mapping de {est.name} remplacé : {len(entries)} entrée(s) dans l'historique.",
                "succes",
            )
            return redirect(url_for("mapping.index"), 303)
    return _preview_page(est, proposal, reason=reason, error=error), 400


@bp.get("/correspondance/<finess>/versions")
def versions(finess: str) -> str:
    web = current()
    est = _establishment(web, finess)
    return render_template(
        "correspondance_versions.html",
        active="correspondance",
        est=est,
        versions=web.store.mapping_versions(finess),
    )


@bp.get("/correspondance/<finess>/versions/<int:version_id>.csv")
def download(finess: str, version_id: int) -> Response:
    kept = current().store.mapping_version(finess, version_id)
    if kept is None:
        raise NotFound(f"Aucune version {version_id} du mapping de {finess}.")
    name = f"mapping_{finess}_v{version_id}.csv"
    return Response(
        kept.content,
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@bp.get("/correspondance/<finess>/comparer")
def differences(finess: str) -> tuple[str, int]:
    web = current()
    est = _establishment(web, finess)
    texts = []
    for key in ("avant", "apres"):
        value = request.args.get(key, "")
        kept = web.store.mapping_version(finess, int(value)) if value.isdigit() else None
        if kept is None:
            raise NotFound("Choisissez deux versions à comparer.")
        texts.append((kept.id, parse_mapping_text(kept.content, f"version {kept.id}")))
    (before_id, before), (after_id, after) = texts
    changes = compare(before, after, web.store.units(finess))
    return (
        render_template(
            "correspondance_comparer.html",
            active="correspondance",
            est=est,
            before=before_id,
            after=after_id,
            changes=changes,
            kinds=KINDS,
            effects=EFFECTS,
        ),
        200,
    )


def _proposed_text(web: Web, finess: str) -> str:
    form = request.form
    upload = request.files.get("fichier")
    if upload is not None and upload.filename:
        return decode_upload(upload.read(), upload.filename)
    version = form.get("version", "")
    if version:
        kept = web.store.mapping_version(finess, int(version)) if version.isdigit() else None
        if kept is None:
            raise MappingChangeError(f"aucune version {version} de ce mapping")
        return kept.content
    columns = [form.getlist(c) for c in COLUMNS]
    if not columns[0]:
        raise MappingChangeError("choisissez un fichier, ou modifiez les lignes du formulaire")
    removed = set(form.getlist("supprimer"))
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(COLUMNS)
    for i, row in enumerate(zip(*columns, strict=False)):
        typed = [cell for name, cell in zip(COLUMNS, row, strict=False) if name not in CHOSEN]
        # A line with nothing typed (its selects keep their defaults) is no line.
        if str(i) in removed or not "".join(typed).strip():
            continue
        writer.writerow(cell.strip() for cell in row)
    return out.getvalue()


def _preview_page(
    est: EstablishmentMapping,
    proposal: Proposal | None,
    *,
    problems: tuple[str, ...] = (),
    reason: str = "",
    error: str = "",
) -> str:
    return render_template(
        "correspondance_apercu.html",
        active="correspondance",
        est=est,
        proposal=proposal,
        problems=problems or (proposal.problems if proposal else ()),
        kinds=KINDS,
        effects=EFFECTS,
        reason=reason,
        error=error,
        header=HEADER_HINT,
    )
