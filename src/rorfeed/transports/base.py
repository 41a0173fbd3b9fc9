"""What every destination kind offers: a session that puts files safely under their final name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self


class Session(ABC):
    """One connection to a destination, used for all the files of one cycle.

    A base class rather than a protocol so that each kind writes only its operations: the
    context-manager plumbing (close on leaving the `with`) lives here once.
    """

    @abstractmethod
    def upload(self, local: Path, name: str) -> str:
        """Upload `local` under a temporary name beside `name`, check its size; return that name.

        Nothing is visible under `name` yet: a failure here is always safe to retry.
        Raises `TransportError`.
        """
        ...

    @abstractmethod
    def commit(self, temp_name: str, name: str) -> None:
        """Rename the uploaded temporary file to its final `name` (atomically on the server).

        A failure here leaves the outcome unknown: the caller settles it with `size_of`.
        """
        ...

    @abstractmethod
    def size_of(self, name: str) -> int | None:
        """The size of the final-name file `name` on the destination, None when absent."""
        ...

    @abstractmethod
    def discard(self, name: str) -> None:
        """Remove the temporary file `upload` would use for `name`, if any (best effort)."""
        ...

    @abstractmethod
    def probe(self) -> None:
        """Prove the remote directory exists and is writable (temporary probe file, removed)."""
        ...

    @abstractmethod
    def describe(self) -> str:
        """What the connection established, for `rorfeed check` (e.g. the verified host key)."""
        ...

    @abstractmethod
    def close(self) -> None:
        """Release the connection; never raises."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Transport(Protocol):
    where: str  # how messages name the destination, e.g. `destination "sesan" (sftp u@h:22)`

    def open(self, timeout: float) -> Session:
        """Connect (and authenticate) within `timeout` seconds. Raises `TransportError`."""
        ...


def plain_name(name: str) -> str:
    """`name` when it is a plain file name a consumer may see; ValueError otherwise (a bug)."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise ValueError(f"not a plain file name: {name!r}")
    return name
