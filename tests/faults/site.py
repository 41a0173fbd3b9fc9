"""An establishment's rorfeed set-up in a folder, delivering over SFTP to a test sshd.

Shared by tests/test_delivery.py and the fault-injection suite: a CSV export (or any source
block), its mapping, rorfeed.toml with an `sftp` destination, and what is where afterwards —
the outbox, the archive, the server's folder, the delivery ledger. The files themselves are
written with tests/sites.py, as the in-process tests write theirs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import select

from rorfeed.cli import main
from rorfeed.config import Config, load
from rorfeed.cycle import Cycle, CycleReport, file_timestamp
from rorfeed.state import Store, open_store
from rorfeed.state.schema import files_t
from tests.sites import CSV_SOURCE, FINESS, site_toml, write_export, write_mapping
from tests.sshd import Sshd

DESTINATION = "operator"
EXTENSIONS = ("csv", "json", "xml")  # the order files are sent in (by name)


def names(t: datetime) -> list[str]:
    """The file names of cycle `t`, in the order they are sent."""
    return [f"rorlits_{FINESS}_{file_timestamp(t)}.{ext}" for ext in EXTENSIONS]


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def cycle_time_of(name: str) -> datetime:
    """The cycle time in a file name `rorlits_<finess>_<YYYYMMDDTHHMMSSZ>.<ext>`."""
    stamp = name.rsplit("_", 1)[1].split(".", maxsplit=1)[0]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def wait_for_next_second(after: datetime) -> None:
    """`run-once` names its files after the current second: make sure it is a new one."""
    deadline = time.monotonic() + 5
    while utc_now() <= after:
        assert time.monotonic() < deadline, "the clock did not move"
        time.sleep(0.05)


class Site:
    """An establishment's rorfeed set-up in a folder, delivering to the test sshd.

    `source` is the `[establishments.source]` block (default: the CSV export beside the
    config), `daemon` more keys of `[daemon]`, `extra` more TOML after the destination.
    """

    def __init__(
        self,
        root: Path,
        sshd: Sshd,
        units: int = 2,
        name: str = "Hôpital Test",
        *,
        source: str = CSV_SOURCE,
        daemon: str = "",
        extra: str = "",
    ) -> None:
        self.root = root
        self.sshd = sshd
        self.name = name
        self.source = source
        self.daemon = daemon
        self.extra = extra
        self.remote = sshd.remote_dir()
        self.config_path = root / "rorfeed.toml"
        self.last_stderr = ""
        self.write_source(units)
        self.config = self.configure()
        self._store: Store | None = None

    def write_source(self, units: int, installed: int = 20) -> None:
        codes = [f"U{i:05d}" for i in range(units)]
        write_mapping(self.root, [(c, f"52/{c[1:]}", f"Unité {c}") for c in codes])
        write_export(self.root, [(c, installed, 2, 5) for c in codes])

    def toml(self, **destination: object) -> str:
        """rorfeed.toml's text with the sftp destination's keys overridden."""
        remote = destination.pop("remote_dir", self.remote)
        block = self.sshd.destination_toml(remote, name=DESTINATION, **destination)  # type: ignore[arg-type]
        return site_toml(
            destinations=block,
            daemon=self.daemon,
            source=self.source,
            name=self.name,
            extra=self.extra,
        )

    def configure(self, **destination: object) -> Config:
        """Write rorfeed.toml with the sftp destination's keys overridden; return it loaded."""
        self.config_path.write_text(self.toml(**destination), encoding="utf-8")
        self.config = load(self.config_path)
        return self.config

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.config.state_url)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.engine.dispose()
            self._store = None

    def cycle(self, t: datetime, config: Config | None = None) -> CycleReport:
        return Cycle(config or self.config, self.store, clock=lambda: t).run(t)

    # what is where

    @property
    def work(self) -> Path:
        return self.config.work_dir

    def outbox(self) -> list[str]:
        folder = self.work / "outbox" / DESTINATION
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    def archived(self, status: str) -> list[str]:
        folder = self.work / "archive" / DESTINATION / status
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def archive_copy(self, name: str, status: str = "delivered") -> bytes:
        return (self.work / "archive" / DESTINATION / status / name).read_bytes()

    def server(self) -> list[str]:
        """Every entry of the remote folder, temporary names included."""
        return sorted(p.name for p in self.remote.iterdir()) if self.remote.is_dir() else []

    def ledger(self) -> dict[str, tuple[str, int]]:
        """file name → (status, attempts)."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(files_t.c.file_name, files_t.c.status, files_t.c.attempts))
            return {r.file_name: (r.status, r.attempts) for r in rows}

    def last_errors(self) -> dict[str, str]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(files_t.c.file_name, files_t.c.last_error))
            return {r.file_name: r.last_error for r in rows}

    # runs

    def run_once(self) -> int:
        return main(["--config", str(self.config_path), "run-once"])

    def run_once_process(self, kill: Literal["before", "after"] | None = None) -> int:
        """`rorfeed run-once` in a child process; with `kill`, it SIGKILLs itself around the
        first remote rename (through a wrapper script: no test hook in the product)."""
        args = ["-m", "rorfeed.cli"]
        if kill is not None:
            wrapper = self.root / f"kill_{kill}_rename.py"
            wrapper.write_text(KILL_WRAPPER.format(kill=kill), encoding="utf-8")
            args = [str(wrapper)]
        done = subprocess.run(
            [sys.executable, *args, "--config", str(self.config_path), "run-once"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.last_stderr = done.stderr
        return done.returncode


KILL_WRAPPER = """\
import os
import signal
import sys

from rorfeed.cli import main
from rorfeed.transports.sftp.client import SftpSession

real_commit = SftpSession.commit


def commit(self, temp_name, name):
    if "{kill}" == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_commit(self, temp_name, name)
    if "{kill}" == "after":
        os.kill(os.getpid(), signal.SIGKILL)


SftpSession.commit = commit
sys.exit(main(sys.argv[1:]))
"""


def known_hosts_for(site: Site, port: int) -> Path:
    """known_hosts trusting the sshd's host key under another port (a relay's)."""
    return site.sshd.write_known_hosts(
        site.root / f"known_hosts_{port}", site.sshd.host_ed25519, port=port
    )
