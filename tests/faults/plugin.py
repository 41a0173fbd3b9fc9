"""pytest plugin of the fault-injection suite: `--faults-long`, the run counts, the figures.

Registered from tests/conftest.py (`pytest_plugins`): pytest reads `pytest_addoption` only in
the rootdir's conftest and in plugins.

A case is a test function marked `@pytest.mark.faults("what is injected", short=N, long=M)`
taking a `run` argument: it is run N times (the short pass, part of every `pytest` run), or M
times with `--faults-long`. Each run records its invariant violations (`record_violations`);
with `--faults-report PATH` the controller appends one JSON line per run to PATH, which
`scripts/faults-long` turns into the table of figures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults", "fault injection (tests/faults)")
    group.addoption(
        "--faults-long",
        action="store_true",
        default=False,
        help="run each fault-injection case its long count (default: the short CI pass)",
    )
    group.addoption(
        "--faults-seed",
        type=int,
        default=None,
        help="seed of the fault schedules (default: $RORFEED_FAULTS_SEED, else 0)",
    )
    group.addoption(
        "--faults-report",
        default=None,
        help="append one JSON line per fault-injection run to this file",
    )


def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("--faults-seed")
    if seed is not None:
        os.environ["RORFEED_FAULTS_SEED"] = str(seed)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("faults")
    if marker is None or "run" not in metafunc.fixturenames:
        return
    long = metafunc.config.getoption("--faults-long")
    count = int(marker.kwargs["long" if long else "short"])
    metafunc.parametrize("run", range(count), ids=[f"run{i:03d}" for i in range(count)])


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """On the controller (or without xdist): one line per run of a case, for the figures."""
    path = os.environ.get("RORFEED_FAULTS_REPORT_PATH")
    if not path or os.environ.get("PYTEST_XDIST_WORKER") or report.when not in ("setup", "call"):
        return
    props = dict(report.user_properties)
    if "fault" not in props:
        return
    if report.when == "setup" and report.passed:
        return  # the call phase reports it
    line = {
        "fault": props["fault"],
        "test": report.nodeid,
        "outcome": report.outcome,
        "runs": int(str(props.get("runs", 1))),
        "violations": int(str(props.get("violations", 0 if report.passed else 1))),
        "seconds": round(report.duration, 3),
    }
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    report = session.config.getoption("--faults-report")
    if report and not hasattr(session.config, "workerinput"):
        os.environ["RORFEED_FAULTS_REPORT_PATH"] = str(Path(report).absolute())
