"""What every view of the page reaches: the configuration, the state store, `Control`, the
accounts and the clock, bound to the Flask application by `create_app`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo

import structlog
from flask import current_app

from rorfeed.config import Config, WebSection
from rorfeed.control import Control
from rorfeed.state import Store
from rorfeed.web.auth import Accounts

log = structlog.get_logger("rorfeed.web")

Clock = Callable[[], datetime]


class Flusher:
    """Hands queued e-mails to the relay after a change, off the request (one at a time)."""

    def __init__(self, control: Control, background: bool) -> None:
        self.control = control
        self.background = background
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        if not self.background:
            self.control.flush_notifications()
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="rorfeed-web-email", daemon=True
                )
                self._thread.start()
        self._event.set()

    def _run(self) -> None:
        while True:
            self._event.wait()
            self._event.clear()
            try:
                self.control.flush_notifications()
            except Exception:  # a failed flush must not end the thread
                log.exception("web_email_flush_failed")


@dataclass(frozen=True)
class Web:
    config: Config
    section: WebSection
    store: Store
    control: Control
    accounts: Accounts
    clock: Clock
    flusher: Flusher

    @property
    def zone(self) -> tzinfo:
        return self.control.directory.zone

    def name(self, finess: str) -> str:
        return self.control.directory.name(finess)

    @property
    def emails(self) -> bool:
        """Whether a change is e-mailed to the bed-management cell."""
        notifier = self.control.notifier
        return notifier is not None and notifier.enabled


def current() -> Web:
    """The page's objects, for the request being served."""
    web: Web = current_app.extensions["rorfeed"]
    return web
