"""The page's logins (SPEC §10.3, issue 17): lockout cannot be raced, a locked account
answers as an unknown name does.

The lockout race runs against the real server on loopback, with a hasher that holds the right
password's check until the wrong ones are done.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from structlog.testing import capture_logs
from werkzeug.test import TestResponse

from rorfeed.config import Config, load
from rorfeed.state import Store, open_store
from rorfeed.users_cli import users
from rorfeed.web.app import create_app
from rorfeed.web.auth import Accounts, Role
from rorfeed.web.server import make_server
from tests.sites import directory_destination, mapping_csv, site_toml, write_site

LEAD, VIEWER = "chef.projet", "cellule"
LEAD_PW, VIEWER_PW = "mot de passe du chef 1", "mot de passe cellule 2"
KILL = {"cible": "tous", "position": "on", "etape": "appliquer", "motif": "essai de coupure"}
REFUSED = "Identifiant ou mot de passe incorrect"


class Hasher(PasswordHasher):
    """Cheap Argon2id parameters (tests log in often), counting its checks; `hold` keeps the
    check of one password waiting until `release` is set."""

    def __init__(self, hold: str | None = None) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
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


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


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
        return users(self.config, action, name, role, password_file, hasher=self.hasher)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_site(path: Path, hasher: Hasher | None = None) -> Site:
    path.mkdir()
    (path / "depot").mkdir()
    web = f'\n[web]\nlisten = "127.0.0.1:{free_port()}"\nsession_minutes = 60\n'
    toml = site_toml(destinations=directory_destination("depot"), extra=web)
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
    """The real server on loopback for `site.app`; yields its host:port."""
    server = make_server(site.config, site.app)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        host, port = server.bind_addr[:2]
        yield f"{host}:{port}"
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


def test_right_password_checked_while_wrong_ones_lock_the_account_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The right password's check starts before the lock and ends after it (held by the
    hasher): it is refused, the lock stays, and the wrong ones after the lock are not
    counted again."""
    site = make_site(tmp_path / "site", Hasher(hold=LEAD_PW))
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
