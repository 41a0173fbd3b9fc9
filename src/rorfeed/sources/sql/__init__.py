"""`kind = "sql"`: the section of the configuration and the factory.

The code that reads the database (`query.py`) imports SQLAlchemy and the drivers: it is loaded
only when a source of this kind is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rorfeed.sections import SourceCommon

if TYPE_CHECKING:
    from rorfeed.config import Config
    from rorfeed.sources.base import Source


class SqlSourceSection(SourceCommon):
    kind: Literal["sql"] = Field(description="kind of source", examples=["sql"])
    url: str = Field(
        description="SQLAlchemy URL of the bed-management database (no password in it)",
        examples=["postgresql+psycopg://rorfeed@127.0.0.1:5432/beds"],
    )
    password_file: str = Field("", description="file holding the database password")
    password_env: str = Field("", description="or: environment variable holding it")
    query: str = Field(
        description="returns unit, installed, closed, available and optionally updated_at",
        examples=[
            "SELECT code_uf AS unit, nb_inst AS installed, nb_ferm AS closed,"
            " nb_dispo AS available, maj AS updated_at FROM v_lits"
        ],
    )
    timeout_seconds: float = Field(
        30, gt=0, description="connect + query; a source slower than this is unreachable"
    )


def open_source(config: Config, index: int) -> Source:
    from rorfeed.sources.sql.query import from_config

    return from_config(config, index)
