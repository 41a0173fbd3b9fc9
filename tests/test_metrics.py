"""Metrics: names, labels, children up front, cycle- and state-derived values, documentation."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import create_engine, insert

from rorfeed.config import Config, load
from rorfeed.cycle import CycleReport, EstablishmentReport
from rorfeed.metrics import Metrics, exposed_metrics
from rorfeed.model import (
    GLOBAL,
    BedCounts,
    CycleDetail,
    CycleOutcome,
    DeliveryDetail,
    EstablishmentDetail,
    EstablishmentStatus,
    MappedUnit,
    Mode,
)
from rorfeed.outbox import DeliveryReport
from rorfeed.rules import HARD_RULES
from rorfeed.state import Store, open_store
from rorfeed.state.schema import establishments_t
from tests.sites import mapping_csv, write_site

ROOT = Path(__file__).resolve().parent.parent
A, B = "750712184", "130783236"
ALLOWED_LABELS = {"finess", "destination", "rule", "mode"}

CONFIG = f"""
[daemon]
work_dir = "work"

[[establishments]]
name = "A"
finess = "{A}"
mapping = "mapping.csv"
[establishments.source]
kind = "csv"
path = "export.csv"

[[establishments]]
name = "B"
finess = "{B}"
mapping = "mapping.csv"
[establishments.source]
kind = "csv"
path = "export.csv"

[[destinations]]
name = "sesan"
kind = "directory"
path = "depot"

[[destinations]]
name = "sesan-test"
kind = "directory"
path = "depot"
environment = "test"
establishments = ["{A}"]
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    # Two establishments: more than site_toml writes, so the TOML is this module's own.
    return load(write_site(tmp_path, CONFIG, mapping_csv([("REA", "52/100", "Réa")])))


@pytest.fixture
def store(config: Config) -> Store:
    return open_store(config.state_url)


@pytest.fixture
def metrics(config: Config, store: Store) -> Metrics:
    return Metrics(CollectorRegistry(), config, store, clock=lambda: 1_800_000_000.0)


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_names_and_labels_follow_prometheus_conventions(metrics: Metrics) -> None:
    exposed = exposed_metrics(metrics.registry)
    assert len(exposed) >= 20
    for name, (kind, labels) in exposed.items():
        assert name.startswith("rorfeed_"), name
        assert set(labels) <= ALLOWED_LABELS, (name, labels)
        assert name.endswith("_total") == (kind == "counter"), name
        if "time" in name or "duration" in name:
            assert name.endswith("_seconds"), name


def test_every_series_exists_from_the_start_at_zero(metrics: Metrics) -> None:
    for finess in (A, B):
        for rule in HARD_RULES:
            assert value(metrics, "rorfeed_rejected_records_total", finess=finess, rule=rule) == 0
        for mode in ("auto", "manual"):
            assert value(metrics, "rorfeed_units", finess=finess, mode=mode) == 0
        assert value(metrics, "rorfeed_killswitch", finess=finess) == 0
        assert value(metrics, "rorfeed_source_up", finess=finess) == 1
        assert value(metrics, "rorfeed_unmapped_units", finess=finess) == 0
        assert value(metrics, "rorfeed_last_success_timestamp_seconds", finess=finess) == 0
    assert value(metrics, "rorfeed_killswitch", finess=GLOBAL) == 0
    for dest in ("sesan", "sesan-test"):
        assert value(metrics, "rorfeed_delivery_failures_total", destination=dest) == 0
        assert value(metrics, "rorfeed_delivery_attempt_failures_total", destination=dest) == 0
        assert value(metrics, "rorfeed_outbox_files", destination=dest) == 0
    # Last delivery: only the pairs the configuration sends (sesan-test receives A only).
    pairs = {
        (s.labels["finess"], s.labels["destination"])
        for f in metrics.registry.collect()
        if f.name == "rorfeed_last_delivery_timestamp_seconds"
        for s in f.samples
    }
    assert pairs == {(A, "sesan"), (B, "sesan"), (A, "sesan-test")}
    assert value(metrics, "rorfeed_emails_waiting") == 0
    assert value(metrics, "rorfeed_state_up") == 1
    assert value(metrics, "rorfeed_config_last_reload_successful") == 1
    assert value(metrics, "rorfeed_config_reload_rejections_total") == 0
    assert value(metrics, "rorfeed_start_time_seconds") == 1_800_000_000.0


