"""The fault-injection suite's tools: child processes, the server's own record, the invariants.

- `Zygote` talks to the fork server (tests/faults/zygote.py): real `rorfeed run-once` and
  `rorfeed serve` processes, started in milliseconds, killed with real signals.
- `SftpLog` reads what the server's `sftp-server -l INFO` wrote: every open, rename and remove,
  in the order the server did them. It is the independent witness of "never twice" and
  "never older after newer": the ledger is the product's own account, this is the server's.
- `check_invariants` checks, on the server's folder, its log, the outbox, the archive and the
  state store, what rorfeed promises whatever fails (SPEC §7, §8), and returns every violation
  found (an empty list when all hold).
- `DaemonCycle` runs one cycle through the daemon's own code path (`Daemon.runner`, as the
  scheduler hands it a fire time): the log lines and metrics it produces are those
  `rorfeed serve` would.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text

from rorfeed.config import Config
from rorfeed.cycle import Cycle, CycleReport
from rorfeed.daemon import Daemon
from rorfeed.model import LedgerStatus
from rorfeed.state import Store, open_store
from rorfeed.state.schema import files_t, snapshots_t
from rorfeed.systemd import Notifier
from tests.faults.site import DESTINATION, Site

ROOT = Path(__file__).resolve().parents[2]
FINAL_NAME = re.compile(r"rorlits_(?P<finess>\d{9})_(?P<stamp>\d{8}T\d{6}Z)\.(?:csv|json|xml)")
TEMP_NAME = re.compile(r"\.rorlits_\d{9}_\d{8}T\d{6}Z\.(?:csv|json|xml)\.part")
STATUSES = set(LedgerStatus)


def rng(*key: object) -> random.Random:
    """A reproducible random source for one run of one case (the fault schedule, not secrets)."""
    seed = int(os.environ.get("RORFEED_FAULTS_SEED", "0"))
    material = "/".join(str(k) for k in (seed, *key)).encode()
    return random.Random(zlib.crc32(material))  # noqa: S311 - a fault schedule


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `predicate` until true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# Child processes


@dataclass
class Child:
    zygote: Zygote
    pid: int
    stdout: Path
    stderr: Path

    def poll(self) -> int | None:
        return self.zygote.exits.get(self.pid)

    def wait(self, timeout: float) -> int:
        wait_for(lambda: self.poll() is not None, timeout, f"process {self.pid} to end")
        code = self.poll()
        assert code is not None
        return code

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill(self) -> int:
        """SIGKILL (if still running) and reap; the exit code."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        return self.wait(10)

    def err(self) -> str:
        try:
            return self.stderr.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:  # not opened yet by the child
            return ""

    def log(self) -> list[dict[str, Any]]:
        """The JSON log lines of its stderr so far (other lines — summaries — skipped)."""
        return json_lines(self.err())

    def wait_event(self, event: str | tuple[str, ...], timeout: float) -> dict[str, Any]:
        """The first log line of `event` (or of any of several), waiting for it."""
        wanted = (event,) if isinstance(event, str) else event
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.log() if e.get("event") in wanted]
            return bool(found) or self.poll() is not None

        wait_for(seen, timeout, f"log event {event} of process {self.pid}")
        assert found, f"process {self.pid} ended ({self.poll()}) before {event}:\n{self.err()}"
        return found[0]


