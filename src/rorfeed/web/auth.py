"""Accounts of the web page: Argon2id hashes, roles, login throttling (SPEC §10).

Passwords are hashed with Argon2id (`argon2-cffi`, its RFC 9106 parameters) and never kept,
logged or shown in clear. After `MAX_FAILURES` wrong passwords in a row an account is refused
for `LOCK_DURATION`, even with the right password, however many logins arrive at once; a login
with an unknown, disabled or locked name costs the same hashing time as a real one, so timing
does not tell which names exist or are locked (nor does the page's answer: SPEC §10.3).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from rorfeed.errors import RorfeedError
from rorfeed.model import ACTOR_RORFEED
from rorfeed.state import Store, WebUser

log = structlog.get_logger("rorfeed.web")

MAX_FAILURES = 5
LOCK_DURATION = timedelta(minutes=15)
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024  # hashing a huge input is a cheap denial of service
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

# Argon2id takes 64 MiB per hash with the default parameters: at most two at once, so a burst
# of logins cannot take the server's memory.
_HASHING = threading.BoundedSemaphore(2)


class Role(StrEnum):
    LEAD = "lead"  # the chef de projet: switches units and kill-switches
    VIEWER = "viewer"  # the bed-management cell, ops: sees everything, changes nothing


_ROLES = frozenset(r.value for r in Role)


class AccountError(RorfeedError):
    """An account operation was refused (bad name, weak password, unknown account…)."""


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise AccountError(
            f"invalid account name {name!r}: 1 to 64 characters among letters, digits "
            "and . _ @ -, starting with a letter or digit"
        )
    if name.lower() == ACTOR_RORFEED:
        raise AccountError(
            f'"{ACTOR_RORFEED}" is reserved for rorfeed\'s own automatic changes: '
            "choose another account name"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(f"the password must have at most {MAX_PASSWORD_CHARS} characters")
    return password


class LoginOutcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"  # unknown name, disabled account or wrong password: one answer
    LOCKED = "locked"  # too many failures: refused until `locked_until` (logged; the page
    # answers as for REFUSED, so that it does not tell which names exist)


@dataclass(frozen=True)
class LoginResult:
    outcome: LoginOutcome
    user: WebUser | None = None
    locked_until: datetime | None = None


class Accounts:
    """Account operations over the state store, with an injectable clock and hasher."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.hasher = hasher or PasswordHasher()  # Argon2id
        self._dummy_hash: str | None = None

    def hash(self, password: str) -> str:
        with _HASHING:
            return self.hasher.hash(check_password(password))

    def _verify(self, password_hash: str, password: str) -> bool:
        if len(password) > MAX_PASSWORD_CHARS:
            return False
        with _HASHING:
            try:
                return self.hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    def add(self, name: str, role: Role, password: str) -> None:
        self.store.add_web_user(check_name(name), role.value, self.hash(password), self.clock())

    def set_password(self, name: str, password: str, role: Role | None = None) -> None:
        if not self.store.set_web_password(
            name, self.hash(password), self.clock(), None if role is None else role.value
        ):
            raise AccountError(f"no account named {name!r}")

    def disable(self, name: str) -> None:
        if not self.store.disable_web_user(name, self.clock()):
            raise AccountError(f"no account named {name!r}")

    def user(self, name: str) -> WebUser | None:
        return self.store.web_user(name)

    def end_sessions(self, name: str) -> int:
        """End every open session of `name` (at their next request); how many there were."""
        if self.store.web_user(name) is None:
            raise AccountError(f"no account named {name!r}")
        return self.store.end_web_sessions(name)

    def authenticate(self, name: str, password: str) -> LoginResult:
        """Check a login; counts failures and locks the account after MAX_FAILURES.

        The password is hashed first, whatever the name (unknown, disabled and locked accounts
        cost the same time as a real check); then the outcome is decided in one transaction on
        the account's locked row: a check that ends once the account is locked is refused,
        even with the right password, and neither clears the lock nor restarts the count.
        """
        user = self.store.web_user(name) if _NAME_RE.fullmatch(name) else None
        if user is None or user.disabled or user.role not in _ROLES:
            self._verify(self._dummy(), password)  # the same cost as a real check
            return LoginResult(LoginOutcome.REFUSED)
        verified = self._verify(user.password_hash, password)
        rehashed = None
        if verified and self.hasher.check_needs_rehash(user.password_hash):
            rehashed = self.hash(password) if len(password) >= MIN_PASSWORD_CHARS else None
        now = self.clock()  # after hashing: when the login is decided
        with self.store.tx() as tx:
            accounts = tx.web_accounts
            account = accounts.user_for_login(name)
            if account is None or account.disabled or account.role not in _ROLES:
                return LoginResult(LoginOutcome.REFUSED)
            if account.locked_until is not None and account.locked_until > now:
                return LoginResult(LoginOutcome.LOCKED, locked_until=account.locked_until)
            if not verified or account.password_hash != user.password_hash:
                locked_until = accounts.login_failed(name, now, MAX_FAILURES, now + LOCK_DURATION)
                if locked_until is None:
                    return LoginResult(LoginOutcome.REFUSED)
            else:
                accounts.login_succeeded(name, now, rehashed)
                if rehashed is not None:  # the session opened now goes with the new hash
                    account = replace(account, password_hash=rehashed)
                return LoginResult(LoginOutcome.OK, user=account)
        log.warning("web_account_locked", account=name, until=locked_until.isoformat())
        return LoginResult(LoginOutcome.LOCKED, locked_until=locked_until)

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            with _HASHING:
                self._dummy_hash = self.hasher.hash("rorfeed: no such account")
        return self._dummy_hash


def password_fingerprint(user: WebUser) -> str:
    """A short digest of the stored hash: a new password ends the sessions opened before it."""
    import hashlib

    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]
