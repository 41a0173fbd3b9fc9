"""Destination kinds: a plain registry from `kind` to what the kind declares (`sections.Kind`).

Each kind is a module (or a package when its code is heavy) holding its section model and a
factory `(config, index) -> Transport` that imports the heavy code only when called, so that
`import rorfeed.transports` stays cheap (no paramiko). Adding a kind is that module, its tests
and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rorfeed.sections import Kind
from rorfeed.transports import directory, sftp
from rorfeed.transports.base import Transport

if TYPE_CHECKING:
    from rorfeed.config import Config

TransportFactory = Callable[["Config", int], Transport]

DESTINATIONS: dict[str, Kind[TransportFactory]] = {
    "sftp": Kind(sftp.SftpDestinationSection, sftp.open_transport, "an SFTP server"),
    "directory": Kind(directory.DirectoryDestinationSection, directory.build, "a local folder"),
}


def open_transport(config: Config, index: int) -> Transport:
    """The transport of `config.file.destinations[index]` (not connected yet)."""
    return DESTINATIONS[config.file.destinations[index].kind].open(config, index)


__all__ = ["DESTINATIONS", "Transport", "TransportFactory", "open_transport"]
