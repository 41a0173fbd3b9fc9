"""The page's sessions and logins (SPEC §10.3, issue 17): sessions end on the server, lockout
cannot be raced, a locked account answers as an unknown name does.

Sessions are driven with the Flask test client (a cookie copied from one client into another is
what an attacker holding a copy does); the lockout race runs against the real server on
loopback, with a hasher that holds the right password's check until the wrong ones are done.
"""

from __future__ import annotations

import http.client
import re
import threading
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from structlog.testing import capture_logs
from werkzeug.test import TestResponse

from rorfeed.config import Config, load
from rorfeed.state import SCHEMA_VERSION, Store, open_store
from rorfeed.users_cli import users
from rorfeed.web.app import create_app
from rorfeed.web.auth import Accounts, Role
from rorfeed.web.server import make_server
from tests.sites import directory_destination, mapping_csv, site_toml, write_site
from tests.smtp import free_port
from tests.web_site import Clock

LEAD, VIEWER = "chef.projet", "cellule"
LEAD_PW, VIEWER_PW = "mot de passe du chef 1", "mot de passe cellule 2"
KILL = {"cible": "tous", "position": "on", "etape": "appliquer", "motif": "essai de coupure"}
REFUSED = "Identifiant ou mot de passe incorrect"


class Hasher(PasswordHasher):
    """Cheap Argon2id parameters (tests log in often), counting its checks; `hold` keeps the
    check of one password waiting until `release` is set."""

    def __init__(self, hold: str | None = None, time_cost: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=1024, parallelism=1)
        self.hold = hold
        self.held = threading.Event()
        self.release = threading.Event()
        self.checks = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.checks += 1
        if self.hold is not None and password == self.hold and not self.release.is_set():
            self.held.set()
            assert self.release.wait(10), "the held check was never released"
        return super().verify(hash, password)


@dataclass
class Site:
    path: Path
    config: Config
    store: Store
    app: Flask
    hasher: Hasher
    clock: Clock

    def client(self) -> FlaskClient:
        return self.app.test_client()

    def login(self, name: str = LEAD, password: str = LEAD_PW) -> FlaskClient:
        client = self.client()
        response = post(client, "/connexion", identifiant=name, mot_de_passe=password)
        assert response.status_code == 303, response.text
        assert response.headers["Location"] == "/unites"
        return client

    def killswitch_on(self) -> bool:
        return any(on for on, _since, _reason in self.store.killswitch_details().values())

    def users(self, *args: str | None) -> int:
        action, name, role, password_file = args
        assert action is not None
        return users(
            self.config, action, name, role, password_file, store=self.store, hasher=self.hasher
        )


def make_site(path: Path, hasher: Hasher | None = None, state_url: str = "") -> Site:
    """A site with two accounts; its state store in work/ unless `state_url` says where."""
    path.mkdir()
    web = f'\n[web]\nlisten = "127.0.0.1:{free_port()}"\nsession_minutes = 60\n'
    daemon = f'state_url = "{state_url}"\n' if state_url else ""
    toml = site_toml(destinations=directory_destination("depot"), daemon=daemon, extra=web)
    mapping = mapping_csv([("REA", "52/100", "Réanimation", "auto")])
    config = load(write_site(path, toml, mapping, [("REA", "10", "1", "2")]))
    store = open_store(config.state_url)
    hasher = hasher or Hasher()
    accounts = Accounts(store, hasher=hasher)
    accounts.add(LEAD, Role.LEAD, LEAD_PW)
    accounts.add(VIEWER, Role.VIEWER, VIEWER_PW)
    clock = Clock(datetime.now(UTC).replace(microsecond=0))  # `users list` reads the real time
    app = create_app(config, store, clock=clock, hasher=hasher, background_email=False)
    return Site(path, config, store, app, hasher, clock)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = make_site(tmp_path / "site")
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


def post(client: FlaskClient, url: str, **form: str) -> TestResponse:
    return client.post(url, data={**form, "csrf": csrf(client)})


