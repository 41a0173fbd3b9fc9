"""The Correspondance page (SPEC §10.1) at the HTTP level: the mapping read now, a change by an
uploaded file or by the form's lines through a preview, the conflict, the versions."""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from rorfeed.cli import main
from rorfeed.config import load
from rorfeed.state import Store, open_store
from rorfeed.web.app import create_app
from rorfeed.web.auth import Accounts, Role
from tests.sites import (
    FINESS,
    directory_destination,
    mapping_csv,
    site_toml,
    write_export,
    write_site,
)

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
ROWS = [("REA", "52/100", "Réanimation", "auto"), ("MED", "52/200", "Médecine", "auto")]
EXPORT = [("REA", 10, 1, 2), ("MED", 30, 0, 5), ("PED", 12, 0, 4)]
NEW = [("REA", "52/100", "Réanimation", "auto"), ("PED", "52/600", "Pédiatrie", "auto")]
PAGE = "/correspondance"


class Site:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path
        toml = site_toml(destinations=directory_destination("depot", ("json",)))
        self.config_path = write_site(tmp_path, toml, mapping_csv(ROWS), EXPORT)
        self.run_once()
        config = load(self.config_path)
        self.store: Store = open_store(config.state_url)
        accounts = Accounts(self.store, hasher=FAST)
        accounts.add("chef", Role.LEAD, "mot de passe du chef")
        accounts.add("cellule", Role.VIEWER, "mot de passe cellule")
        self.app = create_app(config, self.store, hasher=FAST)

    def run_once(self) -> list[str]:
        for old in (self.path / "depot").glob("*.json"):
            old.unlink()
        write_export(self.path, EXPORT)
        assert main(["--config", str(self.config_path), "run-once"]) == 0
        (delivered,) = (self.path / "depot").glob("*.json")
        return sorted(u["id_fiche_ror"] for u in json.loads(delivered.read_text())["unites"])

    def login(self, name: str, password: str) -> FlaskClient:
        client = self.app.test_client()
        client.get("/connexion")
        assert (
            post(client, "/connexion", identifiant=name, mot_de_passe=password).status_code == 303
        )
        return client

    @property
    def mapping(self) -> str:
        return (self.path / "mapping.csv").read_text(encoding="utf-8")


def post(client: FlaskClient, url: str, **form: object) -> TestResponse:
    with client.session_transaction() as session:
        token = session["csrf"]
    return client.post(url, data={"csrf": token, **form})


def upload(client: FlaskClient, text: str, encoding: str = "utf-8") -> TestResponse:
    data = (io.BytesIO(text.encode(encoding)), "mapping.csv")
    return post(client, f"{PAGE}/{FINESS}/apercu", fichier=data)


def text_of(answer: TestResponse) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", answer.text)))


