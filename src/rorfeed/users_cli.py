"""`rorfeed users add|passwd|disable|end-sessions|list NAME [--role …] [--password-file PATH]`.

The password is asked twice on a terminal (never echoed), or read from `--password-file`
(`-` = standard input; one trailing newline ignored) for automation; it is never taken from
the command line. `add` needs `--role`; `passwd` sets a new password, re-enables and unlocks
the account, and changes its role when `--role` is given (and ends its sessions); `disable`
ends its sessions at their next request; `end-sessions` ends them and nothing else; `list`
prints a table (stdout), every account or NAME only.

Exit codes as the rest of the CLI: 0 done, 1 refused (name taken or reserved, unknown
account, weak or mismatched password), 2 usage error.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rorfeed.config import Config
from rorfeed.errors import RorfeedError
from rorfeed.exit_codes import ExitCode
from rorfeed.state import Store, WebUser, open_store
from rorfeed.web.auth import MIN_PASSWORD_CHARS, AccountError, Accounts, Role, check_name

if TYPE_CHECKING:
    from argon2 import PasswordHasher

ACTIONS = ("add", "passwd", "disable", "end-sessions", "list", "rotate-key")


class _Usage(Exception):
    pass


def read_password(password_file: str | None) -> str:
    """From the file (`-` = stdin), else asked twice on the terminal."""
    if password_file is not None:
        try:
            if password_file == "-":  # noqa: S105 - "-" is stdin, not a password
                text = sys.stdin.read()
            else:
                text = Path(password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AccountError(f"cannot read the password from {password_file}: {exc}") from exc
        return text.removesuffix("\n").removesuffix("\r")
    if not sys.stdin.isatty():
        raise _Usage(
            "no terminal to ask the password on: use --password-file PATH (or - for stdin)"
        )
    import getpass

    first = getpass.getpass(f"New password (at least {MIN_PASSWORD_CHARS} characters): ")
    second = getpass.getpass("Same password again: ")
    if first != second:
        raise AccountError("the two passwords differ: nothing changed")
    return first


def _state(user: WebUser, now: datetime) -> str:
    if user.disabled:
        return "disabled"
    if user.locked_until is not None and user.locked_until > now:
        return f"locked until {user.locked_until.isoformat(timespec='minutes')}"
    return "active"


def _list(store: Store, name: str | None, config: Config) -> int:
    users = store.web_users()
    if name is not None:
        users = [u for u in users if u.name == name]
        if not users:
            print(f"rorfeed: no account named {name!r}", file=sys.stderr)
            return ExitCode.FAILED
    now = datetime.now(UTC)
    header = ["NAME", "ROLE", "STATE", "CREATED", "CHANGED"]
    rows = [
        [
            u.name,
            u.role,
            _state(u, now),
            u.created_at.astimezone(config.zone).isoformat(timespec="minutes"),
            u.updated_at.astimezone(config.zone).isoformat(timespec="minutes"),
        ]
        for u in users
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(users)} account(s)", file=sys.stderr)
    return ExitCode.OK


def _rotate_key(config: Config, store: Store) -> int:
    if "web.secret" in config.secrets:
        print(
            "rorfeed: web.secret_file is set: the page signs with that file's key, not the"
            " stored one — replace the file (`openssl rand -hex 32`) and restart rorfeed-web",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    ended = store.rotate_web_secret()
    print(
        f"signing key replaced: {ended} session(s) ended, everyone logs in again",
        file=sys.stderr,
    )
    return ExitCode.OK


def users(
    config: Config,
    action: str,
    name: str | None,
    role: str | None,
    password_file: str | None,
    *,
    store: Store | None = None,
    hasher: PasswordHasher | None = None,
) -> int:
    """Run one `rorfeed users` action; returns the exit code (`hasher`: for tests)."""
    try:
        if action not in ACTIONS:
            raise _Usage(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
        if action == "rotate-key" and (name or role is not None or password_file is not None):
            raise _Usage("users rotate-key takes no NAME, --role nor --password-file")
        if action not in ("list", "rotate-key") and not name:
            raise _Usage(f"users {action} needs the account NAME")
        if action == "add" and role is None:
            raise _Usage("users add needs --role lead (may switch) or --role viewer (reads only)")
        if action in ("disable", "end-sessions", "list") and (
            role is not None or password_file is not None
        ):
            raise _Usage(f"users {action} takes neither --role nor --password-file")
        chosen_role = None if role is None else Role(role)
    except (_Usage, ValueError) as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        store = store or open_store(config.state_url, config.state_password)
        accounts = Accounts(store, hasher=hasher)
        if action == "list":
            return _list(store, name, config)
        if action == "rotate-key":
            return _rotate_key(config, store)
        assert name is not None  # noqa: S101 - checked above
        if action == "disable":
            accounts.disable(name)
            print(f"account {name} disabled (its sessions end now)", file=sys.stderr)
            return ExitCode.OK
        if action == "end-sessions":
            ended = accounts.end_sessions(name)
            print(f"{ended} session(s) of {name} ended", file=sys.stderr)
            return ExitCode.OK
        if action == "add":
            check_name(name)
            if store.web_user(name) is not None:
                raise AccountError(f"account {name!r} already exists: use `users passwd`")
            assert chosen_role is not None  # noqa: S101 - checked above
            accounts.add(name, chosen_role, read_password(password_file))
            print(f"account {name} created, role {chosen_role.value}", file=sys.stderr)
            return ExitCode.OK
        if store.web_user(name) is None:
            raise AccountError(f"no account named {name!r}")
        accounts.set_password(name, read_password(password_file), chosen_role)
        print(
            f"password of {name} changed; account enabled and unlocked, its sessions ended"
            + (f", role {chosen_role.value}" if chosen_role else ""),
            file=sys.stderr,
        )
        return ExitCode.OK
    except _Usage as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except RorfeedError as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except (KeyboardInterrupt, EOFError):
        print("\nrorfeed: interrupted: nothing changed", file=sys.stderr)
        return ExitCode.FAILED