def copy_of(client: FlaskClient, app: Flask) -> FlaskClient:
    """Another browser holding a copy of `client`'s session cookie."""
    cookie = client.get_cookie("rorfeed_session")
    assert cookie is not None
    other = app.test_client()
    other.set_cookie("rorfeed_session", cookie.value)
    return other


def to_login(response: TestResponse) -> bool:
    return response.status_code == 303 and response.headers["Location"] == "/connexion"


# ---------------------------------------------------------------------------------------------
# Sessions end on the server


def test_a_cookie_copied_before_logout_is_refused_after_it(site: Site) -> None:
    browser = site.login()
    stolen = copy_of(browser, site.app)
    assert stolen.get("/unites").status_code == 200  # the copy works while the session lives
    assert to_login(post(browser, "/deconnexion"))
    for url in ("/unites", "/coupure", "/compte"):
        assert to_login(copy_of(browser, site.app).get(url)), url
    assert to_login(stolen.get("/unites"))


def test_a_change_sent_with_a_cookie_copied_before_logout_is_refused(site: Site) -> None:
    browser = site.login()
    cookie = browser.get_cookie("rorfeed_session")
    assert cookie is not None
    token = csrf(browser)
    assert to_login(post(browser, "/deconnexion"))
    replay = site.app.test_client()
    replay.set_cookie("rorfeed_session", cookie.value)  # the copy, with its CSRF token
    assert to_login(replay.post("/coupure", data={**KILL, "csrf": token}))
    assert not site.killswitch_on()
    assert site.store.history() == []  # nothing audited under the account


def test_logout_ends_this_session_only(site: Site) -> None:
    office, home = site.login(), site.login()
    assert to_login(post(office, "/deconnexion"))
    assert to_login(office.get("/unites"))
    assert home.get("/unites").status_code == 200


def test_closing_all_my_sessions_ends_those_of_my_other_browsers(site: Site) -> None:
    office, home, cell = site.login(), site.login(), site.login(VIEWER, VIEWER_PW)
    page = office.get("/compte")
    assert page.status_code == 200 and "Fermer toutes mes sessions" in page.text
    assert "2 sessions sont ouvertes" in page.text
    with capture_logs() as logs:
        answer = post(office, "/compte/sessions")
    assert to_login(answer)
    assert "Toutes vos sessions sont fermées (2 sessions fermées)" in office.get("/connexion").text
    assert to_login(home.get("/unites"))
    assert to_login(office.get("/unites"))
    assert cell.get("/unites").status_code == 200  # another account is not touched
    [ended] = [e for e in logs if e["event"] == "web_sessions_ended"]
    assert (ended["account"], ended["by"], ended["sessions"]) == (LEAD, LEAD, 2)
    assert site.login().get("/unites").status_code == 200  # logging in again works


def test_a_lead_closes_every_session_of_another_account(site: Site) -> None:
    lead, cell = site.login(), site.login(VIEWER, VIEWER_PW)
    page = lead.get("/compte")
    assert "Sessions des comptes" in page.text and f'value="{VIEWER}"' in page.text
    with capture_logs() as logs:
        answer = post(lead, "/comptes/sessions", compte=VIEWER)
    assert answer.status_code == 303 and answer.headers["Location"] == "/compte"
    assert f"Sessions du compte « {VIEWER} » fermées (1 session fermée)" in lead.get("/compte").text
    assert to_login(cell.get("/unites"))
    assert lead.get("/unites").status_code == 200
    [ended] = [e for e in logs if e["event"] == "web_sessions_ended"]
    assert (ended["account"], ended["by"], ended["sessions"]) == (VIEWER, LEAD, 1)
    assert post(lead, "/comptes/sessions", compte="personne").status_code == 400


def test_a_viewer_cannot_close_the_sessions_of_another_account(site: Site) -> None:
    lead, cell = site.login(), site.login(VIEWER, VIEWER_PW)
    page = cell.get("/compte")
    assert "Fermer toutes mes sessions" in page.text
    assert "Sessions des comptes" not in page.text and LEAD not in page.text
    with capture_logs() as logs:
        assert post(cell, "/comptes/sessions", compte=LEAD).status_code == 403
    assert lead.get("/unites").status_code == 200
    assert cell.get("/unites").status_code == 200
    assert not [e for e in logs if e["event"] == "web_sessions_ended"]
    # Its own sessions, it may close.
    assert to_login(post(cell, "/compte/sessions"))
    assert to_login(cell.get("/unites"))


