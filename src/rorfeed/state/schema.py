"""The state store's tables, its schema version and migrations, and opening its engine.

The schema carries a version; `open_engine` upgrades an older one in place (migrations keep
every row) and refuses one written by a newer rorfeed, without touching it. Times are stored
as UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from rorfeed.errors import StateError
from rorfeed.url_password import scrubbed, url_password, without_password

SCHEMA_VERSION = 7


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, whatever the backend keeps."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the state store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = MetaData()

meta_t = Table(
    "rorfeed_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

units_t = Table(
    "units",
    metadata,
    Column("finess", String(9), primary_key=True),
    Column("ror_id", String(200), primary_key=True),
    Column("local_code", String(200), nullable=False),
    Column("label", Text, nullable=False),
    Column("declared_mode", String(8), nullable=False),
    Column("in_mapping", Boolean, nullable=False),
    Column("mode", String(8), nullable=False),
    Column("mode_since", UTCDateTime, nullable=False),
    Column("mode_reason", Text, nullable=False),
    Column("streak", Integer, nullable=False, default=0),
    Column("last_rules", Text, nullable=False, default=""),
    Column("last_accepted_installed", Integer),
    Column("last_installed", Integer),
    Column("last_closed", Integer),
    Column("last_available", Integer),
    Column("last_counts_at", UTCDateTime),
    # ↑ Older than the establishment's applied snapshot: see establishments.applied_snapshot_id.
    # The mapping's `priority` and `id_externe_synchro` (as written, "" = the local code).
    Column("priority", Integer, nullable=False, default=2, server_default="2"),
    Column("id_externe_synchro", String(200), nullable=False, default="", server_default=""),
)

audit_t = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(32), nullable=False),
    Column("finess", String(9)),
    Column("ror_id", String(200)),
    Column("local_code", String(200)),
    Column("previous", Text),
    Column("new", Text),
    Column("reason", Text, nullable=False),
)

establishments_t = Table(
    "establishments",
    metadata,
    Column("finess", String(9), primary_key=True),  # GLOBAL for the global kill-switch
    Column("killswitch", Boolean, nullable=False, default=False),
    Column("killswitch_since", UTCDateTime),
    Column("killswitch_reason", Text, nullable=False, default=""),
    Column("unreachable_streak", Integer, nullable=False, default=0),
    # The newest snapshot of this establishment delivered to a production destination. A
    # unit it carries has its values as its last values sent; the unit's own `last_*`
    # columns hold older values, for the units it does not carry (rejected, manual, new).
    # So an hour's delivery writes one row, not one per unit.
    Column("applied_snapshot_id", Integer),
)

# Every version of an establishment's mapping that a person confirmed or a cycle read (SPEC
# §10.1): the page lists, compares, downloads and restores them.
mapping_versions_t = Table(
    "mapping_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("finess", String(9), nullable=False, index=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("digest", String(64), nullable=False),  # SHA-256 of the content, hex
    Column("content", Text, nullable=False),
)

cycles_t = Table(
    "cycles",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cycle_time", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("outcome", String(32), nullable=False),
    Column("sent", Integer, nullable=False, default=0),
    Column("rejected", Integer, nullable=False, default=0),
    Column("detail", Text, nullable=False, default="{}"),
)

snapshots_t = Table(
    "snapshots",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("finess", String(9), nullable=False),
    Column("cycle_time", UTCDateTime, nullable=False),
    Column("counts", Text, nullable=False),  # {ror_id: [installed, closed, available]}
    UniqueConstraint("finess", "cycle_time"),
)

# The delivery ledger: one row per file per destination; `status` (a LedgerStatus) moves
# pending → uploading → delivered | uncertain, or pending → superseded | expired | withheld.
files_t = Table(
    "outbox_files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("destination", String(200), nullable=False),
    Column("file_name", String(255), nullable=False),
    Column("snapshot_id", Integer, ForeignKey("snapshots.id"), nullable=False),
    Column("finess", String(9), nullable=False),
    Column("cycle_time", UTCDateTime, nullable=False),
    Column("size", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("destination", "file_name"),
)

# E-mails to the bed-management cell wait here until the SMTP relay takes them: a failed
# send is retried at the next cycles and never blocks one.
emails_t = Table(
    "emails",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("sent_at", UTCDateTime),
    # Set by the process sending it, so that two processes flushing at once (daemon, CLI,
    # web page) never send the same e-mail twice; a claim older than
    # emails.EMAIL_CLAIM_TIMEOUT is a crashed sender's, and is taken over.
    Column("claimed_at", UTCDateTime),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
    # Who it is for (model.Audience): NULL, the e-mails queued before version 5, = the cell.
    Column("audience", String(8)),
)

# The anomalies people report on a unit's page (SPEC §10.2), open until a lead closes them.
anomaly_reports_t = Table(
    "anomaly_reports",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("finess", String(9), nullable=False),
    Column("ror_id", String(200), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("author", String(200), nullable=False),
    Column("text", Text, nullable=False),
    Column("installed", Integer),  # the counts the author believes right, if given
    Column("closed", Integer),
    Column("available", Integer),
    Column("closed_at", UTCDateTime),
    Column("closed_by", String(200)),
    Column("decision", String(32)),
    Column("comment", Text),
)

# Accounts of the web page (`rorfeed users`, `rorfeed web`): Argon2id hashes only.
users_t = Table(
    "users",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("role", String(16), nullable=False),  # "lead" or "viewer"
    Column("password_hash", Text, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# The web page's open sessions: the signed cookie carries a random id, this table its SHA-256.
# A session lives while its row does: logout, "close all my sessions", a new password or role
# and disabling the account delete rows, so a copy of a cookie is refused after them.
web_sessions_t = Table(
    "web_sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # hex SHA-256 of the cookie's session id
    Column("account", String(200), nullable=False, index=True),
    Column("created_at", UTCDateTime, nullable=False),
)


# -- migrations ---------------------------------------------------------------------------------


def _migrate_1_to_2(conn: Connection) -> None:
    """Version 2: the web page's accounts, and the claim that stops double e-mails."""
    users_t.create(conn, checkfirst=True)
    columns = {c["name"] for c in inspect(conn).get_columns(emails_t.name)}
    if "claimed_at" not in columns:
        column = emails_t.c.claimed_at.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {emails_t.name} ADD COLUMN claimed_at {column}")


