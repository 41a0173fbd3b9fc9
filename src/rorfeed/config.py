"""The TOML configuration: every key declared once, validated strictly, errors worded here.

`load(path)` returns a `Config` or raises `ConfigError` listing *every* problem, each as
`<file>: <key>: <what is wrong> — <how to fix>`. Unknown keys are errors, so that a typo can
never silently disable a safety rule. Relative paths are relative to the config file's folder.
Secrets are never in the TOML: they are read from `*_file` keys or `*_env` variables at load
time and kept in `Config.secrets`, keyed by the dotted key they came from.
"""

from __future__ import annotations

import os
import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, ValidationError

from rorfeed.errors import ConfigError, shown
from rorfeed.finess import finess_problem
from rorfeed.listen import listen_problem
from rorfeed.safe_text import control_character, unsafe_problem
from rorfeed.schedule import schedule_problem
from rorfeed.sections import READABLE, DestinationCommon, ReadableFile, SourceCommon, Strict
from rorfeed.sources import SOURCES
from rorfeed.transports import DESTINATIONS
from rorfeed.url_password import url_password

DEFAULT_CONFIG_PATH = Path("/etc/rorfeed/rorfeed.toml")


class DaemonSection(Strict):
    schedule: str = Field(
        "5 * * * *", description="cron (minute hour day month weekday), in `timezone`"
    )
    timezone: str = Field("Europe/Paris", description="IANA zone of the schedule and time stamps")
    work_dir: str = Field(
        "/var/lib/rorfeed", description="holds outbox/, archive/ and, by default, state.db"
    )
    state_url: str = Field(
        "",
        description="SQLAlchemy URL of the state store (no password in it); empty = "
        "sqlite:///<work_dir>/state.db",
    )
    state_password_file: str = Field("", description="file holding the state store's password")
    state_password_env: str = Field("", description="or: environment variable holding it")
    archive_days: int = Field(30, ge=1, description="days a delivered file stays in archive/")


class MetricsSection(Strict):
    listen: str = Field(
        "127.0.0.1:9464", description='host:port of /metrics; never all interfaces; "" disables'
    )


class RulesSection(Strict):
    max_beds_per_unit: int = Field(500, ge=1, description="plausible maximum of any count")
    coherence: Literal["reject", "warn"] = Field(
        "reject", description='"reject" or "warn" when closed > installed or available too high'
    )
    max_source_age_minutes: int = Field(
        120, ge=1, description="oldest acceptable `updated_at` of a source row"
    )
    installed_change_warn: float = Field(
        0.5, ge=0, description="share of change of installed beds that raises a warning"
    )
    manual_after_cycles: int = Field(
        3, ge=1, description="consecutive rejected cycles before a unit goes manual"
    )
    killswitch_after_cycles: int = Field(
        3, ge=1, description="consecutive cycles with the source unreachable"
    )
    killswitch_rejected_share: float = Field(
        0.5, ge=0, le=1, description="share of units rejected in one cycle that trips it; 1 = never"
    )
    max_file_age_minutes: int = Field(120, ge=1, description="an older file is never delivered")


if TYPE_CHECKING:
    SourceSection = SourceCommon
    DestinationSection = DestinationCommon
else:
    # The kinds the configuration accepts are the registries' (`sources.SOURCES`,
    # `transports.DESTINATIONS`): a new kind is one line there, never an edit here.
    SourceSection = Annotated[
        Union[tuple(k.section for k in SOURCES.values())],  # noqa: UP007 (a runtime tuple)
        Field(discriminator="kind"),
    ]
    DestinationSection = Annotated[
        Union[tuple(k.section for k in DESTINATIONS.values())],  # noqa: UP007
        Field(discriminator="kind"),
    ]


class EstablishmentSection(Strict):
    name: str = Field(min_length=1, description="establishment name", examples=["Hôpital Exemple"])
    finess: str = Field(
        description="FINESS géographique (ET): département then 7 digits; 9th = Luhn key",
        examples=["750712184"],
    )
    finess_check: Literal["luhn", "format"] = Field(
        "luhn", description='or "format" (format only, for a real FINESS that fails the key)'
    )
    mapping: ReadableFile = Field(
        description="CSV local_code;ror_id;label[;mode][;priority][;id_externe_synchro]; under"
        " /var/lib/rorfeed/mappings/ the web page can change it",
        examples=["/var/lib/rorfeed/mappings/750712184.csv"],
    )
    referential: ReadableFile = Field(
        "", description="optional ROR referential export (CSV of fiche ids)"
    )
    source: SourceSection


