"""The French e-mails to the bed-management cell (SPEC §6): composition only, no I/O.

`compose_unit_changes` and `compose_killswitch` turn mode changes and kill-switch actions into
a plain-text message that names every unit (label, code UF, fiche ROR, establishment), the
reason, who made the change and when (in the local zone), and the last values sent to the ROR
with their time — the ROR keeps showing them until someone enters new ones. It says plainly
whether manual entry in the ROR is required from now on, or no longer required.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from rorfeed.model import ACTOR_RORFEED, BedCounts, KillswitchEvent, Mode, UnitModeEvent, UnitRef
from rorfeed.wording import counted, one_line

SUBJECT_PREFIX = "[rorfeed]"


# How a zone is named in a message: « heure de Paris ». Other zones are named after the last
# part of their IANA key; the UTC offset is always given as well, so a time is never ambiguous.
_ZONE_PLACES = {
    "Europe/Paris": "Paris",
    "America/Guadeloupe": "la Guadeloupe",
    "America/Martinique": "la Martinique",
    "America/Cayenne": "la Guyane",
    "Indian/Reunion": "La Réunion",
    "Indian/Mayotte": "Mayotte",
    "America/Miquelon": "Saint-Pierre-et-Miquelon",
    "Pacific/Noumea": "Nouméa",
    "Pacific/Tahiti": "Tahiti",
}

_SIGNATURE = (
    "-- \n"
    "Message automatique de rorfeed, l'alimentation automatique du ROR (disponibilité en lits)\n"
    "de l'établissement. Pour toute question : le chef de projet ROR de l'établissement."
)


def format_time(at: datetime, zone: tzinfo) -> str:
    """« 23/11/2026 à 14:05 (heure de Paris, UTC+01:00) »: local time, never ambiguous."""
    local = at.astimezone(zone)
    offset = local.utcoffset()
    minutes = 0 if offset is None else int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    utc = f"UTC{sign}{hours:02d}:{mins:02d}"
    key = getattr(zone, "key", None)
    if isinstance(zone, ZoneInfo) and key:
        place = _ZONE_PLACES.get(key, key.rsplit("/", 1)[-1].replace("_", " "))
        where = f"heure de {place}, {utc}"
    else:
        where = utc
    return f"{local:%d/%m/%Y} à {local:%H:%M} ({where})"


def _establishment(name: str | None, finess: str) -> str:
    return f"{one_line(name)} (FINESS {finess})" if name else f"FINESS {finess}"


def _subject_establishments(units: Sequence[UnitRef]) -> str:
    finesses = {u.finess: u.establishment for u in units}
    if len(finesses) == 1:
        finess, name = next(iter(finesses.items()))
        return f"{one_line(name)} ({finess})" if name else finess
    return f"{len(finesses)} établissements"


def _indented(label: str, text: str) -> list[str]:
    """`  label : text`, a multi-line text kept readable under its label."""
    lines = text.strip().splitlines() or [""]
    return [f"  {label} : {lines[0]}", *(f"    {line}" for line in lines[1:])]


def _counts(c: BedCounts) -> str:
    return (
        f"{counted(c.installed, 'lit installé', 'lits installés')}, "
        f"{counted(c.closed, 'lit fermé', 'lits fermés')}, "
        f"{counted(c.available, 'lit disponible', 'lits disponibles')}"
    )


def _unit_lines(unit: UnitRef, zone: tzinfo, *, manual: bool) -> list[str]:
    """A unit as the cell looks it up in the ROR, with the values the ROR got from rorfeed."""
    lines = [
        f"- {one_line(unit.label)}",
        f"  Code UF (code local) : {unit.local_code or '(aucun)'}",
        f"  Fiche ROR : {unit.ror_id}",
        f"  Établissement : {_establishment(unit.establishment, unit.finess)}",
    ]
    if unit.last_counts is None:
        lines.append(
            "  Aucune valeur n'a encore été transmise au ROR pour cette unité par rorfeed."
        )
        return lines
    when = (
        f"relevées le {format_time(unit.last_counts_at, zone)}"
        if unit.last_counts_at is not None
        else "date du relevé inconnue"
    )
    lines.append(f"  Dernières valeurs transmises au ROR par rorfeed, {when} :")
    lines.append(f"    {_counts(unit.last_counts)}.")
    if manual:
        lines.append(
            "  Le ROR continue d'afficher ces valeurs jusqu'à ce qu'une saisie manuelle "
            "les remplace."
        )
    return lines


def _who(actor: str, automatic: str) -> str:
    return automatic if actor == ACTOR_RORFEED else one_line(actor)


def _event_lines(event: UnitModeEvent, zone: tzinfo) -> list[str]:
    manual = event.removed or event.new is Mode.MANUAL
    lines = _unit_lines(event.unit, zone, manual=manual)
    if event.removed:
        lines.append("  Changement : unité retirée du mapping de rorfeed, qui ne l'alimente plus.")
        who = _who(event.actor, "retrait du mapping constaté par rorfeed")
    else:
        who = _who(event.actor, "bascule automatique par rorfeed")
    lines.extend(_indented("Motif", event.reason))
    lines.append(f"  Changement fait par : {who}")
    lines.append(f"  Date du changement : {format_time(event.at, zone)}")
    return lines


_TO_MANUAL = (
    "La saisie manuelle dans le ROR est nécessaire à partir de maintenant pour les unités "
    "suivantes : rorfeed ne les alimente plus automatiquement."
)
_TO_AUTO = (
    "La saisie manuelle dans le ROR n'est plus nécessaire : rorfeed alimente de nouveau "
    "automatiquement ces unités, à partir de son prochain envoi."
)
_CHECK_AFTER_AUTO = (
    "Merci de contrôler les données de ces unités dans le ROR après le prochain envoi "
    "automatique et de signaler toute anomalie au chef de projet."
)


def compose_unit_changes(events: Sequence[UnitModeEvent], zone: tzinfo) -> list[tuple[str, str]]:
    """(subject, body) of each e-mail announcing mode changes of one or several units.

    One e-mail per direction, so that each subject says what to do: first the units going
    to manual (or removed from the mapping) — manual entry required —, then the units back
    to automated. A batch in one direction gives one e-mail; no event gives none. `zone` is
    the local zone of every time shown.
    """
    to_manual = [e for e in events if e.removed or e.new is Mode.MANUAL]
    to_auto = [e for e in events if not (e.removed or e.new is Mode.MANUAL)]
    messages = []
    if to_manual:
        messages.append(_unit_message(to_manual, zone, "Saisie manuelle requise", _TO_MANUAL, []))
    if to_auto:
        messages.append(
            _unit_message(
                to_auto, zone, "Retour en alimentation automatique", _TO_AUTO, [_CHECK_AFTER_AUTO]
            )
        )
    return messages


def _unit_message(
    events: Sequence[UnitModeEvent], zone: tzinfo, title: str, intro: str, outro: list[str]
) -> tuple[str, str]:
    n = counted(len(events), "unité", "unités")
    where = _subject_establishments([e.unit for e in events])
    subject = f"{SUBJECT_PREFIX} {title} : {n} — {where}"
    body: list[str] = ["Bonjour,", "", intro, ""]
    for e in events:
        body += [*_event_lines(e, zone), ""]
    for paragraph in outro:
        body += [paragraph, ""]
    body.append(_SIGNATURE)
    return subject, "\n".join(body) + "\n"


def compose_killswitch(event: KillswitchEvent, zone: tzinfo) -> tuple[str, str]:
    """(subject, body) of the e-mail announcing that a kill-switch was turned on or off.

    On: the automated feed of the establishment (of every establishment when `finess` is
    None) is stopped and manual entry in the ROR is required for every unit listed, shown
    with the last values sent. Off: the feed resumes for the units listed.
    """
    if event.finess is None:
        scope = "de tous les établissements"
        scope_body = "pour tous les établissements"
        where = ""
    else:
        name = _establishment(event.establishment, event.finess)
        scope = ""
        scope_body = f"pour l'établissement {name}"
        short = (
            f"{one_line(event.establishment)} ({event.finess})"
            if event.establishment
            else event.finess
        )
        where = f" — {short}"
    scope_subject = f" {scope}" if scope else ""
    n = len(event.units)

    if event.on:
        subject = (
            f"{SUBJECT_PREFIX} Arrêt de l'alimentation automatique{scope_subject}, "
            f"saisie manuelle requise{where}"
        )
        who = _who(event.actor, "arrêt automatique par rorfeed")
        head = [
            f"L'alimentation automatique du ROR par rorfeed est arrêtée {scope_body}.",
            "",
        ]
        if n:
            head += [
                "La saisie manuelle dans le ROR est nécessaire à partir de maintenant pour les "
                f"unités suivantes ({n}), jusqu'à un prochain message annonçant la reprise.",
            ]
        else:
            head += [
                "La saisie manuelle dans le ROR est nécessaire à partir de maintenant pour toute "
                "unité que rorfeed alimentait automatiquement, jusqu'à un prochain message "
                "annonçant la reprise. Aucune unité n'est listée dans ce message.",
            ]
    else:
        subject = f"{SUBJECT_PREFIX} Reprise de l'alimentation automatique{scope_subject}{where}"
        who = _who(event.actor, "rorfeed")
        head = [
            f"L'alimentation automatique du ROR par rorfeed reprend {scope_body}.",
            "",
        ]
        if n:
            head += [
                "La saisie manuelle dans le ROR n'est plus nécessaire pour les unités suivantes "
                f"({n}) : rorfeed alimente de nouveau automatiquement ces unités, à partir de "
                "son prochain envoi.",
            ]
        else:
            head += [
                "Aucune unité n'est listée dans ce message : la saisie manuelle dans le ROR "
                "reste nécessaire pour les unités en mode manuel.",
            ]

    body: list[str] = ["Bonjour,", "", *head, ""]
    body += [line.removeprefix("  ") for line in _indented("Motif", event.reason)]
    body += [
        f"Décision : {who}",
        f"Date : {format_time(event.at, zone)}",
        "",
    ]
    for unit in event.units:
        body += [*_unit_lines(unit, zone, manual=event.on), ""]
    if not event.on and n:
        body += [
            "Les unités qui ne figurent pas dans cette liste (unités en mode manuel, ou "
            "établissement dont l'alimentation reste arrêtée) restent en saisie manuelle.",
            "",
            _CHECK_AFTER_AUTO,
            "",
        ]
    body.append(_SIGNATURE)
    return subject, "\n".join(body) + "\n"


def compose_anomaly_report(
    unit: UnitRef,
    report_id: int,
    author: str,
    text: str,
    believed: BedCounts | None,
    at: datetime,
    zone: tzinfo,
) -> tuple[str, str]:
    """(subject, body) of the e-mail telling the chef de projet of an anomaly a person saw."""
    subject = (
        f"{SUBJECT_PREFIX} Anomalie signalée : {one_line(unit.label)} — "
        f"{_subject_establishments([unit])}"
    )
    body = [
        "Bonjour,",
        "",
        f"{one_line(author)} a signalé une anomalie (n° {report_id}) le {format_time(at, zone)}"
        " sur l'unité suivante, alimentée par rorfeed :",
        "",
        *_unit_lines(unit, zone, manual=False),
        *_indented("Ce qui a été constaté", text),
    ]
    if believed is not None:
        body.append(f"  Valeurs que {one_line(author)} pense justes : {_counts(believed)}.")
    body += [
        "",
        "Merci de vérifier la fiche dans le ROR et la base de gestion des lits, puis de clore"
        " le signalement sur la page de l'unité avec votre décision : « passée en saisie"
        " manuelle », « corrigé à la source » ou « les valeurs étaient justes ».",
        "",
        _SIGNATURE,
    ]
    return subject, "\n".join(body) + "\n"
