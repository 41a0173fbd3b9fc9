"""The one builder of a test establishment's rorfeed set-up in a folder: rorfeed.toml,
mapping.csv, the export, the destination folders.

Every test module that needs a configured site builds it here: tests/test_config.py,
test_cycle.py, test_daemon.py, test_modes.py, test_check.py, test_feed_property.py,
test_notify.py, test_deploy.py, test_metrics.py (its own two-establishment TOML), test_web.py
and test_web_browser.py (through tests/web_site.py), test_delivery.py and the fault suite
(through tests/faults/site.py).
What is the same everywhere lives here: one establishment (FINESS) reading a source beside the
config, the files' formats and the TOML around the parts that differ. What differs is a keyword
option — the destinations, the schedule, the `[metrics]` listen address, the `[web]` section,
the notification relay's port, a referential, more `[daemon]` keys and tables, the mapping's
units and the export's rows — because the tests assert on them.

The usual site (`write_site(folder, export=GOOD)`) is the five-unit MAPPING delivering the three
formats into the folder `depot` (DEPOT). Every TOML block passed in (`tables`, `destinations`,
`web`, `extra`) begins with "\n", the blank line before it, as `Sshd.destination_toml` writes
them; a `source` or `daemon` text is a run of `key = value` lines, each ending with a newline.
Tests edit the text site_toml returns with `str.replace` (e.g.
`'kind = "csv"\\npath = "export.csv"'`), so that layout is kept on purpose.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rorfeed.config import load
from rorfeed.cycle import Cycle, CycleReport
from rorfeed.state import open_store

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
    destinations: str | None = None,
    schedule: str | None = None,
    metrics_listen: str | None = None,
    web: str | None = None,
    notify_port: int | None = None,
    referential: str | None = None,
    daemon: str = "",
    tables: str = "",
    source: str = CSV_SOURCE,
    name: str = ESTABLISHMENT_NAME,
    extra: str = "",
) -> str:
    """rorfeed.toml's text: `[daemon]` (work dir "work", the `schedule` if given, plus `daemon`
    keys), `[metrics]` listening on `metrics_listen` if given, more top-level `tables`, the
    establishment FINESS with mapping.csv (and the `referential` file if given) and its `source`
    block, then the `destinations` blocks (default DEPOT), the `web` section, `[notify]` to a
    relay on 127.0.0.1:`notify_port` if given (NOTIFY), and any `extra` TOML."""
    if schedule is not None:
        daemon = f'schedule = "{schedule}"\n{daemon}'
    if metrics_listen is not None:
        tables = f'\n[metrics]\nlisten = "{metrics_listen}"\n{tables}'
    establishment = f'name = "{name}"\nfiness = "{FINESS}"\nmapping = "mapping.csv"\n'
    if referential is not None:
        establishment += f'referential = "{referential}"\n'
    return (
        f'\n[daemon]\nwork_dir = "work"\n{daemon}'
        f"{tables}"
        f"\n[[establishments]]\n{establishment}"
        f"\n[establishments.source]\n{source}"
        f"{DEPOT if destinations is None else destinations}"
        f"{web or ''}"
        f"{'' if notify_port is None else NOTIFY.format(port=notify_port)}"
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


# `[notify]` to a relay on loopback without TLS (tests/smtp.py), formatted with its port.
NOTIFY = """
[notify]
smtp_host = "127.0.0.1"
smtp_port = {port}
starttls = false
sender = "rorfeed@hopital.test"
recipients = ["cellule.lits@hopital.test"]
"""


# The usual site: five units (two sent, CHIR rejected when its export says "x", USC missing
# from some exports, 52/500 entered by hand) delivered in the three formats into `depot`.
MAPPING = mapping_csv(
    [
        ("REA", "52/100", "Réanimation", "auto"),
        ("MED", "52/200", "Médecine", "auto"),
        ("CHIR", "52/300", "Chirurgie", "auto"),
        ("USC", "52/400", "Surveillance continue", "auto"),
        ("", "52/500", "Palliatifs", "manual"),
    ]
)
DEPOT = directory_destination("depot", formats=("xml", "json", "csv"))
CONFIG = site_toml()


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
    toml: str | None = None,
    mapping: str = MAPPING,
    export: Sequence[Sequence[object]] | None = None,
    **options: str | int | None,
) -> Path:
    """A site in `folder`: rorfeed.toml (the `toml` text, or site_toml(**options)), mapping.csv
    (its text, see mapping_csv; default MAPPING), export.csv when `export` is given, and the
    folder of every `directory` destination; returns the config's path."""
    if toml is None:
        toml = site_toml(**options)  # type: ignore[arg-type]
    else:
        assert not options, "either the TOML text or site_toml's options"
    (folder / "mapping.csv").write_text(mapping, encoding="utf-8")
    if export is not None:
        write_export(folder, export)
    for name in re.findall(r'^kind = "directory"\npath = "([^"]+)"$', toml, flags=re.MULTILINE):
        (folder / name).mkdir(exist_ok=True)
    path = folder / "rorfeed.toml"
    path.write_text(toml, encoding="utf-8")
    return path


# -- cycles at chosen hours -----------------------------------------------------------------

# The usual site's history starts 12 hours ago, on the minute: T0 + `hour` hours is a past
# cycle time for every test (tests/test_modes.py, test_web.py, test_web_browser.py).
T0 = datetime.now(UTC).replace(microsecond=0, second=0) - timedelta(hours=12)
GOOD = [
    ("REA", "10", "1", "2"),
    ("MED", "30", "0", "5"),
    ("CHIR", "20", "2", "3"),
    ("USC", "8", "0", "1"),
]
BAD_CHIR = [r if r[0] != "CHIR" else ("CHIR", "20", "2", "x") for r in GOOD]


def cycle(site: Path, hour: int, rows: Sequence[Sequence[str]] | None = GOOD) -> CycleReport:
    """One cycle of the site in `site` at T0 + `hour` hours, the export (if any) written 5
    minutes before (none when `rows` is None)."""
    at = T0 + timedelta(hours=hour)
    if rows is None:
        (site / "export.csv").unlink(missing_ok=True)
    else:
        write_export(site, rows)
        stamp = (at - timedelta(minutes=5)).timestamp()
        os.utime(site / "export.csv", (stamp, stamp))
    config = load(site / "rorfeed.toml")
    store = open_store(config.state_url)
    try:
        return Cycle(config, store, clock=lambda: at).run(at)
    finally:
        store.engine.dispose()
