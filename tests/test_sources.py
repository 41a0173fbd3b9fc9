"""Source adapters: what `fetch()` returns, and how every way a source can fail is reported."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import get_args

import pytest

from rorfeed.config import Config, ConfigFile, SourceSection
from rorfeed.errors import SourceError, SourceTimeout
from rorfeed.model import Extraction, SourceRow
from rorfeed.sources import SOURCES, open_source
from rorfeed.sources._deadline import run_with_deadline
from rorfeed.sources.csv_file import CsvSource, CsvSourceSection
from rorfeed.sources.sql import SqlSourceSection
from rorfeed.sources.sql.query import SqlSource
from tests.pg import PgServer, free_port

QUERY = "SELECT unit, installed, closed, available FROM beds ORDER BY unit"


def sql_source(
    url: str, query: str = QUERY, timeout: float = 10, password: str | None = None
) -> SqlSource:
    return SqlSource(
        SqlSourceSection(kind="sql", url=url, query=query, timeout_seconds=timeout), password
    )


def csv_source(path: Path, timeout: float = 10, **options: str) -> CsvSource:
    section = CsvSourceSection(kind="csv", path=str(path), timeout_seconds=timeout, **options)
    return CsvSource(section, path)


def timed(fn: Callable[[], object]) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        fn()
    return caught.value, time.monotonic() - started


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def no_worker_left() -> bool:
    return not any(t.name.startswith("rorfeed-deadline") for t in threading.enumerate())


@pytest.fixture(autouse=True)
def _workers_from_earlier_tests_are_gone() -> None:
    # Tests below assert that a timed-out call's worker ends: start from a clean slate.
    assert wait_until(no_worker_left, 10), "a worker thread of an earlier test never ended"


# -- registry -----------------------------------------------------------------------------


def test_importing_the_sources_package_does_not_load_sqlalchemy() -> None:
    code = "import sys, rorfeed.sources; assert 'sqlalchemy' not in sys.modules, 'loaded'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_registry_kinds_are_exactly_the_kinds_the_config_accepts() -> None:
    sections = get_args(get_args(SourceSection)[0])
    config_kinds = {get_args(s.model_fields["kind"].annotation)[0] for s in sections}
    assert set(SOURCES) == config_kinds


def test_open_source_builds_each_kind_from_the_config(tmp_path: Path) -> None:
    db = tmp_path / "beds.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE beds (unit, installed, closed, available)")
        conn.execute("INSERT INTO beds VALUES ('A', 10, 1, 2)")
    conn.close()
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "beds.csv").write_text("unit;installed;closed;available\nB;5;0;1\n")
    est = {"name": "H", "finess": "750712184", "mapping": "mapping.csv"}
    file = ConfigFile.model_validate(
        {
            "establishments": [
                {**est, "source": {"kind": "sql", "url": f"sqlite:///{db}", "query": QUERY}},
                {**est, "source": {"kind": "csv", "path": "exports"}},
            ],
            "destinations": [{"name": "d", "kind": "directory", "path": "out"}],
        }
    )
    config = Config(path=tmp_path / "rorfeed.toml", file=file, secrets={})

    sql = open_source(config, 0)
    csv = open_source(config, 1)

    assert isinstance(sql, SqlSource)
    assert sql.fetch().rows == (SourceRow("A", 10, 1, 2),)
    assert isinstance(csv, CsvSource)  # its relative path was resolved from the config folder
    assert csv.fetch().rows == (SourceRow("B", "5", "0", "1"),)


# -- the deadline helper -------------------------------------------------------------------


def test_deadline_returns_the_result_and_passes_errors_through() -> None:
    assert run_with_deadline(lambda: 42, 5, "x") == 42

    def fail() -> None:
        raise SourceError("boom")

    with pytest.raises(SourceError, match="boom"):
        run_with_deadline(fail, 5, "x")


def test_deadline_passes_the_calls_own_timeout_error_through() -> None:
    def socket_timeout() -> None:
        raise TimeoutError("socket")

    with pytest.raises(TimeoutError, match="socket"):
        run_with_deadline(socket_timeout, 5, "x")


def test_deadline_gives_up_on_a_call_that_overruns() -> None:
    release = threading.Event()
    error, elapsed = timed(lambda: run_with_deadline(release.wait, 0.3, "slow thing"))
    release.set()

    assert isinstance(error, SourceTimeout)
    assert "slow thing: no answer within 0.3 s" in str(error)
    assert elapsed < 1.3


# -- SQL on SQLite -------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    db = tmp_path / "beds.db"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE beds (unit, installed, closed, available, maj)")
        conn.executemany(
            "INSERT INTO beds VALUES (?, ?, ?, ?, ?)",
            [
                (" REA ", 12, 1.5, "3", "2026-11-23 14:00:00"),
                (4021, None, 0, -1, None),
                (None, 1, 1, 1, None),
            ],
        )
    conn.close()
    yield f"sqlite:///{db}"


def test_sqlite_rows_come_back_raw_with_their_types(sqlite_url: str) -> None:
    query = "SELECT unit, installed, closed, available, maj AS updated_at FROM beds ORDER BY rowid"
    extraction = sql_source(sqlite_url, query).fetch()

    assert extraction.rows == (
        SourceRow("REA", 12, 1.5, "3", "2026-11-23 14:00:00"),
        SourceRow("4021", None, 0, -1, None),
        SourceRow("", 1, 1, 1, None),  # a NULL unit is kept, for validation to count
    )
    assert type(extraction.rows[0].installed) is int
    assert extraction.file_mtime is None
    assert extraction.origin == sqlite_url


def test_column_names_are_matched_whatever_their_case(sqlite_url: str) -> None:
    query = 'SELECT unit AS "UNIT", installed AS Installed, closed, available FROM beds'
    rows = sql_source(sqlite_url, query).fetch().rows

    assert [r.unit for r in rows] == ["REA", "4021", ""]
    assert all(r.updated_at is None for r in rows)


def test_a_query_missing_a_column_is_a_source_error_naming_it(sqlite_url: str) -> None:
    source = sql_source(sqlite_url, "SELECT unit, installed, maj AS closed FROM beds")

    with pytest.raises(SourceError, match=r"missing column available \(found: unit, installed"):
        source.fetch()


def test_an_empty_result_is_an_extraction_with_no_rows(sqlite_url: str) -> None:
    assert sql_source(sqlite_url, f"{QUERY.replace('ORDER', 'WHERE 0 ORDER')}").fetch() == (
        Extraction(rows=(), origin=sqlite_url)
    )


def test_a_failing_query_is_a_source_error_naming_the_database(sqlite_url: str) -> None:
    with pytest.raises(SourceError, match=r"sqlite:///.*beds.db: no such table: v_lits"):
        sql_source(sqlite_url, "SELECT * FROM v_lits").fetch()


def test_a_statement_without_rows_is_a_source_error(sqlite_url: str) -> None:
    with pytest.raises(SourceError, match="returns no rows"):
        sql_source(sqlite_url, "DELETE FROM beds WHERE 0").fetch()


def test_a_missing_sqlite_file_is_a_source_error_and_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such database file"):
        sql_source(f"sqlite:///{tmp_path / 'absent.db'}").fetch()
    assert not (tmp_path / "absent.db").exists()


def test_a_runaway_sqlite_query_times_out_and_is_stopped(sqlite_url: str) -> None:
    endless = (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1e12) "
        "SELECT 'A' AS unit, count(*) AS installed, 0 AS closed, 0 AS available FROM n"
    )
    error, elapsed = timed(sql_source(sqlite_url, endless, timeout=1).fetch)

    assert isinstance(error, SourceTimeout)
    assert elapsed < 2
    # The progress handler, not only the backstop, ended it: no thread keeps burning CPU.
    assert wait_until(no_worker_left, 2)


def test_a_missing_driver_is_a_source_error_that_hides_the_password() -> None:
    source = sql_source("postgresql+psycopg2://bob:hunter2@127.0.0.1/beds")

    with pytest.raises(
        SourceError, match=r"postgresql\+psycopg2://bob:\*\*\*@127.0.0.1/beds: "
    ) as e:
        source.fetch()
    assert "hunter2" not in str(e.value)
    assert "hunter2" not in repr(source)


# -- SQL on PostgreSQL ---------------------------------------------------------------------


@pytest.fixture
def beds_db(pg_server: PgServer) -> str:
    url = pg_server.create_db("beds")
    pg_server.execute(
        "beds",
        "CREATE TABLE lits (code text, inst integer, ferm numeric(6, 0), dispo bigint,"
        " maj timestamp, majtz timestamptz)",
        "INSERT INTO lits VALUES"
        " ('U1', 10, 2, 3, '2026-11-23 14:00', '2026-11-23 14:00+01'),"
        " ('U1', 5, 0, 1, '2026-11-23 13:00', '2026-11-23 13:00+01'),"
        " ('U2', 8, NULL, 0, NULL, NULL),"
        " ('X9', 1, 1, 1, NULL, NULL)",
    )
    return url


def test_postgresql_rows_come_back_raw_with_their_types(beds_db: str) -> None:
    # `%` in LIKE and `::` casts go through text() and the driver unharmed.
    query = (
        "SELECT code AS unit, SUM(inst)::int AS installed, SUM(ferm) AS closed,"
        " SUM(dispo) AS available FROM lits WHERE code LIKE 'U%' GROUP BY code ORDER BY code"
    )
    rows = sql_source(beds_db, query).fetch().rows

    assert rows == (
        SourceRow("U1", 15, Decimal(2), Decimal(4)),
        SourceRow("U2", 8, None, Decimal(0)),
    )
    assert type(rows[0].installed) is int
    assert type(rows[0].closed) is Decimal


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("maj", datetime(2026, 11, 23, 14, 0)),  # timestamp: naive, as stored
        ("majtz", datetime(2026, 11, 23, 13, 0, tzinfo=UTC)),
    ],
)
def test_postgresql_updated_at_comes_back_as_a_datetime(
    beds_db: str, column: str, expected: datetime
) -> None:
    query = (
        f"SELECT code AS unit, inst AS installed, ferm AS closed, dispo AS available,"
        f" {column} AS updated_at FROM lits ORDER BY {column} DESC NULLS LAST LIMIT 1"
    )
    (row,) = sql_source(beds_db, query).fetch().rows

    assert row.updated_at == expected
    assert isinstance(row.updated_at, datetime)
    assert (row.updated_at.tzinfo is None) == (column == "maj")


def test_postgresql_query_missing_a_column_names_it(beds_db: str) -> None:
    query = "SELECT code AS unit, inst AS installed FROM lits"

    with pytest.raises(SourceError, match="missing columns closed, available") as e:
        sql_source(beds_db, query).fetch()
    assert "found: unit, installed" in str(e.value)


def test_postgresql_empty_result_is_not_an_error(beds_db: str) -> None:
    query = "SELECT code AS unit, inst AS installed, ferm AS closed, dispo AS available FROM lits"
    assert sql_source(beds_db, query + " WHERE false").fetch().rows == ()


def test_an_unreachable_database_is_a_source_error_at_once() -> None:
    url = f"postgresql+psycopg://rorfeed@127.0.0.1:{free_port()}/beds"  # nothing listens there
    error, elapsed = timed(sql_source(url, timeout=10, password="s3cret-pw").fetch)

    assert not isinstance(error, SourceTimeout)
    assert str(error).startswith(f"{url}: connection failed")
    assert "s3cret-pw" not in str(error)
    assert elapsed < 2


def test_a_server_that_never_answers_is_a_timeout() -> None:
    with socket.socket() as silent:  # the kernel accepts connections; nobody ever speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql+psycopg://rorfeed@127.0.0.1:{silent.getsockname()[1]}/beds"

        error, elapsed = timed(sql_source(url, timeout=1).fetch)

        assert isinstance(error, SourceTimeout)
        assert elapsed < 2
        # The driver's own connect timeout (2 s at least, for libpq) ends the worker too.
        assert wait_until(no_worker_left, 4)


def test_a_hung_postgresql_query_times_out_and_is_cancelled_on_the_server(
    pg_server: PgServer, beds_db: str
) -> None:
    query = "SELECT 'A' AS unit, 1 AS installed, 0 AS closed, 0 AS available FROM pg_sleep(30)"
    error, elapsed = timed(sql_source(beds_db, query, timeout=1).fetch)

    assert isinstance(error, SourceTimeout)
    assert "no answer within 1 s" in str(error)
    assert elapsed < 2

    def sleeper_gone() -> bool:
        with pg_server.connect() as conn:
            found = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%FROM pg_sleep(30)'"
                " AND pid <> pg_backend_pid()"
            ).fetchone()
        return found == (0,)

    assert wait_until(sleeper_gone, 5), "statement_timeout did not stop the query"
    assert wait_until(no_worker_left, 2)


PASSWORD = "p@ss:w/rd%20?#é"  # every character that would break a hand-built URL


def test_the_password_is_injected_into_the_connection(pg_server: PgServer, beds_db: str) -> None:
    pg_server.create_role("reader", PASSWORD)
    pg_server.execute("beds", "GRANT SELECT ON lits TO reader")
    url = pg_server.url("beds", user="reader")
    query = "SELECT code AS unit, inst AS installed, ferm AS closed, dispo AS available FROM lits"

    assert len(sql_source(url, query, password=PASSWORD).fetch().rows) == 4


@pytest.mark.parametrize("wrong", [None, "not-the-password"])
def test_a_refused_password_is_never_shown(
    pg_server: PgServer, beds_db: str, wrong: str | None
) -> None:
    pg_server.create_role("reader", PASSWORD)
    url = pg_server.url("beds", user="reader")
    source = sql_source(url, password=wrong)

    with pytest.raises(SourceError) as e:
        source.fetch()
    message = str(e.value)
    assert message.startswith(f"{url}: ")
    assert "reader" in message
    if wrong:
        assert "password authentication failed" in message
        assert wrong not in message
        assert wrong not in repr(source)


# -- CSV -----------------------------------------------------------------------------------


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("delimiter", [";", ","])
def test_csv_delimiter_is_detected_from_the_header(tmp_path: Path, delimiter: str) -> None:
    text = "unit;installed;closed;available\nA;10;1;2\nB;3;;0\n".replace(";", delimiter)
    rows = csv_source(write(tmp_path / "e.csv", text)).fetch().rows

    assert rows == (SourceRow("A", "10", "1", "2"), SourceRow("B", "3", "", "0"))


def test_csv_configured_delimiter_is_used_as_is(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "unit;installed;closed;available\nA,1;2;3;4\n")

    with pytest.raises(SourceError, match="missing columns"):
        csv_source(path, delimiter=",").fetch()
    assert csv_source(path, delimiter=";").fetch().rows == (SourceRow("A,1", "2", "3", "4"),)


def test_csv_utf8_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "\ufeffunit;installed;closed;available\nRÉA;1;0;1\n")

    assert csv_source(path).fetch().rows == (SourceRow("RÉA", "1", "0", "1"),)


def test_csv_cp1252_export_keeps_its_accented_unit_codes(tmp_path: Path) -> None:
    text = "unit;installed;closed;available\nRÉA-Pédiatrie;1;0;1\nSSR\u2018\u0153\u2019;2;0;2\n"
    path = write(tmp_path / "e.csv", text, "cp1252")

    rows = csv_source(path, encoding="cp1252").fetch().rows

    assert [r.unit for r in rows] == ["RÉA-Pédiatrie", "SSR\u2018\u0153\u2019"]


def test_csv_byte_order_mark_with_a_non_utf8_encoding_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "\ufeffunit;installed;closed;available\nRÉA;1;0;1\n")

    with pytest.raises(SourceError, match='set encoding = "utf-8"'):
        csv_source(path, encoding="cp1252").fetch()


def test_csv_decode_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(b"unit;installed;closed;available\nA;1;0;1\nR\xe9A;1;0;1\n")

    with pytest.raises(SourceError, match=r"e\.csv: line 3: byte 0xe9 is not valid utf-8"):
        csv_source(path).fetch()


def test_csv_header_is_matched_whatever_its_case_and_padding(tmp_path: Path) -> None:
    text = " Unit ;INSTALLED;Closed;available ;Updated_At\nA;1;0;1;2026-11-23T14:00\nB;2;0;2;\n"
    rows = csv_source(write(tmp_path / "e.csv", text)).fetch().rows

    assert rows == (
        SourceRow("A", "1", "0", "1", "2026-11-23T14:00"),
        SourceRow("B", "2", "0", "2", ""),
    )


def test_csv_values_are_the_raw_strings(tmp_path: Path) -> None:
    text = (
        "available;closed;unit;installed;extra\n"
        ' 3 ;1,5;" A;1 ";-2;x\n'  # quoted delimiter, padding and decimals kept as written
        "\n"
        ";;;;\n"  # blank lines, and lines of delimiters only, are not rows
        "7;;B\n"  # a short line: the missing values are empty
    )
    rows = csv_source(write(tmp_path / "e.csv", text)).fetch().rows

    assert rows == (SourceRow("A;1", "-2", "1,5", " 3 "), SourceRow("B", "", "", "7"))


def test_csv_header_only_is_an_extraction_with_no_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "unit;installed;closed;available\r\n")

    assert csv_source(path).fetch().rows == ()


def test_csv_missing_column_is_a_source_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "unit;installed;fermes;available\nA;1;0;1\n")

    with pytest.raises(SourceError, match=r"line 1: missing column closed \(found: unit,") as e:
        csv_source(path).fetch()
    assert "e.csv" in str(e.value)


@pytest.mark.parametrize("content", ["", "\n", "no delimiter here\n"])
def test_csv_without_a_usable_header_is_a_source_error(tmp_path: Path, content: str) -> None:
    with pytest.raises(SourceError, match="line 1"):
        csv_source(write(tmp_path / "e.csv", content)).fetch()


def test_csv_missing_file_is_a_source_failure(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file — the export is missing"):
        csv_source(tmp_path / "absent.csv").fetch()


def test_csv_file_mtime_is_the_files_modification_time_in_utc(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "unit;installed;closed;available\nA;1;0;1\n")
    when = datetime(2026, 11, 23, 13, 5, 7, tzinfo=UTC)
    os.utime(path, (when.timestamp(), when.timestamp()))

    extraction = csv_source(path).fetch()

    assert extraction.file_mtime == when
    assert extraction.file_mtime.tzinfo is UTC
    assert extraction.origin == str(path)


def test_csv_folder_gives_its_newest_csv_file(tmp_path: Path) -> None:
    header = "unit;installed;closed;available\n"
    files = {
        "old.csv": 1000,
        "new.CSV": 3000,
        "newer.txt": 4000,  # not a CSV export
        ".newest.csv": 5000,  # an export being written under a temporary name
    }
    for name, mtime in files.items():
        write(tmp_path / name, f"{header}{name};1;0;1\n")
        os.utime(tmp_path / name, (mtime, mtime))

    extraction = csv_source(tmp_path).fetch()

    assert extraction.rows[0].unit == "new.CSV"
    assert extraction.origin == str(tmp_path / "new.CSV")
    assert extraction.file_mtime == datetime.fromtimestamp(3000, tz=UTC)


def test_csv_folder_without_a_csv_file_is_a_source_error(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", "unit;installed;closed;available\n")

    with pytest.raises(SourceError, match=r"no \*\.csv file in this folder"):
        csv_source(tmp_path).fetch()


def test_csv_read_that_blocks_times_out(tmp_path: Path) -> None:
    fifo = tmp_path / "e.csv"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: a hung share

    error, elapsed = timed(csv_source(fifo, timeout=0.5).fetch)

    assert isinstance(error, SourceTimeout)
    assert str(fifo) in str(error)
    assert elapsed < 1.5
    # Release the abandoned reader, so it does not outlive the test.
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert wait_until(no_worker_left, 2)