# The session-signing key from a credential: long enough that it cannot be guessed.
MIN_WEB_SECRET = 32


class WebSection(Strict):
    listen: str = Field(
        "127.0.0.1:8465", description="behind the hospital's reverse proxy, or with tls_cert/key"
    )
    tls_cert: ReadableFile = Field("", description="certificate file (PEM) to serve HTTPS")
    tls_key: ReadableFile = Field("", description="its private key (PEM)")
    session_minutes: int = Field(480, ge=1, description="a session expires after this")
    secret_file: str = Field(
        "", description="file holding the session-signing key; empty = the state store's"
    )
    secret_env: str = Field("", description="or: environment variable holding it")


class NotifySection(Strict):
    smtp_host: str = Field("", description="SMTP relay; empty disables e-mail")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port")
    starttls: bool = Field(True, description="use STARTTLS")
    username: str = Field("", description="SMTP account, when the relay wants one")
    password_file: str = Field("", description="file holding its password")
    password_env: str = Field("", description="or: environment variable holding it")
    sender: str = Field("", description="From: address")
    recipients: list[str] = Field(
        default_factory=list, description="the bed-management cell's addresses"
    )
    lead_recipients: list[str] = Field(
        default_factory=list, description="the chef de projet's addresses (anomaly reports)"
    )


class ConfigFile(Strict):
    """The whole file, as written by the operator."""

    daemon: DaemonSection = Field(default_factory=DaemonSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    rules: RulesSection = Field(default_factory=RulesSection)
    establishments: list[EstablishmentSection] = Field(min_length=1)
    destinations: list[DestinationSection] = Field(min_length=1)
    web: WebSection | None = None
    notify: NotifySection | None = None


@dataclass(frozen=True)
class Config:
    """A validated configuration, with paths resolved and secrets read."""

    path: Path
    file: ConfigFile
    secrets: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p

    @property
    def work_dir(self) -> Path:
        return self.resolve(self.file.daemon.work_dir)

    @property
    def state_url(self) -> str:
        return state_url_of(self.file.daemon, self.base_dir)

    @property
    def state_password(self) -> str | None:
        """The state store's password (`daemon.state_password_file|_env`), None without one."""
        return self.secrets.get("daemon.state_password")

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.file.daemon.timezone)

    def destinations_for(self, finess: str) -> list[DestinationSection]:
        return [
            d for d in self.file.destinations if not d.establishments or finess in d.establishments
        ]


def state_url_of(daemon: DaemonSection, base_dir: Path) -> str:
    if daemon.state_url:
        return daemon.state_url
    work = Path(daemon.work_dir)
    work = work if work.is_absolute() else base_dir / work
    return f"sqlite:///{work / 'state.db'}"


# ---------------------------------------------------------------------------------------------
# Loading

_PLACEHOLDERS = {"finess", "timestamp", "ext"}
# One address per list entry: a second one after a comma would be silently lost.
_ADDRESS = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+")
# A destination's name names folders of the work directory (SPEC §3): ASCII only, no dot.
_DESTINATION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


def _dotted(loc: tuple[int | str, ...], tags: set[str]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in tags and i > 0:
            # pydantic puts the discriminator's value in the path of a tagged union: hide it.
            continue
        else:
            out += ("." if out else "") + part
    return out


_KIND_TAGS = set(SOURCES) | set(DESTINATIONS)


def _pydantic_problems(name: str, exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        key = _dotted(tuple(err["loc"]), _KIND_TAGS)
        typ = err["type"]
        if typ == "extra_forbidden":
            problems.append(f"{name}: {key}: unknown key — remove it or fix its spelling")
        elif typ == "missing":
            problems.append(f"{name}: {key}: missing — this key is required")
        elif typ == "union_tag_invalid":
            problems.append(f"{name}: {key}: {err['msg']}")
        else:
            found = err.get("input")
            shown = f"found {found!r}, " if not isinstance(found, dict | list) else ""
            problems.append(f"{name}: {key}: {shown}{err['msg'].lower()}")
    return problems


def parse_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file — pass --config or set RORFEED_CONFIG"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{path}: not UTF-8 (byte {exc.start}) — save the configuration as UTF-8"]
        ) from None


