"""E-mail to the bed-management cell (SPEC §6): what changed, in French, and its delivery.

Two halves: `compose` (pure: the French messages) and `smtp` (the queue in the state store and
its delivery to the relay).
"""

from rorfeed.notify.compose import (
    SUBJECT_PREFIX,
    compose_anomaly_report,
    compose_killswitch,
    compose_unit_changes,
    format_time,
)
from rorfeed.notify.smtp import FlushResult, Notifier

__all__ = [
    "SUBJECT_PREFIX",
    "FlushResult",
    "Notifier",
    "compose_anomaly_report",
    "compose_killswitch",
    "compose_unit_changes",
    "format_time",
]
