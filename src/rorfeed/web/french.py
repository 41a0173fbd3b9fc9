"""The page's French: labels of modes, roles, outcomes and reasons, times in the local zone,
and the messages that say what a change means for the ROR."""

from __future__ import annotations

from datetime import datetime, tzinfo

from markupsafe import Markup

from rorfeed.model import AnomalyDecision, CycleOutcome, EstablishmentStatus, Mode
from rorfeed.reads import ManualReason
from rorfeed.state import AuditEntry, UnitState
from rorfeed.web.auth import LOCK_DURATION, MAX_FAILURES, Role
from rorfeed.web.context import current
from rorfeed.wording import agreed

ROLE_NAMES = {Role.LEAD: "chef de projet", Role.VIEWER: "consultation"}
MODE_NAMES = {Mode.AUTO: "automatique", Mode.MANUAL: "manuel"}
OUTCOMES = {
    CycleOutcome.OK: "réussi",
    CycleOutcome.PARTIAL: "partiel",
    CycleOutcome.FAILED: "en échec",
}
ESTABLISHMENT_STATUSES = {
    EstablishmentStatus.OK: "envoyé",
    EstablishmentStatus.SOURCE_DOWN: "source injoignable",
    EstablishmentStatus.MAPPING_ERROR: "mapping invalide",
    EstablishmentStatus.KILLSWITCH: "coupure : rien envoyé",
    EstablishmentStatus.NOTHING_TO_SEND: "rien à envoyer",
}
MANUAL_REASONS = {
    ManualReason.DECLARED_MANUAL: "déclarée manuelle dans le mapping",
    ManualReason.MANUAL_MODE: "mode manuel",
    ManualReason.GLOBAL_KILLSWITCH: "coupure générale",
    ManualReason.KILLSWITCH: "coupure de l'établissement",
    ManualReason.NO_PRODUCTION: "aucune destination de production",
}
ACTIONS = {
    "unit_mode": "Mode de l'unité",
    "killswitch": "Coupure",
    "mapping": "Mapping",
    "anomaly_report": "Signalement",
    "anomaly_closed": "Signalement clos",
}
DECISIONS = {
    AnomalyDecision.SWITCHED_MANUAL: "passée en saisie manuelle",
    AnomalyDecision.CORRECTED_AT_SOURCE: "corrigé à la source",
    AnomalyDecision.VALUES_RIGHT: "les valeurs étaient justes",
}
ALL_ESTABLISHMENTS = "Tous les établissements"
# The one answer to a refused login, whatever the reason (SPEC §10.3: an unknown name and a
# locked account get the same answer).
LOGIN_REFUSED = (
    "Identifiant ou mot de passe incorrect, ou compte désactivé, ou bloqué pendant "
    f"{LOCK_DURATION.seconds // 60} minutes après {MAX_FAILURES} échecs de connexion. En cas "
    "de doute, demandez à l'exploitation de vérifier votre compte."
)
SESSION_ENDED = "Votre session a pris fin : reconnectez-vous."


def sessions_ended_message(name: str | None, n: int) -> str:
    """What closing every session of the account `name` (None: one's own) did."""
    count = (
        "aucune session n'était ouverte"
        if n == 0
        else ("1 session fermée" if n == 1 else f"{n} sessions fermées")
    )
    if name is None:
        return f"Toutes vos sessions sont fermées ({count}) : reconnectez-vous."
    return (
        f"Sessions du compte « {name} » fermées ({count}) : il doit se reconnecter sur chaque "
        "appareil."
    )


def format_local(at: datetime | None, zone: tzinfo) -> str:
    """« 23/11/2026 14:05 » in the local zone; the offset added in the repeated autumn hour."""
    if at is None:
        return "—"
    local = at.astimezone(zone)
    text = local.strftime("%d/%m/%Y %H:%M")
    if local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset():
        offset = local.strftime("%z")
        text += f" (UTC{offset[:3]}:{offset[3:]})"
    return text


def time_filter(at: datetime | None) -> Markup:
    if at is None:
        return Markup("—")
    zone = current().zone
    iso = at.astimezone(zone).isoformat(timespec="seconds")
    return Markup('<time datetime="{}">{}</time>').format(iso, format_local(at, zone))


def mode_filter(mode: Mode | str) -> str:
    return MODE_NAMES.get(Mode(mode), str(mode))


def counts_filter(unit: UnitState) -> Markup:
    c = unit.last_counts
    if c is None:
        return Markup('<span class="discret">aucune valeur envoyée</span>')
    return Markup(
        '<span class="valeurs"><span>{} {}</span> <span>{} {}</span> <span>{} {}</span></span>'
    ).format(
        c.installed,
        agreed(c.installed, "installé"),
        c.closed,
        agreed(c.closed, "fermé"),
        c.available,
        agreed(c.available, "disponible"),
    )


def role_filter(role: Role | str) -> str:
    return ROLE_NAMES.get(Role(role), str(role))


def reason_filter(reason: ManualReason) -> str:
    return MANUAL_REASONS[reason]


FILTERS = {
    "heure": time_filter,
    "mode": mode_filter,
    "valeurs": counts_filter,
    "role": role_filter,
    "motif_saisie": reason_filter,
}


def change_text(entry: AuditEntry) -> str:
    words = {"auto": "automatique", "manual": "manuel"}
    if entry.action == "killswitch":
        words = {"on": "coupée", "off": "en service"}
    before = words.get(entry.previous or "", entry.previous or "—")
    after = words.get(entry.new or "", entry.new or "—")
    return f"{before} → {after}"


def _cell_told(text: str, emails: bool) -> str:
    if emails:
        return text + " La cellule de gestion des lits est prévenue par courriel."
    return text + (
        " Aucun relais de courriel n'est configuré : prévenez vous-même la cellule de "
        "gestion des lits."
    )


def switched_message(n: int, mode: Mode, emails: bool) -> str:
    """What switching `n` units to `mode` means for the ROR."""
    if n == 0:
        return "Rien n'a changé : ces unités étaient déjà dans ce mode."
    units_text = "1 unité passée" if n == 1 else f"{n} unités passées"
    if mode is Mode.MANUAL:
        text = (
            f"{units_text} en saisie manuelle : la saisie manuelle dans le ROR redevient "
            "nécessaire pour " + ("elle." if n == 1 else "elles.")
        )
    else:
        text = (
            f"{units_text} en automatique : la saisie manuelle dans le ROR n'est plus "
            "nécessaire pour " + ("elle" if n == 1 else "elles") + " dès le prochain cycle."
        )
    return _cell_told(text, emails)


def killswitch_message(name: str, on: bool, emails: bool) -> str:
    """What turning the kill-switch of `name` on or off means for the ROR."""
    if on:
        text = (
            f"Coupure activée pour « {name} » : rorfeed n'envoie plus rien au ROR ; la "
            "saisie manuelle dans le ROR redevient nécessaire."
        )
    else:
        text = (
            f"Coupure levée pour « {name} » : rorfeed reprend l'envoi au prochain cycle ; "
            "la saisie manuelle dans le ROR n'est plus nécessaire pour les unités en mode "
            "automatique."
        )
    return _cell_told(text, emails)
