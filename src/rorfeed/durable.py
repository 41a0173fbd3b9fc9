"""Files that survive a power cut: written whole under a temporary name, fsynced, renamed.

A rename is durable only once its folder's entry is on disk; the outbox (local files), the
dry-run output and the `directory` destination all need it. A temporary name carries its
writer's process id, so that what a crash left behind can be told from a write in progress.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush the folder `path`'s entries (a rename or a creation inside it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the whole file or nothing, even on a crash."""
    tmp = write_temp(path, data)
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_temp(path: Path, data: bytes) -> Path:
    """Write `data`, fsynced, to a temporary name beside `path`; return that name.

    The name, `.<name>.<pid>.tmp`, carries the writer's process id: a temporary file whose
    writer is dead was left by a crash, and the next delivery removes it (the outbox's sweep).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def writer_alive(temp_name: str) -> bool:
    """Whether the process that writes the temporary file `temp_name` still runs."""
    pid = temp_name.rsplit(".", 2)[-2]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
