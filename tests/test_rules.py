"""Validation rules (SPEC §6): the exact integer definition, and no bad record ever accepted."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rorfeed import rules
from rorfeed.model import BedCounts, SourceRow
from rorfeed.rules import RuleOptions, check_unit, parse_count, parse_updated_at
from tests.oracle import oracle_count

PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 11, 23, 13, 5, tzinfo=UTC)
OPTIONS = RuleOptions()


def judge(
    installed: object = 10,
    closed: object = 2,
    available: object = 3,
    updated_at: object = None,
    **kw: object,
) -> rules.Verdict:
    row = SourceRow("U1", installed, closed, available, updated_at)
    return check_unit([row], "75/1", now=NOW, zone=PARIS, options=OPTIONS, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12, 12),
        (0, 0),
        (12.0, 12),
        (Decimal("12"), 12),
        (Decimal("12.000"), 12),
        ("12", 12),
        (" 12 ", 12),
        ("\t12\u00a0", 12),
        ("007", 7),
    ],
)
def test_accepted_integers(value: object, expected: int) -> None:
    assert parse_count(value) == expected


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (3.5, rules.COUNT_NOT_INTEGER),
        ("12a", rules.COUNT_NOT_INTEGER),
        ("12.0", rules.COUNT_NOT_INTEGER),
        ("+5", rules.COUNT_NOT_INTEGER),
        ("1_000", rules.COUNT_NOT_INTEGER),
        ("١٢", rules.COUNT_NOT_INTEGER),
        (True, rules.COUNT_NOT_INTEGER),
        (False, rules.COUNT_NOT_INTEGER),
        (math.nan, rules.COUNT_NOT_INTEGER),
        (math.inf, rules.COUNT_NOT_INTEGER),
        (Decimal("NaN"), rules.COUNT_NOT_INTEGER),
        (Decimal("12.5"), rules.COUNT_NOT_INTEGER),
        ("1e3", rules.COUNT_NOT_INTEGER),
        ("0x10", rules.COUNT_NOT_INTEGER),
        (b"12", rules.COUNT_NOT_INTEGER),
        ([12], rules.COUNT_NOT_INTEGER),
        (-1, rules.COUNT_NEGATIVE),
        ("-3", rules.COUNT_NEGATIVE),
        (-2.0, rules.COUNT_NEGATIVE),
        (None, rules.COUNT_MISSING),
        ("", rules.COUNT_MISSING),
        ("  ", rules.COUNT_MISSING),
        (10**9, rules.COUNT_ABOVE_MAX),
        (501, rules.COUNT_ABOVE_MAX),
    ],
)
def test_bad_counts_are_rejected_by_their_named_rule(value: object, rule: str) -> None:
    verdict = judge(installed=value)
    assert verdict.record is None
    assert rule in verdict.rejected


def test_valid_record_is_accepted_with_its_counts() -> None:
    verdict = judge(Decimal("12"), " 2 ", 3.0)
    assert verdict.record is not None
    assert verdict.record.counts == BedCounts(12, 2, 3)
    assert verdict.rejected == ()


def test_closed_above_installed_and_available_above_open_are_incoherent() -> None:
    assert judge(10, 11, 0).rejected == (rules.CLOSED_ABOVE_INSTALLED, rules.AVAILABLE_ABOVE_OPEN)
    assert judge(10, 2, 9).rejected == (rules.AVAILABLE_ABOVE_OPEN,)
    assert judge(10, 2, 8).record is not None


def test_coherence_warn_sends_but_warns() -> None:
    row = SourceRow("U1", 10, 2, 9)
    verdict = check_unit(
        [row], "x", now=NOW, zone=PARIS, options=RuleOptions(coherence_rejects=False)
    )
    assert verdict.record is not None
    assert verdict.warnings == (rules.AVAILABLE_ABOVE_OPEN,)


def test_unit_returned_twice_or_missing_is_rejected() -> None:
    row = SourceRow("U1", 10, 2, 3)
    assert check_unit([row, row], "x", now=NOW, zone=PARIS, options=OPTIONS).rejected == (
        rules.DUPLICATE_UNIT,
    )
    assert check_unit([], "x", now=NOW, zone=PARIS, options=OPTIONS).rejected == (
        rules.UNIT_MISSING,
    )


def test_updated_at_three_hours_old_is_stale_and_one_hour_ahead_is_future() -> None:
    assert judge(updated_at=NOW - timedelta(hours=3)).rejected == (rules.UPDATED_AT_STALE,)
    assert judge(updated_at=NOW + timedelta(hours=1)).rejected == (rules.UPDATED_AT_FUTURE,)
    assert judge(updated_at=NOW + timedelta(minutes=4)).record is not None
    assert judge(updated_at=NOW - timedelta(minutes=119)).record is not None


def test_updated_at_as_text_naive_local_or_with_offset() -> None:
    # 14:00 in Paris in November is 13:00 UTC: 5 minutes old.
    verdict = judge(updated_at="2026-11-23 14:00:00")
    assert verdict.record is not None
    assert verdict.record.date_maj == datetime(2026, 11, 23, 13, 0, tzinfo=UTC)
    assert judge(updated_at="2026-11-23T13:00:00+00:00").record is not None
    assert judge(updated_at="yesterday").rejected == (rules.UPDATED_AT_INVALID,)
    assert judge(updated_at=12).rejected == (rules.UPDATED_AT_INVALID,)
    assert judge(updated_at="  ").record is not None  # empty text: not given


def test_naive_time_in_the_repeated_autumn_hour_reads_as_the_earlier_instant() -> None:
    moment = parse_updated_at("2026-10-25 02:30:00", PARIS)
    assert isinstance(moment, datetime)
    assert moment.astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_csv_file_time_stands_for_a_missing_updated_at() -> None:
    old = NOW - timedelta(hours=3)
    assert judge(file_mtime=old).rejected == (rules.UPDATED_AT_STALE,)
    fresh = judge(file_mtime=NOW - timedelta(minutes=10))
    assert fresh.record is not None
    assert fresh.record.date_maj == NOW - timedelta(minutes=10)
    # A row's own updated_at wins over the file's time.
    assert judge(updated_at=NOW, file_mtime=old).record is not None


def test_no_updated_at_at_all_leaves_date_maj_absent() -> None:
    verdict = judge()
    assert verdict.record is not None
    assert verdict.record.date_maj is None


def test_installed_change_beyond_the_share_is_a_warning_only() -> None:
    verdict = judge(30, 0, 0, previous_installed=10)
    assert verdict.record is not None
    assert verdict.warnings == (rules.INSTALLED_CHANGE,)
    assert judge(14, 0, 0, previous_installed=10).warnings == ()


# -- properties -------------------------------------------------------------------------------


raw_counts = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-10, max_value=1000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-5, max_value=600).map(str),
    st.text(max_size=6),
    st.builds(
        lambda n, pad: f"{pad}{n}{pad}",
        st.integers(0, 600),
        st.sampled_from(["", " ", "\t", "\u00a0"]),
    ),
)
raw_times = st.one_of(
    st.none(),
    st.datetimes(
        min_value=datetime(2026, 11, 22),
        max_value=datetime(2026, 11, 24),
        timezones=st.sampled_from([UTC, PARIS]),
    ),
    st.text(max_size=25),
)


@given(raw_counts, raw_counts, raw_counts, raw_times, st.integers(1, 600), st.booleans())
def test_no_record_breaking_a_rule_is_ever_accepted(
    installed: object,
    closed: object,
    available: object,
    updated: object,
    max_beds: int,
    reject_incoherent: bool,
) -> None:
    options = RuleOptions(max_beds_per_unit=max_beds, coherence_rejects=reject_incoherent)
    row = SourceRow("U1", installed, closed, available, updated)
    verdict = check_unit([row], "75/1", now=NOW, zone=PARIS, options=options)
    if verdict.record is None:
        assert verdict.rejected, "a rejection always names its rules"
        return
    counts = verdict.record.counts
    for raw, accepted in (
        (installed, counts.installed),
        (closed, counts.closed),
        (available, counts.available),
    ):
        assert type(accepted) is int
        assert oracle_count(raw) == accepted
        assert 0 <= accepted <= max_beds
    if reject_incoherent:
        assert counts.closed <= counts.installed
        assert counts.available <= counts.installed - counts.closed
    moment = verdict.record.date_maj
    if moment is not None:
        assert NOW - timedelta(minutes=120) <= moment <= NOW + timedelta(minutes=5)


@given(raw_counts)
def test_parse_count_never_raises_and_agrees_with_the_definition(value: object) -> None:
    parsed = parse_count(value)
    expected = oracle_count(value)
    if expected is None or expected < 0:
        assert not isinstance(parsed, int)
    else:
        assert parsed == expected


def test_a_rejected_unit_carries_the_values_as_read_for_the_log_and_audit() -> None:
    stale = NOW - timedelta(hours=5)
    verdict = check_unit(
        [SourceRow("A", "30", -1, 2, stale)], "75/1", now=NOW, zone=PARIS, options=OPTIONS
    )
    assert verdict.record is None
    assert verdict.rejected == (rules.COUNT_NEGATIVE, rules.UPDATED_AT_STALE)
    assert verdict.raw == {
        "installed": "30",
        "closed": -1,
        "available": 2,
        "updated_at": stale.isoformat(),
    }
    invalid = check_unit(
        [SourceRow("A", 30, 1, 2, "hier")], "75/1", now=NOW, zone=PARIS, options=OPTIONS
    )
    assert invalid.rejected == (rules.UPDATED_AT_INVALID,)
    assert invalid.raw["updated_at"] == "hier"
    accepted = check_unit(
        [SourceRow("A", 30, 1, 2, NOW)], "75/1", now=NOW, zone=PARIS, options=OPTIONS
    )
    assert accepted.record is not None and accepted.raw == {}
