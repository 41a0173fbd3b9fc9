"""End to end, property-based: whatever the source says, no wrong count reaches a pivot file."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from rorfeed.config import load
from rorfeed.cycle import Cycle
from rorfeed.state import open_store
from tests.oracle import oracle_count
from tests.sites import write_site

NOW = datetime(2026, 11, 23, 13, 5, tzinfo=UTC)
CODES = ["REA", "MED", "CHIR", "USC", "OTHER"]
AUTO = {"REA": "52/100", "MED": "52/200", "CHIR": "52/300", "USC": "52/400"}

cell = st.one_of(
    st.integers(-3, 600).map(str),
    st.sampled_from(["", " 7 ", "3.5", "12.0", "+5", "1_000", "١٢", "true", "NaN", "1e2", "x"]),
    st.text(alphabet="0123456789 .-", max_size=4),
)
row = st.tuples(st.sampled_from(CODES), cell, cell, cell)


def expected(rows: list[tuple[str, str, str, str]]) -> dict[str, tuple[int, int, int]]:
    """What may appear in a file: units returned once, counts integer, plausible, coherent."""
    out = {}
    for code, ror_id in AUTO.items():
        mine = [r for r in rows if r[0] == code]
        if len(mine) != 1:
            continue
        counts = [oracle_count(v) for v in mine[0][1:]]
        if any(c is None or c < 0 or c > 500 for c in counts):
            continue
        installed, closed, available = (int(c) for c in counts if c is not None)
        if closed > installed or available > installed - closed:
            continue
        out[ror_id] = (installed, closed, available)
    return out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(row, max_size=8))
def test_files_hold_exactly_the_valid_records(rows: list[tuple[str, str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        # The usual site (tests/sites.py), the kill-switch out of the way of any export.
        write_site(site, tables="\n[rules]\nkillswitch_rejected_share = 1\n")
        text = io.StringIO()
        csv.writer(text, delimiter=";", lineterminator="\n").writerows(
            [("unit", "installed", "closed", "available"), *rows]
        )
        export = site / "export.csv"
        export.write_text(text.getvalue(), encoding="utf-8")
        stamp = (NOW - timedelta(minutes=5)).timestamp()
        os.utime(export, (stamp, stamp))
        config = load(site / "rorfeed.toml")
        out = site / "dry"
        out.mkdir()
        store = open_store("sqlite://")
        Cycle(config, store, clock=lambda: NOW).run(NOW, dry_run_dir=out)
        store.engine.dispose()

        want = expected(rows)
        files = sorted(out.iterdir())
        if not want:
            assert files == []
            return
        by_ext = {f.suffix: f for f in files}
        doc = json.loads(by_ext[".json"].read_text(encoding="utf-8"))
        got = {
            u["id_fiche_ror"]: (u["lits_installes"], u["lits_fermes"], u["lits_disponibles"])
            for u in doc["unites"]
        }
        assert got == want
        xml = etree.fromstring(by_ext[".xml"].read_bytes())
        assert {
            u.findtext("id_fiche_ror"): tuple(
                int(u.findtext(k) or "")
                for k in ("lits_installes", "lits_fermes", "lits_disponibles")
            )
            for u in xml.iter("unite")
        } == want
        lines = list(csv.DictReader(io.StringIO(by_ext[".csv"].read_text()), delimiter=";"))
        assert {
            r["id_fiche_ror"]: (
                int(r["lits_installes"]),
                int(r["lits_fermes"]),
                int(r["lits_disponibles"]),
            )
            for r in lines
        } == want
