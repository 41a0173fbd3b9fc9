"""What every source adapter offers: one `fetch()` per cycle, or a `SourceError`."""

from __future__ import annotations

from typing import Protocol

from rorfeed.model import Extraction

# The columns every source must provide; `updated_at` is optional.
REQUIRED_COLUMNS = ("unit", "installed", "closed", "available")
OPTIONAL_COLUMNS = ("updated_at",)


class Source(Protocol):
    def fetch(self) -> Extraction:
        """Read every row of the bed-management database now.

        Raises `SourceError` (or `SourceTimeout`) when no extraction can be had; never returns
        a partial one.
        """
        ...
