"""Fixtures of the fault-injection suite (the option and the run counts: tests/faults/plugin.py).

- `faults_sshd`: an OpenSSH server of the suite's own, whose SFTP subsystem is the real
  `sftp-server` with `-l INFO`, its log in a file (`sftp_log`): the server's record of every
  upload and rename;
- `zygote`: the fork server that starts `rorfeed run-once` and `rorfeed serve` processes;
- `faults_pg`: a PostgreSQL server of the suite's own, that a test may stop (`-m immediate`)
  and start again without disturbing the other tests;
- `site`: a fresh establishment delivering to `faults_sshd`;
- `record_violations`: asserts that a run found no violation, and counts them for the figures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rorfeed import logging as rlog
from tests.faults.harness import SftpLog, Zygote
from tests.faults.pg_control import PgControl
from tests.faults.site import Site
from tests.pg import PgUnavailable, running_pg_server
from tests.sshd import Sshd, SshdUnavailable, running_sshd

SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")


@pytest.fixture(scope="session")
def faults_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    base = tmp_path_factory.mktemp("faults-sshd")
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    if not SFTP_SERVER.exists():
        pytest.fail(f"{SFTP_SERVER} is missing (package openssh-server)", pytrace=False)
    wrapper = base / "sftp-server-logged"
    wrapper.write_text(
        f"#!/bin/sh\nexec {SFTP_SERVER} -e -l INFO 2>>{base / 'sftp.log'}\n", encoding="ascii"
    )
    wrapper.chmod(0o755)
    try:
        with running_sshd(base, shared / "sshd-keys", sftp_subsystem=str(wrapper)) as server:
            yield server
    except SshdUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def sftp_log(faults_sshd: Sshd) -> SftpLog:
    return SftpLog(faults_sshd.base / "sftp.log")


@pytest.fixture(scope="session")
def zygote() -> Iterator[Zygote]:
    server = Zygote()
    yield server
    server.close()


@pytest.fixture(scope="session")
def faults_pg() -> Iterator[PgControl]:
    try:
        with running_pg_server(announce=lambda _text: None) as server:
            control = PgControl(server)
            control.stop_immediate()
            control.start()  # with durable commits
            yield control
            if not control.running():
                control.start()  # so that the context manager stops it cleanly
    except PgUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def pg(faults_pg: PgControl) -> Iterator[PgControl]:
    """The suite's PostgreSQL, running at the start and at the end of the test."""
    if not faults_pg.running():
        faults_pg.start()
    yield faults_pg
    if not faults_pg.running():
        faults_pg.start()


@pytest.fixture
def site(tmp_path: Path, faults_sshd: Sshd) -> Iterator[Site]:
    made = Site(tmp_path, faults_sshd)
    yield made
    made.close()


@pytest.fixture(autouse=True)
def _fault_name(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("faults")
    if marker is not None:
        request.node.user_properties.append(("fault", marker.args[0]))


@pytest.fixture
def record_violations(request: pytest.FixtureRequest) -> Callable[[list[str]], None]:
    """Record a run's violations for the figures, then fail the run if there is any."""

    def record(violations: list[str]) -> None:
        request.node.user_properties.append(("violations", len(violations)))
        assert not violations, "invariants violated:\n" + "\n".join(violations)

    return record


@pytest.fixture
def json_err(capsys: pytest.CaptureFixture[str]) -> Callable[[], str]:
    """The real log pipeline (one JSON object per line on stderr); returns a reader of the
    stderr written since its last call."""
    rlog.configure(json_output=True)

    def read() -> str:
        return capsys.readouterr().err

    return read
