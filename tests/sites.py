"""A test establishment's rorfeed set-up in a folder: rorfeed.toml, mapping.csv, the export.

Shared by tests/test_config.py, tests/test_cycle.py, tests/test_daemon.py and
tests/faults/site.py. What is the same everywhere lives here: one establishment (FINESS)
reading a source beside the config, the files' formats and the TOML around the parts that
differ. What differs stays with each test — the destinations, the extra `[daemon]` keys and
tables, the mapping's units and the export's rows — because the tests assert on them.

Every TOML block passed in (`tables`, `destinations`, `extra`) begins with "\n", the blank
line before it, as `Sshd.destination_toml` writes them; a `source` or `daemon` text is a run of
`key = value` lines, each ending with a newline. Tests edit the text site_toml returns with
`str.replace` (e.g. `'kind = "csv"\\npath = "export.csv"'`), so that layout is kept on purpose.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

# A FINESS with a valid Luhn key: config validation would refuse a wrong one.
FINESS = "750712184"
ESTABLISHMENT_NAME = "Hôpital Test"

# The export beside rorfeed.toml, as written by write_export.
CSV_SOURCE = """kind = "csv"
path = "export.csv"
"""

EXPORT_COLUMNS = ("unit", "installed", "closed", "available")
# The 4th column (mode: auto or manual) is optional in the product: it is written only when
# the rows carry it.
MAPPING_COLUMNS = ("local_code", "ror_id", "label", "mode")

# The columns of write_sqlite_export's table are named apart from the export's on purpose:
# the source query has to alias them, as an operator's query over their own schema does.
SQLITE_TABLE = "t"
SQLITE_QUERY = f"SELECT u AS unit, i AS installed, c AS closed, a AS available FROM {SQLITE_TABLE}"


def site_toml(
    *,
    destinations: str,
    daemon: str = "",
    tables: str = "",
    source: str = CSV_SOURCE,
    name: str = ESTABLISHMENT_NAME,
    extra: str = "",
) -> str:
    """rorfeed.toml's text: `[daemon]` (work dir "work", plus `daemon` keys), more top-level
    `tables` (e.g. `[metrics]`), the establishment FINESS with mapping.csv and its `source`
    block, then the `destinations` blocks and any `extra` TOML."""
    return (
        f'\n[daemon]\nwork_dir = "work"\n{daemon}'
        f"{tables}"
        f'\n[[establishments]]\nname = "{name}"\nfiness = "{FINESS}"\nmapping = "mapping.csv"\n'
        f"\n[establishments.source]\n{source}"
        f"{destinations}"
        f"{extra}"
    )


def directory_destination(name: str, formats: Sequence[str] = ()) -> str:
    """A `[[destinations]]` block delivering into the folder `name` beside the config; without
    `formats`, the product's default formats."""
    block = f'\n[[destinations]]\nname = "{name}"\nkind = "directory"\npath = "{name}"\n'
    if formats:
        quoted = ", ".join(f'"{f}"' for f in formats)
        block += f"formats = [{quoted}]\n"
    return block


def sqlite_source(file_name: str) -> str:
    """The `[establishments.source]` block reading write_sqlite_export's table from
    `file_name`, relative to the config's folder."""
    return f'kind = "sql"\nurl = "sqlite:///{file_name}"\nquery = "{SQLITE_QUERY}"\n'


def mapping_csv(rows: Sequence[Sequence[str]]) -> str:
    """mapping.csv's text: one `local_code;ror_id;label[;mode]` line per row, under its header."""
    width = len(rows[0]) if rows else 3
    assert width in (3, 4) and all(len(row) == width for row in rows), rows
    lines = [";".join(MAPPING_COLUMNS[:width]), *(";".join(row) for row in rows)]
    return "\n".join(lines) + "\n"


def write_mapping(folder: Path, rows: Sequence[Sequence[str]]) -> Path:
    """mapping.csv in `folder`, from its rows (see mapping_csv)."""
    path = folder / "mapping.csv"
    path.write_text(mapping_csv(rows), encoding="utf-8")
    return path


def write_export(folder: Path, rows: Sequence[Sequence[object]], encoding: str = "utf-8") -> Path:
    """export.csv: one `unit;installed;closed;available` line per row, under its header.

    Values are written as `str()` gives them, so a test can put a non-integer count in."""
    lines = [";".join(EXPORT_COLUMNS), *(";".join(str(v) for v in row) for row in rows)]
    path = folder / "export.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def write_sqlite_export(path: Path, rows: Sequence[Sequence[object]]) -> Path:
    """A SQLite database holding `rows` (unit, installed, closed, available) in SQLITE_TABLE."""
    # closing() closes the file; the connection itself as a context commits (it never closes).
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(f"CREATE TABLE {SQLITE_TABLE} (u TEXT, i, c, a)")
        conn.executemany(f"INSERT INTO {SQLITE_TABLE} VALUES (?, ?, ?, ?)", rows)
    return path


def write_site(
    folder: Path,
    toml: str,
    mapping: str,
    export: Sequence[Sequence[object]] | None = None,
) -> Path:
    """rorfeed.toml, mapping.csv (its text, see mapping_csv) and, when `export` is given,
    export.csv in `folder`; returns the config's path.

    The mapping is taken as text because that is what the tests share: tests/test_modes.py,
    tests/test_web.py and tests/test_feed_property.py write tests/test_cycle.py's MAPPING."""
    (folder / "mapping.csv").write_text(mapping, encoding="utf-8")
    if export is not None:
        write_export(folder, export)
    path = folder / "rorfeed.toml"
    path.write_text(toml, encoding="utf-8")
    return path