def test_observe_cycle_counts_outcomes_records_and_deliveries(metrics: Metrics) -> None:
    t = datetime(2026, 6, 1, 10, 5, tzinfo=UTC)
    report = CycleReport(
        t,
        establishments=[
            EstablishmentReport(
                A,
                "A",
                sent=3,
                rejected=Counter({"count_negative": 2, "unit_missing": 1}),
                rejected_units={"52/1": ("count_negative",), "52/2": ("count_negative",)},
                warnings=Counter({"installed_change": 1}),
                unmapped=["X", "Y"],
            ),
            EstablishmentReport(B, "B", status=EstablishmentStatus.SOURCE_DOWN, error="refused"),
        ],
        deliveries=[
            # A first session cut, cured by the retry within the cycle: counted all the same.
            DeliveryReport(
                "sesan",
                delivered=["a.xml"],
                superseded=["old.xml"],
                failures=Counter({"connection": 1}),
            ),
            DeliveryReport(
                "sesan-test",
                failed=["a.xml"],
                error="timeout",
                failures=Counter({"timeout": 2, "connection": 1}),
            ),
        ],
        duration=4.2,
    )
    metrics.observe_cycle(report)
    assert value(metrics, "rorfeed_cycles_total") == 1
    assert value(metrics, "rorfeed_cycles_failed_total") == 1
    assert value(metrics, "rorfeed_cycles_partial_total") == 0
    assert value(metrics, "rorfeed_cycle_duration_seconds_sum") == 4.2
    assert value(metrics, "rorfeed_last_cycle_timestamp_seconds") == t.timestamp()
    assert value(metrics, "rorfeed_last_success_timestamp_seconds", finess=A) == t.timestamp()
    assert value(metrics, "rorfeed_last_success_timestamp_seconds", finess=B) == 0
    assert value(metrics, "rorfeed_sent_records_total", finess=A) == 3
    assert value(metrics, "rorfeed_rejected_records_total", finess=A, rule="count_negative") == 2
    assert value(metrics, "rorfeed_warning_records_total", finess=A, rule="installed_change") == 1
    assert value(metrics, "rorfeed_unmapped_units", finess=A) == 2
    assert value(metrics, "rorfeed_source_failures_total", finess=B) == 1
    assert value(metrics, "rorfeed_delivered_files_total", destination="sesan") == 1
    assert value(metrics, "rorfeed_superseded_files_total", destination="sesan") == 1
    assert value(metrics, "rorfeed_delivery_failures_total", destination="sesan-test") == 1
    assert value(metrics, "rorfeed_delivery_failing", destination="sesan-test") == 1
    assert value(metrics, "rorfeed_delivery_failing", destination="sesan") == 0
    assert value(metrics, "rorfeed_delivery_attempt_failures_total", destination="sesan") == 1
    assert value(metrics, "rorfeed_delivery_attempt_failures_total", destination="sesan-test") == 3

    metrics.observe_cycle_error(0.5)
    assert value(metrics, "rorfeed_cycles_total") == 2
    assert value(metrics, "rorfeed_cycles_failed_total") == 2