def hidden(answer: TestResponse, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', answer.text)
    assert found, name
    return html.unescape(found[1])


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def test_every_account_reads_the_mapping_with_the_modes_and_only_a_lead_changes_it(
    site: Site,
) -> None:
    viewer = site.login("cellule", "mot de passe cellule")
    shown = text_of(viewer.get(PAGE))
    assert "52/100 Réanimation automatique 2 REA (code local) automatique" in shown
    assert "Voir l'aperçu" not in shown
    assert upload(viewer, mapping_csv(NEW)).status_code == 403
    assert viewer.get(f"{PAGE}/{FINESS}/modifier").status_code == 403


def test_an_upload_with_three_errors_shows_the_three_lines_and_writes_nothing(site: Site) -> None:
    lead = site.login("chef", "mot de passe du chef")
    before = site.mapping
    bad = mapping_csv(
        [
            ("REA", "52/100", "Réanimation", "auto"),
            ("MED", "52/100", "Médecine", "auto"),
            ("PED", "@SUM(1)", "Pédiatrie", "auto"),
            ("USC", "52/400", "Surveillance", "parfois"),
        ]
    )
    answer = upload(lead, bad)
    assert answer.status_code == 400
    problems = re.findall(r"<li>mapping\.csv:(\d+):", answer.text)
    assert problems == ["3", "4", "5"]
    assert "Le mapping proposé est refusé" in text_of(answer)
    assert site.mapping == before


def test_a_confirmed_upload_replaces_the_file_and_the_next_cycle_feeds_the_new_fiche(
    site: Site,
) -> None:
    lead = site.login("chef", "mot de passe du chef")
    answer = upload(lead, mapping_csv(NEW), encoding="cp1252")
    assert answer.status_code == 200
    shown = text_of(answer)
    assert "52/600 ajoutée — PED · Pédiatrie · automatique" in shown
    assert "alimentée automatiquement dès le prochain cycle" in shown
    assert "52/200 retirée du mapping" in shown
    assert "la saisie manuelle dans le ROR redevient nécessaire" in shown
    form = {"texte": hidden(answer, "texte"), "base": hidden(answer, "base")}
    refused = post(lead, f"{PAGE}/{FINESS}/confirmer", **form, motif=" ")
    assert refused.status_code == 400 and "Le motif est obligatoire" in text_of(refused)
    done = post(lead, f"{PAGE}/{FINESS}/confirmer", **form, motif="ouverture pédiatrie")
    assert done.status_code == 303
    assert site.mapping == mapping_csv(NEW)
    assert {e.actor for e in site.store.history(limit=2)} == {"chef"}
    assert site.run_once() == ["52/100", "52/600"]


def test_the_form_edits_lines_through_the_same_preview_and_keeps_every_column(
    site: Site,
) -> None:
    lead = site.login("chef", "mot de passe du chef")
    (site.path / "mapping.csv").write_text(
        "local_code;ror_id;label;mode;priority;id_externe_synchro\n"
        "REA;52/100;Réanimation;auto;1;REA-01\nMED;52/200;Médecine;auto;2;\n",
        encoding="utf-8",
    )
    form = lead.get(f"{PAGE}/{FINESS}/modifier")
    assert form.status_code == 200 and 'value="REA-01"' in form.text
    answer = post(
        lead,
        f"{PAGE}/{FINESS}/apercu",
        local_code=["REA", "MED", "PED", ""],
        ror_id=["52/100", "52/200", "52/600", ""],
        label=["Réanimation", "Médecine", "Pédiatrie", ""],
        mode=["auto", "auto", "manual", "auto"],
        priority=["1", "2", "1", "2"],
        id_externe_synchro=["REA-01", "", "", ""],
        supprimer=["1"],
    )
    assert answer.status_code == 200
    shown = text_of(answer)
    assert "52/200 retirée du mapping" in shown
    assert "52/600 ajoutée — PED · Pédiatrie · manuel · priorité 1" in shown
    assert "déclarée manuelle : saisie à la main dans le ROR" in shown
    assert "52/100" not in shown  # unchanged: its priority and code are kept
    confirmed = {"texte": hidden(answer, "texte"), "base": hidden(answer, "base"), "motif": "m"}
    assert post(lead, f"{PAGE}/{FINESS}/confirmer", **confirmed).status_code == 303
    assert "REA;52/100;Réanimation;auto;1;REA-01" in site.mapping


def test_a_file_changed_since_the_preview_is_a_conflict_and_nothing_is_overwritten(
    site: Site,
) -> None:
    lead = site.login("chef", "mot de passe du chef")
    answer = upload(lead, mapping_csv(NEW))
    other = mapping_csv([*ROWS, ("USC", "52/400", "Surveillance continue", "auto")])
    (site.path / "mapping.csv").write_text(other, encoding="utf-8")  # someone else
    form = {"texte": hidden(answer, "texte"), "base": hidden(answer, "base"), "motif": "m"}
    conflict = post(lead, f"{PAGE}/{FINESS}/confirmer", **form)
    assert conflict.status_code == 409
    assert "Le mapping a changé depuis l'aperçu" in text_of(conflict)
    assert "52/400 retirée du mapping" in text_of(conflict)  # the preview against the new file
    assert site.mapping == other


def test_versions_are_listed_compared_downloaded_and_restored(site: Site) -> None:
    lead = site.login("chef", "mot de passe du chef")
    answer = upload(lead, mapping_csv(NEW))
    form = {"texte": hidden(answer, "texte"), "base": hidden(answer, "base")}
    assert post(lead, f"{PAGE}/{FINESS}/confirmer", **form, motif="pédiatrie").status_code == 303
    listed = text_of(lead.get(f"{PAGE}/{FINESS}/versions"))
    assert "2" in listed and "chef pédiatrie" in listed and "rorfeed lu par un cycle" in listed
    csv_file = lead.get(f"{PAGE}/{FINESS}/versions/1.csv")
    assert csv_file.text == mapping_csv(ROWS)
    assert "attachment" in csv_file.headers["Content-Disposition"]
    compared = text_of(lead.get(f"{PAGE}/{FINESS}/comparer?avant=1&apres=2"))
    assert "52/600 ajoutée" in compared and "52/200 retirée du mapping" in compared

    restore = post(lead, f"{PAGE}/{FINESS}/apercu", version="1")
    assert restore.status_code == 200 and "52/200 ajoutée" in text_of(restore)
    form = {"texte": hidden(restore, "texte"), "base": hidden(restore, "base")}
    assert post(lead, f"{PAGE}/{FINESS}/confirmer", **form, motif="retour").status_code == 303
    assert site.mapping == mapping_csv(ROWS)
