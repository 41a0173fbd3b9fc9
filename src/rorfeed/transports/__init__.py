"""Destination kinds: a plain registry from `kind` to the module that builds its transport.

Each module has `build(config, index) -> Transport`. Modules are imported only when a
destination of their kind is used, so that `import rorfeed.transports` stays cheap (no paramiko).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rorfeed.config import Config
    from rorfeed.transports.base import Transport

TRANSPORT_KINDS: dict[str, str] = {
    "sftp": "rorfeed.transports.sftp",
    "directory": "rorfeed.transports.directory",
}


def open_transport(config: Config, index: int) -> Transport:
    """The transport of `config.file.destinations[index]` (not connected yet)."""
    kind = config.file.destinations[index].kind
    module = importlib.import_module(TRANSPORT_KINDS[kind])
    build: Callable[[Config, int], Transport] = module.build
    return build(config, index)


def plain_name(name: str) -> str:
    """`name` when it is a plain file name a consumer may see; ValueError otherwise (a bug)."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise ValueError(f"not a plain file name: {name!r}")
    return name
