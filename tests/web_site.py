"""The usual site (tests/sites.py) as the web page finds it: two past cycles, two accounts.

Shared by tests/test_web.py (the page at the HTTP level) and tests/test_web_browser.py (in
Chromium): the accounts, their passwords, the injected clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher

from rorfeed.config import load
from rorfeed.state import open_store
from rorfeed.web.auth import Accounts, Role
from tests.sites import BAD_CHIR, GOOD, cycle, write_site

# Cheap Argon2id parameters: the tests log in often; production uses the library's defaults.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
LEAD, VIEWER = "chef.projet", "cellule"
LEAD_PW, VIEWER_PW = "mot de passe du chef 1", "mot de passe cellule 2"


class Clock:
    """The web application's clock, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def build_site(path: Path) -> None:
    """A site after two cycles (every unit known, CHIR rejected once), with two accounts."""
    write_site(path, export=GOOD)
    cycle(path, 0)  # every unit known, with last values sent
    cycle(path, 1, BAD_CHIR)  # CHIR rejected once: a streak of 1
    store = open_store(load(path / "rorfeed.toml").state_url)
    accounts = Accounts(store, hasher=FAST)
    accounts.add(LEAD, Role.LEAD, LEAD_PW)
    accounts.add(VIEWER, Role.VIEWER, VIEWER_PW)
    store.engine.dispose()
