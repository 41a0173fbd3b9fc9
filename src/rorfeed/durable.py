"""Making a rename or a new file survive a power cut: the one `fsync` of a folder.

A rename is durable only once its folder's entry is on disk; the outbox (local files) and the
`directory` destination both need it.
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
