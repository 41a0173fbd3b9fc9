"""rorfeed's own exceptions; adapters translate library errors into these at the edge.

RorfeedError
├── ConfigError            invalid configuration (exit 2); carries every problem found
├── MappingError           invalid mapping file (a configuration error too)
├── StateError             state store unreachable, or written by a newer rorfeed
├── SourceError            a source could not give an extraction this cycle
│   └── SourceTimeout      ... within its `timeout_seconds`
├── PivotInvalid           a rendered file does not match its shipped schema (a bug: never sent)
├── FhirBodyInvalid        a request body for the national ROR fails rorfeed's check (never sent)
├── WorkDirError           the work folder (outbox, archive) cannot be written: disk full, ...
└── TransportError         a delivery step failed
    ├── HostKeyRejected    unknown or changed SSH host key
    ├── AuthFailed         the server refused our key
    ├── ConnectTimeout     a network step did not finish in time
    ├── RemoteMissing      remote directory absent
    └── RemoteRefused      the server refused an operation (permissions, ...)
"""

from __future__ import annotations


class RorfeedError(Exception):
    """Base of every error rorfeed raises on purpose."""


class ConfigError(RorfeedError):
    """The configuration is invalid; `problems` holds one line per problem, all of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class MappingError(ConfigError):
    """The mapping (or referential) file is invalid."""


class StateError(RorfeedError):
    """The state store cannot be used."""


class SourceError(RorfeedError):
    """A source could not give its extraction: the establishment's source is down this cycle."""


class SourceTimeout(SourceError):
    """The source did not answer within `timeout_seconds`."""


class PivotInvalid(RorfeedError):
    """A rendered pivot file does not validate against its schema."""


class FhirBodyInvalid(RorfeedError):
    """A `Parameters` body for the national ROR is not what rorfeed may send (a bug, or a code
    list edited wrong): it is never sent."""


class WorkDirError(RorfeedError):
    """The work folder cannot be written (disk full, permissions): the cycle fails, loudly."""


class TransportError(RorfeedError):
    """A delivery step failed; `cause` is a short stable label for metrics."""

    cause = "error"


class HostKeyRejected(TransportError):
    cause = "host_key"


class AuthFailed(TransportError):
    cause = "auth"


class ConnectTimeout(TransportError):
    cause = "timeout"


class RemoteMissing(TransportError):
    cause = "remote_missing"


class RemoteRefused(TransportError):
    cause = "remote_refused"


def shown(text: str) -> str:
    """Text read from someone else's file, fit for a one-line message: each character that is
    not printable (a line break inside a quoted CSV cell, a control character) is escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
