"""The fault suite's PostgreSQL server under the test's control (the `pg` fixture of
tests/faults/conftest.py): stopped abruptly and started again on the same port."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from tests.pg import PgServer


@dataclass
class PgControl:
    """A PostgreSQL server the test may stop abruptly and start again on the same port."""

    server: PgServer

    def _pg_ctl(self, *args: str) -> None:
        cmd = [str(self.server.bin_dir / "pg_ctl"), "-D", str(self.server.data_dir), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"pg_ctl {' '.join(args)}: {done.stdout}{done.stderr}"

    def stop_immediate(self) -> None:
        """`pg_ctl stop -m immediate`: every backend killed, no shutdown checkpoint."""
        self._pg_ctl("-m", "immediate", "-w", "-t", "30", "stop")

    def start(self) -> None:
        root = self.server.data_dir.parent
        # A commit is durable once acknowledged (synchronous_commit=on, PostgreSQL's default):
        # the other tests' server trades that for speed, which a crash test cannot. fsync
        # stays off: `stop -m immediate` kills the server, not the machine.
        options = (
            f"-p {self.server.port} -k {root} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=on -c full_page_writes=off"
        )
        self._pg_ctl("-l", str(root / "server.log"), "-w", "-t", "50", "-o", options, "start")

    def running(self) -> bool:
        return (self.server.data_dir / "postmaster.pid").exists()