def _migrate_2_to_3(conn: Connection) -> None:
    """Version 3: an establishment's applied snapshot (until then every unit's last values
    were in its own columns, which stays a valid state: no snapshot applied)."""
    columns = {c["name"] for c in inspect(conn).get_columns(establishments_t.name)}
    if "applied_snapshot_id" not in columns:
        column = establishments_t.c.applied_snapshot_id.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(
            f"ALTER TABLE {establishments_t.name} ADD COLUMN applied_snapshot_id {column}"
        )


def _migrate_3_to_4(conn: Connection) -> None:
    """Version 4: the mapping's versions (none before: the first cycle keeps the current)."""
    mapping_versions_t.create(conn, checkfirst=True)


def _migrate_4_to_5(conn: Connection) -> None:
    """Version 5: anomalies reported by people, and e-mails addressed to the chef de projet."""
    anomaly_reports_t.create(conn, checkfirst=True)
    columns = {c["name"] for c in inspect(conn).get_columns(emails_t.name)}
    if "audience" not in columns:
        column = emails_t.c.audience.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {emails_t.name} ADD COLUMN audience {column}")


def _migrate_5_to_6(conn: Connection) -> None:
    """Version 6: the web page's sessions kept on the server (a cookie signed before it has
    no session id: its holder logs in again)."""
    web_sessions_t.create(conn, checkfirst=True)


def _migrate_6_to_7(conn: Connection) -> None:
    """Version 7: the mapping's priority and id_externe_synchro kept with each unit (until
    then every unit had the defaults: priority 2, the local code)."""
    columns = {c["name"] for c in inspect(conn).get_columns(units_t.name)}
    for name, default in (("priority", "2"), ("id_externe_synchro", "''")):
        if name not in columns:
            column = units_t.c[name].type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(
                f"ALTER TABLE {units_t.name} ADD COLUMN {name} {column} NOT NULL DEFAULT {default}"
            )


# Migrations from version N to N+1, as functions of a connection. Each keeps every row.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _migrate_1_to_2,
    2: _migrate_2_to_3,
    3: _migrate_3_to_4,
    4: _migrate_4_to_5,
    5: _migrate_5_to_6,
    6: _migrate_6_to_7,
}


# -- opening ------------------------------------------------------------------------------------


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the CLI read and write while the daemon runs a cycle; busy_timeout makes a
    # concurrent writer wait instead of failing. The driver's own transaction handling is
    # switched off so that `BEGIN IMMEDIATE` (below) takes the write lock up front.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def open_engine(url: str, password: str | None = None) -> Engine:
    """The engine of the state store at `url` (its `password` given apart, SPEC §3), its schema
    created or upgraded as needed."""
    try:
        parsed = make_url(url)
        if password is not None:
            parsed = parsed.set(password=password)
        # A database server restarted between two cycles has closed the pooled connections:
        # each is checked before use (SQLite has no server to lose).
        server = parsed.get_backend_name() != "sqlite"
        engine = create_engine(parsed, future=True, pool_pre_ping=server)
    except (SQLAlchemyError, ValueError) as exc:
        message = scrubbed(str(exc), url_password(url), password)
        raise StateError(f"state store {without_password(url)}: {message}") from exc
    if engine.dialect.name == "sqlite":
        database = engine.url.database or ""
        if database and not database.startswith(":"):
            # The default store lives in work_dir, which a fresh install may not have yet.
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    try:
        _prepare(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        message = scrubbed(str(exc), url_password(url), password)
        raise StateError(
            f"state store {engine.url!r}: {exc.__class__.__name__}: {message}"
        ) from exc
    return engine


def _prepare(engine: Engine) -> None:
    with engine.begin() as conn:
        tables = set(inspect(conn).get_table_names())
        if meta_t.name not in tables:
            metadata.create_all(conn)
            conn.execute(insert(meta_t).values(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        version = int(
            conn.execute(
                select(meta_t.c.value).where(meta_t.c.key == "schema_version")
            ).scalar_one()
        )
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state store {engine.url!r} was written by a newer rorfeed (schema "
                f"{version}, this one knows {SCHEMA_VERSION}): upgrade rorfeed; the store "
                "was left untouched"
            )
        while version < SCHEMA_VERSION:
            MIGRATIONS[version](conn)
            version += 1
            conn.execute(
                update(meta_t).where(meta_t.c.key == "schema_version").values(value=str(version))
            )
