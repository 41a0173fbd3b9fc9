"""The web page (SPEC §10) at the HTTP level: every page and action, both roles, the refusals.

Most tests drive the Flask application with its test client (an injected clock for session
expiry and login throttling); a few run the real server (hypercorn) on loopback: over TLS, and
`serve()` in its own process stopped by SIGTERM.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from structlog.testing import capture_logs
from werkzeug.test import TestResponse

from rorfeed.cli import main
from rorfeed.config import Config, load
from rorfeed.model import GLOBAL, Mode
from rorfeed.state import Store, open_store
from rorfeed.users_cli import users
from rorfeed.web.app import create_app
from rorfeed.web.auth import AccountError, Accounts, Role
from rorfeed.web.server import make_server
from tests.sites import T0, site_toml
from tests.smtp import SmtpServer, free_port, self_signed
from tests.web_site import FAST, LEAD, LEAD_PW, VIEWER, VIEWER_PW, Clock, build_site

PAGES = ["/unites", "/unite/750712184/52/200", "/coupure", "/historique", "/etat"]
MANUAL_NEEDED = "la saisie manuelle dans le ROR redevient nécessaire"
MANUAL_NOT_NEEDED = "la saisie manuelle dans le ROR n'est plus nécessaire"


@dataclass
class Site:
    path: Path
    config: Config
    store: Store
    clock: Clock
    app: Flask

    def client(self) -> FlaskClient:
        return self.app.test_client()

    def login(self, name: str = LEAD, password: str = LEAD_PW) -> FlaskClient:
        client = self.client()
        response = post(client, "/connexion", identifiant=name, mot_de_passe=password)
        assert response.status_code == 303, response.text
        assert response.headers["Location"] == "/unites"
        return client

    def modes(self) -> dict[str, Mode]:
        return {u.ror_id: u.mode for u in self.store.units()}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per module (two cycles take a while); each test works on its own copy."""
    path = tmp_path_factory.mktemp("template")
    build_site(path)
    return path


def make_site(template: Path, path: Path, notify_port: int | None = None, web: str = "") -> Site:
    """A copy of the template site, its config given the `web` section (default: hour-long
    sessions) and, with `notify_port`, the notification relay."""
    shutil.copytree(template, path)
    config_text = site_toml(web=web or "\n[web]\nsession_minutes = 60\n", notify_port=notify_port)
    (path / "rorfeed.toml").write_text(config_text, encoding="utf-8")
    config = load(path / "rorfeed.toml")
    store = open_store(config.state_url)
    clock = Clock(T0 + timedelta(hours=1, minutes=30))
    app = create_app(config, store, clock=clock, hasher=FAST)
    return Site(path, config, store, clock, app)


@pytest.fixture
def site(template: Path, tmp_path: Path) -> Iterator[Site]:
    s = make_site(template, tmp_path / "site")
    yield s
    s.store.engine.dispose()


def csrf(client: FlaskClient) -> str:
    """The session's CSRF token (made by the login page when the session has none yet)."""
    with client.session_transaction() as session:
        token = session.get("csrf")
    if token is None:
        client.get("/connexion")
        with client.session_transaction() as session:
            token = session["csrf"]
    assert isinstance(token, str)
    return token


def post(
    client: FlaskClient, url: str, token: str | None = "", **form: str | list[str]
) -> TestResponse:
    """POST a form with the session's CSRF token ("" = the right one, None = no token)."""
    data: dict[str, str | list[str]] = dict(form)
    if token is not None:
        data["csrf"] = token or csrf(client)
    return client.post(url, data=data)


