"""The emergency path: `units manual` and `killswitch on` must act whenever the state store can
be reached, even when other parts of the configuration are invalid (SPEC §2)."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from rorfeed.config import (
    DaemonSection,
    NotifySection,
    parse_toml,
    read_secret,
    state_url_of,
)
from rorfeed.errors import ConfigError


@dataclass(frozen=True)
class EmergencyConfig:
    """The least the emergency commands need, read as leniently as the file allows."""

    path: Path
    state_url: str
    state_password: str | None
    names: dict[str, str]  # FINESS → establishment name, of every readable establishment
    zone: zoneinfo.ZoneInfo
    notify: NotifySection | None
    notify_password: str | None
    problems: list[str]  # why the full configuration did not load: reported as warnings


# What locates and opens the state store: kept from a [daemon] section that is otherwise invalid.
_STATE_KEYS = ("work_dir", "state_url", "state_password_file", "state_password_env")


def load_emergency(path: Path, problems: list[str]) -> EmergencyConfig:
    path = path.absolute()
    try:
        raw = parse_toml(path)
    except ConfigError:
        raw = {}
    daemon_raw = raw.get("daemon") if isinstance(raw.get("daemon"), dict) else {}
    try:
        daemon = DaemonSection.model_validate(daemon_raw)
    except ValidationError:
        # Keep whatever locates the state store; the rest falls back to its default.
        daemon = DaemonSection.model_validate(
            {k: v for k, v in (daemon_raw or {}).items() if k in _STATE_KEYS and isinstance(v, str)}
        )
    try:
        zone = zoneinfo.ZoneInfo(daemon.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zone = zoneinfo.ZoneInfo("Europe/Paris")
    names: dict[str, str] = {}
    establishments = raw.get("establishments")
    for est in establishments if isinstance(establishments, list) else []:
        if isinstance(est, dict) and isinstance(est.get("finess"), str):
            names[est["finess"]] = str(est.get("name") or est["finess"])
    notify: NotifySection | None = None
    password: str | None = None
    if isinstance(raw.get("notify"), dict):
        try:
            notify = NotifySection.model_validate(raw["notify"])
        except ValidationError:
            notify = None
    if notify is not None and (notify.password_file or notify.password_env):
        password = read_secret(
            path.parent, "notify.password", notify.password_file, notify.password_env, []
        )
    state_password = read_secret(
        path.parent,
        "daemon.state_password",
        daemon.state_password_file,
        daemon.state_password_env,
        [],
    )
    return EmergencyConfig(
        path=path,
        state_url=state_url_of(daemon, path.parent),
        state_password=state_password,
        names=names,
        zone=zone,
        notify=notify,
        notify_password=password,
        problems=problems,
    )
