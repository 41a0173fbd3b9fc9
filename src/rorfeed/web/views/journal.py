"""Historique and État: the audit trail, the cycles, the destinations, what is waiting."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flask import Blueprint, render_template, request

from rorfeed.reads import DestinationRow, destination_rows
from rorfeed.web.context import current
from rorfeed.web.french import ACTIONS, ESTABLISHMENT_STATUSES, OUTCOMES, change_text
from rorfeed.web.views.killswitch import rows as switch_rows
from rorfeed.web.views.units import rows_of

HISTORY_SIZES = (50, 200, 1000)

bp = Blueprint("journal", __name__)


@bp.get("/historique")
def history() -> str:
    web = current()
    key = request.args.get("unite", "").strip()
    try:
        size = int(request.args.get("nombre", "200"))
    except ValueError:
        size = 200
    size = size if size in HISTORY_SIZES else 200
    entries = web.store.history(key or None, size)
    return render_template(
        "historique.html",
        active="historique",
        entries=entries,
        key=key,
        size=size,
        sizes=HISTORY_SIZES,
        actions=ACTIONS,
        change_text=change_text,
        name=web.name,
    )


@dataclass(frozen=True)
class DestinationLine:
    """A destination as the État page shows it."""

    name: str
    environment: str
    establishments: str
    waiting: int
    last_delivery: datetime | None
    last_result: str

    @classmethod
    def of(cls, row: DestinationRow) -> DestinationLine:
        result = ""
        if row.delivered is not None:
            result = f"{row.delivered} livré(s), {row.failed} en attente"
            if row.error:
                result += f" — {row.error}"
        return cls(
            row.name,
            "production" if row.production else "test",
            ", ".join(row.establishments) or "tous",
            row.waiting,
            row.last_delivery,
            result,
        )


@bp.get("/etat")
def status() -> str:
    web = current()
    cycles = web.store.recent_cycles(50)
    destinations = [DestinationLine.of(d) for d in destination_rows(web.config, web.store, cycles)]
    return render_template(
        "etat.html",
        active="etat",
        cycles=cycles[:20],
        outcomes=OUTCOMES,
        statuses=ESTABLISHMENT_STATUSES,
        destinations=destinations,
        switches=switch_rows(web),
        streaks=[r for r in rows_of(web) if r.unit.streak],
        emails_waiting=len(web.store.pending_emails()),
        name=web.name,
        reports=web.store.anomaly_reports(only_open=True),
        labels={(u.finess, u.ror_id): u.label for u in web.store.units()},
    )
