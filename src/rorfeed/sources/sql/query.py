"""`kind = "sql"`, the code: the bed counts from any database SQLAlchemy reaches, with one query.

One connection per cycle (`NullPool`): nothing is held open between hourly cycles, and a
database restart between two cycles is invisible. Nothing is ever committed.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from rorfeed.config import Config
from rorfeed.errors import SourceError, SourceTimeout
from rorfeed.model import Extraction, SourceRow
from rorfeed.sources._columns import locate_columns
from rorfeed.sources._deadline import run_with_deadline
from rorfeed.sources.base import Source
from rorfeed.sources.sql import SqlSourceSection
from rorfeed.url_password import scrubbed, without_password

# Drivers built on libpq, which understand `connect_timeout` and `options`.
_LIBPQ_DRIVERS = frozenset({"psycopg", "psycopg2", "psycopg2cffi"})
_PG_QUERY_CANCELED = "57014"
# SQLite checks the deadline every this many VM instructions: well under a millisecond apart,
# yet rare enough to cost nothing.
_SQLITE_PROGRESS_STEPS = 10_000
_MAX_REASON = 300


class SqlSource:
    """Runs the configured query, bounded by `timeout_seconds` from connect to last row."""

    def __init__(self, section: SqlSourceSection, password: str | None) -> None:
        self._section = section
        self._password = password
        self.display_url = _display_url(section.url)

    def __repr__(self) -> str:
        return f"SqlSource({self.display_url!r})"

    def fetch(self) -> Extraction:
        return run_with_deadline(self._fetch, self._section.timeout_seconds, self.display_url)

    def _fetch(self) -> Extraction:
        deadline = time.monotonic() + self._section.timeout_seconds
        try:
            engine = self._engine(deadline)
        except SQLAlchemyError as exc:  # unparsable URL, unknown dialect
            raise SourceError(f"{self.display_url}: {self._reason(exc)}") from exc
        except ImportError as exc:  # the dialect is known, its driver is not installed
            raise SourceError(f"{self.display_url}: database driver not installed ({exc})") from exc
        try:
            with engine.connect() as conn:
                result = conn.execute(text(self._section.query))
                if not result.returns_rows:
                    raise SourceError(
                        f"{self.display_url}: the query returns no rows (not a SELECT?)"
                    )
                names = list(result.keys())
                rows = result.fetchall()
        except (SQLAlchemyError, OSError) as exc:
            raise self._translate(exc, deadline) from exc
        finally:
            engine.dispose()
        return Extraction(rows=_source_rows(names, rows, self.display_url), origin=self.display_url)

    def _engine(self, deadline: float) -> Engine:
        url = make_url(self._section.url)
        if self._password is not None:
            url = url.set(password=self._password)
        timeout = self._section.timeout_seconds
        backend, driver = url.get_backend_name(), url.get_driver_name()
        connect_args: dict[str, Any] = {}
        if backend == "postgresql" and driver in _LIBPQ_DRIVERS:
            # libpq wants whole seconds (and psycopg raises anything below 2 to 2); the
            # statement timeout stops the query server-side, so the worker thread ends too.
            connect_args["connect_timeout"] = max(1, math.ceil(timeout))
            statement_timeout = f"-c statement_timeout={math.ceil(timeout * 1000)}"
            # connect_args replace the URL's own `options`: keep the operator's ones.
            own = url.query.get("options")
            connect_args["options"] = f"{own} {statement_timeout}" if own else statement_timeout
        elif backend == "sqlite":
            database = url.database or ""
            in_file = database not in ("", ":memory:") and "uri" not in url.query
            if in_file and not Path(database).is_file():
                # SQLite would silently create an empty database there.
                raise SourceError(f"{self.display_url}: no such database file")
            connect_args["timeout"] = timeout  # waiting for a lock held by the writer
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        if backend == "sqlite":
            event.listen(engine, "connect", _sqlite_deadline(deadline))
        return engine

    def _translate(self, exc: Exception, deadline: float) -> SourceError:
        reason = self._reason(exc)
        orig = exc.orig if isinstance(exc, DBAPIError) else None
        canceled = getattr(orig, "sqlstate", None) == _PG_QUERY_CANCELED or (
            getattr(orig, "pgcode", None) == _PG_QUERY_CANCELED
        )
        # Past the deadline, whatever the driver says ("interrupted", "timeout expired",
        # "canceling statement"), the cause is our timeout.
        if canceled or time.monotonic() >= deadline:
            return SourceTimeout(
                f"{self.display_url}: no answer within {self._section.timeout_seconds:g} s"
                f" ({reason})"
            )
        return SourceError(f"{self.display_url}: {reason}")

    def _reason(self, exc: BaseException) -> str:
        """The driver's own message, on one line, without SQLAlchemy's boilerplate or secret."""
        if isinstance(exc, DBAPIError) and exc.orig is not None:
            message = str(exc.orig)
        elif isinstance(exc, SQLAlchemyError) and exc.args:
            message = str(exc.args[0])
        else:
            message = str(exc)
        message = " ".join(message.split()) or type(exc).__name__
        # Drivers do not put the password in their messages today; make sure none ever will.
        message = scrubbed(message, self._password)
        return message[:_MAX_REASON] + ("…" if len(message) > _MAX_REASON else "")


def from_config(config: Config, index: int) -> Source:
    section = config.file.establishments[index].source
    if not isinstance(section, SqlSourceSection):
        raise TypeError(f"establishments[{index}].source is not an sql source")
    url = make_url(section.url)
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database and not database.startswith(":"):
        # Like every path in the configuration, a relative SQLite file is read from the
        # config file's folder, not from wherever the command happens to be started.
        absolute = url.set(database=str(config.resolve(database)))
        section = section.model_copy(update={"url": absolute.render_as_string(hide_password=False)})
    return SqlSource(section, config.secrets.get(f"establishments[{index}].source.password"))


def _display_url(raw: str) -> str:
    return without_password(raw)


def _sqlite_deadline(deadline: float) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            # SQLite has no statement timeout; a non-zero return aborts the running statement.
            dbapi_connection.set_progress_handler(
                lambda: int(time.monotonic() >= deadline), _SQLITE_PROGRESS_STEPS
            )

    return on_connect


def _source_rows(
    names: Sequence[str], rows: Sequence[Sequence[object]], where: str
) -> tuple[SourceRow, ...]:
    at = locate_columns(names, where)
    updated_at = at.get("updated_at")
    return tuple(
        SourceRow(
            # A None unit stays "", so that validation counts it rather than this adapter
            # dropping it silently.
            unit="" if row[at["unit"]] is None else str(row[at["unit"]]).strip(),
            installed=row[at["installed"]],
            closed=row[at["closed"]],
            available=row[at["available"]],
            updated_at=None if updated_at is None else row[updated_at],
        )
        for row in rows
    )