def load(path: Path, *, for_web: bool = False) -> Config:
    """Read, validate and resolve the configuration; raise `ConfigError` with every problem.

    `for_web`: for `rorfeed web`, which reads only the state store, `[web]` and `[notify]`
    (SPEC §10.3): the whole file is validated, but no secret or key file of a source or a
    destination is opened — a bug in the page then cannot reach them, and its systemd unit
    needs none of the daemon's credentials.
    """
    path = path.absolute()
    raw = parse_toml(path)
    name = path.name
    try:
        model = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(name, exc)) from None
    problems: list[str] = []
    secrets: dict[str, str] = {}
    config = Config(path=path, file=model, secrets=secrets)
    _check_semantics(config, problems, secrets, for_web=for_web)
    if problems:
        raise ConfigError([f"{name}: {p}" for p in problems])
    return config


def read_secret(
    base_dir: Path, key: str, file_value: str, env_value: str, problems: list[str]
) -> str | None:
    if file_value and env_value:
        problems.append(f"{key}_file, {key}_env: both set — keep one")
        return None
    if file_value:
        p = base_dir / file_value  # an absolute file_value stays absolute
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"{key}_file: {p}: cannot be read ({exc.strerror}) — fix the path")
            return None
        return text.removesuffix("\n")
    if env_value:
        value = os.environ.get(env_value)
        if value is None:
            problems.append(f"{key}_env: the environment variable {env_value} is not set")
            return None
        return value
    return None


def _check_file(config: Config, key: str, value: str, problems: list[str]) -> None:
    p = config.resolve(value)
    if not p.is_file() or not os.access(p, os.R_OK):
        problems.append(f"{key}: {p}: missing or unreadable — fix the path")


def _check_section(
    config: Config,
    key: str,
    section: BaseModel,
    problems: list[str],
    secrets: dict[str, str],
    *,
    read: bool = True,
) -> None:
    """The checks a section declares by its fields: every `ReadableFile` required or set must be
    readable, and every `<name>_file` / `<name>_env` pair is read into `secrets["<key>.<name>"]`;
    `read=False` opens none of them (the page's process, see `load`), checking the rest.
    """
    fields = type(section).model_fields
    for name, info in fields.items():
        value = getattr(section, name)
        if read and READABLE in info.metadata and (value or info.is_required()):
            _check_file(config, f"{key}.{name}", value, problems)
        if (name == "url" or name.endswith("_url")) and url_password(value):
            # Never in the URL, where every message naming the database would carry it (§3).
            beside = f"{key}.{name.removesuffix('url')}password"
            problems.append(
                f"{key}.{name}: holds a password — remove it from the URL and put it in"
                f" {beside}_file (or {beside}_env)"
            )
    for name in fields if read else ():
        secret_name = name.removesuffix("_file")
        if secret_name == name or f"{secret_name}_env" not in fields:
            continue
        secret = read_secret(
            config.base_dir,
            f"{key}.{secret_name}",
            getattr(section, name),
            getattr(section, f"{secret_name}_env"),
            problems,
        )
        if secret is not None:
            secrets[f"{key}.{secret_name}"] = secret


