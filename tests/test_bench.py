"""The benchmark (issue 6) still runs end to end: its smallest size, one round.

It asserts no speed (figures belong in the benchmark's output, not in a test): only that every
measurement was taken and that the table was printed. The benchmark checks by itself that each
run delivered its three files.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.sshd


def test_the_benchmark_prints_its_table_and_every_figure(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            *("--sizes", "100", "--runs", "1", "--daemon-n", "100", "--json", str(figures)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    header = r"\| N +\| floor s \| run-once s \(x floor\) \| cycle in-process s \(x floor\) \|"
    assert re.search(header, done.stdout), done.stdout
    assert re.search(r"^\| +100 \| +[0-9.]+ \|", done.stdout, re.MULTILINE), done.stdout
    data = json.loads(figures.read_text(encoding="utf-8"))
    [size] = data["sizes"]
    assert size["n"] == 100
    for key in ("floor", "run_once", "cycle", "run_once_rss"):
        assert len(size[key]) == 1 and size[key][0] > 0, key
    assert data["daemon_idle_rss_kb"] > 0
    assert data["help_seconds"] > 0
