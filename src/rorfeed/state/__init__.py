"""The state store (SPEC §8): modes, streaks, audit trail, cycles and the delivery ledger.

SQLAlchemy Core over SQLite (default, WAL mode) or PostgreSQL. Every change that must stay
consistent with another (a mode and its audit entry, a ledger status) happens in one
transaction. The audit trail is append-only. Times are stored as UTC.

The package: `schema` (tables, version, migrations, opening), one small repository per kind
of record (`units`, `audit`, `establishments`, `cycles`, `ledger`, `emails`,
`web_accounts`, and `figures`, what the metrics read), and `store`, the facade whose
transaction binds them to one connection.
"""

from rorfeed.state.anomalies import AnomalyReport
from rorfeed.state.audit import AuditEntry
from rorfeed.state.cycles import CycleRow
from rorfeed.state.emails import EmailRow
from rorfeed.state.figures import StateFigures
from rorfeed.state.ledger import LedgerRow
from rorfeed.state.mapping_versions import MappingVersion
from rorfeed.state.schema import SCHEMA_VERSION
from rorfeed.state.store import Store, Transaction, open_store
from rorfeed.state.units import FeedState, UnitState
from rorfeed.state.web_accounts import WebUser

__all__ = [
    "SCHEMA_VERSION",
    "AnomalyReport",
    "AuditEntry",
    "CycleRow",
    "EmailRow",
    "FeedState",
    "LedgerRow",
    "MappingVersion",
    "StateFigures",
    "Store",
    "Transaction",
    "UnitState",
    "WebUser",
    "open_store",
]