def test_state_metrics_are_read_from_the_store_at_scrape_time(
    metrics: Metrics, store: Store
) -> None:
    now = datetime(2026, 6, 1, 10, 5, tzinfo=UTC)
    units = (
        MappedUnit("REA", "52/100", "Réa", Mode.AUTO, 2),
        MappedUnit("MED", "52/200", "Méd", Mode.MANUAL, 3),
        MappedUnit("CHI", "52/300", "Chir", Mode.AUTO, 4),
    )
    store.sync_mapping(A, units, now)
    store.sync_mapping(A, units[:2], now)  # CHI leaves the mapping: not counted any more
    with store.tx() as tx:
        tx.conn.execute(insert(establishments_t).values(finess=GLOBAL, killswitch=True))
    store.source_unreachable(B, down=True)
    store.source_unreachable(B, down=True)
    snap = store.add_snapshot_once(A, now, {"52/100": BedCounts(10, 1, 2)})
    assert snap is not None
    store.add_file("sesan", "a1.xml", snap, A, now, 10, now)
    store.add_file("sesan", "a2.xml", snap, A, now, 10, now)
    store.add_file("sesan-test", "a1.xml", snap, A, now, 10, now)
    row = store.files("sesan", ("pending",))[0]
    delivered_at = now + timedelta(seconds=30)
    store.mark_delivered(row, delivered_at, production=True)
    store.queue_email("Unité passée en manuel", "…", now)

    assert value(metrics, "rorfeed_units", finess=A, mode="auto") == 1
    assert value(metrics, "rorfeed_units", finess=A, mode="manual") == 1
    assert value(metrics, "rorfeed_units", finess=B, mode="auto") == 0
    assert value(metrics, "rorfeed_killswitch", finess=GLOBAL) == 1
    assert value(metrics, "rorfeed_killswitch", finess=A) == 0
    assert value(metrics, "rorfeed_source_up", finess=B) == 0
    assert value(metrics, "rorfeed_source_unreachable_cycles", finess=B) == 2
    assert value(metrics, "rorfeed_source_up", finess=A) == 1
    assert value(metrics, "rorfeed_outbox_files", destination="sesan") == 1
    assert value(metrics, "rorfeed_outbox_files", destination="sesan-test") == 1
    assert (
        value(metrics, "rorfeed_last_delivery_timestamp_seconds", finess=A, destination="sesan")
        == delivered_at.timestamp()
    )
    assert (
        value(
            metrics, "rorfeed_last_delivery_timestamp_seconds", finess=A, destination="sesan-test"
        )
        == 0
    )
    assert value(metrics, "rorfeed_emails_waiting") == 1


def test_an_unreadable_store_says_so_instead_of_stale_numbers(config: Config) -> None:
    broken = Store(create_engine("sqlite:////nonexistent-dir/for/sure/state.db"))
    m = Metrics(CollectorRegistry(), config, broken)
    text = generate_latest(m.registry).decode()
    assert "rorfeed_state_up 0.0" in text
    assert "rorfeed_units" not in text
    assert "rorfeed_cycles_total 0.0" in text  # the daemon's own metrics are still there


def test_restart_restores_the_timestamps_from_the_cycle_history(
    metrics: Metrics, store: Store
) -> None:
    ok, down = EstablishmentStatus.OK, EstablishmentStatus.SOURCE_DOWN
    t1 = datetime(2026, 6, 1, 9, 5, tzinfo=UTC)
    t2 = t1 + timedelta(hours=1)
    detail_ok = CycleDetail(
        {A: EstablishmentDetail(ok, unmapped=3), B: EstablishmentDetail(ok)},
        {"sesan": DeliveryDetail(delivered=2)},
    )
    detail_down = CycleDetail(
        {A: EstablishmentDetail(ok, unmapped=1), B: EstablishmentDetail(down, error="refused")},
        {"sesan": DeliveryDetail(failed=2, error="timeout")},
    )
    # Through the state, as the daemon does at start: the detail goes to JSON and back.
    store.record_cycle(t1, t1, t1, CycleOutcome.OK, 2, 0, detail_ok)
    store.record_cycle(t2, t2, t2, CycleOutcome.FAILED, 1, 0, detail_down)
    newest_first = store.recent_cycles(10)
    assert [c.detail for c in newest_first] == [detail_down, detail_ok]
    metrics.restore(newest_first)
    assert value(metrics, "rorfeed_last_cycle_timestamp_seconds") == t2.timestamp()
    assert value(metrics, "rorfeed_last_success_timestamp_seconds", finess=A) == t2.timestamp()
    assert value(metrics, "rorfeed_last_success_timestamp_seconds", finess=B) == t1.timestamp()
    assert value(metrics, "rorfeed_unmapped_units", finess=A) == 1
    assert value(metrics, "rorfeed_delivery_failing", destination="sesan") == 1


