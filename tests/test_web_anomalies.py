"""« Signaler une anomalie » on a unit's page, and its closing by a lead (SPEC §10.2), at the
HTTP level with Flask's test client."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from rorfeed.cli import main
from rorfeed.config import load
from rorfeed.model import Mode
from rorfeed.state import Store, open_store
from rorfeed.web.app import create_app
from rorfeed.web.auth import Accounts, Role
from tests.sites import FINESS, directory_destination, mapping_csv, site_toml, write_site

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
UNIT = f"/unite/{FINESS}/52/200"
MANUAL_NEEDED = "La saisie manuelle dans le ROR redevient nécessaire"


class Page:
    def __init__(self, tmp_path: Path) -> None:
        toml = site_toml(destinations=directory_destination("depot"))
        rows = [("REA", "52/100", "Réanimation", "auto"), ("MED", "52/200", "Médecine", "auto")]
        path = write_site(tmp_path, toml, mapping_csv(rows), [("REA", 10, 1, 2), ("MED", 30, 0, 5)])
        assert main(["--config", str(path), "run-once"]) == 0
        config = load(path)
        self.store: Store = open_store(config.state_url)
        accounts = Accounts(self.store, hasher=FAST)
        accounts.add("chef", Role.LEAD, "mot de passe du chef")
        accounts.add("cellule", Role.VIEWER, "mot de passe cellule")
        self.app = create_app(config, self.store, hasher=FAST)

    def login(self, name: str, password: str) -> FlaskClient:
        client = self.app.test_client()
        client.get("/connexion")
        answer = post(client, "/connexion", identifiant=name, mot_de_passe=password)
        assert answer.status_code == 303
        return client


def post(client: FlaskClient, url: str, **form: str) -> TestResponse:
    with client.session_transaction() as session:
        token = session["csrf"]
    return client.post(url, data={"csrf": token, **form})


def text_of(answer: TestResponse) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", answer.text)))


@pytest.fixture
def page(tmp_path: Path) -> Page:
    return Page(tmp_path)


def test_a_viewer_reports_and_everyone_sees_it_until_a_lead_closes_it(page: Page) -> None:
    viewer = page.login("cellule", "mot de passe cellule")
    answer = post(
        viewer,
        f"{UNIT}/signaler",
        constat="Le ROR affiche 5 lits libres, il n'y en a aucun",
        installes="30",
        fermes="0",
        disponibles="0",
    )
    assert answer.status_code == 303 and answer.headers["Location"] == UNIT
    shown = text_of(viewer.get(UNIT))
    assert "Signalement n° 1 enregistré" in shown
    assert "N° 1 , par cellule" in shown and "ouvert" in shown and "il n'y en a aucun" in shown
    assert "Clore le signalement" not in shown  # a viewer cannot close it
    assert "1 signalement d'anomalie ouvert" in text_of(viewer.get("/unites"))
    assert "N° 1 — Médecine" in text_of(viewer.get("/etat"))
    assert post(viewer, "/signalement/1/clore", decision="values were right").status_code == 403

    lead = page.login("chef", "mot de passe du chef")
    answer = post(lead, "/signalement/1/clore", decision="values were right", commentaire="vérifié")
    assert answer.status_code == 303
    shown = text_of(lead.get(UNIT))
    assert "clos par chef" in shown and "les valeurs étaient justes" in shown
    assert "Aucun signalement ouvert" in text_of(lead.get("/etat"))
    assert "signalement d'anomalie ouvert" not in text_of(lead.get("/unites"))


def test_a_refused_report_is_shown_again_with_what_was_typed(page: Page) -> None:
    viewer = page.login("cellule", "mot de passe cellule")
    answer = post(viewer, f"{UNIT}/signaler", constat="des lits en trop", installes="30")
    assert answer.status_code == 400
    shown = text_of(answer)
    assert "donnez les trois" in shown
    assert "des lits en trop" in answer.text and 'value="30"' in answer.text
    assert post(viewer, f"{UNIT}/signaler", constat="  ").status_code == 400
    assert page.store.anomaly_reports() == []
    # Without the form's CSRF token, nothing either.
    assert viewer.post(f"{UNIT}/signaler", data={"constat": "x"}).status_code == 403
    assert page.store.anomaly_reports() == []


def test_closing_as_switched_to_manual_goes_through_the_confirmation(page: Page) -> None:
    viewer = page.login("cellule", "mot de passe cellule")
    post(viewer, f"{UNIT}/signaler", constat="valeurs figées depuis hier")
    lead = page.login("chef", "mot de passe du chef")
    answer = post(
        lead,
        "/signalement/1/clore",
        decision="switched to manual",
        commentaire="export cassé",
        etape="confirmer",
    )
    assert answer.status_code == 200
    assert MANUAL_NEEDED in text_of(answer) and "valeurs figées depuis hier" in text_of(answer)
    assert {u.ror_id: u.mode for u in page.store.units()}["52/200"] is Mode.AUTO  # not yet
    answer = post(
        lead,
        "/signalement/1/clore",
        decision="switched to manual",
        commentaire="export cassé",
        etape="appliquer",
    )
    assert answer.status_code == 303
    assert {u.ror_id: u.mode for u in page.store.units()}["52/200"] is Mode.MANUAL
    actions = [e.action for e in page.store.history("52/200")[:3]]
    assert actions == ["anomaly_closed", "unit_mode", "anomaly_report"]
    assert "passée en saisie manuelle" in text_of(lead.get(UNIT))
