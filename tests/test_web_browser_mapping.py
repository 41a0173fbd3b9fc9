"""The chef de projet without a shell, in a real browser (Debian's Chromium, headless, driven
by Playwright): the mapping changed on the Correspondance page, and an anomaly reported by the
cell then closed by the lead (SPEC §10.1, §10.2). Screenshots of the Correspondance page, a
preview and a unit with an open report, at 390 and 1280 px, are kept under pytest's temporary
folder (printed in the test's output), never committed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from rorfeed.cli import main
from rorfeed.config import load
from rorfeed.model import Mode
from rorfeed.state import open_store
from rorfeed.web.app import create_app
from rorfeed.web.auth import Accounts, Role
from rorfeed.web.server import make_server
from tests.sites import (
    FINESS,
    directory_destination,
    mapping_csv,
    site_toml,
    write_export,
    write_site,
)
from tests.sites import NOTIFY as SITE_NOTIFY
from tests.smtp import SmtpServer

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
TIMEOUT_MS = 15_000
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
LEAD, LEAD_PW, VIEWER, VIEWER_PW = "chef", "mot de passe du chef", "cellule", "mot de passe 2"
ROWS = [("REA", "52/100", "Réanimation", "auto"), ("MED", "52/200", "Médecine", "auto")]
EXPORT = [("REA", 10, 1, 2), ("MED", 30, 0, 5), ("PED", 12, 0, 4)]
# The cell's relay (tests/sites.py), and the chef de projet's address for anomaly reports.
NOTIFY = SITE_NOTIFY + 'lead_recipients = ["chef.projet@hopital.test"]\n'


@pytest.fixture
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (scripts/test does it)")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*ARGS, f"--disk-cache-dir={profile}"],
            timeout=60_000,
            env={"HOME": str(profile), "XDG_CONFIG_HOME": str(profile)},
        )
        try:
            yield browser
        finally:
            browser.close()


class Site:
    def __init__(self, path: Path, smtp: SmtpServer) -> None:
        self.path = path
        toml = site_toml(
            destinations=directory_destination("depot", ("json",)),
            extra=NOTIFY.format(port=smtp.port),
        )
        self.config_path = write_site(path, toml, mapping_csv(ROWS), EXPORT)
        self.run_once()
        self.config = load(self.config_path)
        self.store = open_store(self.config.state_url)
        accounts = Accounts(self.store, hasher=FAST)
        accounts.add(LEAD, Role.LEAD, LEAD_PW)
        accounts.add(VIEWER, Role.VIEWER, VIEWER_PW)

    def run_once(self) -> list[str]:
        for old in (self.path / "depot").glob("*.json"):
            old.unlink()
        write_export(self.path, EXPORT)
        assert main(["--config", str(self.config_path), "run-once"]) == 0
        (delivered,) = (self.path / "depot").glob("*.json")
        return sorted(u["id_fiche_ror"] for u in json.loads(delivered.read_text())["unites"])


@pytest.fixture
def site(tmp_path: Path, smtp: SmtpServer) -> Iterator[tuple[Site, str]]:
    s = Site(tmp_path, smtp)
    app = create_app(s.config, s.store, hasher=FAST, background_email=False)
    server = make_server(s.config, app, listen="127.0.0.1:0")
    server.prepare()
    thread = threading.Thread(target=server.serve, name="web-under-test", daemon=True)
    thread.start()
    host, port = server.bind_addr[:2]
    try:
        yield s, f"http://{host}:{port}"
    finally:
        server.stop()
        thread.join(timeout=10)
        s.store.engine.dispose()


def logged_in(browser: Any, base: str, name: str, password: str) -> tuple[Any, list[str]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="fr-FR")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{base}/connexion")
    page.get_by_label("Identifiant").fill(name)
    page.get_by_label("Mot de passe").fill(password)
    page.keyboard.press("Enter")
    page.wait_for_url("**/unites")
    return page, problems


def shots(page: Any, folder: Path, name: str) -> list[Path]:
    """The page at 1280 and 390 px; at 390 nothing is wider than the screen."""
    made = []
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        path = folder / f"{name}-{width}.png"
        page.screenshot(path=str(path), full_page=True)
        made.append(path)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, name
    page.set_viewport_size({"width": 1280, "height": 900})
    return made


def test_in_chromium_the_lead_changes_the_mapping_and_restores_it(
    browser: Any, site: tuple[Site, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    s, base = site
    folder = tmp_path_factory.mktemp("screenshots")
    page, problems = logged_in(browser, base, LEAD, LEAD_PW)
    page.get_by_role("link", name="Correspondance").click()
    page.wait_for_url("**/correspondance")
    made = shots(page, folder, "correspondance")

    bad = s.path / "trois-erreurs.csv"
    bad.write_text(
        mapping_csv(
            [
                ("REA", "52/100", "Réanimation", "auto"),
                ("MED", "52/100", "Médecine", "auto"),
                ("PED", "=1+1", "Pédiatrie", "auto"),
                ("USC", "52/400", "Surveillance", "parfois"),
            ]
        ),
        encoding="utf-8",
    )
    page.get_by_label("Remplacer par un fichier CSV").set_input_files(str(bad))
    page.get_by_role("button", name="Voir l'aperçu…").click()
    listed = page.locator("ul.problemes li").all_inner_texts()
    assert [p.split(":")[1] for p in listed] == ["3", "4", "5"]

    good = s.path / "nouveau.csv"
    good.write_text(
        mapping_csv([ROWS[0], ("PED", "52/600", "Pédiatrie", "auto")]), encoding="utf-8"
    )
    page.goto(f"{base}/correspondance")
    page.get_by_label("Remplacer par un fichier CSV").set_input_files(str(good))
    page.get_by_role("button", name="Voir l'aperçu…").click()
    preview = page.locator("main").inner_text()
    assert "alimentée automatiquement dès le prochain cycle" in preview
    assert "la saisie manuelle dans le ROR redevient nécessaire" in preview
    made += shots(page, folder, "apercu")
    page.get_by_label("Motif").fill("Ouverture de la pédiatrie")
    page.get_by_role("button", name="Confirmer et remplacer le mapping").click()
    page.wait_for_url("**/correspondance")
    assert "Mapping de" in page.get_by_role("status").first.inner_text()
    assert s.run_once() == ["52/100", "52/600"]

    page.get_by_role("link", name="versions gardées").click()
    page.get_by_label("Restaurer la version").select_option(
        label=page.locator("#version option").last.inner_text()
    )
    page.get_by_role("button", name="Voir l'aperçu…").click()
    page.get_by_label("Motif").fill("Retour à la version d'avant")
    page.get_by_role("button", name="Confirmer et remplacer le mapping").click()
    page.wait_for_url("**/correspondance")
    assert s.run_once() == ["52/100", "52/200"]
    print("screenshots:", *made)
    # The refused upload is answered 400, as it should; nothing else went wrong.
    assert problems == ["Failed to load resource: the server responded with a status of 400 ()"]


def test_in_chromium_the_cell_reports_an_anomaly_and_the_lead_closes_it(
    browser: Any,
    site: tuple[Site, str],
    smtp: SmtpServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    s, base = site
    folder = tmp_path_factory.mktemp("screenshots")
    page, problems = logged_in(browser, base, VIEWER, VIEWER_PW)
    page.goto(f"{base}/unite/{FINESS}/52/200")
    page.get_by_label("Ce que vous avez constaté").fill("Le ROR affiche 5 lits libres : aucun")
    page.get_by_label("Lits installés").fill("30")
    page.get_by_label("Lits fermés").fill("0")
    page.get_by_label("Lits disponibles").fill("0")
    page.get_by_role("button", name="Envoyer le signalement").click()
    assert "Signalement n° 1 enregistré" in page.get_by_role("status").first.inner_text()
    made = shots(page, folder, "unite-signalement")
    [mail] = smtp.messages
    assert mail.rcpt_tos == ("chef.projet@hopital.test",)
    assert "Le ROR affiche 5 lits libres" in mail.message.get_content()
    page.context.close()

    page, problems_lead = logged_in(browser, base, LEAD, LEAD_PW)
    assert "1 signalement d'anomalie ouvert" in page.locator("main").inner_text()
    page.goto(f"{base}/unite/{FINESS}/52/200")
    page.get_by_label("Décision").select_option("switched to manual")
    page.get_by_label("Commentaire (obligatoire)").fill("Export de la base lits figé")
    page.get_by_role("button", name="Clore le signalement…").click()
    assert (
        "La saisie manuelle dans le ROR redevient nécessaire"
        in page.locator(".consequence").inner_text()
    )
    page.get_by_role("button", name="Confirmer le passage en saisie manuelle").click()
    page.wait_for_url(f"**/unite/{FINESS}/52/200")
    assert "passée en saisie manuelle" in page.locator("main").inner_text()
    assert {u.ror_id: u.mode for u in s.store.units()}["52/200"] is Mode.MANUAL
    actions = [e.action for e in s.store.history("52/200")[:3]]
    assert actions == ["anomaly_closed", "unit_mode", "anomaly_report"]
    print("screenshots:", *made)
    assert problems == [] and problems_lead == []
