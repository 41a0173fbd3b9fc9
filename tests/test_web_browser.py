"""The web page end to end in a real browser: Debian's Chromium, headless, driven by Playwright.

One server (hypercorn on loopback) and one browser per module. Chromium cannot be downloaded
here: the tests use `/usr/bin/chromium` (`scripts/test` installs it from Debian) and FAIL with
a clear message when it is missing — a skipped browser test would hide a broken page.
Screenshots of the Unités page (1280 and 400 px wide) are kept under pytest's temporary
folder (printed in the test's output), never committed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from rorfeed.config import load
from rorfeed.state import open_store
from rorfeed.web.app import create_app
from rorfeed.web.server import make_server
from tests.sites import T0
from tests.web_site import FAST, LEAD, LEAD_PW, VIEWER, VIEWER_PW, Clock, build_site

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("browser-site")
    build_site(path)
    config = load(path / "rorfeed.toml")
    store = open_store(config.state_url)
    app = create_app(config, store, clock=Clock(T0 + timedelta(hours=1, minutes=30)), hasher=FAST)
    server = make_server(config, app, listen="127.0.0.1:0")
    server.prepare()
    thread = threading.Thread(target=server.serve, name="web-under-test", daemon=True)
    thread.start()
    host, port = server.bind_addr[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        thread.join(timeout=10)
        store.engine.dispose()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium (`apt-get install chromium`; "
            "scripts/test does it) — the web page's browser tests need it",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]'", pytrace=False)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*ARGS, f"--disk-cache-dir={profile}"],
            headless=True,
            timeout=60_000,
            env={"HOME": str(profile), "XDG_CONFIG_HOME": str(profile)},
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def logged_in(
    browser: Any, base_url: str, name: str, password: str, width: int = 1280
) -> tuple[Any, list[str]]:
    """A fresh context (own cookies) logged in through the login form; its console errors."""
    context = browser.new_context(viewport={"width": width, "height": 900}, locale="fr-FR")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{base_url}/unites")
    assert page.url.endswith("/connexion")  # no session: the login page only
    page.get_by_label("Identifiant").fill(name)
    page.get_by_label("Mot de passe").fill(password)
    page.keyboard.press("Enter")
    page.wait_for_url("**/unites")
    return page, problems


def test_in_chromium_the_lead_switches_a_unit_and_the_viewer_finds_no_switch(
    browser: Any, base_url: str, screenshots: Path
) -> None:
    # One test, so that `-n` never starts a second browser and server for the module.
    lead_switches_a_unit_to_manual_and_finds_it_in_the_history(browser, base_url, screenshots)
    viewer_sees_the_units_and_no_switch(browser, base_url)


def lead_switches_a_unit_to_manual_and_finds_it_in_the_history(
    browser: Any, base_url: str, screenshots: Path
) -> None:
    page, problems = logged_in(browser, base_url, LEAD, LEAD_PW)
    assert page.get_by_role("heading", name="Unités").is_visible()
    page.get_by_label("Sélectionner Médecine (52/200)").check()
    page.get_by_role("button", name="Passer en saisie manuelle…").click()
    page.wait_for_url("**/unites/basculer")
    consequence = page.locator(".consequence")
    assert "La saisie manuelle dans le ROR redevient nécessaire" in consequence.inner_text()
    page.get_by_label("Motif").fill("Travaux dans le service")
    page.get_by_role("button", name="Confirmer le passage en saisie manuelle").click()
    page.wait_for_url("**/unites")
    assert (
        "la saisie manuelle dans le ROR redevient nécessaire"
        in page.get_by_role("status").first.inner_text()
    )
    row = page.locator("tr", has=page.get_by_role("link", name="Médecine"))
    assert "a-saisir" in (row.get_attribute("class") or "")
    assert "À saisir dans le ROR" in row.inner_text()
    assert "manuel" in row.locator("td[data-label=Mode]").inner_text()
    assert "Travaux dans le service" in row.inner_text()

    page.get_by_role("link", name="Historique").click()
    page.wait_for_url("**/historique")
    first = page.locator("table.historique tbody tr").first
    text = first.inner_text()
    assert LEAD in text and "Travaux dans le service" in text and "automatique → manuel" in text

    # The same for another unit, by keyboard only: its page, the button, the reason.
    page.goto(f"{base_url}/unite/750712184/52/100")
    button = page.get_by_role("button", name="Passer en saisie manuelle…")
    button.focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/unites/basculer")
    page.get_by_label("Motif").focus()
    page.keyboard.type("Panne de la base lits")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_url("**/unite/750712184/52/100")
    assert "À saisir à la main dans le ROR" in page.locator("main").inner_text()

    page.goto(f"{base_url}/unites")
    path_wide = screenshots / "unites-1280.png"
    page.screenshot(path=str(path_wide), full_page=True)
    page.set_viewport_size({"width": 400, "height": 860})
    path_narrow = screenshots / "unites-400.png"
    page.screenshot(path=str(path_narrow), full_page=True)
    # Narrow: nothing wider than the screen (no sideways scrolling to read a unit).
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    print(f"screenshots: {path_wide} {path_narrow}")
    assert problems == []  # no console error, no CSP violation
    page.context.close()


def viewer_sees_the_units_and_no_switch(browser: Any, base_url: str) -> None:
    page, problems = logged_in(browser, base_url, VIEWER, VIEWER_PW, width=400)
    assert page.get_by_role("link", name="Médecine").is_visible()
    assert page.locator("input[type=checkbox]").count() == 0
    assert page.get_by_role("button", name="Passer en saisie manuelle…").count() == 0
    assert page.get_by_role("button", name="Remettre en automatique…").count() == 0
    page.get_by_role("link", name="Coupure").click()
    page.wait_for_url("**/coupure")
    assert page.get_by_role("button").filter(has_text="Couper").count() == 0
    page.goto(f"{base_url}/unite/750712184/52/300")
    assert page.get_by_role("button", name="Passer en saisie manuelle…").count() == 0
    assert page.get_by_role("button", name="Se déconnecter").is_visible()
    assert problems == []
    page.context.close()