def test_a_reloaded_config_adds_and_removes_label_children(
    metrics: Metrics, config: Config, store: Store, tmp_path: Path
) -> None:
    # A only, and the first destination only.
    (tmp_path / "rorfeed.toml").write_text(f"""
[[establishments]]
name = "A"
finess = "{A}"
mapping = "mapping.csv"
[establishments.source]
kind = "csv"
path = "export.csv"

[[destinations]]
name = "sesan"
kind = "directory"
path = "depot"
""")
    metrics.set_config(load(tmp_path / "rorfeed.toml"), store)
    assert value(metrics, "rorfeed_sent_records_total", finess=A) == 0
    assert value(metrics, "rorfeed_sent_records_total", finess=B) is None
    assert value(metrics, "rorfeed_rejected_records_total", finess=B, rule="count_missing") is None
    assert value(metrics, "rorfeed_delivery_failing", destination="sesan-test") is None
    assert value(metrics, "rorfeed_units", finess=B, mode="auto") is None


# ---------------------------------------------------------------------------------------------
# Drift: the README documents exactly what is exposed; the alerts use only exposed names


def _readme_table() -> dict[str, tuple[str, tuple[str, ...]]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for m in re.finditer(
        r"^\| `(rorfeed_\w+)` \| (\w+) \|\s*([\w, ]*?)\s*\| (.+) \|$", section, re.M
    ):
        labels = tuple(sorted(x.strip() for x in m.group(3).split(",") if x.strip()))
        rows[m.group(1)] = (m.group(2), labels)
        assert m.group(4).strip(), f"{m.group(1)} has no meaning in the README"
    return rows


def test_readme_documents_every_exposed_metric_and_nothing_else(metrics: Metrics) -> None:
    assert _readme_table() == exposed_metrics(metrics.registry)


def _exposed_series_names(metrics: Metrics) -> set[str]:
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(s.name for s in family.samples)
    return names


def test_alert_rules_use_only_exposed_metric_names(metrics: Metrics) -> None:
    rules = (ROOT / "deploy" / "prometheus" / "rorfeed-alerts.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"\brorfeed_[a-z_]+", rules))
    assert used, "no rorfeed_ metric in the alert rules"
    assert used <= _exposed_series_names(metrics), used - _exposed_series_names(metrics)


def test_every_alert_is_bilingual_and_tested() -> None:
    rules = (ROOT / "deploy" / "prometheus" / "rorfeed-alerts.yml").read_text(encoding="utf-8")
    tests = (ROOT / "deploy" / "prometheus" / "rorfeed-alerts.test.yml").read_text(encoding="utf-8")
    blocks = re.split(r"\n      - alert: ", rules)[1:]
    assert len(blocks) >= 9
    for block in blocks:
        name = block.split("\n", 1)[0].strip()
        for key in ("summary", "description", "summary_fr", "description_fr"):
            assert re.search(rf"\n          {key}: ", block), f"{name}: no {key}"
        # Each alert has a test where it fires and one where it does not.
        cases = re.findall(rf"alertname: {name}\n        exp_alerts:( \[\])?", tests, flags=re.M)
        assert " []" in cases and "" in cases, f"{name}: needs a firing and a silent test case"
    assert {b.split("\n", 1)[0].strip() for b in blocks} >= {
        "RorfeedDown",
        "RorfeedAbsent",
        "RorfeedFeedStale",
        "RorfeedUnitSwitchedToManual",
        "RorfeedKillswitchOn",
        "RorfeedDeliveryFailing",
        "RorfeedSourceDown",
    }
