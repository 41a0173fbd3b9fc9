"""Build the demo bed-management database (SQLite) used by config/demo.toml.

Counts are realistic for a mid-size establishment; a few rows are deliberately wrong so that
a demo cycle shows rejections: a NULL count, a text count, closed beds above installed ones,
a unit returned twice, a stale update time, a mapped unit missing and an unmapped unit.
Update times are set relative to now, so the demo stays fresh whenever it is run.
"""

from __future__ import annotations

import argparse
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PATH = HERE.parent / "demo" / "beds.sqlite"

# code_uf, installed, closed, available, minutes since last update
ROWS: list[tuple[str, object, object, object, int]] = [
    ("REA1", 20, 2, 3, 12),
    ("REA2", 12, 0, 1, 25),
    ("SI-CARD", 10, 0, 2, 8),
    ("SI-NEURO", 8, 1, 0, 40),
    ("USC1", 12, 2, 4, 15),
    ("MED-INT", 32, 4, 5, 30),
    ("MED-GER", 30, 0, None, 20),  # NULL count: rejected (count_missing)
    ("PNEUMO", 28, 2, 3, 55),
    ("CARDIO", 30, 0, 6, 10),
    ("GASTRO", 26, 3, "2a", 18),  # text that is no count: rejected (count_not_integer)
    ("NEURO", 24, 0, 2, 35),
    ("MIT", 18, 20, 0, 5),  # more closed than installed: rejected (closed_above_installed)
    ("CHIR-VISC", 30, 6, 4, 22),
    ("CHIR-ORTH", 34, 4, 7, 14),
    ("CHIR-ORTH", 34, 4, 6, 14),  # returned twice: rejected (duplicate_unit)
    ("CHIR-VASC", 16, 0, 1, 300),  # updated 5 hours ago: rejected (updated_at_stale)
    ("UHCD", 8, 0, 3, 3),
    ("PED", 24, 4, 6, 28),
    ("PSY", 40, 0, 2, 45),
    ("HDJ-ONCO", 12, 0, 4, 9),  # not in the mapping: ignored and counted (unmapped)
    # MAT is mapped but absent: rejected (unit_missing)
]


def build(path: Path, now: datetime | None = None) -> Path:
    now = now or datetime.now().astimezone()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE lits_par_uf (code_uf TEXT, nb_lits_installes, nb_lits_fermes,"
            " nb_lits_disponibles, date_maj TEXT)"
        )
        db.executemany(
            "INSERT INTO lits_par_uf VALUES (?, ?, ?, ?, ?)",
            [
                (
                    code,
                    inst,
                    closed,
                    avail,
                    (now - timedelta(minutes=age)).isoformat(timespec="seconds"),
                )
                for code, inst, closed, avail, age in ROWS
            ],
        )
    db.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args()
    print(f"demo database written: {build(args.path)}")
    # The demo's "regional operator": a local folder (a destination is never created by
    # rorfeed itself, like a remote SFTP folder).
    depot = args.path.parent / "depot"
    depot.mkdir(exist_ok=True)
    print(f"demo files will be delivered to: {depot}")


if __name__ == "__main__":
    main()
