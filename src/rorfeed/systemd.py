"""The systemd notification protocol (`sd_notify(3)`), spoken directly: a few lines, no library.

Under `Type=notify`, systemd hands the service a datagram socket in `$NOTIFY_SOCKET` (a path,
or an abstract-namespace name written with a leading `@`). The service sends newline-separated
`KEY=value` assignments: `READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1`. With
`WatchdogSec=`, systemd sets `$WATCHDOG_USEC` (and `$WATCHDOG_PID`, the process that must ping)
and kills the service when no `WATCHDOG=1` arrives in that time.

Outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op. A failed send is logged once at
debug level and never raised: a notification must never stop the feed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("rorfeed.systemd")


class Notifier:
    """Sends `sd_notify` messages to `$NOTIFY_SOCKET`; a no-op when it is not set."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address: str | None = None
        if address:
            # "@name" is the abstract namespace: the kernel's name starts with a NUL byte.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_seconds: float | None = (
            watchdog_usec / 1_000_000 if watchdog_usec and watchdog_usec > 0 else None
        )
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        watchdog: int | None = None
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process systemd expects the pings from: not us → no pings.
        if env.get("WATCHDOG_USEC", "").isdigit() and (not pid or pid == str(os.getpid())):
            watchdog = int(env["WATCHDOG_USEC"])
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` assignments in one datagram; True when sent."""
        if self._address is None:
            return False
        # One line per assignment: a STATUS text never carries a newline of its own.
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.debug("sd_notify_failed", error=str(exc))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")
