"""The page's session-signing key from a credential file (`web.secret_file`, SPEC §10.3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient

from rorfeed.cli import main
from rorfeed.config import load
from rorfeed.errors import ConfigError
from rorfeed.state import open_store
from rorfeed.web.app import create_app
from rorfeed.web.auth import Accounts, Role
from tests.sites import directory_destination, mapping_csv, site_toml, write_site

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
KEY = "k" * 40


def app_for(folder: Path, web: str) -> Flask:
    """The page of the site in `folder` (made on first use, with an account) with `[web]`."""
    toml = site_toml(destinations=directory_destination("out"), extra=f"\n[web]\n{web}")
    config = load(write_site(folder, toml, mapping_csv([("A", "1", "Unité A")])))
    store = open_store(config.state_url)
    if store.web_user("chef") is None:
        Accounts(store, hasher=FAST).add("chef", Role.LEAD, "un mot de passe long")
    return create_app(config, store, hasher=FAST)


def logged_in(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.get("/connexion")
    with client.session_transaction() as session:
        token = session["csrf"]
    answer = client.post(
        "/connexion",
        data={"csrf": token, "identifiant": "chef", "mot_de_passe": "un mot de passe long"},
    )
    assert answer.status_code == 303
    return client


def cookie_of(client: FlaskClient) -> str:
    cookie = client.get_cookie("rorfeed_session")
    assert cookie is not None
    return cookie.value


def answer_with(app: Flask, cookie: str) -> int:
    client = app.test_client()
    client.set_cookie("rorfeed_session", cookie)
    return client.get("/unites").status_code


def test_sessions_are_signed_with_the_credential_not_the_stored_key(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    secret = f'secret_file = "{tmp_path / "key"}"\n'
    cookie = cookie_of(logged_in(app_for(tmp_path, secret)))
    # Another process with the same credential accepts the session; one signing with the key
    # kept in the state store (the same store) does not.
    assert answer_with(app_for(tmp_path, secret), cookie) == 200
    assert answer_with(app_for(tmp_path, ""), cookie) == 303
    stored = cookie_of(logged_in(app_for(tmp_path, "")))
    assert answer_with(app_for(tmp_path, secret), stored) == 303


def test_a_short_key_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("too short\n")
    with pytest.raises(ConfigError) as info:
        app_for(tmp_path, f'secret_file = "{tmp_path / "key"}"\n')
    assert info.value.problems == [
        "rorfeed.toml: web.secret_file: the key is 9 characters, at least 32 — e.g."
        " `openssl rand -hex 32`"
    ]


def test_rotate_key_ends_every_session_of_a_running_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = app_for(tmp_path, "")
    cookie = cookie_of(logged_in(app))
    assert answer_with(app, cookie) == 200
    assert main(["--config", str(tmp_path / "rorfeed.toml"), "users", "rotate-key"]) == 0
    assert "1 session(s) ended" in capsys.readouterr().err
    # The same process, not restarted: the old cookie is refused, a new login works.
    assert answer_with(app, cookie) == 303
    assert answer_with(app, cookie_of(logged_in(app))) == 200


def test_rotate_key_refuses_when_the_key_comes_from_a_credential(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    app_for(tmp_path, f'secret_file = "{tmp_path / "key"}"\n')
    assert main(["--config", str(tmp_path / "rorfeed.toml"), "users", "rotate-key"]) == 2
    assert "web.secret_file is set" in capsys.readouterr().err
