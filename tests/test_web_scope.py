"""`rorfeed web` reads only the state store, `[web]` and `[notify]` (SPEC §10.3): no secret or
key file of a source or a destination is opened, so a bug in the page cannot reach them and its
systemd unit loads none of the daemon's credentials."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rorfeed.config import load
from rorfeed.errors import ConfigError
from tests.pg import free_port
from tests.sites import mapping_csv, site_toml, write_site

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "systemd"

SQL_SOURCE = """kind = "sql"
url = "postgresql+psycopg://reader@127.0.0.1:5432/beds"
password_file = "credentials/db-password"
query = "SELECT 1"
"""
SFTP_DESTINATION = """
[[destinations]]
name = "operateur"
kind = "sftp"
host = "127.0.0.1"
username = "etab"
private_key = "credentials/id_ed25519"
passphrase_file = "credentials/sftp-passphrase"
known_hosts = "credentials/known_hosts"
remote_dir = "/depot"
"""


def site(tmp_path: Path, port: int = 8465) -> Path:
    (tmp_path / "page").mkdir()
    (tmp_path / "page" / "notify-password").write_text("smtp-secret\n")
    toml = site_toml(
        source=SQL_SOURCE,
        destinations=SFTP_DESTINATION,
        extra=f'\n[web]\nlisten = "127.0.0.1:{port}"\n'
        '\n[notify]\nsmtp_host = "127.0.0.1"\nsender = "rorfeed@h.fr"\n'
        'recipients = ["cellule@h.fr"]\npassword_file = "page/notify-password"\n',
    )
    return write_site(tmp_path, toml, mapping_csv([("A", "1", "Unité A")]))


def write_daemon_credentials(tmp_path: Path) -> None:
    (tmp_path / "credentials").mkdir()
    for name, text in (
        ("db-password", "db-secret"),
        ("id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\n"),
        ("sftp-passphrase", "key-secret"),
        ("known_hosts", "127.0.0.1 ssh-ed25519 AAAA\n"),
    ):
        (tmp_path / "credentials" / name).write_text(text)


def test_the_page_reads_only_the_secrets_of_web_notify_and_the_state(tmp_path: Path) -> None:
    path = site(tmp_path)
    write_daemon_credentials(tmp_path)
    daemon, page = load(path), load(path, for_web=True)
    assert "db-secret" in daemon.secrets.values()
    assert "key-secret" in daemon.secrets.values()
    assert set(page.secrets) == {"notify.password"}
    assert page.file == daemon.file  # the same configuration, validated the same way


def test_the_page_needs_none_of_the_daemons_credential_files(tmp_path: Path) -> None:
    path = site(tmp_path)  # no credentials/ folder: what the page's systemd unit sees
    with pytest.raises(ConfigError) as info:
        load(path)
    assert any("establishments[0].source.password_file" in p for p in info.value.problems)
    assert any("destinations[0].private_key" in p for p in info.value.problems)
    assert set(load(path, for_web=True).secrets) == {"notify.password"}


def test_the_page_still_refuses_what_the_daemon_refuses(tmp_path: Path) -> None:
    path = site(tmp_path)
    path.write_text(path.read_text().replace("reader@", "reader:pw@"))
    with pytest.raises(ConfigError) as info:
        load(path, for_web=True)
    assert [p.split(":")[1].strip() for p in info.value.problems] == [
        "establishments[0].source.url"
    ]


def test_rorfeed_web_serves_without_the_daemons_credentials(tmp_path: Path) -> None:
    port = free_port()
    path = site(tmp_path, port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rorfeed", "--config", str(path), "web"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                url = f"http://127.0.0.1:{port}/connexion"
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate(timeout=5)
                assert time.monotonic() < deadline, "rorfeed web did not start listening"
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_the_page_unit_loads_only_the_page_credentials() -> None:
    page = (DEPLOY / "rorfeed-web.service").read_text()
    daemon = (DEPLOY / "rorfeed.service").read_text()
    loads = [line for line in page.splitlines() if line.startswith("LoadCredential=")]
    assert loads == ["LoadCredential=rorfeed-web:/etc/rorfeed/web-credentials"]
    # The daemon reads the page's folder too (the state store's and the relay's passwords).
    assert "LoadCredential=rorfeed-web:/etc/rorfeed/web-credentials" in daemon.splitlines()
    assert "LoadCredential=rorfeed:/etc/rorfeed/credentials" in daemon.splitlines()
