"""One UPDATE statement run for many rows of parameters, at the driver's speed."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Dialect, Update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import BindParameter


def executemany(conn: Connection, statement: Update, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run `statement` once per row of parameters, in one driver `executemany`.

    What `conn.execute(statement, rows)` does, without SQLAlchemy's per-row work (building
    each parameter set, converting each value by its column type): at 10,000 rows that work
    took 0.26 s of 0.30 s, the driver 0.04 s. The values that the statement carries itself
    (a cycle time in `.values()`) are converted once; the per-row values are converted only
    when their type needs it.
    """
    if not rows:
        return
    dialect = conn.dialect
    compiled = statement.compile(dialect=dialect)
    per_row = set(rows[0])
    fixed = {
        name: _bound(compiled.binds[name], value, dialect)
        for name, value in compiled.construct_params(dict(rows[0])).items()
        if name not in per_row
    }
    converters = {
        name: convert
        for name in per_row
        if (convert := _converter(compiled.binds[name], dialect)) is not None
    }

    def values(row: Mapping[str, Any]) -> dict[str, Any]:
        out = {**fixed, **row}
        for name, convert in converters.items():
            out[name] = convert(out[name])
        return out

    params: list[Any]
    if compiled.positiontup is not None:
        order = compiled.positiontup
        params = [tuple(v[name] for name in order) for v in map(values, rows)]
    else:
        params = [values(row) for row in rows]
    conn.exec_driver_sql(compiled.string, params)


def _converter(bind: BindParameter[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    # dialect_impl: the type as this dialect stores it (a UTCDateTime becomes SQLite's text),
    # as SQLAlchemy's own execute would convert it.
    return bind.type.dialect_impl(dialect).bind_processor(dialect)


def _bound(bind: BindParameter[Any], value: Any, dialect: Dialect) -> Any:
    convert = _converter(bind, dialect)
    return value if convert is None else convert(value)
