"""Where the expected columns sit in a source's header, whatever its case or padding."""

from __future__ import annotations

from collections.abc import Sequence

from rorfeed.errors import SourceError, shown
from rorfeed.sources.base import OPTIONAL_COLUMNS, REQUIRED_COLUMNS


def locate_columns(names: Sequence[str], where: str) -> dict[str, int]:
    """Map each required (and present optional) column to its position in `names`.

    Raises `SourceError` naming the missing columns and the ones found, or a column that
    appears twice (which of the two holds the count would be a guess).
    """
    normalized = [name.strip().lower() for name in names]
    found = shown(", ".join(names)) if names else "none"
    positions: dict[str, int] = {}
    for column in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
        at = [i for i, name in enumerate(normalized) if name == column]
        if len(at) > 1:
            raise SourceError(f"{where}: column {column} appears {len(at)} times (found: {found})")
        if at:
            positions[column] = at[0]
    missing = [c for c in REQUIRED_COLUMNS if c not in positions]
    if missing:
        raise SourceError(
            f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            f" (found: {found}); expected {', '.join(REQUIRED_COLUMNS)}"
            f" and optionally {', '.join(OPTIONAL_COLUMNS)}"
        )
    return positions
