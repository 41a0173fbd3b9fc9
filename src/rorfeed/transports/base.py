"""What every destination kind offers: a session that puts files safely under their final name."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Protocol, Self


class Session(Protocol):
    """One connection to a destination, used for all the files of one cycle."""

    def upload(self, local: Path, name: str) -> str:
        """Upload `local` under a temporary name beside `name`, check its size; return that name.

        Nothing is visible under `name` yet: a failure here is always safe to retry.
        Raises `TransportError`.
        """
        ...

    def commit(self, temp_name: str, name: str) -> None:
        """Rename the uploaded temporary file to its final `name` (atomically on the server).

        A failure here leaves the outcome unknown: the caller settles it with `size_of`.
        """
        ...

    def size_of(self, name: str) -> int | None:
        """The size of the final-name file `name` on the destination, None when absent."""
        ...

    def discard(self, name: str) -> None:
        """Remove the temporary file `upload` would use for `name`, if any (best effort)."""
        ...

    def probe(self) -> None:
        """Prove the remote directory exists and is writable (temporary probe file, removed)."""
        ...

    def describe(self) -> str:
        """What the connection established, for `rorfeed check` (e.g. the verified host key)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Transport(Protocol):
    where: str  # how messages name the destination, e.g. `destination "sesan" (sftp u@h:22)`

    def open(self, timeout: float) -> Session:
        """Connect (and authenticate) within `timeout` seconds. Raises `TransportError`."""
        ...
