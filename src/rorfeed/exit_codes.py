"""The exit codes of every `rorfeed` command (README "Commands"), in one place."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # success, rejected records included
    FAILED = 1  # the work failed: a source unreachable, a delivery failed, a change refused
    USAGE = 2  # usage or configuration error
