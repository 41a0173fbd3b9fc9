"""`kind = "csv"`: the bed counts from a CSV export, or the newest export in a folder.

A missing or unreadable export is a source failure (the establishment's source is down this
cycle), never a configuration error: exports come and go while the configuration stays valid.
"""

from __future__ import annotations

import csv
import io
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rorfeed.errors import SourceError
from rorfeed.model import Extraction, SourceRow
from rorfeed.sections import SourceCommon
from rorfeed.sources._columns import locate_columns
from rorfeed.sources._deadline import run_with_deadline
from rorfeed.sources.base import Source

if TYPE_CHECKING:
    from rorfeed.config import Config


class CsvSourceSection(SourceCommon):
    kind: Literal["csv"] = Field(description="kind of source", examples=["csv"])
    path: str = Field(
        description="a CSV export, or a folder whose newest *.csv (modification time) is read",
        examples=["export.csv"],
    )
    encoding: Literal["utf-8", "cp1252", "latin-1"] = Field("utf-8", description="file encoding")
    delimiter: Literal["", ";", ","] = Field("", description='"" = detect ";" or ","')
    timeout_seconds: float = Field(30, gt=0, description="bound on reading the export")


_UTF8_BOM = b"\xef\xbb\xbf"


class CsvSource:
    """Reads `path` (a file, or a folder's newest `*.csv`) within `timeout_seconds`."""

    def __init__(self, section: CsvSourceSection, path: Path) -> None:
        self._section = section
        self._path = path

    def __repr__(self) -> str:
        return f"CsvSource({str(self._path)!r})"

    def fetch(self) -> Extraction:
        # A hung network share must not hang the cycle: listing, opening and reading are all
        # inside the deadline.
        return run_with_deadline(self._read, self._section.timeout_seconds, str(self._path))

    def _read(self) -> Extraction:
        file = _newest_csv(self._path) if self._path.is_dir() else self._path
        try:
            with file.open("rb") as fh:
                # The time stamp of the very file read, even if the export is replaced meanwhile.
                mtime = os.fstat(fh.fileno()).st_mtime
                data = fh.read()
        except FileNotFoundError:
            raise SourceError(f"{file}: no such file — the export is missing") from None
        except OSError as exc:
            raise SourceError(f"{file}: cannot be read ({exc.strerror or exc})") from exc
        rows = _parse(_decode(data, self._section.encoding, file), self._section.delimiter, file)
        return Extraction(
            rows=rows, file_mtime=datetime.fromtimestamp(mtime, tz=UTC), origin=str(file)
        )


def from_config(config: Config, index: int) -> Source:
    section = config.file.establishments[index].source
    if not isinstance(section, CsvSourceSection):
        raise TypeError(f"establishments[{index}].source is not a csv source")
    return CsvSource(section, config.resolve(section.path))


def _newest_csv(folder: Path) -> Path:
    candidates: list[tuple[int, str, Path]] = []
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise SourceError(f"{folder}: cannot be listed ({exc.strerror or exc})") from exc
    for entry in entries:
        # Hidden files are the usual temporary names of an export being written.
        if entry.suffix.lower() != ".csv" or entry.name.startswith("."):
            continue
        try:
            st = entry.stat()
        except OSError:  # removed since the listing: not a candidate any more
            continue
        if entry.is_file():
            candidates.append((st.st_mtime_ns, entry.name, entry))
    if not candidates:
        raise SourceError(f"{folder}: no *.csv file in this folder — the export is missing")
    return max(candidates)[2]


def _decode(data: bytes, encoding: str, file: Path) -> str:
    if encoding != "utf-8" and data.startswith(_UTF8_BOM):
        # Decoding on would turn every accented unit code into mojibake: unmapped units.
        raise SourceError(
            f'{file}: starts with a UTF-8 byte order mark but encoding is "{encoding}"'
            ' — set encoding = "utf-8"'
        )
    codec = "utf-8-sig" if encoding == "utf-8" else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SourceError(
            f"{file}: line {line}: byte 0x{data[exc.start]:02x} is not valid {encoding}"
            " — check the source's encoding setting"
        ) from exc


def _detect_delimiter(header: str, file: Path) -> str:
    semicolons, commas = header.count(";"), header.count(",")
    if not semicolons and not commas:
        raise SourceError(f'{file}: line 1: no ";" or "," in the header line')
    # French exports use ";" (the "," is the decimal separator): it wins a tie.
    return ";" if semicolons >= commas else ","


def _parse(content: str, delimiter: str, file: Path) -> tuple[SourceRow, ...]:
    header_line = content.partition("\n")[0]
    if not header_line.strip():
        raise SourceError(f"{file}: line 1: empty, expected the header line")
    reader = csv.reader(
        io.StringIO(content, newline=""),
        delimiter=delimiter or _detect_delimiter(header_line, file),
    )
    try:
        at = locate_columns(next(reader), f"{file}: line 1")
        updated_at = at.get("updated_at")
        rows = []
        width = max(at.values()) + 1
        for fields in reader:
            if not any(f.strip() for f in fields):  # blank line, or one made of delimiters only
                continue
            # A short line gives empty values, which validation rejects for its unit only.
            padded = fields + [""] * (width - len(fields))
            rows.append(
                SourceRow(
                    unit=padded[at["unit"]].strip(),
                    installed=padded[at["installed"]],
                    closed=padded[at["closed"]],
                    available=padded[at["available"]],
                    updated_at=None if updated_at is None else padded[updated_at],
                )
            )
    except csv.Error as exc:
        raise SourceError(f"{file}: line {reader.line_num}: {exc}") from exc
    return tuple(rows)
