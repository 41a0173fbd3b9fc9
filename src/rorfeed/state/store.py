"""The state store's facade: one transaction, the repositories bound to its connection.

`Store.tx()` opens a transaction and yields a `Transaction` whose repositories share its
connection, so that what must stay consistent (a mode and its audit entry, a ledger status
and the last values sent) commits or rolls back together:

    with store.tx() as tx:
        tx.units.set_mode(...)
        tx.audit.history(...)

Every other method of `Store` is one such transaction around one repository call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from rorfeed.errors import StateError
from rorfeed.model import (
    ACTOR_RORFEED,
    AnomalyDecision,
    Audience,
    BedCounts,
    CycleDetail,
    CycleOutcome,
    MappedUnit,
    Mode,
)
from rorfeed.state.anomalies import Anomalies, AnomalyReport
from rorfeed.state.audit import Audit, AuditEntry
from rorfeed.state.cycles import CycleRow, Cycles
from rorfeed.state.emails import EmailRow, Emails
from rorfeed.state.establishments import Establishments
from rorfeed.state.figures import Figures, StateFigures
from rorfeed.state.ledger import Ledger, LedgerRow
from rorfeed.state.mapping_versions import MappingVersion, MappingVersions
from rorfeed.state.schema import open_engine
from rorfeed.state.units import FeedState, Units, UnitState
from rorfeed.state.web_accounts import WebAccounts, WebUser


class Transaction:
    """The repositories of one transaction, all on its connection `conn`."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.audit = Audit(conn)
        self.establishments = Establishments(conn, self.audit)
        self.ledger = Ledger(conn, self.establishments)
        self.units = Units(conn, self.audit, self.ledger)
        self.cycles = Cycles(conn)
        self.emails = Emails(conn)
        self.web_accounts = WebAccounts(conn)
        self.figures = Figures(conn)
        self.mapping_versions = MappingVersions(conn)
        self.anomalies = Anomalies(conn, self.audit)