class Zygote:
    """The test side of tests/faults/zygote.py."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.zygote"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.exits: dict[int, int] = {}
        self.replies: dict[int, int] = {}
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._ids = iter(range(1, 1 << 30))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.ready.wait(60):
            raise RuntimeError("the fork server did not start within 60 s")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            if "ready" in message:
                self.ready.set()
            elif "exit" in message:
                self.exits[message["exit"]] = message["code"]
            else:
                # The kernel reuses process ids: an exit recorded for an earlier child with
                # this id must not be read as the new child's. The fork server answers a
                # spawn before it reaps anything newer, so this order is safe.
                self.exits.pop(message["pid"], None)
                self.replies[message["id"]] = message["pid"]

    def spawn(
        self,
        argv: list[str],
        folder: Path,
        *,
        entry: str = "cli",
        env: dict[str, str] | None = None,
        hooks: dict[str, Any] | None = None,
        label: str = "child",
    ) -> Child:
        """Start `rorfeed <argv>` (entry "cli") or `rorfeed serve` (entry "serve")."""
        with self._lock:
            ident = next(self._ids)
        stdout, stderr = folder / f"{label}-{ident}.out", folder / f"{label}-{ident}.err"
        command = {
            "id": ident,
            "argv": argv,
            "entry": entry,
            "cwd": str(folder),
            "stdout": str(stdout),
            "stderr": str(stderr),
            "env": env or {},
            "hooks": hooks or {},
        }
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        wait_for(lambda: ident in self.replies, 30, "the fork server's answer")
        return Child(self, self.replies.pop(ident), stdout, stderr)

    def run_once(self, site: Site, *, hooks: dict[str, Any] | None = None) -> Child:
        return self.spawn(
            ["--config", str(site.config_path), "run-once"], site.root, hooks=hooks, label="run"
        )

    def serve(self, site: Site, *, env: dict[str, str] | None = None) -> Child:
        return self.spawn(
            ["--config", str(site.config_path)], site.root, entry="serve", env=env, label="serve"
        )

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._reader.join(5)


def json_lines(text_: str) -> list[dict[str, Any]]:
    out = []
    for line in text_.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
    return out


# ---------------------------------------------------------------------------------------------
# The server's own record


@dataclass(frozen=True)
class SftpOp:
    op: str  # "open", "rename", "remove"
    path: str
    new: str = ""  # rename target
    flags: str = ""  # open flags


_OPEN = re.compile(r'^open "(?P<path>[^"]*)" flags (?P<flags>\S+)')
_RENAME = re.compile(r'^(?:posix-)?rename old "(?P<old>[^"]*)" new "(?P<new>[^"]*)"')
_REMOVE = re.compile(r'^remove name "(?P<path>[^"]*)"')


class SftpLog:
    """The operations `sftp-server -l INFO` logged, for paths in one remote folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def ops(self, folder: Path) -> list[SftpOp]:
        prefix = f"{folder}/"
        out: list[SftpOp] = []
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            if m := _OPEN.match(line):
                op = SftpOp("open", m["path"], flags=m["flags"])
            elif m := _RENAME.match(line):
                op = SftpOp("rename", m["old"], new=m["new"])
            elif m := _REMOVE.match(line):
                op = SftpOp("remove", m["path"])
            else:
                continue
            if op.path.startswith(prefix):
                out.append(op)
        return out

    def renamed(self, folder: Path) -> list[str]:
        """The final names files were renamed to in `folder`, in the server's order."""
        return [
            op.new.rsplit("/", 1)[1]
            for op in self.ops(folder)
            if op.op == "rename" and op.new.startswith(f"{folder}/")
        ]


# ---------------------------------------------------------------------------------------------
# The invariants


@dataclass
class LedgerRow:
    id: int
    file_name: str
    finess: str
    cycle_time: datetime
    size: int
    status: str
    attempts: int
    updated_at: datetime
    snapshot_id: int


def ledger_rows(store: Store) -> list[LedgerRow]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(files_t).where(files_t.c.destination == DESTINATION)).all()
    return [
        LedgerRow(
            r.id,
            r.file_name,
            r.finess,
            r.cycle_time,
            r.size,
            r.status,
            r.attempts,
            r.updated_at,
            r.snapshot_id,
        )
        for r in rows
    ]


def _store_problems(store: Store) -> list[str]:
    problems: list[str] = []
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            result = [r[0] for r in conn.execute(text("PRAGMA integrity_check"))]
            if result != ["ok"]:
                problems.append(f"state store: PRAGMA integrity_check says {result}")
            orphans = conn.execute(text("PRAGMA foreign_key_check")).all()
            if orphans:
                problems.append(f"state store: PRAGMA foreign_key_check finds {orphans}")
        snapshots = set(conn.execute(select(snapshots_t.c.id)).scalars())
        for r in conn.execute(select(files_t.c.file_name, files_t.c.snapshot_id)).all():
            if r.snapshot_id not in snapshots:
                problems.append(f"ledger: {r.file_name} points to a missing snapshot")
    return problems


