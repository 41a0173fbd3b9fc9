"""SPEC §9: log lines are one JSON object each for journald, and readable on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

CHILD = """
import structlog
from rorfeed import logging as rlog
rlog.configure()
rlog.register_secrets(["s3cret-pw"])
structlog.get_logger("rorfeed.cycle").warning(
    "unit_rejected", ror_id="52/1", rules=["count_negative"], url="postgresql://u:s3cret-pw@db"
)
"""
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _stderr_of_child(on_terminal: bool) -> str:
    if not on_terminal:
        done = subprocess.run(
            [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True
        )
        return done.stderr
    master, slave = pty.openpty()
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD], stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert child.wait(60) == 0
    finally:
        os.close(master)
    return b"".join(chunks).decode()


def test_on_a_terminal_a_log_line_is_for_a_person() -> None:
    text = ANSI.sub("", _stderr_of_child(on_terminal=True)).strip()
    assert not text.startswith("{"), text
    assert "unit_rejected" in text and "warn" in text
    assert "ror_id=52/1" in text
    assert "s3cret-pw" not in text and "***" in text


def test_off_a_terminal_each_log_line_is_one_json_object() -> None:
    lines = _stderr_of_child(on_terminal=False).splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert (entry["event"], entry["level"], entry["ror_id"]) == ("unit_rejected", "warning", "52/1")
    assert "s3cret-pw" not in lines[0]
