"""Accounts of `rorfeed web` (managed with `rorfeed users`), their sessions, the signing key.

Only Argon2id hashes are stored (rorfeed.web.auth makes and checks them), and of a session only
the SHA-256 of its id. A new password or role and disabling an account end its sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from rorfeed.errors import StateError
from rorfeed.state.schema import meta_t, users_t, web_sessions_t


def _secret_query() -> Select[tuple[str]]:
    return select(meta_t.c.value).where(meta_t.c.key == "web_secret")


@dataclass(frozen=True)
class WebUser:
    """An account of the web page, as `Store.web_user` reads it."""

    name: str
    role: str  # "lead" or "viewer"
    password_hash: str
    disabled: bool
    failed_logins: int
    locked_until: datetime | None
    created_at: datetime
    updated_at: datetime

    def __repr__(self) -> str:  # never the hash
        return f"WebUser(name={self.name!r}, role={self.role!r}, disabled={self.disabled})"


def _web_user(row: Any) -> WebUser:
    return WebUser(
        name=row.name,
        role=row.role,
        password_hash=row.password_hash,
        disabled=bool(row.disabled),
        failed_logins=int(row.failed_logins),
        locked_until=row.locked_until,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class WebAccounts:
    """The web page's accounts and signing key, within one transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # -- the session-signing key (made once; `Store.web_secret` handles two makers at once)

    def secret(self) -> str | None:
        """The stored signing key, or None when none was made yet."""
        value = self._conn.execute(_secret_query()).scalar_one_or_none()
        return None if value is None else str(value)

    def secret_required(self) -> str:
        """The stored signing key (StateError when there is none)."""
        return str(self._conn.execute(_secret_query()).scalar_one())

    def create_secret(self) -> str:
        """Make and store a new signing key (fails if another was stored meanwhile)."""
        import secrets

        value = secrets.token_hex(32)
        self._conn.execute(insert(meta_t).values(key="web_secret", value=value))
        return value

    def replace_secret(self) -> int:
        """A new signing key in place of the stored one, and every session ended (they were
        signed with the old one); returns how many sessions ended."""
        import secrets

        value = secrets.token_hex(32)
        done = self._conn.execute(
            update(meta_t).where(meta_t.c.key == "web_secret").values(value=value)
        )
        if done.rowcount == 0:
            self._conn.execute(insert(meta_t).values(key="web_secret", value=value))
        return int(self._conn.execute(delete(web_sessions_t)).rowcount or 0)

    # -- accounts

    def user(self, name: str) -> WebUser | None:
        row = self._conn.execute(select(users_t).where(users_t.c.name == name)).first()
        return None if row is None else _web_user(row)

    def users(self) -> list[WebUser]:
        return [_web_user(r) for r in self._conn.execute(select(users_t).order_by(users_t.c.name))]

    def add_user(self, name: str, role: str, password_hash: str, now: datetime) -> None:
        """Create an account; StateError (nothing written) when the name is taken."""
        conn = self._conn
        taken = conn.execute(select(users_t.c.name).where(users_t.c.name == name)).first()
        if taken is not None:
            raise StateError(f"account {name!r} already exists")
        conn.execute(
            insert(users_t).values(
                name=name,
                role=role,
                password_hash=password_hash,
                disabled=False,
                failed_logins=0,
                locked_until=None,
                created_at=now,
                updated_at=now,
            )
        )

    def set_password(
        self, name: str, password_hash: str, now: datetime, role: str | None = None
    ) -> bool:
        """New password (and role, if given); enables and unlocks, ends every session.

        False: no such account."""
        values: dict[str, Any] = {
            "password_hash": password_hash,
            "disabled": False,
            "failed_logins": 0,
            "locked_until": None,
            "updated_at": now,
        }
        if role is not None:
            values["role"] = role
        result = self._conn.execute(update(users_t).where(users_t.c.name == name).values(**values))
        self.end_sessions(name)
        return bool(result.rowcount)

    def disable(self, name: str, now: datetime) -> bool:
        """Disable an account and end its sessions. False: no such account."""
        result = self._conn.execute(
            update(users_t).where(users_t.c.name == name).values(disabled=True, updated_at=now)
        )
        self.end_sessions(name)
        return bool(result.rowcount)

    def user_for_login(self, name: str) -> WebUser | None:
        """The account, its row locked until the transaction ends (PostgreSQL `FOR UPDATE`;
        SQLite's `BEGIN IMMEDIATE` already holds the write lock), so that a login is decided
        on what no other login changes meanwhile."""
        row = self._conn.execute(
            select(users_t).where(users_t.c.name == name).with_for_update()
        ).first()
        return None if row is None else _web_user(row)

    def login_failed(
        self, name: str, now: datetime, max_failures: int, lock_until: datetime
    ) -> datetime | None:
        """Count a wrong password; at `max_failures` lock the account until `lock_until`.

        A lock that has run out starts the count afresh; a locked account's failures are
        not counted (they do not lengthen the lock). Returns the lock's end when locked.
        Call it after `user_for_login` in the same transaction.
        """
        conn = self._conn
        row = conn.execute(
            select(users_t.c.failed_logins, users_t.c.locked_until)
            .where(users_t.c.name == name)
            .with_for_update()
        ).first()
        if row is None:
            return None
        if row.locked_until is not None and row.locked_until > now:
            return row.locked_until  # type: ignore[no-any-return]
        failures = (0 if row.locked_until is not None else row.failed_logins) + 1
        values: dict[str, Any] = {"failed_logins": failures, "locked_until": None}
        if failures >= max_failures:
            values = {"failed_logins": 0, "locked_until": lock_until}
        conn.execute(update(users_t).where(users_t.c.name == name).values(**values))
        return values["locked_until"]  # type: ignore[no-any-return]

    def login_succeeded(
        self, name: str, now: datetime, new_password_hash: str | None = None
    ) -> None:
        """Reset the failure count; store a re-hashed password (stronger parameters) if given."""
        values: dict[str, Any] = {"failed_logins": 0, "locked_until": None}
        if new_password_hash is not None:
            values.update(password_hash=new_password_hash, updated_at=now)
        self._conn.execute(update(users_t).where(users_t.c.name == name).values(**values))

    # -- sessions (`token_hash`: the hex SHA-256 of the id the signed cookie carries)

    def open_session(self, name: str, token_hash: str, now: datetime, expired: datetime) -> None:
        """Record a new session of `name`; forget every session opened before `expired`."""
        conn = self._conn
        conn.execute(delete(web_sessions_t).where(web_sessions_t.c.created_at < expired))
        conn.execute(insert(web_sessions_t).values(id=token_hash, account=name, created_at=now))

    def session_user(self, name: str, token_hash: str) -> WebUser | None:
        """The account `name` when that session of it is still open, else None."""
        row = self._conn.execute(
            select(web_sessions_t.c.id).where(
                web_sessions_t.c.id == token_hash, web_sessions_t.c.account == name
            )
        ).first()
        return None if row is None else self.user(name)

    def end_session(self, token_hash: str) -> None:
        self._conn.execute(delete(web_sessions_t).where(web_sessions_t.c.id == token_hash))

    def end_sessions(self, name: str) -> int:
        """End every session of `name`; how many were open."""
        result = self._conn.execute(delete(web_sessions_t).where(web_sessions_t.c.account == name))
        return int(result.rowcount)

    def session_counts(self, since: datetime) -> dict[str, int]:
        """Open sessions per account, of those opened since `since` (older ones have expired)."""
        rows = self._conn.execute(
            select(web_sessions_t.c.account, func.count())
            .where(web_sessions_t.c.created_at >= since)
            .group_by(web_sessions_t.c.account)
        )
        return {str(account): int(count) for account, count in rows}