def check_invariants(
    site: Site, sftp_log: SftpLog, *, settled: bool, store_url: str | None = None
) -> list[str]:
    """Every broken promise, as one line each.

    `settled`: a good cycle ran since the fault, so nothing may wait any more — no temporary
    name on the server, nothing fresh in the outbox, every outcome known in the ledger.
    """
    v: list[str] = []
    url = store_url or site.config.state_url
    try:
        store = open_store(url)  # a fresh engine: the store opens as a new process finds it
    except Exception as exc:  # noqa: BLE001 - a broken store is a finding, not a test error
        return [f"state store does not open: {type(exc).__name__}: {exc}"]
    try:
        v += _store_problems(store)
        rows = ledger_rows(store)
    finally:
        store.engine.dispose()
    by_name = {r.file_name: r for r in rows}
    work = site.work
    outbox = work / "outbox" / DESTINATION
    archive = work / "archive" / DESTINATION

    for r in rows:
        if r.status not in STATUSES:
            v.append(f"ledger: {r.file_name} has an unknown status {r.status!r}")

    def local_copy(name: str) -> Path | None:
        for candidate in (archive / LedgerStatus.DELIVERED / name, outbox / name):
            if candidate.is_file():
                return candidate
        found = sorted(archive.glob(f"*/{name}")) if archive.is_dir() else []
        return found[0] if found else None

    # The server's folder: whole files under final names, temporary names that no consumer
    # takes for a pivot file, nothing else.
    server = site.server()
    for name in server:
        if FINAL_NAME.fullmatch(name):
            row = by_name.get(name)
            if row is None:
                v.append(f"server: {name} is not in the ledger")
                continue
            if row.status not in (LedgerStatus.DELIVERED, LedgerStatus.UPLOADING):
                v.append(f"server: {name} is there but the ledger says {row.status}")
            if settled and row.status != LedgerStatus.DELIVERED:
                v.append(f"server: {name} is there, still {row.status} after a good cycle")
            local = local_copy(name)
            remote = (site.remote / name).read_bytes()
            if local is None:
                v.append(f"server: {name} has no local copy to compare with")
            elif remote != local.read_bytes():
                v.append(
                    f"server: {name} differs from its local copy ({len(remote)} bytes,"
                    f" {local.stat().st_size} expected): partial or wrong under a final name"
                )
        elif TEMP_NAME.fullmatch(name):
            if settled:
                v.append(f"server: temporary {name} left after a good cycle")
        else:
            v.append(f"server: {name} is neither a final name nor a dot-prefixed .part name")
    if settled:
        for r in rows:
            if r.status == LedgerStatus.DELIVERED and r.file_name not in server:
                v.append(f"ledger: {r.file_name} delivered, absent from the server")

    # The server's own log: each final name renamed into place once, never written in place,
    # and per establishment never an older cycle after a newer one.
    ops = sftp_log.ops(site.remote)
    renamed = sftp_log.renamed(site.remote)
    for name, n in Counter(renamed).items():
        if n > 1:
            v.append(f"sftp log: {name} renamed into place {n} times (delivered twice)")
    for op in ops:
        if op.op == "open" and "WRITE" in op.flags:
            base = op.path.rsplit("/", 1)[1]
            if not base.startswith("."):
                v.append(f"sftp log: {base} opened for writing under its final name")
    newest: dict[str, tuple[datetime, str]] = {}
    for name in renamed:
        m = FINAL_NAME.fullmatch(name)
        if m is None:
            v.append(f"sftp log: renamed to {name}, not a pivot file name")
            continue
        stamp = datetime.strptime(m["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        before = newest.get(m["finess"])
        if before is not None and stamp < before[0]:
            v.append(f"sftp log: {name} delivered after the newer {before[1]}")
        if before is None or stamp >= before[0]:
            newest[m["finess"]] = (stamp, name)
    for name in set(renamed):
        row = by_name.get(name)
        if row is None:
            v.append(f"sftp log: {name} was renamed into place but is not in the ledger")
        elif settled and row.status != LedgerStatus.DELIVERED:
            v.append(f"sftp log: {name} was renamed into place, the ledger says {row.status}")

    # The ledger's own order: per establishment, delivered in cycle order.
    delivered: dict[str, list[LedgerRow]] = defaultdict(list)
    for r in rows:
        if r.status == LedgerStatus.DELIVERED:
            delivered[r.finess].append(r)
    for finess, items in delivered.items():
        items.sort(key=lambda r: (r.updated_at, r.cycle_time))
        for a, b in itertools.pairwise(items):
            if b.cycle_time < a.cycle_time:
                v.append(
                    f"ledger: {finess}: {b.file_name} marked delivered after the newer"
                    f" {a.file_name}"
                )

    # The outbox: after a good cycle, nothing waits and every outcome is known.
    if settled:
        waiting = sorted(
            r.file_name for r in rows if r.status in (LedgerStatus.PENDING, LedgerStatus.UPLOADING)
        )
        if waiting:
            v.append(f"ledger: still waiting after a good cycle: {waiting}")
        left = sorted(p.name for p in outbox.iterdir()) if outbox.is_dir() else []
        if left:
            v.append(f"outbox: files left after a good cycle: {left}")
        for r in rows:
            if (
                r.status in (LedgerStatus.DELIVERED, LedgerStatus.UNCERTAIN)
                and not (archive / r.status / r.file_name).is_file()
            ):
                v.append(f"archive: {r.file_name} ({r.status}) has no archived copy")
    return v


# ---------------------------------------------------------------------------------------------
# A cycle as the daemon runs it: its log lines and its metrics


@dataclass
class DaemonCycle:
    """One cycle through `Daemon.runner`; `report` is None when it ended on an error."""

    report: CycleReport | None
    registry: CollectorRegistry
    lines: list[dict[str, Any]] = field(default_factory=list)

    def metric(self, name: str, **labels: str) -> float | None:
        return sample(generate_latest(self.registry).decode(), name, **labels)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.lines if e.get("event") == name]


def run_daemon_cycle(
    config: Config,
    store: Store,
    cycle_time: datetime,
    read_err: Callable[[], str],
    *,
    clock: Callable[[], datetime] | None = None,
) -> DaemonCycle:
    """Run one cycle the way `rorfeed serve` does; `read_err` returns the stderr since the
    last call (capsys), where the daemon's JSON log lines are."""
    reports: list[CycleReport] = []

    class Recording:
        def __init__(self, cycle: Cycle) -> None:
            self.cycle = cycle

        def run(self, t: datetime) -> CycleReport:
            report = self.cycle.run(t)
            reports.append(report)
            return report

    def factory(c: Config, s: Store) -> Recording:
        return Recording(Cycle(c, s, clock=clock) if clock else Cycle(c, s))

    registry = CollectorRegistry()
    read_err()
    daemon = Daemon(
        config, store, cycle_factory=factory, notifier=Notifier(None), registry=registry
    )
    assert daemon.runner.submit(cycle_time) == "started"
    assert daemon.runner.wait_idle(120), "the cycle did not end within 120 s"
    lines = []
    for line in read_err().splitlines():
        if line.strip():
            lines.append(json.loads(line))  # every line one JSON object, never a traceback
    return DaemonCycle(reports[0] if reports else None, registry, lines)


def sample(body: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body: str = resp.read().decode()
        return body


def scrape_after_cycles(port: int, cycles: int, timeout: float) -> str:
    """The metrics once `cycles` cycles are counted: a cycle's last log line comes before
    the daemon accounts for it, so a scrape right after the line may not show it yet."""
    body = ""

    def counted() -> bool:
        nonlocal body
        body = scrape(port)
        return (sample(body, "rorfeed_cycles_total") or 0) >= cycles

    wait_for(counted, timeout, f"{cycles} cycle(s) counted in the metrics")
    return body


@contextlib.contextmanager
def timed(record: dict[str, float], key: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        record[key] = record.get(key, 0.0) + time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# After a crash: the next good cycle must recover every file left behind, and say so


def recovery_problems(
    before: list[LedgerRow],
    lines: list[dict[str, Any]],
    metric: Callable[[str], float | None],
) -> list[str]:
    """What the good cycle after a fault must say about each file the fault left behind.

    `before`: the ledger as the fault left it; `lines`: the log lines of the good cycle;
    `metric(name)`: the value of a metric (labelled with the destination) after it. Each file
    left `uploading` is settled, each left `pending` is delivered or superseded by a newer
    one, each in a log line naming it; the metrics count exactly what the lines say.
    """
    v: list[str] = []

    def named(event: str, **match: object) -> list[str]:
        return [
            str(e.get("file"))
            for e in lines
            if e.get("event") == event and all(e.get(k) == x for k, x in match.items())
        ]

    settled_ok = named("delivery_settled", status=LedgerStatus.DELIVERED)
    settled_uncertain = named("delivery_settled", status=LedgerStatus.UNCERTAIN)
    delivered = named("file_delivered")
    superseded = named("file_not_sent", status=LedgerStatus.SUPERSEDED)
    missing = named("outbox_file_missing")
    for r in before:
        if r.status == LedgerStatus.UPLOADING and r.file_name not in settled_ok + settled_uncertain:
            v.append(f"log: no delivery_settled line for {r.file_name}, left uploading")
        if r.status == LedgerStatus.PENDING and r.file_name not in delivered + superseded + missing:
            v.append(f"log: no line says what became of {r.file_name}, left pending")
    counted = {
        "rorfeed_delivered_files_total": len(delivered) + len(settled_ok),
        "rorfeed_uncertain_files_total": len(settled_uncertain),
        "rorfeed_superseded_files_total": len(superseded),
    }
    for name, expected in counted.items():
        got = metric(name)
        if got != expected:
            v.append(f"metric {name}: {got}, the log lines say {expected}")
    if not [e for e in lines if e.get("event") == "cycle_end" and e.get("outcome") == "ok"]:
        v.append("log: no cycle_end line with outcome ok for the good cycle")
    if metric("rorfeed_cycles_failed_total"):
        v.append("metric rorfeed_cycles_failed_total: the good cycle counted as failed")
    return v