def _check_semantics(
    config: Config, problems: list[str], secrets: dict[str, str], *, for_web: bool = False
) -> None:
    f = config.file
    try:
        zoneinfo.ZoneInfo(f.daemon.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.append(
            f'daemon.timezone: found "{f.daemon.timezone}", expected an IANA zone such as '
            '"Europe/Paris"'
        )
    _check_section(config, "daemon", f.daemon, problems, secrets)
    cron_problem = schedule_problem(f.daemon.schedule)
    if cron_problem:
        problems.append(f"daemon.schedule: {cron_problem}")
    for listen_key, listen in (("metrics.listen", f.metrics.listen),) + (
        (("web.listen", f.web.listen),) if f.web else ()
    ):
        if listen and (problem := listen_problem(listen)):
            problems.append(f"{listen_key}: {problem}")

    seen_finess: dict[str, int] = {}
    for i, est in enumerate(f.establishments):
        key = f"establishments[{i}]"
        bad = finess_problem(est.finess, est.finess_check)
        if bad:
            problems.append(f"{key}.finess: {bad}")
        unsafe = unsafe_problem(est.name)
        if unsafe:
            problems.append(f'{key}.name: "{shown(est.name)}" {unsafe}')
        if est.finess in seen_finess:
            problems.append(
                f"{key}.finess: {est.finess} is already establishments[{seen_finess[est.finess]}]"
            )
        seen_finess.setdefault(est.finess, i)
        _check_section(config, key, est, problems, secrets)
        _check_section(config, f"{key}.source", est.source, problems, secrets, read=not for_web)

    seen_dest: set[str] = set()
    for i, dest in enumerate(f.destinations):
        key = f"destinations[{i}]"
        if not _DESTINATION_NAME.fullmatch(dest.name):
            problems.append(
                f'{key}.name: "{shown(dest.name)}" — 1 to 64 letters, digits, "_" or "-", not'
                ' starting with "-" (it names folders of the work directory)'
            )
        if dest.name in seen_dest:
            problems.append(f'{key}.name: "{dest.name}" is used twice — names must be unique')
        seen_dest.add(dest.name)
        for finess in dest.establishments:
            if finess not in seen_finess:
                problems.append(
                    f"{key}.establishments: {finess} is not the FINESS of any [[establishments]]"
                )
        single = len(dest.establishments) == 1 or len(f.establishments) == 1
        problems.extend(
            f"{key}.file_name: {p}" for p in template_problems(dest.file_name, single=single)
        )
        _check_section(config, key, dest, problems, secrets, read=not for_web)

    if f.web:
        _check_section(config, "web", f.web, problems, secrets)
        signing = secrets.get("web.secret")
        if signing is not None and len(signing.strip()) < MIN_WEB_SECRET:
            problems.append(
                f"web.secret_file: the key is {len(signing.strip())} characters, at least"
                f" {MIN_WEB_SECRET} — e.g. `openssl rand -hex 32`"
            )
        if bool(f.web.tls_cert) != bool(f.web.tls_key):
            problems.append("web.tls_cert, web.tls_key: set both or neither")
    if f.notify and f.notify.smtp_host:
        for k in ("sender", "recipients"):
            if not getattr(f.notify, k):
                problems.append(
                    f"notify.{k}: missing — needed to e-mail the bed-management cell "
                    "(or leave smtp_host empty to send no e-mail)"
                )
    if f.notify:
        _check_section(config, "notify", f.notify, problems, secrets)
        for k in ("recipients", "lead_recipients"):
            for i, address in enumerate(getattr(f.notify, k)):
                if not _ADDRESS.fullmatch(address):
                    problems.append(
                        f'notify.{k}[{i}]: "{shown(address)}" is not an e-mail address'
                        " (name@domain, one per string)"
                    )


def template_problems(template: str, *, single: bool) -> list[str]:
    found = set(re.findall(r"{([^{}]*)}", template))
    problems = [
        f'"{template}": unknown placeholder {{{p}}} — use finess, timestamp, ext'
        for p in sorted(found - _PLACEHOLDERS)
    ]
    needed = ["timestamp", "ext"] + ([] if single else ["finess"])
    problems.extend(
        f'"{template}": must contain {{{p}}}'
        + (" (the destination receives several establishments)" if p == "finess" else "")
        for p in needed
        if p not in found
    )
    if (
        "/" in template
        or "\\" in template
        or template.startswith(".")
        or control_character(template) is not None
    ):
        problems.append(
            f'"{shown(template)}": must be a plain file name (no "/", no backslash, no control'
            ' character, no leading ".")'
        )
    return problems


def config_path(cli_value: str | None) -> Path:
    if cli_value:
        return Path(cli_value)
    env = os.environ.get("RORFEED_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH
