"""State store (SPEC §8): schema version, mapping changes audited, ledger, survives reopening."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from rorfeed.errors import StateError
from rorfeed.model import BedCounts, MappedUnit, Mode
from rorfeed.state import SCHEMA_VERSION, Store, open_store

T0 = datetime(2026, 11, 23, 13, 5, tzinfo=UTC)


def units(*items: tuple[str, str, str, Mode]) -> tuple[MappedUnit, ...]:
    return tuple(
        MappedUnit(code, ror, label, mode, i + 2)
        for i, (code, ror, label, mode) in enumerate(items)
    )


def map_three(store: Store, finess: str, third: Mode = Mode.AUTO) -> None:
    """R1 and R2 automated, R3 declared `third`: the mapping several tests start from."""
    store.sync_mapping(
        finess,
        units(
            ("A", "R1", "Réa", Mode.AUTO), ("B", "R2", "Med", Mode.AUTO), ("C", "R3", "Pal", third)
        ),
        T0,
    )


# The PostgreSQL case requests `pg_server` by name at run time, where the collection hook of
# tests/conftest.py cannot see it: it carries the marker itself.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty state store's URL on each backend (one database per test)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    name = re.sub(r"\W", "_", request.node.name).lower()[:60]
    url: str = request.getfixturevalue("pg_server").create_db(name)
    return url


def test_first_reading_adds_every_unit_with_its_declared_mode(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    entries, _ = store.sync_mapping(
        "750712184", units(("A", "R1", "Réa", Mode.AUTO), ("", "R2", "Palliatifs", Mode.MANUAL)), T0
    )
    assert [(e.actor, e.action, e.ror_id, e.new) for e in entries] == [
        ("rorfeed", "mapping", "R1", "added (auto)"),
        ("rorfeed", "mapping", "R2", "added (manual)"),
    ]
    states = {u.ror_id: u for u in store.units()}
    assert states["R1"].mode is Mode.AUTO and states["R1"].sendable
    assert states["R2"].mode is Mode.MANUAL and not states["R2"].sendable
    # Reading the same mapping again changes nothing and writes nothing.
    assert (
        store.sync_mapping(
            "750712184",
            units(("A", "R1", "Réa", Mode.AUTO), ("", "R2", "Palliatifs", Mode.MANUAL)),
            T0,
        )[0]
        == []
    )


def test_mapping_changes_are_audited_and_redeclared_manual_switches(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    store.sync_mapping(
        "750712184", units(("A", "R1", "Réa", Mode.AUTO), ("B", "R2", "Med", Mode.AUTO)), T0
    )
    entries, _ = store.sync_mapping("750712184", units(("A2", "R1", "Réa", Mode.MANUAL)), T0)
    assert [(e.action, e.ror_id, e.previous, e.new) for e in entries] == [
        ("mapping", "R1", "A (Réa)", "A2 (Réa)"),
        ("mapping", "R1", "declared auto", "declared manual"),
        ("unit_mode", "R1", "auto", "manual"),
        ("mapping", "R2", "mapped", "removed"),
    ]
    states = {u.ror_id: u for u in store.units()}
    assert states["R1"].mode is Mode.MANUAL
    assert not states["R2"].in_mapping
    # Re-declaring auto does not switch it back: a person does.
    store.sync_mapping("750712184", units(("A2", "R1", "Réa", Mode.AUTO)), T0)
    assert store.units()[0].mode is Mode.MANUAL
    assert [e.reason for e in store.history("R1", limit=1)] == ["re-declared, mapping line 2"]


def test_streaks_grow_on_rejection_and_reset_on_acceptance(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    store.sync_mapping("750712184", units(("A", "R1", "Réa", Mode.AUTO)), T0)
    store.record_verdicts("750712184", {"R1": ("count_missing",)}, {})
    store.record_verdicts("750712184", {"R1": ("unit_missing",)}, {})
    unit = store.units()[0]
    assert (unit.streak, unit.last_rules) == (2, ("unit_missing",))
    store.record_verdicts("750712184", {}, {"R1": 12})
    unit = store.units()[0]
    assert (unit.streak, unit.last_accepted_installed) == (0, 12)


def test_state_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = open_store(url)
    store.sync_mapping("750712184", units(("A", "R1", "Réa", Mode.AUTO)), T0)
    sid = store.add_snapshot_once("750712184", T0, {"R1": BedCounts(10, 1, 2)})
    assert sid is not None
    store.add_file("d", "f.xml", sid, "750712184", T0, 100, T0)
    store.engine.dispose()
    again = open_store(url)
    assert [u.ror_id for u in again.units()] == ["R1"]
    assert again.outbox_counts() == {"d": 1}
    assert again.units()[0].mode_since == T0


def test_state_from_a_newer_rorfeed_is_refused_and_left_untouched(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    open_store(url).engine.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE rorfeed_meta SET value = :v"), {"v": str(SCHEMA_VERSION + 1)})
    before = (tmp_path / "state.db").read_bytes()
    with pytest.raises(StateError, match="newer rorfeed"):
        open_store(url)
    assert (tmp_path / "state.db").read_bytes() == before


def test_state_store_works_on_postgresql(pg_server: object) -> None:
    url = pg_server.create_db("state_test")  # type: ignore[attr-defined]
    store = open_store(url)
    store.sync_mapping("750712184", units(("A", "R1", "Réa", Mode.AUTO)), T0)
    store.record_verdicts("750712184", {"R1": ("count_missing",)}, {})
    assert store.units()[0].streak == 1
    assert store.units()[0].mode_since == T0
    store.engine.dispose()
    again = open_store(url)
    try:
        assert again.history()[0].new == "added (auto)"
    finally:
        again.engine.dispose()


def _downgrade_to_v1(url: str) -> None:
    """Make the store look like one written by schema 1 (no accounts, no e-mail claims)."""
    open_store(url).engine.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE users"))
        conn.execute(text("ALTER TABLE emails DROP COLUMN claimed_at"))
        conn.execute(text("ALTER TABLE establishments DROP COLUMN applied_snapshot_id"))
        conn.execute(text("UPDATE rorfeed_meta SET value = '1'"))
    engine.dispose()


def test_schema_1_store_is_migrated_without_losing_data(state_url: str) -> None:
    url = state_url
    _downgrade_to_v1(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO emails (created_at, subject, body, attempts, last_error) "
                "VALUES (:t, 'objet', 'corps', 2, 'relais en panne')"
            ),
            {"t": T0.replace(tzinfo=None)},
        )
    engine.dispose()
    store = open_store(url)
    try:
        [email] = store.pending_emails()
        assert (email.subject, email.attempts) == ("objet", 2)
        assert store.claim_email(email.id, T0)
        assert not store.claim_email(email.id, T0)  # a second process does not send it too
        with store.engine.begin() as conn:
            version = conn.execute(text("SELECT value FROM rorfeed_meta")).scalar_one()
            assert version == str(SCHEMA_VERSION)
            assert conn.execute(text("SELECT count(*) FROM users")).scalar_one() == 0
    finally:
        store.engine.dispose()


def test_sync_mapping_gives_the_feed_states_a_later_read_gives(state_url: str) -> None:
    """One read of the units table in a calm hour; after a change, the states as changed."""
    store = open_store(state_url)
    try:
        f = "750712184"
        hours = [
            # first reading: every unit added
            units(("A", "R1", "Réa", Mode.AUTO), ("B", "R2", "Med", Mode.AUTO)),
            # calm: the same mapping (nothing written, the states come from the comparison)
            units(("A", "R1", "Réa", Mode.AUTO), ("B", "R2", "Med", Mode.AUTO)),
            # R2 re-declared manual, R1 gone, R3 new
            units(("B", "R2", "Med", Mode.MANUAL), ("C", "R3", "Pal", Mode.AUTO)),
            # calm again, with a unit out of the mapping still stored
            units(("B", "R2", "Med", Mode.MANUAL), ("C", "R3", "Pal", Mode.AUTO)),
        ]
        seen = []
        for hour, mapping in enumerate(hours):
            if hour == 1:
                store.record_verdicts(f, {"R2": ("count_missing",)}, {"R1": 12})
            entries, states = store.sync_mapping(f, mapping, T0)
            assert states == store.feed_states(f)
            seen.append((len(entries), {r: s.sendable for r, s in states.items()}))
        assert seen == [
            (2, {"R1": True, "R2": True}),
            (0, {"R1": True, "R2": True}),
            (4, {"R1": False, "R2": False, "R3": True}),
            (0, {"R1": False, "R2": False, "R3": True}),
        ]
        assert store.feed_states(f)["R2"].streak == 1
    finally:
        store.engine.dispose()


def test_batched_writes_and_the_light_read_agree_with_the_full_read(state_url: str) -> None:
    """The cycle's batched statements (driver executemany) and its light read (feed_states)
    mean on each backend what the plain SQLAlchemy path means: same rows, same times."""
    url = state_url
    store = open_store(url)
    try:
        f = "750712184"
        map_three(store, f, Mode.MANUAL)
        store.record_verdicts(f, {"R2": ("count_missing", "unit_missing")}, {"R1": 12})
        feed = store.feed_states(f)
        assert {
            r: (s.sendable, s.streak, s.last_rules, s.last_accepted_installed)
            for r, s in feed.items()
        } == {
            "R1": (True, 0, "", 12),
            "R2": (True, 1, "count_missing,unit_missing", None),
            "R3": (False, 0, "", None),
        }
        later = T0.replace(hour=14)
        for at, counts in ((later, (20, 1, 3)), (T0, (10, 0, 1))):
            sid = store.add_snapshot_once(
                f, at, {"R1": BedCounts(*counts), "R2": BedCounts(*counts)}
            )
            assert sid is not None
            store.add_file("d", f"f{at:%H}.xml", sid, f, at, 100, at)
        newest_first = sorted(store.files("d", ("pending",)), key=lambda r: r.cycle_time)[::-1]
        assert [r.cycle_time for r in newest_first] == [later, T0]
        for row in newest_first:  # the older delivery recorded last
            store.mark_delivered(row, later, production=True)
        full = {u.ror_id: u for u in store.units(f)}
        # The older delivery, recorded after the newer one, does not overwrite its values.
        for ror_id in ("R1", "R2"):
            assert full[ror_id].last_counts == BedCounts(20, 1, 3)
            assert full[ror_id].last_counts_at == later
        assert full["R3"].last_counts is None and full["R3"].last_counts_at is None
        assert (full["R2"].streak, full["R2"].last_rules) == (1, ("count_missing", "unit_missing"))
        assert store.files("d", ("delivered",))[0].status == "delivered"
    finally:
        store.engine.dispose()


def _deliver(store: Store, finess: str, at: datetime, counts: dict[str, BedCounts]) -> int:
    """Stage one file of a snapshot of `counts`, record it delivered to production; its id."""
    sid = store.add_snapshot_once(finess, at, counts)
    assert sid is not None
    store.add_file("d", f"{finess}-{at:%Y%m%d%H%M}.xml", sid, finess, at, 100, at)
    [row] = [r for r in store.files("d", ("pending",)) if r.snapshot_id == sid]
    store.mark_delivered(row, at, production=True)
    return sid


def _last(store: Store, finess: str) -> dict[str, tuple[BedCounts | None, datetime | None]]:
    return {u.ror_id: (u.last_counts, u.last_counts_at) for u in store.units(finess)}


def test_last_values_sent_follow_the_newest_delivery_of_each_unit(state_url: str) -> None:
    """A unit's last values sent are those of the newest delivered file that carried it,
    however the deliveries came: a unit left out this hour keeps the previous hour's values,
    a file that waited in the outbox never overwrites newer values, and a second format of
    the same file changes nothing."""
    url = state_url
    store = open_store(url)
    try:
        f = "750712184"
        map_three(store, f)
        t1, t2, t3 = (T0.replace(hour=h) for h in (14, 15, 16))
        _deliver(store, f, t1, {"R1": BedCounts(10, 0, 1), "R2": BedCounts(20, 0, 2)})
        assert _last(store, f) == {
            "R1": (BedCounts(10, 0, 1), t1),
            "R2": (BedCounts(20, 0, 2), t1),
            "R3": (None, None),
        }
        # R2 rejected at t2: it keeps what t1 sent.
        _deliver(store, f, t2, {"R1": BedCounts(11, 0, 1)})
        expected = {
            "R1": (BedCounts(11, 0, 1), t2),
            "R2": (BedCounts(20, 0, 2), t1),
            "R3": (None, None),
        }
        assert _last(store, f) == expected
        # The same snapshot delivered again (another format, another destination).
        [t2_row] = [r for r in store.files("d", ("delivered",)) if r.cycle_time == t2]
        store.mark_delivered(t2_row, t3, production=True)
        assert _last(store, f) == expected
        # A file of t0 that waited in the outbox: only R3, which nothing newer carried, takes it.
        _deliver(
            store,
            f,
            T0,
            {"R1": BedCounts(1, 0, 0), "R2": BedCounts(2, 0, 0), "R3": BedCounts(3, 0, 0)},
        )
        expected["R3"] = (BedCounts(3, 0, 0), T0)
        assert _last(store, f) == expected
        # A newer hour that leaves R1 out; R2 and R3 back.
        _deliver(store, f, t3, {"R2": BedCounts(21, 1, 2), "R3": BedCounts(30, 0, 3)})
        assert _last(store, f) == {
            "R1": (BedCounts(11, 0, 1), t2),
            "R2": (BedCounts(21, 1, 2), t3),
            "R3": (BedCounts(30, 0, 3), t3),
        }
        # The values survive reopening, and a mode switch reports them as they were.
        store.engine.dispose()
        store = open_store(url)
        [before] = store.set_units_mode([(f, "R1")], Mode.MANUAL, "test", "chef", t3)
        assert (before.last_counts, before.last_counts_at) == (BedCounts(11, 0, 1), t2)
    finally:
        store.engine.dispose()


def test_schema_2_store_keeps_its_last_values_sent(tmp_path: Path) -> None:
    """Before schema 3 every unit's last values were in its own columns: they still show."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = open_store(url)
    f = "750712184"
    store.sync_mapping(f, units(("A", "R1", "Réa", Mode.AUTO), ("B", "R2", "Med", Mode.AUTO)), T0)
    store.engine.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE units SET last_installed = 9, last_closed = 1, last_available = 2,"
                " last_counts_at = :t WHERE ror_id = 'R1'"
            ),
            {"t": T0.replace(tzinfo=None)},
        )
        conn.execute(text("ALTER TABLE establishments DROP COLUMN applied_snapshot_id"))
        conn.execute(text("UPDATE rorfeed_meta SET value = '2'"))
    engine.dispose()
    store = open_store(url)
    try:
        assert _last(store, f) == {"R1": (BedCounts(9, 1, 2), T0), "R2": (None, None)}
        later = T0.replace(hour=14)
        _deliver(store, f, later, {"R2": BedCounts(5, 0, 5)})
        assert _last(store, f) == {
            "R1": (BedCounts(9, 1, 2), T0),
            "R2": (BedCounts(5, 0, 5), later),
        }
    finally:
        store.engine.dispose()


def test_purge_forgets_old_done_files_and_their_snapshots_only(state_url: str) -> None:
    url = state_url
    store = open_store(url)
    try:
        f, g = "750712184", "750712185"
        for finess in (f, g):
            store.sync_mapping(finess, units(("A", "R1", "Réa", Mode.AUTO)), T0)
        old, older, recent = (T0.replace(day=d) for d in (2, 1, 22))
        counts = {"R1": BedCounts(10, 0, 1)}
        _deliver(store, f, older, counts)  # delivered long ago, superseded as f's last values
        _deliver(store, f, old, counts)  # delivered long ago, f's applied snapshot
        newest = _deliver(store, f, recent, {"R1": BedCounts(11, 0, 1)})  # then the newest
        g_applied = _deliver(store, g, older, counts)  # long ago, but still g's applied one
        waiting = store.add_snapshot_once(f, T0.replace(day=3), counts)  # old but still waiting
        assert waiting is not None
        store.add_file("d", "waiting.xml", waiting, f, T0.replace(day=3), 100, T0)
        store.add_snapshot_once(f, T0.replace(day=4), counts)  # no file was ever staged
        assert store.newest_cycle_times("d", ("delivered",)) == {f: recent, g: older}

        assert store.purge_before(T0.replace(day=20)) == (3, 3)

        assert [r.file_name for r in store.files("d", ("pending",))] == ["waiting.xml"]
        assert [r.cycle_time for r in store.files("d", ("delivered",))] == [recent]
        with store.engine.begin() as conn:
            kept = set(conn.execute(text("SELECT id FROM snapshots")).scalars())
        assert kept == {waiting, g_applied, newest}
        # The units' last values sent do not change.
        assert _last(store, f) == {"R1": (BedCounts(11, 0, 1), recent)}
        assert _last(store, g) == {"R1": (BedCounts(10, 0, 1), older)}
        assert store.purge_before(T0.replace(day=20)) == (0, 0)
    finally:
        store.engine.dispose()
