"""pytest plugin: a real, throw-away PostgreSQL server for the tests that need one.

`pg_server` (session scope) runs `initdb` into a fresh temporary folder and starts the
server on a free loopback port, with its socket in that folder. Under pytest-xdist each
worker starts its own server. A missing PostgreSQL installation FAILS the tests that need it
rather than skipping them: a skipped test would hide an untested feature (CI installs
`postgresql`; the binaries are looked up in `$RORFEED_PG_BIN`, `/usr/lib/postgresql/*/bin`,
then `$PATH`).

Outside pytest (bench/run.py), `running_pg_server()` is the same server as a plain context
manager: it raises `PgUnavailable` where the fixture fails the tests.

Authentication is `trust` on loopback, except for roles in the group `PASSWORD_GROUP`, which
must give their password (scram-sha-256): tests can thus prove that a password reaches the
server, and what happens when it is wrong.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

PASSWORD_GROUP = "rorfeed_password_auth"
_OS_USER = "postgres"
_START_ATTEMPTS = 3  # another process may take the free port between our probe and the start
_STEP_TIMEOUT = 60  # seconds for any one initdb / pg_ctl step


class PgUnavailable(RuntimeError):
    """PostgreSQL cannot be found or started; the message says why (the fixture fails with it)."""


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    bin_dir: Path
    data_dir: Path

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3), without password."""
        return f"postgresql+psycopg://{user}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """A superuser connection in autocommit mode; close it (use `with`)."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user="postgres",
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
        )

    def execute(self, dbname: str, *statements: str | sql.SQL | sql.Composed) -> None:
        with self.connect(dbname) as conn:
            for statement in statements:
                conn.execute(statement)

    def create_db(self, name: str) -> str:
        """Create database `name` (dropping any previous one) and return its URL."""
        ident = sql.Identifier(name)
        self.execute(
            "postgres",
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident),
            sql.SQL("CREATE DATABASE {}").format(ident),
        )
        return self.url(name)

    def create_role(self, name: str, password: str) -> None:
        """A login role that must authenticate with `password` (a member of PASSWORD_GROUP)."""
        ident = sql.Identifier(name)
        self.execute(
            "postgres",
            sql.SQL("DROP ROLE IF EXISTS {}").format(ident),
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                ident, sql.Literal(password), sql.Identifier(PASSWORD_GROUP)
            ),
        )


def find_pg_bin() -> Path:
    """The folder of `initdb` and `pg_ctl`; fails the test session's PG tests when absent."""
    try:
        return locate_pg_bin()
    except PgUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


def locate_pg_bin() -> Path:
    """The folder of `initdb` and `pg_ctl`; `PgUnavailable` when absent."""
    override = os.environ.get("RORFEED_PG_BIN")
    candidates = [Path(override)] if override else []

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", p.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise PgUnavailable(
        "PostgreSQL server binaries not found (looked in $RORFEED_PG_BIN, "
        "/usr/lib/postgresql/*/bin and $PATH): install the `postgresql` package — "
        "these tests need a real server and are not skipped"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_postgres(cmd: Sequence[str]) -> list[str]:
    # PostgreSQL refuses to run as root: drop to its own OS user when we are root.
    if os.geteuid() == 0:
        return ["runuser", "-u", _OS_USER, "--", *cmd]
    return list(cmd)


def _run(cmd: Sequence[str], cwd: Path, what: str) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            _as_postgres(cmd),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_STEP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PgUnavailable(f"PostgreSQL {what} did not finish within {_STEP_TIMEOUT} s") from None
    return done


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


_HBA = f"""\
# Written by tests/pg.py. First match wins.
host  all  +{PASSWORD_GROUP}  127.0.0.1/32  scram-sha-256
host  all  all                127.0.0.1/32  trust
local all  all                              trust
"""


@contextmanager
def running_pg_server(announce: Callable[[str], object] = print) -> Iterator[PgServer]:
    """A fresh PostgreSQL on a free loopback port, stopped and removed on exit.

    Raises `PgUnavailable` when it cannot be found or started.
    """
    bin_dir = locate_pg_bin()
    # Not pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    # Short, too: the socket path must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="rorfeed-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        entry = pwd.getpwnam(_OS_USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    started = time.monotonic()
    try:
        done = _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            root,
            "initdb",
        )
        if done.returncode:
            raise PgUnavailable(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        hba = data / "pg_hba.conf"
        hba.write_text(_HBA)
        hba.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(hba, entry.pw_uid, entry.pw_gid)

        server: PgServer | None = None
        for _attempt in range(_START_ATTEMPTS):
            port = free_port()
            options = (
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
                # Throw-away data: durability only costs time.
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            done = _run(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    str(_STEP_TIMEOUT - 10),
                    "-o",
                    options,
                    "start",
                ],
                root,
                "start",
            )
            if done.returncode == 0:
                server = PgServer("127.0.0.1", port, bin_dir, data)
                break
            if "already in use" not in _log_tail(log):
                break
        if server is None:
            raise PgUnavailable(
                f"PostgreSQL did not start:\n{done.stdout}\n{done.stderr}\n{_log_tail(log)}"
            )
        server.execute(
            "postgres", sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(PASSWORD_GROUP))
        )
        # Visible with `pytest -s`, and in the report of a failing test's setup.
        announce(f"PostgreSQL {bin_dir.parent.name} ready in {time.monotonic() - started:.2f} s")
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            _run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], root, "stop"
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        with running_pg_server() as server:
            yield server
    except PgUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
