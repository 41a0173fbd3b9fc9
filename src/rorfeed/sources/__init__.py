"""Source adapters: a plain registry from `kind` to what the kind declares (`sections.Kind`).

Each kind is a module (or a package when its code is heavy) holding its section model and a
factory `open_source(config, index) -> Source` that imports the heavy code only when called, so
that `import rorfeed.sources` (the CLI, the web page) does not load SQLAlchemy and database
drivers. Adding a kind is that module, its tests and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rorfeed.sections import Kind
from rorfeed.sources import csv_file, sql
from rorfeed.sources.base import Source

if TYPE_CHECKING:
    from rorfeed.config import Config

SourceFactory = Callable[["Config", int], Source]

SOURCES: dict[str, Kind[SourceFactory]] = {
    "sql": Kind(sql.SqlSourceSection, sql.open_source, "a database query"),
    "csv": Kind(csv_file.CsvSourceSection, csv_file.from_config, "a CSV export"),
}


def open_source(config: Config, index: int) -> Source:
    """The source of `config.file.establishments[index]`, ready to `fetch()`."""
    return SOURCES[config.file.establishments[index].source.kind].open(config, index)


__all__ = ["SOURCES", "Source", "SourceFactory", "open_source"]
