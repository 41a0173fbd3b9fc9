"""The `directory` destination: a local (or mounted) folder, written atomically.

Each file is copied to `.<name>.part` in the folder, fsynced, its size checked, renamed with
`os.replace` to its final name, and the folder fsynced: a reader of the folder never sees a
partial file under a final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rorfeed.durable import fsync_dir
from rorfeed.errors import RemoteMissing, RemoteRefused, TransportError
from rorfeed.sections import DestinationCommon
from rorfeed.transports.base import Session, plain_name

if TYPE_CHECKING:
    from rorfeed.config import Config


class DirectoryDestinationSection(DestinationCommon):
    kind: Literal["directory"] = Field(description="kind of destination", examples=["directory"])
    path: str = Field(description="local folder the files are put into", examples=["out"])


class DirectoryTransport:
    def __init__(self, section: DirectoryDestinationSection, path: Path) -> None:
        self.section = section
        self.path = path
        self.where = f'destination "{section.name}" (directory {path})'

    def open(self, timeout: float) -> DirectorySession:
        """Nothing to connect; the folder is checked by each operation."""
        del timeout  # local file system: no network step to bound
        return DirectorySession(self.path, self.where)


class DirectorySession(Session):
    def __init__(self, path: Path, where: str) -> None:
        self.path = path
        self.where = where

    @contextlib.contextmanager
    def _translating(self, what: str) -> Iterator[None]:
        try:
            yield
        except TransportError:
            raise
        except OSError as exc:
            if not self.path.is_dir():
                raise RemoteMissing(
                    f"{self.where}: {what}: the folder {self.path} does not exist"
                    " (rorfeed never creates it)"
                ) from exc
            if isinstance(exc, PermissionError) or exc.errno in (errno.EROFS, errno.EPERM):
                raise RemoteRefused(
                    f"{self.where}: {what}: the folder {self.path} is not writable ({exc.strerror})"
                ) from exc
            raise TransportError(f"{self.where}: {what}: {exc.strerror or exc}") from exc

    def _check_folder(self, what: str) -> None:
        if not self.path.is_dir():
            raise RemoteMissing(
                f"{self.where}: {what}: the folder {self.path} does not exist"
                " (rorfeed never creates it)"
            )

    def upload(self, local: Path, name: str) -> str:
        plain_name(name)
        self._check_folder(f"put {name}")
        temp = self.path / f".{name}.part"
        try:
            try:
                src = local.open("rb")
            except OSError as exc:
                raise TransportError(
                    f"{self.where}: cannot read local file {local} ({exc.strerror})"
                ) from exc
            with src, self._translating(f"write {temp}"):
                size = os.fstat(src.fileno()).st_size
                with temp.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
            self._check_size(temp, size)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise
        return temp.name

    def commit(self, temp_name: str, name: str) -> None:
        # `temp_name` is what `upload` returned: a bare name inside the folder.
        temp = self.path / Path(temp_name).name
        final = self.path / plain_name(name)
        with self._translating(f"rename {temp} to {final}"):
            temp.replace(final)
            fsync_dir(self.path)

    def _check_size(self, temp: Path, size: int) -> None:
        with self._translating(f"stat {temp}"):
            written = temp.stat().st_size
        if written != size:
            raise TransportError(
                f"{self.where}: {temp} holds {written} bytes of {size}; not renamed"
            )

    def size_of(self, name: str) -> int | None:
        plain_name(name)
        self._check_folder(f"size of {name}")
        with self._translating(f"stat {name}"):
            try:
                return (self.path / name).stat().st_size
            except FileNotFoundError:
                return None

    def discard(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.path / f".{plain_name(name)}.part").unlink(missing_ok=True)

    def describe(self) -> str:
        return f"folder {self.path} writable"

    def probe(self) -> None:
        self._check_folder("probe")
        temp = self.path / f".rorfeed-probe-{secrets.token_hex(8)}.part"
        with self._translating(f"write probe {temp}"):
            try:
                temp.write_bytes(b"rorfeed probe\n")
            finally:
                temp.unlink(missing_ok=True)

    def close(self) -> None:
        pass


def build(config: Config, index: int) -> DirectoryTransport:
    """The transport of `config.file.destinations[index]`, a `directory` destination."""
    section = config.file.destinations[index]
    if not isinstance(section, DirectoryDestinationSection):
        raise TypeError(f"destinations[{index}] is not a directory destination")
    return DirectoryTransport(section, config.resolve(section.path))