def test_users_end_sessions_passwd_and_disable_end_the_sessions(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    cell = site.login(VIEWER, VIEWER_PW)
    assert site.users("end-sessions", VIEWER, None, None) == 0
    assert "1 session(s) of cellule ended" in capsys.readouterr().err
    assert to_login(cell.get("/unites"))
    assert site.users("end-sessions", "personne", None, None) == 1
    assert site.users("end-sessions", None, None, None) == 2
    assert site.users("end-sessions", VIEWER, "lead", None) == 2
    # A new role (with its password) ends the sessions opened with the old one.
    cell = site.login(VIEWER, VIEWER_PW)
    password = site.path / "pw.txt"
    password.write_text(VIEWER_PW)
    assert site.users("passwd", VIEWER, "lead", str(password)) == 0
    assert to_login(cell.get("/unites"))
    cell = site.login(VIEWER, VIEWER_PW)
    assert site.users("disable", VIEWER, None, None) == 0
    assert to_login(cell.get("/unites"))


def test_a_store_of_schema_3_opens_and_keeps_its_accounts(site: Site) -> None:
    url = site.config.state_url
    site.store.engine.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE web_sessions"))
        conn.execute(text("UPDATE rorfeed_meta SET value = '3' WHERE key = 'schema_version'"))
    engine.dispose()
    site.store = open_store(url)
    site.app = create_app(site.config, site.store, clock=site.clock, hasher=site.hasher)
    with site.store.engine.begin() as conn:
        version = conn.execute(
            text("SELECT value FROM rorfeed_meta WHERE key = 'schema_version'")
        ).scalar_one()
    assert version == str(SCHEMA_VERSION)
    browser = site.login()
    assert browser.get("/unites").status_code == 200
    assert to_login(post(browser, "/deconnexion"))


def test_a_login_that_rehashes_the_password_keeps_its_session(site: Site) -> None:
    """Stronger hashing parameters than the stored hash's: the login stores a new hash, and
    the session it opens is not taken for one opened before the password changed."""
    stronger = Hasher(time_cost=2)
    app = create_app(site.config, site.store, clock=site.clock, hasher=stronger)
    browser = app.test_client()
    answer = post(browser, "/connexion", identifiant=LEAD, mot_de_passe=LEAD_PW)
    assert answer.status_code == 303 and answer.headers["Location"] == "/unites"
    assert browser.get("/unites").status_code == 200
    stored = site.store.web_user(LEAD)
    assert stored is not None and ",t=2," in stored.password_hash


# ---------------------------------------------------------------------------------------------
# Logins: one answer for every refusal; lockout cannot be raced


def normalised(response: TestResponse, name: str) -> str:
    """The page without what differs by construction: the CSRF token and the name typed."""
    page = re.sub(r'name="csrf" value="[^"]*"', 'name="csrf" value=""', response.text)
    return page.replace(f'value="{name}"', 'value=""')


def test_unknown_name_wrong_password_and_locked_account_get_the_same_answer(site: Site) -> None:
    def attempt(name: str, password: str) -> tuple[TestResponse, int]:
        before = site.hasher.checks
        response = post(site.client(), "/connexion", identifiant=name, mot_de_passe=password)
        return response, site.hasher.checks - before

    with capture_logs() as logs:
        unknown, unknown_checks = attempt("personne", LEAD_PW)
        wrong, wrong_checks = attempt(LEAD, "pas le bon du tout")
        for i in range(4):
            attempt(LEAD, f"encore un mauvais {i}")
        locked, locked_checks = attempt(LEAD, LEAD_PW)  # the right password, while locked
    assert unknown.status_code == wrong.status_code == locked.status_code == 401
    assert REFUSED in locked.text
    pages = {normalised(unknown, "personne"), normalised(wrong, LEAD), normalised(locked, LEAD)}
    assert len(pages) == 1
    # The same work for each: one password check (timing does not tell them apart either).
    assert unknown_checks == wrong_checks == locked_checks == 1
    # Ops still see why in the log.
    refusals = [e for e in logs if e["event"] == "web_login_refused"]
    assert (refusals[0]["account"], refusals[0]["reason"]) == (None, "refused")
    assert (refusals[1]["account"], refusals[1]["reason"]) == (LEAD, "refused")
    assert (refusals[-1]["account"], refusals[-1]["reason"]) == (LEAD, "locked")
    assert [e["account"] for e in logs if e["event"] == "web_account_locked"] == [LEAD]


@contextmanager
def serving(site: Site) -> Iterator[str]:
    """The real server on loopback for `site.app` (as the other real-server tests start it:
    make_server, prepare, serve in a thread, stop); yields its `web.listen` host:port."""
    server = make_server(site.config, site.app)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        assert site.config.file.web is not None
        yield site.config.file.web.listen
    finally:
        server.stop()
        thread.join(timeout=10)


def login_over_http(address: str, name: str, password: str) -> int:
    """GET the login page (cookie, CSRF token), POST the login; the answer's status."""
    connection = http.client.HTTPConnection(address, timeout=20)
    try:
        connection.request("GET", "/connexion")
        page = connection.getresponse()
        body = page.read().decode()
        cookie = page.getheader("Set-Cookie", "").split(";")[0]
        token = re.search(r'name="csrf" value="([^"]+)"', body)
        assert token is not None and cookie
        form = {"csrf": token.group(1), "identifiant": name, "mot_de_passe": password}
        headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", "/connexion", urllib.parse.urlencode(form), headers)
        answer = connection.getresponse()
        answer.read()
        return answer.status
    finally:
        connection.close()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_right_password_checked_while_wrong_ones_lock_the_account_is_refused(
    backend: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    """The right password's check starts before the lock and ends after it (held by the
    hasher): it is refused, the lock stays, and the wrong ones after the lock are not
    counted again — on both backends of the state store."""
    url = ""
    if backend == "postgresql":
        url = request.getfixturevalue("pg_server").create_db(f"web_race_{backend}")
    site = make_site(tmp_path / "site", Hasher(hold=LEAD_PW), url)
    try:
        with serving(site) as address, capture_logs() as logs:
            right: list[int] = []
            first = threading.Thread(
                target=lambda: right.append(login_over_http(address, LEAD, LEAD_PW))
            )
            first.start()
            assert site.hasher.held.wait(10), "the right password's check never started"
            with ThreadPoolExecutor(max_workers=15) as pool:
                wrong = list(
                    pool.map(
                        lambda i: login_over_http(address, LEAD, f"mauvais mot de passe {i}"),
                        range(15),
                        timeout=30,
                    )
                )
            site.hasher.release.set()
            first.join(timeout=20)
            assert not first.is_alive()
            assert right == [401]  # checked right, but decided once the account was locked
            assert wrong == [401] * 15
            assert login_over_http(address, LEAD, LEAD_PW) == 401  # still locked
            assert login_over_http(address, VIEWER, VIEWER_PW) == 303
        # One lock, by the fifth failure; the other failures and the right password, refused
        # as locked, neither lengthen nor clear it.
        assert [e["account"] for e in logs if e["event"] == "web_account_locked"] == [LEAD]
        reasons = [e["reason"] for e in logs if e["event"] == "web_login_refused"]
        assert reasons.count("refused") == 4 and reasons.count("locked") == 13
        capsys.readouterr()
        assert site.users("list", LEAD, None, None) == 0
        assert "locked until" in capsys.readouterr().out
        # The lock runs out after 15 minutes; then the right password is accepted.
        site.clock.advance(minutes=15, seconds=1)
        assert (
            post(site.client(), "/connexion", identifiant=LEAD, mot_de_passe=LEAD_PW).status_code
            == 303
        )
    finally:
        site.store.engine.dispose()
