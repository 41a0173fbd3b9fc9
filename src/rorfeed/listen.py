"""`host:port` listen addresses (`metrics.listen`, `web.listen`): one grammar for the config's
check and the servers that bind them."""

from __future__ import annotations

import re

_LISTEN_RE = re.compile(r"\[?[\w.:-]+\]?:\d{1,5}")


def listen_problem(listen: str) -> str | None:
    """None when `listen` reads as host:port (IPv6 in brackets), else what is wrong."""
    if _LISTEN_RE.fullmatch(listen):
        return None
    return f'found "{listen}", expected host:port'


def parse_listen(listen: str) -> tuple[str, int]:
    """(host, port) of a `listen` that passed `listen_problem`; IPv6 brackets removed."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)