def text_of(response: TestResponse) -> str:
    """The page as a reader sees it: tags dropped, entities decoded, white space collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]*>", "", response.text)).split())


def history(site: Site) -> list[tuple[str, str, str | None, str | None, str]]:
    return [(e.actor, e.action, e.previous, e.new, e.reason) for e in site.store.history()]


def snapshot(site: Site) -> tuple[object, ...]:
    return (
        sorted(site.modes().items()),
        history(site),
        site.store.killswitch_details(),
        len(site.store.pending_emails()),
    )


# ---------------------------------------------------------------------------------------------
# Without a session


def test_without_a_session_only_the_login_page_and_the_stylesheet_are_served(site: Site) -> None:
    client = site.client()
    for url in [*PAGES, "/", "/nimporte-quoi", "/unite/750712184/52/999"]:
        response = client.get(url)
        assert response.status_code == 303, url
        assert response.headers["Location"] == "/connexion"
    page = client.get("/connexion")
    assert page.status_code == 200
    assert 'name="mot_de_passe"' in page.text and 'name="csrf"' in page.text
    assert "Réanimation" not in page.text
    with client.get("/static/style.css") as css:
        assert css.status_code == 200 and css.mimetype == "text/css"
    # A change without a session is refused (no session, hence no CSRF token) and changes nothing.
    before = snapshot(site)
    for url, form in (
        ("/unites/basculer", {"mode": "manual", "unite": "52/200", "etape": "appliquer"}),
        ("/coupure", {"cible": "tous", "position": "on", "etape": "appliquer"}),
    ):
        response = site.client().post(url, data={**form, "motif": "x"})
        assert response.status_code == 403
    assert snapshot(site) == before


def test_security_headers_on_every_response(site: Site) -> None:
    client = site.login()
    responses = [
        site.client().get("/connexion"),
        site.client().get("/static/style.css"),
        client.get("/unites"),
        client.get("/introuvable"),
        post(client, "/unites/basculer", token="faux", mode="manual", unite="52/200"),
    ]
    responses[1].close()
    for response in responses:
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'none'" in csp
        assert "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert responses[2].headers["Cache-Control"] == "no-store"
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 403]
    # No script at all in the pages: the CSP would block it anyway.
    for url in PAGES:
        assert "<script" not in client.get(url).text


def test_session_cookie_is_httponly_strict_and_secure_behind_a_tls_proxy(site: Site) -> None:
    def login_cookie(**environ: str) -> str:
        client = site.app.test_client()
        client.environ_base.update(environ)
        client.get("/connexion")
        with client.session_transaction() as session:
            token = session["csrf"]
        response = client.post(
            "/connexion",
            data={"csrf": token, "identifiant": LEAD, "mot_de_passe": LEAD_PW},
            headers={k[5:].replace("_", "-"): v for k, v in environ.items() if k[:5] == "HTTP_"},
        )
        assert response.status_code == 303
        return response.headers["Set-Cookie"]

    plain = login_cookie()
    assert "HttpOnly" in plain and "SameSite=Strict" in plain and "Secure" not in plain
    assert plain.startswith("rorfeed_session=")
    proxied = login_cookie(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_PROTO="https")
    assert "Secure" in proxied and "HttpOnly" in proxied and "SameSite=Strict" in proxied
    # The header is trusted only from a proxy on the same machine.
    remote = login_cookie(REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_PROTO="https")
    assert "Secure" not in remote


# ---------------------------------------------------------------------------------------------
# Pages, both roles


def test_lead_sees_every_page_with_the_switches(site: Site) -> None:
    client = site.login()
    page = client.get("/unites").text
    for text in ("Réanimation", "Médecine", "52/200", "MED", "Hôpital Test", "Palliatifs"):
        assert text in page
    assert "30 installés" in page and "5 disponibles" in page  # the last values sent
    assert "count_not_integer" in page  # CHIR's streak and its rule
    assert page.count('name="unite"') == 5  # one checkbox per unit
    assert "Passer en saisie manuelle…" in page and "Remettre en automatique…" in page
    # The fiche declared manual stands out as one to enter by hand.
    assert "1 unité sur 5" in page and "À saisir dans le ROR" in page
    row = re.search(r'<tr class="a-saisir">.*?</tr>', page, re.S)
    assert row is not None and "Palliatifs" in row.group(0)
    assert "déclarée manuelle dans le mapping" in row.group(0)

    only_manual = client.get("/unites?mode=manuel").text
    assert "Palliatifs" in only_manual and "Réanimation" not in only_manual
    assert "Réanimation" in client.get("/unites?mode=auto&etablissement=750712184").text
    assert "Aucune unité ne correspond" in client.get("/unites?etablissement=999999999").text
    assert client.get("/unites?cocher=tout").text.count(" checked") == 5

    unit = client.get("/unite/750712184/52/200")
    assert unit.status_code == 200
    assert "Médecine" in unit.text and "ajoutée au mapping" in unit.text
    assert "Passer en saisie manuelle…" in unit.text
    assert client.get("/unite/750712184/52/999").status_code == 404

    kill = client.get("/coupure").text
    assert "Tous les établissements" in kill and "Hôpital Test" in kill
    assert kill.count("Couper…") == 2
    hist = client.get("/historique").text
    assert "added (auto)" in hist and "rorfeed" in hist
    assert "Palliatifs" not in client.get("/historique?unite=52/100").text
    state = client.get("/etat").text
    assert "depot" in state and "partiel" in state and "réussi" in state
    assert "count_not_integer" in state


def test_viewer_sees_everything_and_no_switch(site: Site) -> None:
    client = site.login(VIEWER, VIEWER_PW)
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 200, url
        assert 'action="/unites/basculer"' not in response.text
        assert 'name="position"' not in response.text
        assert "Couper…" not in response.text and "saisie manuelle…" not in response.text
    page = client.get("/unites").text
    assert "Médecine" in page and "30 installés" in page and 'name="unite"' not in page
    assert "consultation" in page  # the role is shown next to the account


def test_viewer_post_is_refused_and_changes_nothing(site: Site) -> None:
    client = site.login(VIEWER, VIEWER_PW)
    before = snapshot(site)
    for url, form in (
        ("/unites/basculer", {"mode": "manual", "unite": "52/200", "etape": "confirmer"}),
        ("/unites/basculer", {"mode": "manual", "unite": "52/200", "etape": "appliquer"}),
        ("/coupure", {"cible": "750712184", "position": "on", "etape": "confirmer"}),
        ("/coupure", {"cible": "tous", "position": "on", "etape": "appliquer"}),
    ):
        response = post(client, url, motif="essai", **form)
        assert response.status_code == 403, (url, form)
        assert "consultation seule" in response.text
    assert snapshot(site) == before


def test_missing_or_wrong_csrf_token_is_refused(site: Site) -> None:
    client = site.login()
    before = snapshot(site)
    form = {"mode": "manual", "unite": "52/200", "etape": "appliquer", "motif": "x"}
    assert post(client, "/unites/basculer", token=None, **form).status_code == 403
    assert post(client, "/unites/basculer", token="pas-le-bon", **form).status_code == 403
    kill = {"cible": "tous", "position": "on", "etape": "appliquer", "motif": "x"}
    assert post(client, "/coupure", token=None, **kill).status_code == 403
    assert post(client, "/deconnexion", token=None).status_code == 403
    # Another session's token does not do either.
    other = site.login()
    assert post(client, "/coupure", token=csrf(other), **kill).status_code == 403
    assert snapshot(site) == before
    # Login itself carries a token.
    fresh = site.client()
    response = post(fresh, "/connexion", token=None, identifiant=LEAD, mot_de_passe=LEAD_PW)
    assert response.status_code == 403
    assert "jeton" in response.text


# ---------------------------------------------------------------------------------------------
# Changes


def test_lead_switches_units_after_a_confirmation_with_a_mandatory_reason(site: Site) -> None:
    client = site.login()
    confirm = post(
        client, "/unites/basculer", mode="manual", unite=["52/200", "52/100"], etape="confirmer"
    )
    assert confirm.status_code == 200
    text = text_of(confirm)
    assert "La saisie manuelle dans le ROR redevient nécessaire" in text
    assert "ces 2 unités" in text and "Médecine" in text and "Réanimation" in text
    assert "30 installés" in text  # what the ROR keeps showing
    assert re.search(r'<textarea id="motif" name="motif"[^>]* required', confirm.text)
    assert site.modes()["52/200"] is Mode.AUTO  # nothing changed before the confirmation

    no_reason = post(
        client, "/unites/basculer", mode="manual", unite=["52/200", "52/100"], etape="appliquer"
    )
    assert no_reason.status_code == 400 and "motif est obligatoire" in no_reason.text
    blank: dict[str, Any] = {
        "mode": "manual",
        "unite": ["52/200"],
        "etape": "appliquer",
        "motif": "   ",
    }
    assert post(client, "/unites/basculer", **blank).status_code == 400
    assert site.modes()["52/200"] is Mode.AUTO

    done = post(
        client,
        "/unites/basculer",
        mode="manual",
        unite=["52/200", "52/100"],
        etape="appliquer",
        motif="travaux en cours",
    )
    assert done.status_code == 303 and done.headers["Location"] == "/unites"
    assert site.modes()["52/200"] is Mode.MANUAL and site.modes()["52/100"] is Mode.MANUAL
    assert history(site)[:2] == [
        (LEAD, "unit_mode", "auto", "manual", "travaux en cours"),
        (LEAD, "unit_mode", "auto", "manual", "travaux en cours"),
    ]
    page = text_of(client.get("/unites"))
    assert "2 unités passées en saisie manuelle : " + MANUAL_NEEDED in page
    assert "Aucun relais de courriel n'est configuré" in page  # no [notify]: say so
    assert "3 unités sur 5" in page

    # Back to automated, one unit, from its own page.
    back = post(
        client, "/unites/basculer", mode="auto", unite="52/200", etape="confirmer", depuis="unite"
    )
    assert "La saisie manuelle dans le ROR n'est plus nécessaire" in text_of(back)
    done = post(
        client,
        "/unites/basculer",
        mode="auto",
        unite="52/200",
        etape="appliquer",
        depuis="unite",
        motif="travaux terminés",
    )
    assert done.status_code == 303 and done.headers["Location"] == "/unite/750712184/52/200"
    assert site.modes()["52/200"] is Mode.AUTO
    assert MANUAL_NOT_NEEDED in text_of(client.get(done.headers["Location"]))


def test_switch_without_a_unit_or_to_an_unknown_mode_changes_nothing(site: Site) -> None:
    client = site.login()
    before = snapshot(site)
    empty = post(client, "/unites/basculer", mode="manual", etape="confirmer")
    assert empty.status_code == 303
    assert "Cochez au moins une unité" in client.get("/unites").text
    assert post(client, "/unites/basculer", mode="off", unite="52/200").status_code == 400
    unknown = post(client, "/unites/basculer", mode="manual", unite="52/999", etape="appliquer")
    assert unknown.status_code == 400
    assert snapshot(site) == before


def test_declared_manual_fiche_is_not_put_back_to_automated(site: Site) -> None:
    client = site.login()
    page = post(client, "/unites/basculer", mode="auto", unite=["52/500", "52/100"])
    text = text_of(page)
    assert "Déclarée manuelle dans le mapping" in text and "Palliatifs" in text
    assert "Déjà en mode automatique" in text and "Réanimation" in text
    assert "Confirmer la remise en automatique" not in text  # nothing left to switch
    forced = post(
        client, "/unites/basculer", mode="auto", unite="52/500", etape="appliquer", motif="x"
    )
    assert forced.status_code == 400
    assert site.modes()["52/500"] is Mode.MANUAL


def test_lead_turns_the_killswitch_on_and_off_with_a_reason(site: Site) -> None:
    client = site.login()
    confirm = post(client, "/coupure", cible="750712184", position="on", etape="confirmer")
    text = text_of(confirm)
    assert confirm.status_code == 200
    assert "La saisie manuelle dans le ROR redevient nécessaire pour Hôpital Test" in text
    assert "les 4 unités alimentées automatiquement" in text
    assert not site.store.killswitches().get("750712184", False)
    assert (
        post(client, "/coupure", cible="750712184", position="on", etape="appliquer").status_code
        == 400
    )
    done = post(
        client,
        "/coupure",
        cible="750712184",
        position="on",
        etape="appliquer",
        motif="incident base lits",
    )
    assert done.status_code == 303
    assert site.store.killswitches()["750712184"] is True
    assert history(site)[0] == (LEAD, "killswitch", "off", "on", "incident base lits")
    for url in PAGES:  # a banner on every page while a kill-switch is on
        assert "Coupure active" in client.get(url).text
    assert "5 unités sur 5" in client.get("/unites").text
    again = post(client, "/coupure", cible="750712184", position="on", etape="confirmer")
    assert again.status_code == 303  # already on: nothing to confirm

    # The global kill-switch, then both lifted.
    post(client, "/coupure", cible="tous", position="on", etape="appliquer", motif="ROR en panne")
    assert site.store.killswitches()[GLOBAL] is True
    lift = post(client, "/coupure", cible="tous", position="off", etape="confirmer")
    text = text_of(lift)
    assert "La saisie manuelle dans le ROR n'est plus nécessaire" in text
    assert "la coupure propre de Hôpital Test reste active" in text
    post(client, "/coupure", cible="tous", position="off", etape="appliquer", motif="ROR rétabli")
    post(client, "/coupure", cible="750712184", position="off", etape="appliquer", motif="réparé")
    assert not any(site.store.killswitches().values())
    assert "Coupure active" not in client.get("/unites").text
    assert [h[4] for h in history(site)[:4]] == [
        "réparé",
        "ROR rétabli",
        "ROR en panne",
        "incident base lits",
    ]
    bad = post(client, "/coupure", cible="123456789", position="on", etape="confirmer")
    assert bad.status_code == 400


def test_text_from_the_store_is_escaped(site: Site) -> None:
    client = site.login()
    reason = '<script>alert("x")</script>'
    post(client, "/unites/basculer", mode="manual", unite="52/200", etape="appliquer", motif=reason)
    for url in ("/unites", "/historique", "/unite/750712184/52/200"):
        page = client.get(url).text
        assert reason not in page and "&lt;script&gt;" in page


def test_a_change_records_the_account_and_sends_the_same_email_as_the_cli(
    template: Path, tmp_path: Path, smtp: SmtpServer
) -> None:
    by_cli = make_site(template, tmp_path / "cli", notify_port=smtp.port)
    by_web = make_site(template, tmp_path / "web", notify_port=smtp.port)
    smtp.clear()
    assert (
        main(
            [
                "--config",
                str(by_cli.path / "rorfeed.toml"),
                "units",
                "manual",
                "52/200",
                "--reason",
                "travaux",
                "--by",
                LEAD,
            ]
        )
        == 0
    )
    [cli_mail] = smtp.messages
    smtp.clear()
    client = by_web.login()
    done = post(
        client,
        "/unites/basculer",
        mode="manual",
        unite="52/200",
        etape="appliquer",
        motif="travaux",
    )
    assert done.status_code == 303
    assert "prévenue par courriel" in client.get("/unites").text
    deadline = time.monotonic() + 10
    while not smtp.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    [web_mail] = smtp.messages
    assert (
        history(by_web)[0]
        == history(by_cli)[0]
        == (
            LEAD,
            "unit_mode",
            "auto",
            "manual",
            "travaux",
        )
    )

    def normalised(body: str) -> str:  # the two changes happened at different times
        return re.sub(r"\d\d/\d\d/\d{4} à \d\d:\d\d", "<time>", body)

    assert web_mail.message["Subject"] == cli_mail.message["Subject"]
    assert web_mail.rcpt_tos == cli_mail.rcpt_tos
    web_body = web_mail.message.get_content()
    assert normalised(web_body) == normalised(cli_mail.message.get_content())
    assert LEAD in web_body and "Médecine" in web_body
    assert not by_web.store.pending_emails()
    # The kill-switch's e-mail too.
    smtp.clear()
    post(client, "/coupure", cible="tous", position="on", etape="appliquer", motif="panne ROR")
    deadline = time.monotonic() + 10
    while not smtp.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    [kill_mail] = smtp.messages
    assert "panne ROR" in kill_mail.message.get_content()
    for s in (by_cli, by_web):
        s.store.engine.dispose()


# ---------------------------------------------------------------------------------------------
# Login, throttling, sessions


def test_sixth_attempt_after_five_wrong_passwords_is_refused_for_15_minutes(site: Site) -> None:
    def attempt(password: str) -> TestResponse:
        client = site.client()
        return post(client, "/connexion", identifiant=LEAD, mot_de_passe=password)

    with capture_logs() as logs:
        statuses = [attempt(f"mauvais mot de passe {i}").status_code for i in range(5)]
    assert statuses == [401] * 5  # a lock answers as a wrong password does (SPEC §10.3)
    refused = attempt(LEAD_PW)  # the right one: still refused
    assert refused.status_code == 401 and "Identifiant ou mot de passe incorrect" in refused.text
    site.clock.advance(minutes=14, seconds=59)
    assert attempt(LEAD_PW).status_code == 401
    site.clock.advance(seconds=2)
    assert attempt(LEAD_PW).status_code == 303
    # The other account was never affected; nothing logged holds a password.
    assert site.login(VIEWER, VIEWER_PW)
    assert "mauvais mot de passe" not in json.dumps(logs, default=str)
    assert any(e["event"] == "web_account_locked" and e["account"] == LEAD for e in logs)
    # A success resets the count: four more failures do not lock.
    assert [attempt("faux faux faux faux").status_code for _ in range(4)] == [401] * 4
    assert attempt(LEAD_PW).status_code == 303


def test_unknown_or_disabled_accounts_get_the_same_refusal(site: Site) -> None:
    unknown = post(site.client(), "/connexion", identifiant="personne", mot_de_passe=LEAD_PW)
    wrong = post(site.client(), "/connexion", identifiant=LEAD, mot_de_passe="pas le bon du tout")
    Accounts(site.store, hasher=FAST).disable(VIEWER)
    disabled = post(site.client(), "/connexion", identifiant=VIEWER, mot_de_passe=VIEWER_PW)
    assert unknown.status_code == wrong.status_code == disabled.status_code == 401
    assert "Identifiant ou mot de passe incorrect" in disabled.text


def test_session_expires_after_session_minutes(site: Site) -> None:
    client = site.login()
    site.clock.advance(minutes=59)
    assert client.get("/unites").status_code == 200
    site.clock.advance(minutes=2)
    expired = client.get("/unites")
    assert expired.status_code == 303 and expired.headers["Location"] == "/connexion"
    assert "Votre session a expiré" in client.get("/connexion").text
    assert client.get("/unites").status_code == 303  # the session is gone for good
    before = snapshot(site)
    kill = {"cible": "tous", "position": "on", "etape": "appliquer", "motif": "x"}
    assert client.post("/coupure", data=kill).status_code == 403
    assert snapshot(site) == before


def test_disabling_an_account_or_changing_its_password_ends_its_sessions(site: Site) -> None:
    accounts = Accounts(site.store, hasher=FAST)
    lead, viewer = site.login(), site.login(VIEWER, VIEWER_PW)
    accounts.disable(VIEWER)
    assert viewer.get("/unites").status_code == 303
    accounts.set_password(LEAD, "un tout nouveau mot de passe")
    assert lead.get("/unites").status_code == 303
    assert site.login(LEAD, "un tout nouveau mot de passe").get("/unites").status_code == 200


def test_logout_ends_the_session(site: Site) -> None:
    client = site.login()
    response = post(client, "/deconnexion")
    assert response.status_code == 303 and response.headers["Location"] == "/connexion"
    assert "Vous êtes déconnecté" in client.get("/connexion").text
    assert client.get("/unites").status_code == 303


def test_session_secret_is_kept_in_the_state_store_and_shared(site: Site) -> None:
    client = site.login()
    again = create_app(site.config, open_store(site.config.state_url), clock=site.clock)
    assert again.config["SECRET_KEY"] == site.app.config["SECRET_KEY"]
    cookie = client.get_cookie("rorfeed_session")
    assert cookie is not None
    other = again.test_client()
    other.set_cookie("rorfeed_session", cookie.value)
    assert other.get("/unites").status_code == 200  # another process, same session


# ---------------------------------------------------------------------------------------------
# `rorfeed users`


def test_users_add_list_passwd_disable(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = site.path / "pw.txt"
    secret_file.write_text("mot de passe depuis un fichier\n")
    with capture_logs() as logs:
        # The production hasher (Argon2id, RFC 9106 parameters) once; the cheap one after.
        assert users(site.config, "add", "alice", "lead", str(secret_file)) == 0
        monkeypatch.setattr("sys.stdin", _Stdin("mot de passe depuis stdin\n"))
        assert run_users(site, "add", "bob", "viewer", "-") == 0
    stored = site.store.web_user("alice")
    assert stored is not None and stored.password_hash.startswith("$argon2id$v=19$m=65536,t=3")
    accounts = Accounts(site.store, hasher=FAST)
    assert accounts.authenticate("alice", "mot de passe depuis un fichier").user is not None
    assert accounts.authenticate("bob", "mot de passe depuis stdin").user is not None

    # On a terminal: asked twice, never echoed.
    answers = iter(["mot de passe au clavier", "mot de passe au clavier"])
    monkeypatch.setattr("sys.stdin", _Stdin("", tty=True))
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert run_users(site, "passwd", "bob", "lead", None) == 0
    assert accounts.authenticate("bob", "mot de passe au clavier").user is not None
    assert site.store.web_user("bob").role == "lead"  # type: ignore[union-attr]
    answers = iter(["premier mot de passe", "second mot de passe"])
    assert run_users(site, "passwd", "bob", None, None) == 1  # they differ

    capsys.readouterr()
    assert run_users(site, "disable", "alice", None, None) == 0
    assert run_users(site, "list", None, None, None) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "ROLE", "STATE", "CREATED", "CHANGED"]
    table = {line.split()[0]: line.split()[1:3] for line in out[1:]}
    assert table == {
        "alice": ["lead", "disabled"],
        "bob": ["lead", "active"],
        LEAD: ["lead", "active"],
        VIEWER: ["viewer", "active"],
    }
    # passwd re-enables.
    monkeypatch.setattr("sys.stdin", _Stdin("encore un mot de passe\n"))
    assert run_users(site, "passwd", "alice", None, "-") == 0
    assert not site.store.web_user("alice").disabled  # type: ignore[union-attr]
    captured = capsys.readouterr()
    text = captured.out + captured.err + json.dumps(logs, default=str)
    for password in ("depuis un fichier", "depuis stdin", "au clavier", "encore un"):
        assert password not in text


def test_users_refusals(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = site.path / "pw.txt"
    pw.write_text("un mot de passe assez long")
    short = site.path / "short.txt"
    short.write_text("court")
    assert run_users(site, "add", "rorfeed", "lead", str(pw)) == 1
    assert run_users(site, "add", "RorFeed", "lead", str(pw)) == 1
    assert "reserved" in capsys.readouterr().err
    with pytest.raises(AccountError):
        Accounts(site.store, hasher=FAST).add("rorfeed", Role.LEAD, "un mot de passe assez long")
    assert run_users(site, "add", "dave", "lead", str(short)) == 1
    assert "at least 12 characters" in capsys.readouterr().err
    assert run_users(site, "add", LEAD, "lead", str(pw)) == 1  # taken
    assert run_users(site, "add", "a b", "lead", str(pw)) == 1  # invalid name
    assert run_users(site, "passwd", "nobody", None, str(pw)) == 1
    assert run_users(site, "disable", "nobody", None, None) == 1
    assert run_users(site, "list", "nobody", None, None) == 1
    assert run_users(site, "add", "eve", None, str(pw)) == 2  # --role needed
    assert run_users(site, "add", None, "lead", str(pw)) == 2
    assert run_users(site, "disable", "eve", "lead", None) == 2
    assert run_users(site, "add", "eve", "admin", str(pw)) == 2
    monkeypatch.setattr("sys.stdin", _Stdin("", tty=False))
    assert run_users(site, "add", "eve", "lead", None) == 2  # no terminal, no file
    assert "--password-file" in capsys.readouterr().err
    assert run_users(site, "add", "eve", "lead", str(site.path / "absent")) == 1
    assert {u.name for u in site.store.web_users()} == {LEAD, VIEWER}


def run_users(site: Site, *args: str | None) -> int:
    action, name, role, password_file = args
    assert action is not None
    return users(site.config, action, name, role, password_file, hasher=FAST)


class _Stdin:
    def __init__(self, text: str, tty: bool = False) -> None:
        self.text, self.tty = text, tty

    def read(self) -> str:
        return self.text

    def isatty(self) -> bool:
        return self.tty


# ---------------------------------------------------------------------------------------------
# The real server


def test_real_server_over_tls_sets_secure_cookies(template: Path, tmp_path: Path) -> None:
    tls = self_signed(tmp_path)
    port = free_port()
    web = f'\n[web]\nlisten = "127.0.0.1:{port}"\ntls_cert = "{tls.cert}"\ntls_key = "{tls.key}"\n'
    s = make_site(template, tmp_path / "site", web=web)
    server = make_server(s.config, s.app)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        jar = CookieJar()
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=tls.client_context()),
            urllib.request.HTTPCookieProcessor(jar),
        )
        with opener.open(f"https://127.0.0.1:{port}/unites", timeout=10) as response:
            assert response.url.endswith("/connexion")
            assert response.headers["Strict-Transport-Security"].startswith("max-age=")
            assert response.headers["X-Frame-Options"] == "DENY"
            page = response.read().decode()
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        [cookie] = list(jar)
        assert cookie.secure and cookie.has_nonstandard_attr("HttpOnly")
        form = urllib.parse.urlencode(
            {"csrf": token.group(1), "identifiant": LEAD, "mot_de_passe": LEAD_PW}
        ).encode()
        with opener.open(f"https://127.0.0.1:{port}/connexion", data=form, timeout=10) as r:
            assert r.url.endswith("/unites") and "Médecine" in r.read().decode()
        # Plain HTTP on the TLS port gets nothing.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /connexion HTTP/1.0\r\n\r\n")
            try:
                answer = sock.recv(4096)
            except ConnectionResetError:
                answer = b""
            assert b"Identifiant" not in answer
    finally:
        server.stop()
        thread.join(timeout=10)
        s.store.engine.dispose()


def test_rorfeed_web_serves_and_stops_on_sigterm(template: Path, tmp_path: Path) -> None:
    port = free_port()
    s = make_site(template, tmp_path / "site", web=f'\n[web]\nlisten = "127.0.0.1:{port}"\n')
    s.store.engine.dispose()
    script = (
        "import sys\n"
        "from rorfeed import logging as rlog\n"
        "from pathlib import Path\n"
        "from rorfeed.config import load\n"
        "from rorfeed.web.server import serve\n"
        "rlog.configure(json_output=True)\n"
        "sys.exit(serve(load(Path(sys.argv[1]))))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(s.path / "rorfeed.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/connexion", timeout=2
                ) as response:
                    assert response.status == 200
                    assert "Connexion" in response.read().decode()
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "rorfeed web did not start listening"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == ""
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "web_listening" in events and "web_stopped" in events


# ---------------------------------------------------------------------------------------------
# The unit file


DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "systemd"


def _directives(path: Path) -> set[str]:
    return {
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith(("#", "[")) and "=" in line
    }


def test_web_unit_is_hardened_like_the_daemon_and_passes_systemd_analyze(tmp_path: Path) -> None:
    web, daemon = (
        _directives(DEPLOY / "rorfeed-web.service"),
        _directives(DEPLOY / "rorfeed.service"),
    )
    # Every sandboxing and identity line of the daemon's unit is in the web page's too.
    shared = {
        d
        for d in daemon
        if d.split("=")[0].startswith(("Protect", "Private", "Restrict", "SystemCall", "User"))
        or d.split("=")[0]
        in {
            "NoNewPrivileges",
            "CapabilityBoundingSet",
            "AmbientCapabilities",
            "ProcSubset",
            "LockPersonality",
            "MemoryDenyWriteExecute",
            "RemoveIPC",
            "DevicePolicy",
            "KeyringMode",
            "UMask",
            "Group",
            "StateDirectory",
            "ConfigurationDirectory",
            # Not LoadCredential: the page loads only its own (tests/test_web_scope.py).
            "RestartPreventExitStatus",
        }
    }
    assert len(shared) > 25
    assert shared <= web, shared - web
    assert "ExecStart=/opt/rorfeed/bin/rorfeed --config /etc/rorfeed/rorfeed.toml web" in web
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install Debian's systemd (scripts/test does)"
    unit = tmp_path / "rorfeed-web.service"
    unit.write_text(
        (DEPLOY / "rorfeed-web.service")
        .read_text()
        .replace("/opt/rorfeed/bin/rorfeed", "/bin/true")  # not installed here
    )
    result = subprocess.run(
        [analyze, "verify", str(unit)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
