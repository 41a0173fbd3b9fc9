"""Pivot files (SPEC §5): one snapshot rendered as XML, JSON or CSV, each checked against the
schema shipped beside it (`pivot.xsd`, `pivot.schema.json`, which CSV shares) before it may leave
the machine.

Adding a format is one module meeting `Writer` and one line in `WRITERS`.
"""

from __future__ import annotations

from typing import Protocol

from rorfeed.model import Snapshot
from rorfeed.pivot import csv, json, xml
from rorfeed.pivot._common import Prepared, prepare

__all__ = ["WRITERS", "Prepared", "Writer", "prepare", "render_checked"]


class Writer(Protocol):
    @property
    def extension(self) -> str:
        """File name extension, without the dot."""
        ...

    def write(self, prepared: Prepared) -> bytes:
        """The file's bytes, from what `prepare` worked out once for every format; the same
        snapshot always gives the same bytes.

        Raises `PivotInvalid` when the snapshot cannot be written (text the format cannot carry).
        """
        ...

    def validate(self, data: bytes) -> None:
        """Raise `PivotInvalid`, saying where and why, unless `data` is a valid file."""
        ...


WRITERS: dict[str, Writer] = {
    "xml": xml,
    "json": json,
    "csv": csv,
}


def render_checked(snapshot: Snapshot | Prepared, fmt: str) -> bytes:
    """Render `snapshot` in format `fmt` and prove the result valid; raises `PivotInvalid`.

    A snapshot written in several formats is prepared once (`prepare`) and passed as such.
    An unknown `fmt` is a `KeyError`: configuration accepts only the keys of `WRITERS`.
    """
    writer = WRITERS[fmt]
    prepared = snapshot if isinstance(snapshot, Prepared) else prepare(snapshot)
    data = writer.write(prepared)
    writer.validate(data)
    return data
