"""structlog set-up: one JSON object per line on stderr for journald, readable on a terminal.

Two processors keep secrets out of every log line, even inside an error's text or traceback:
- `redact_secrets` masks every value whose key names a secret (`password`, `passphrase`, …);
- `scrub_secret_values` replaces every occurrence of a secret's *value* — the passwords and
  passphrases the configuration read (`register_secrets`) — wherever it appears, tracebacks
  included.

Records of the standard `logging` module (APScheduler, paramiko, …) go through the same
processors and renderer, so stderr stays one JSON object per line.
"""

from __future__ import annotations

import logging as std_logging
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_WORDS = ("password", "passphrase", "secret", "private_key", "token")
_MASK = "***"
# A secret shorter than this is not scrubbed by value (it would mask ordinary words and
# numbers); such a secret is refused nowhere, but is far too weak to matter.
MIN_SCRUBBED_LENGTH = 4

_secrets: frozenset[str] = frozenset()
_secrets_lock = threading.Lock()


def register_secrets(values: Iterable[str]) -> None:
    """Add secret values (and their URL-quoted forms) to those scrubbed from every log line."""
    from urllib.parse import quote

    global _secrets  # noqa: PLW0603 - one process-wide set, read by every log call
    new = {v for v in values if len(v) >= MIN_SCRUBBED_LENGTH}
    new |= {quote(v, safe="") for v in new}
    with _secrets_lock:
        _secrets = _secrets | new


def _scrub(value: Any, secrets: frozenset[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, _MASK)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub(v, secrets) for v in value)
    if isinstance(value, BaseException):
        return _scrub(repr(value), secrets)
    return value


def scrub(text: str) -> str:
    """`text` with every registered secret value masked (for text shown outside the logs)."""
    result: str = _scrub(text, _secrets)
    return result


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if any(word in key.lower() for word in _SECRET_WORDS):
            event_dict[key] = _MASK
    return event_dict


def scrub_secret_values(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    secrets = _secrets
    if secrets:
        for key, value in list(event_dict.items()):
            if key != "exc_info":
                event_dict[key] = _scrub(value, secrets)
    return event_dict


class _StderrHandler(std_logging.StreamHandler):  # type: ignore[type-arg]
    """A handler writing to whatever `sys.stderr` is at each record (tests replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(json_output: bool | None = None, level: int = std_logging.INFO) -> None:
    if json_output is None:
        json_output = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json_output
        else structlog.dev.ConsoleRenderer(colors=True)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            scrub_secret_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # sys.stderr is looked up at each logger's creation, not once: tests and the daemon
        # may replace it after configuration.
        logger_factory=lambda *_args: structlog.PrintLogger(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configure_stdlib(shared, renderer)


def _configure_stdlib(shared: list[Any], renderer: Any) -> None:
    """Render the standard library's records (warnings and up) like structlog's own."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            scrub_secret_values,
            renderer,
        ],
    )
    root = std_logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    handler.setLevel(std_logging.WARNING)
    root.addHandler(handler)
