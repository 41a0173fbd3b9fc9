"""Write the sample pivot files of `samples/` from one realistic snapshot.

    python samples/make_samples.py

`tests/test_pivot.py` renders `sample_snapshot()` again and compares it with the files here, so
the samples a reader (or the regional operator) looks at are always what rorfeed writes today.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from rorfeed.model import BedCounts, Snapshot, UnitRecord
from rorfeed.pivot import WRITERS, render_checked

SAMPLES = Path(__file__).resolve().parent
PARIS = ZoneInfo("Europe/Paris")


def sample_snapshot() -> Snapshot:
    """Hôpital Exemple at the 14:05 cycle of 23 November 2026 (winter time, UTC+1)."""
    return Snapshot(
        establishment_name="Hôpital Exemple",
        finess="750712184",
        horodatage=datetime(2026, 11, 23, 14, 5, tzinfo=PARIS),
        # Given out of order, with one id ("52/98765") that sorts after "52/2…" as text: the
        # files show the order the operator receives.
        units=(
            UnitRecord(
                "52/192675",  # médecine polyvalente: source time in UTC, written in local time
                BedCounts(installed=30, closed=2, available=5),
                datetime(2026, 11, 23, 12, 48, 17, tzinfo=UTC),
            ),
            UnitRecord(
                "52/98765",  # réanimation
                BedCounts(installed=12, closed=0, available=1),
                datetime(2026, 11, 23, 13, 59, 2, tzinfo=PARIS),
            ),
            UnitRecord(
                "52/203114",  # pédiatrie: the source gives no update time
                BedCounts(installed=18, closed=4, available=0),
            ),
            UnitRecord(
                "52/192680",  # chirurgie orthopédique
                BedCounts(installed=24, closed=6, available=3),
                datetime(2026, 11, 22, 18, 30, tzinfo=PARIS),
            ),
            UnitRecord(
                "52/201907",  # soins de suite: no update time either
                BedCounts(installed=40, closed=0, available=7),
            ),
        ),
    )


def sample_paths(snapshot: Snapshot) -> dict[str, Path]:
    """Format → sample file, named like a delivered file (cycle time in UTC)."""
    stamp = snapshot.horodatage.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return {
        fmt: SAMPLES / f"rorlits_{snapshot.finess}_{stamp}.{writer.extension}"
        for fmt, writer in WRITERS.items()
    }


def main() -> None:
    snapshot = sample_snapshot()
    for fmt, path in sample_paths(snapshot).items():
        path.write_bytes(render_checked(snapshot, fmt))
        print(path.relative_to(SAMPLES.parent))


if __name__ == "__main__":
    main()
