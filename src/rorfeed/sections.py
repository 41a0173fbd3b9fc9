"""What every section of the configuration shares, and what a kind of source or destination
declares to be registered.

A kind (a source adapter, a destination) is one module: its pydantic section model, a typed
factory that imports the heavy code only when called (so that `rorfeed --help` and the web page
never load SQLAlchemy, paramiko or httpx), and one line in its registry
(`rorfeed.sources.SOURCES`, `rorfeed.transports.DESTINATIONS`). The configuration derives from
the registries the kinds it accepts, the per-kind checks (files marked `ReadableFile`, secrets
given as a `<name>_file` / `<name>_env` pair) and the example file's blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from rorfeed.pivot import WRITERS


class Strict(BaseModel):
    """A section of the TOML file: unknown keys are errors, values never change once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Readable:
    """Marks a path key whose file must exist and be readable when the configuration loads."""

    def __repr__(self) -> str:
        return "ReadableFile"


READABLE = _Readable()
ReadableFile = Annotated[str, READABLE]

if TYPE_CHECKING:
    Format = str
else:
    # The formats the configuration accepts are the pivot writers': a new format is one line
    # in `pivot.WRITERS`.
    Format = Literal[tuple(WRITERS)]


def _default_formats() -> list[Format]:
    return ["xml"]


class SourceCommon(Strict):
    """`[establishments.source]`: every source kind has these keys."""

    kind: str


class DestinationBase(Strict):
    """`[[destinations]]`: every destination kind has these keys (and `timeout_seconds`, declared
    by each with its own default)."""

    kind: str
    name: str = Field(min_length=1, description="name of the destination", examples=["sesan"])
    environment: Literal["production", "test"] = Field(
        "production", description='or "test": the operator\'s ROR test environment'
    )
    establishments: list[str] = Field(
        default_factory=list, description="FINESS list; empty = every establishment"
    )


class DestinationCommon(DestinationBase):
    """`[[destinations]]` that receive pivot files (sftp, directory): these keys too. A `fhir`
    destination sends requests, not files: it has neither `file_name` nor `formats`."""

    file_name: str = Field(
        "rorlits_{finess}_{timestamp}.{ext}", description="placeholders: finess, timestamp, ext"
    )
    formats: list[Format] = Field(
        default_factory=_default_formats,
        min_length=1,
        description="any of " + ", ".join(f'"{f}"' for f in WRITERS),
    )
    timeout_seconds: float = Field(
        30, gt=0, description="bounds the whole delivery of a cycle, retries included"
    )


F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True)
class Kind(Generic[F]):
    """One registered kind: its section model, its factory and how the example file names it."""

    section: type[Strict]
    open: F
    title: str  # "a CSV export": the example file shows "# ... or a CSV export:"
