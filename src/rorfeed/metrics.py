"""Prometheus metrics of `rorfeed serve` (SPEC §9), through one explicit `CollectorRegistry`.

Every metric is documented — name, type, labels, meaning — in the README's "Metrics" table;
`tests/test_metrics.py` fails when the table and what is exposed differ, or when an alert of
`deploy/prometheus/rorfeed-alerts.yml` uses a name that is not exposed.

Two kinds of values:

- **cycle-derived** (counters, durations, last success): updated by `Metrics.observe_cycle`
  after each cycle; on start, `Metrics.restore` takes the gauges back from the state store's
  cycle history so that a restart does not look like an old feed;
- **state-derived** (units by mode, kill-switches, source up, outbox, e-mails waiting, last
  delivery): read from the state store at scrape time by `StateCollector`, with read-only
  selects. The store is the truth — a switch made with the CLI or the web page shows at the
  next scrape, and a restart loses nothing.

Labels are only ever `finess`, `destination`, `rule` and `mode`; every child the configuration
implies is created up front, so an alert sees 0, never an absent series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rorfeed.errors import RorfeedError
from rorfeed.model import GLOBAL, CycleOutcome, EstablishmentStatus, Mode
from rorfeed.rules import HARD_RULES, WARNING_RULES
from rorfeed.state import CycleRow, StateFigures, Store

if TYPE_CHECKING:
    from rorfeed.config import Config
    from rorfeed.cycle import CycleReport

log = structlog.get_logger("rorfeed.metrics")

MODES = tuple(m.value for m in Mode)
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# An establishment's pivot files were written this cycle: the cycle succeeded for it.
_SUCCESS = EstablishmentStatus.OK
# Its source was read this cycle: its unmapped count is known.
_SOURCE_READ = (EstablishmentStatus.OK, EstablishmentStatus.NOTHING_TO_SEND)


def _ts(value: datetime) -> float:
    return value.timestamp()


class Metrics:
    """Every metric of the daemon, registered in `registry` (never the global one)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        config: Config,
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        r = registry
        self.start_time = Gauge(
            "rorfeed_start_time_seconds", "Time the daemon started (Unix time)", registry=r
        )
        self.last_cycle = Gauge(
            "rorfeed_last_cycle_timestamp_seconds",
            "Scheduled time of the last cycle that ran, whatever its outcome",
            registry=r,
        )
        self.last_success = Gauge(
            "rorfeed_last_success_timestamp_seconds",
            "Scheduled time of the last cycle that wrote the establishment's files",
            ["finess"],
            registry=r,
        )
        self.duration = Histogram(
            "rorfeed_cycle_duration_seconds",
            "Duration of a whole cycle (extract to delivery)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.cycles = Counter("rorfeed_cycles", "Cycles run, whatever their outcome", registry=r)
        self.cycles_partial = Counter(
            "rorfeed_cycles_partial",
            "Cycles that delivered but rejected records or met a kill-switch",
            registry=r,
        )
        self.cycles_failed = Counter(
            "rorfeed_cycles_failed",
            "Cycles that failed: a source down, a mapping invalid, a delivery failed, or an error",
            registry=r,
        )
        self.sent = Counter(
            "rorfeed_sent_records", "Unit records accepted and written", ["finess"], registry=r
        )
        self.rejected = Counter(
            "rorfeed_rejected_records",
            "Unit records rejected (not sent), by rule",
            ["finess", "rule"],
            registry=r,
        )
        self.warnings = Counter(
            "rorfeed_warning_records",
            "Unit records sent with a warning, by rule",
            ["finess", "rule"],
            registry=r,
        )
        self.source_failures = Counter(
            "rorfeed_source_failures",
            "Cycles in which the establishment's source was unreachable",
            ["finess"],
            registry=r,
        )
        self.unmapped = Gauge(
            "rorfeed_unmapped_units",
            "Source units absent from the mapping, at the last extraction",
            ["finess"],
            registry=r,
        )
        self.delivered = Counter(
            "rorfeed_delivered_files",
            "Files uploaded and renamed on the destination",
            ["destination"],
            registry=r,
        )
        self.superseded = Counter(
            "rorfeed_superseded_files",
            "Files archived unsent because a newer one of the same establishment came",
            ["destination"],
            registry=r,
        )
        self.expired = Counter(
            "rorfeed_expired_files",
            "Files archived unsent because older than rules.max_file_age_minutes",
            ["destination"],
            registry=r,
        )
        self.uncertain = Counter(
            "rorfeed_uncertain_files",
            "Files whose delivery outcome is unknown after a crash (never sent again)",
            ["destination"],
            registry=r,
        )
        self.delivery_failures = Counter(
            "rorfeed_delivery_failures",
            "Cycles in which delivering to the destination failed",
            ["destination"],
            registry=r,
        )
        self.delivery_failing = Gauge(
            "rorfeed_delivery_failing",
            "1 when the last delivery attempt to the destination failed",
            ["destination"],
            registry=r,
        )
        self.attempt_failures = Counter(
            "rorfeed_delivery_attempt_failures",
            "Delivery attempts (sessions) that failed, including those a retry within the same"
            " cycle cured; the log line delivery_attempt_failed names each cause",
            ["destination"],
            registry=r,
        )
        self.reload_ok = Gauge(
            "rorfeed_config_last_reload_successful",
            "0 when the last SIGHUP reload was rejected (the daemon runs the previous"
            " configuration and would not start again on the file as it is), else 1",
            registry=r,
        )
        self.reload_rejections = Counter(
            "rorfeed_config_reload_rejections",
            "SIGHUP reloads rejected because the new configuration is invalid",
            registry=r,
        )
        self.reload_ok.set(1)
        self.state = StateCollector(config, store)
        r.register(self.state)
        self.start_time.set(clock())
        self.set_config(config, store)

    def set_config(self, config: Config, store: Store) -> None:
        """Create every label child `config` implies (0 until something happens).

        Children of establishments and destinations no longer configured are removed.
        """
        self._finesses = [e.finess for e in config.file.establishments]
        self._destinations = [d.name for d in config.file.destinations]
        for metric in (self.last_success, self.sent, self.source_failures, self.unmapped):
            _prune(metric, self._finesses)
            for f in self._finesses:
                metric.labels(f)
        for metric, rules in ((self.rejected, HARD_RULES), (self.warnings, WARNING_RULES)):
            _prune(metric, self._finesses)
            for f in self._finesses:
                for rule in rules:
                    metric.labels(f, rule)
        for metric in (
            self.delivered,
            self.superseded,
            self.expired,
            self.uncertain,
            self.delivery_failures,
            self.delivery_failing,
            self.attempt_failures,
        ):
            _prune(metric, self._destinations)
            for d in self._destinations:
                metric.labels(d)
        self.state.set_config(config, store)

    def observe_cycle(self, report: CycleReport) -> None:
        """Account for one finished cycle."""
        self.cycles.inc()
        if report.outcome is CycleOutcome.FAILED:
            self.cycles_failed.inc()
        elif report.outcome is CycleOutcome.PARTIAL:
            self.cycles_partial.inc()
        self.duration.observe(report.duration)
        self.last_cycle.set(_ts(report.cycle_time))
        for e in report.establishments:
            if e.status is _SUCCESS:
                self.last_success.labels(e.finess).set(_ts(report.cycle_time))
            if e.status in _SOURCE_READ:
                self.unmapped.labels(e.finess).set(len(e.unmapped))
            if e.status is EstablishmentStatus.SOURCE_DOWN:
                self.source_failures.labels(e.finess).inc()
            self.sent.labels(e.finess).inc(e.sent)
            for rule, n in e.rejected.items():
                self.rejected.labels(e.finess, rule).inc(n)
            for rule, n in e.warnings.items():
                self.warnings.labels(e.finess, rule).inc(n)
        for d in report.deliveries:
            self.delivered.labels(d.destination).inc(len(d.delivered))
            self.superseded.labels(d.destination).inc(len(d.superseded))
            self.expired.labels(d.destination).inc(len(d.expired))
            self.uncertain.labels(d.destination).inc(len(d.uncertain))
            self.attempt_failures.labels(d.destination).inc(sum(d.failures.values()))
            if d.ok:
                self.delivery_failing.labels(d.destination).set(0)
            else:
                self.delivery_failures.labels(d.destination).inc()
                self.delivery_failing.labels(d.destination).set(1)

    def observe_reload(self, *, accepted: bool) -> None:
        """Account for one SIGHUP reload."""
        self.reload_ok.set(1 if accepted else 0)
        if not accepted:
            self.reload_rejections.inc()

    def observe_cycle_error(self, duration: float) -> None:
        """Account for a cycle that ended on an error instead of a report."""
        self.cycles.inc()
        self.cycles_failed.inc()
        self.duration.observe(duration)

    def restore(self, cycles: Sequence[CycleRow]) -> None:
        """Take the cycle-derived gauges back from the history (`cycles`: newest first)."""
        if not cycles:
            return
        self.last_cycle.set(_ts(cycles[0].cycle_time))
        known_success: set[str] = set()
        known_unmapped: set[str] = set()
        known_delivery: set[str] = set()
        for cycle in cycles:
            for finess, est in cycle.detail.establishments.items():
                if finess not in self._finesses:
                    continue
                if est.status is _SUCCESS and finess not in known_success:
                    known_success.add(finess)
                    self.last_success.labels(finess).set(_ts(cycle.cycle_time))
                if est.status in _SOURCE_READ and finess not in known_unmapped:
                    known_unmapped.add(finess)
                    self.unmapped.labels(finess).set(est.unmapped)
            for dest, delivery in cycle.detail.deliveries.items():
                if dest not in self._destinations or dest in known_delivery:
                    continue
                known_delivery.add(dest)
                failing = bool(delivery.failed) or bool(delivery.error)
                self.delivery_failing.labels(dest).set(1 if failing else 0)


def _prune(metric: Counter | Gauge, keep: list[str]) -> None:
    """Remove the children whose first label (FINESS or destination) is not in `keep`."""
    # prometheus_client lists a metric's children nowhere else than in `_metrics`.
    for labels in list(metric._metrics):
        if labels[0] not in keep:
            metric.remove(*labels)


class StateCollector(Collector):
    """Values derived from the state store, read at each scrape (read-only selects).

    When the store cannot be read, only `rorfeed_state_up 0` is exposed (and the error
    logged): an alert on it says so, rather than stale numbers.
    """

    def __init__(self, config: Config, store: Store) -> None:
        self._config = config
        self._store = store

    def set_config(self, config: Config, store: Store) -> None:
        self._config, self._store = config, store

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        try:
            data = self._read()
        except RorfeedError as exc:
            error = str(exc)
        else:
            return list(self._families(data))
        # A known failure (the store is down): one line, no traceback.
        log.error("metrics_state_unreadable", error=error)
        up = GaugeMetricFamily(
            "rorfeed_state_up", "1 when the state store could be read at this scrape"
        )
        up.add_metric([], 0)
        return [up]

    def _read(self) -> StateFigures:
        return self._store.figures()

    def _families(self, data: StateFigures | None = None) -> Iterator[Metric]:
        config = self._config
        finesses = [e.finess for e in config.file.establishments]
        destinations = [d.name for d in config.file.destinations]
        d = data if data is not None else StateFigures()

        up = GaugeMetricFamily(
            "rorfeed_state_up", "1 when the state store could be read at this scrape"
        )
        up.add_metric([], 1)
        yield up

        units: dict[tuple[str, str], int] = {(f, m): 0 for f in finesses for m in MODES}
        for finess, mode, n in d.units:
            units[(finess, mode)] = n
        fam = GaugeMetricFamily(
            "rorfeed_units", "Mapped units by establishment and mode", labels=["finess", "mode"]
        )
        for (finess, mode), n in sorted(units.items()):
            fam.add_metric([finess, mode], n)
        yield fam

        switches = {GLOBAL: 0, **dict.fromkeys(finesses, 0)}
        streaks = dict.fromkeys(finesses, 0)
        for finess, is_on, streak in d.establishments:
            switches[finess] = 1 if is_on else 0
            if finess != GLOBAL:
                streaks[finess] = streak
        fam = GaugeMetricFamily(
            "rorfeed_killswitch",
            'Kill-switch of the establishment: 1 when on (finess="*": the global one)',
            labels=["finess"],
        )
        for finess, on in sorted(switches.items()):
            fam.add_metric([finess], on)
        yield fam

        fam = GaugeMetricFamily(
            "rorfeed_source_up",
            "1 when the establishment's source answered at its last extraction",
            labels=["finess"],
        )
        streak_fam = GaugeMetricFamily(
            "rorfeed_source_unreachable_cycles",
            "Consecutive cycles with the establishment's source unreachable",
            labels=["finess"],
        )
        for finess, streak in sorted(streaks.items()):
            fam.add_metric([finess], 0 if streak else 1)
            streak_fam.add_metric([finess], streak)
        yield fam
        yield streak_fam

        waiting = dict.fromkeys(destinations, 0)
        for dest, n in d.outbox:
            waiting[dest] = n
        fam = GaugeMetricFamily(
            "rorfeed_outbox_files",
            "Files waiting in the outbox for the destination",
            labels=["destination"],
        )
        for dest, n in sorted(waiting.items()):
            fam.add_metric([dest], n)
        yield fam

        last: dict[tuple[str, str], float] = {
            (f, dest.name): 0.0
            for dest in config.file.destinations
            for f in finesses
            if not dest.establishments or f in dest.establishments
        }
        for finess, dest, delivered_at in d.delivered:
            if delivered_at is not None:
                last[(finess, dest)] = _ts(delivered_at)
        fam = GaugeMetricFamily(
            "rorfeed_last_delivery_timestamp_seconds",
            "Time of the last file of the establishment delivered to the destination (0: never)",
            labels=["finess", "destination"],
        )
        for (finess, dest), at in sorted(last.items()):
            fam.add_metric([finess, dest], at)
        yield fam

        fam = GaugeMetricFamily(
            "rorfeed_emails_waiting", "E-mails to the bed-management cell not sent yet"
        )
        fam.add_metric([], d.emails_waiting)
        yield fam

        open_reports = dict.fromkeys(finesses, 0)
        oldest = dict.fromkeys(finesses, 0.0)
        for finess, n, since in d.anomalies:
            if finess in open_reports:
                open_reports[finess], oldest[finess] = n, _ts(since)
        fam = GaugeMetricFamily(
            "rorfeed_anomaly_reports_open",
            "Anomalies reported by people on the establishment's units, not closed yet",
            labels=["finess"],
        )
        oldest_fam = GaugeMetricFamily(
            "rorfeed_anomaly_report_oldest_open_timestamp_seconds",
            "Time of the establishment's oldest open anomaly report (0: none open)",
            labels=["finess"],
        )
        for finess in sorted(finesses):
            fam.add_metric([finess], open_reports[finess])
            oldest_fam.add_metric([finess], oldest[finess])
        yield fam
        yield oldest_fam


def exposed_metrics(registry: CollectorRegistry) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric family the registry exposes: name → (type, label names)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for family in registry.collect():
        labels: set[str] = set()
        for sample in family.samples:
            labels.update(k for k in sample.labels if k != "le")
        name = family.name + ("_total" if family.type == "counter" else "")
        out[name] = (family.type, tuple(sorted(labels)))
    return out