class Store:
    """The state store's operations. One instance per process; thread-safe via its engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def tx(self) -> Iterator[Transaction]:
        try:
            with self.engine.begin() as conn:
                yield Transaction(conn)
        except SQLAlchemyError as exc:
            raise StateError(f"state store: {exc.__class__.__name__}: {exc.args[0]}") from exc

    # -- units and mapping ----------------------------------------------------------------

    def units(self, finess: str | None = None) -> list[UnitState]:
        with self.tx() as tx:
            return tx.units.states(finess)

    def feed_states(self, finess: str) -> dict[str, FeedState]:
        with self.tx() as tx:
            return tx.units.feed_states(finess)

    def sync_mapping(
        self,
        finess: str,
        units: tuple[MappedUnit, ...],
        now: datetime,
        *,
        actor: str = ACTOR_RORFEED,
        reason: str | None = None,
    ) -> tuple[list[AuditEntry], dict[str, FeedState]]:
        with self.tx() as tx:
            return tx.units.sync_mapping(finess, units, now, actor=actor, reason=reason)

    # -- anomalies reported by people --------------------------------------------------------

    def report_anomaly(
        self,
        unit: UnitState,
        text: str,
        counts: BedCounts | None,
        author: str,
        at: datetime,
    ) -> AnomalyReport:
        with self.tx() as tx:
            return tx.anomalies.report(
                unit.finess, unit.ror_id, unit.local_code, text, counts, author, at
            )

    def close_anomaly(
        self,
        report: AnomalyReport,
        local_code: str,
        decision: AnomalyDecision,
        comment: str,
        by: str,
        at: datetime,
    ) -> bool:
        with self.tx() as tx:
            return tx.anomalies.close(report, local_code, decision, comment, by, at)

    def anomaly_report(self, report_id: int) -> AnomalyReport | None:
        with self.tx() as tx:
            return tx.anomalies.get(report_id)

    def anomaly_reports(
        self, finess: str | None = None, ror_id: str | None = None, *, only_open: bool = False
    ) -> list[AnomalyReport]:
        with self.tx() as tx:
            return tx.anomalies.reports(finess, ror_id, only_open=only_open)

    # -- mapping versions -------------------------------------------------------------------

    def keep_mapping_version(
        self, finess: str, content: str, now: datetime, actor: str, reason: str
    ) -> bool:
        """Keep `content` as `finess`'s newest mapping version unless it already is."""
        with self.tx() as tx:
            return tx.mapping_versions.keep(finess, content, now, actor, reason)

    def mapping_versions(self, finess: str) -> list[MappingVersion]:
        with self.tx() as tx:
            return tx.mapping_versions.list(finess)

    def mapping_version(self, finess: str, version_id: int) -> MappingVersion | None:
        with self.tx() as tx:
            return tx.mapping_versions.get(finess, version_id)

    def record_verdicts(
        self, finess: str, rejected: dict[str, tuple[str, ...]], accepted: dict[str, int]
    ) -> None:
        with self.tx() as tx:
            tx.units.record_verdicts(finess, rejected, accepted)

    def set_units_mode(
        self,
        targets: list[tuple[str, str]],
        mode: Mode,
        reason: str,
        actor: str,
        now: datetime,
    ) -> list[UnitState]:
        """All of `targets` in one transaction: a refusal for one changes none."""
        with self.tx() as tx:
            return tx.units.set_mode(targets, mode, reason, actor, now)

    # -- audit ----------------------------------------------------------------------------

    def history(self, ror_or_local: str | None = None, limit: int = 100) -> list[AuditEntry]:
        with self.tx() as tx:
            return tx.audit.history(ror_or_local, limit)

    # -- establishments (kill-switch, unreachable streak) ---------------------------------

    def killswitches(self) -> dict[str, bool]:
        with self.tx() as tx:
            return tx.establishments.killswitches()

    def killswitch_details(self) -> dict[str, tuple[bool, datetime | None, str]]:
        with self.tx() as tx:
            return tx.establishments.killswitch_details()

    def set_killswitch(self, finess: str, on: bool, reason: str, actor: str, now: datetime) -> bool:
        with self.tx() as tx:
            return tx.establishments.set_killswitch(finess, on, reason, actor, now)

    def source_unreachable(self, finess: str, down: bool) -> int:
        with self.tx() as tx:
            return tx.establishments.source_unreachable(finess, down)

    # -- cycles ---------------------------------------------------------------------------

    def record_cycle(
        self,
        cycle_time: datetime,
        started_at: datetime,
        finished_at: datetime,
        outcome: CycleOutcome,
        sent: int,
        rejected: int,
        detail: CycleDetail,
    ) -> None:
        with self.tx() as tx:
            tx.cycles.record(cycle_time, started_at, finished_at, outcome, sent, rejected, detail)

    def recent_cycles(self, limit: int = 10) -> list[CycleRow]:
        with self.tx() as tx:
            return tx.cycles.recent(limit)

    # -- snapshots and the delivery ledger ------------------------------------------------

    def add_snapshot_once(
        self, finess: str, cycle_time: datetime, counts: dict[str, BedCounts]
    ) -> int | None:
        with self.tx() as tx:
            return tx.ledger.add_snapshot_once(finess, cycle_time, counts)

    def add_file(
        self,
        destination: str,
        file_name: str,
        snapshot_id: int,
        finess: str,
        cycle_time: datetime,
        size: int,
        now: datetime,
    ) -> None:
        with self.tx() as tx:
            tx.ledger.add_file(destination, file_name, snapshot_id, finess, cycle_time, size, now)

    def files(self, destination: str, statuses: tuple[str, ...]) -> list[LedgerRow]:
        with self.tx() as tx:
            return tx.ledger.files(destination, statuses)

    def newest_cycle_times(
        self, destination: str, statuses: tuple[str, ...]
    ) -> dict[str, datetime]:
        with self.tx() as tx:
            return tx.ledger.newest_cycle_times(destination, statuses)

    def purge_before(self, before: datetime) -> tuple[int, int]:
        with self.tx() as tx:
            return tx.ledger.purge_before(before)

    def set_file_status(
        self, file_id: int, status: str, now: datetime, error: str = "", attempt: bool = False
    ) -> None:
        with self.tx() as tx:
            tx.ledger.set_file_status(file_id, status, now, error, attempt)

    def mark_delivered(self, row: LedgerRow, now: datetime, production: bool) -> None:
        with self.tx() as tx:
            tx.ledger.mark_delivered(row, now, production)

    def unsendable_ror_ids(self, finess: str) -> set[str]:
        with self.tx() as tx:
            return tx.ledger.unsendable_ror_ids(finess)

    def snapshot_ror_ids(self, snapshot_id: int) -> set[str]:
        with self.tx() as tx:
            return tx.ledger.snapshot_ror_ids(snapshot_id)

    def outbox_counts(self) -> dict[str, int]:
        with self.tx() as tx:
            return tx.ledger.outbox_counts()

    # -- what the metrics expose ------------------------------------------------------------

    def figures(self) -> StateFigures:
        with self.tx() as tx:
            return tx.figures.read()

    # -- e-mails to the bed-management cell -----------------------------------------------

    def queue_email(
        self, subject: str, body: str, now: datetime, audience: Audience = Audience.CELL
    ) -> None:
        with self.tx() as tx:
            tx.emails.queue(subject, body, now, audience)

    def pending_emails(self) -> list[EmailRow]:
        with self.tx() as tx:
            return tx.emails.pending()

    def claim_email(self, email_id: int, now: datetime) -> bool:
        with self.tx() as tx:
            return tx.emails.claim(email_id, now)

    def email_sent(self, email_id: int, now: datetime) -> None:
        with self.tx() as tx:
            tx.emails.sent(email_id, now)

    def email_failed(self, email_id: int, error: str) -> None:
        with self.tx() as tx:
            tx.emails.failed(email_id, error)

    # -- web accounts ---------------------------------------------------------------------

    def web_secret(self) -> str:
        """The key that signs the web page's session cookies: made once, shared, kept.

        Every `rorfeed web` process (and every restart) reads the same key, so a session
        stays valid across processes and restarts.
        """
        with self.tx() as tx:
            value = tx.web_accounts.secret()
        if value is not None:
            return value
        try:
            with self.tx() as tx:
                value = tx.web_accounts.secret()
                return tx.web_accounts.create_secret() if value is None else value
        except StateError:
            # Another process created it at the same instant: take theirs.
            with self.tx() as tx:
                return tx.web_accounts.secret_required()

    def rotate_web_secret(self) -> int:
        """`rorfeed users rotate-key`: a new stored key; returns the sessions it ended."""
        with self.tx() as tx:
            return tx.web_accounts.replace_secret()

    def web_user(self, name: str) -> WebUser | None:
        with self.tx() as tx:
            return tx.web_accounts.user(name)

    def web_users(self) -> list[WebUser]:
        with self.tx() as tx:
            return tx.web_accounts.users()

    def add_web_user(self, name: str, role: str, password_hash: str, now: datetime) -> None:
        with self.tx() as tx:
            tx.web_accounts.add_user(name, role, password_hash, now)

    def set_web_password(
        self, name: str, password_hash: str, now: datetime, role: str | None = None
    ) -> bool:
        with self.tx() as tx:
            return tx.web_accounts.set_password(name, password_hash, now, role)

    def disable_web_user(self, name: str, now: datetime) -> bool:
        with self.tx() as tx:
            return tx.web_accounts.disable(name, now)

    def open_web_session(
        self, name: str, token_hash: str, now: datetime, expired: datetime
    ) -> None:
        with self.tx() as tx:
            tx.web_accounts.open_session(name, token_hash, now, expired)

    def web_session_user(self, name: str, token_hash: str) -> WebUser | None:
        with self.tx() as tx:
            return tx.web_accounts.session_user(name, token_hash)

    def end_web_session(self, token_hash: str) -> None:
        with self.tx() as tx:
            tx.web_accounts.end_session(token_hash)

    def end_web_sessions(self, name: str) -> int:
        with self.tx() as tx:
            return tx.web_accounts.end_sessions(name)

    def web_session_counts(self, since: datetime) -> dict[str, int]:
        with self.tx() as tx:
            return tx.web_accounts.session_counts(since)


def open_store(url: str, password: str | None = None) -> Store:
    """Open (creating or upgrading as needed) the state store at `url`, with its `password`."""
    return Store(open_engine(url, password))
