"""Source adapters, one module per `kind`, found through a plain registry.

Each module named here offers `from_config(config, index) -> Source`. Modules are imported on
first use, so that `import rorfeed.sources` (the CLI, the web page) does not load SQLAlchemy
and database drivers. Adding a kind is one module and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from rorfeed.sources.base import Source

if TYPE_CHECKING:
    from rorfeed.config import Config

SOURCE_KINDS: dict[str, str] = {
    "sql": "rorfeed.sources.sql",
    "csv": "rorfeed.sources.csv_file",
}

SourceFactory = Callable[["Config", int], Source]


def open_source(config: Config, index: int) -> Source:
    """The source of `config.file.establishments[index]`, ready to `fetch()`."""
    kind = config.file.establishments[index].source.kind
    factory: SourceFactory = importlib.import_module(SOURCE_KINDS[kind]).from_config
    return factory(config, index)


__all__ = ["SOURCE_KINDS", "Source", "open_source"]
