"""A database password never sits in a URL of the configuration, and no message prints one
(SPEC §3): the state store's password comes from `daemon.state_password_file|_env`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rorfeed.config import load
from rorfeed.errors import ConfigError
from rorfeed.url_password import url_password, without_password
from tests.pg import PgServer
from tests.sites import directory_destination, mapping_csv, site_toml, write_site

SECRET = "pw-s3cret/with space"
MAPPING = mapping_csv([("A", "1", "Unité A")])


def rorfeed(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rorfeed", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def site(tmp_path: Path, daemon: str = "", source: str | None = None) -> Path:
    out = directory_destination("out")
    if source is None:
        return write_site(tmp_path, site_toml(destinations=out, daemon=daemon), MAPPING)
    toml = site_toml(destinations=out, daemon=daemon, source=source)
    return write_site(tmp_path, toml, MAPPING)


def test_the_password_of_a_url_is_read_as_sqlalchemy_reads_it() -> None:
    assert url_password("postgresql+psycopg://u:a/b c@db.local:5432/beds") == "a/b c"
    assert url_password("postgresql+psycopg://u@db.local:5432/beds") is None
    assert url_password("postgresql+psycopg://db.local:5432/beds") is None
    assert url_password("sqlite:////var/lib/rorfeed/state.db") is None
    shown = without_password("postgresql+nosuchdriver://u:pw@db.local/beds")
    assert shown == "postgresql+nosuchdriver://u:***@db.local/beds"


def test_a_password_in_state_url_is_a_configuration_error_naming_the_key(tmp_path: Path) -> None:
    path = site(tmp_path, daemon=f'state_url = "postgresql+nosuchdriver://u:{SECRET}@h/db"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [
        "rorfeed.toml: daemon.state_url: holds a password — remove it from the URL and put it"
        " in daemon.state_password_file (or daemon.state_password_env)"
    ]
    # Every command says so, exits 2, and never prints the password (the review's case).
    done = rorfeed(path, "status")
    assert done.returncode == 2
    assert "daemon.state_url: holds a password" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


def test_a_password_in_a_source_url_is_a_configuration_error_naming_the_key(
    tmp_path: Path,
) -> None:
    source = f'kind = "sql"\nurl = "postgresql+psycopg://u:{SECRET}@h/beds"\nquery = "SELECT 1"\n'
    path = site(tmp_path, source=source)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [
        "rorfeed.toml: establishments[0].source.url: holds a password — remove it from the URL"
        " and put it in establishments[0].source.password_file (or"
        " establishments[0].source.password_env)"
    ]
    assert "s3cret" not in rorfeed(path, "check").stderr


def test_an_unusable_state_url_is_reported_without_its_password(tmp_path: Path) -> None:
    (tmp_path / "state.pw").write_text(SECRET + "\n")
    daemon = 'state_url = "postgresql+nosuchdriver://u@h/db"\nstate_password_file = "state.pw"\n'
    done = rorfeed(site(tmp_path, daemon=daemon), "status")
    assert done.returncode == 1
    assert "nosuchdriver" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


@pytest.mark.postgres
def test_the_state_store_password_comes_from_its_file(tmp_path: Path, pg_server: PgServer) -> None:
    pg_server.create_db("state_password")
    pg_server.create_role("rorfeed_state", SECRET)  # it must give its password (scram)
    pg_server.execute("postgres", "ALTER DATABASE state_password OWNER TO rorfeed_state")
    url = pg_server.url("state_password", user="rorfeed_state")
    daemon = f'state_url = "{url}"\nstate_password_file = "state.pw"\n'
    path = site(tmp_path, daemon=daemon)

    (tmp_path / "state.pw").write_text("not the password\n")
    refused = rorfeed(path, "status")
    assert refused.returncode == 1
    assert "password authentication failed" in refused.stderr
    assert "not the password" not in refused.stderr

    (tmp_path / "state.pw").write_text(SECRET + "\n")
    done = rorfeed(path, "status")
    assert done.returncode == 0, done.stderr
    assert "Last cycles:" in done.stdout
