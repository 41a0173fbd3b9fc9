#!/usr/bin/env python3
"""rorfeed against the floor (issue 6, SPEC §11): one command, one table.

    .venv/bin/python bench/run.py [--sizes 100,1000,10000,100000] [--runs 5] [--runs-large 3]

Starts a throw-away PostgreSQL and OpenSSH server on loopback (the test fixtures' code:
tests/pg.py, tests/sshd.py), fills a bed table with N units for each N and, in the same run,
round by round (A B C A B C …, so that a drift of the machine's speed hits all three alike):

- floor     `psql \\copy (the site's query) to a CSV` then one `sftp -b` batch putting the three
            files rorfeed produced for this N (XML, JSON, CSV: the same bytes, the same number
            of files) each under a temporary name and renaming it — the native tools moving the
            same data, with no rendering, no validation, no fsync, no ledger;
- run-once  `rorfeed --config … run-once`, three formats, to the same SFTP server;
- cycle     the cycle alone inside a long-lived process (`Cycle(config, store).run(now)` after
            imports and a warm-up cycle): the daemon's view of a cycle.

Wall time is the whole process (spawn to exit); peak RSS is the kernel's `ru_maxrss` of each
finished child (`os.wait4`). Figures are medians over the counted runs; a ratio is the median of
the per-round ratios. Each N gets one uncounted warm-up run of each kind first (it also creates
the state store and its units, as the first hour of a real installation does): the counted runs
are the steady state of an installation that has run before.

Then the idle RSS of the real daemon (`rorfeed serve`, on the
`--daemon-n` site, 3 s after its first cycle), the idle RSS of the process above after its
cycles (it imported what the daemon imports; also after `malloc_trim(0)`), and `rorfeed --help`.

Other modes:
- `--phases N`: where one cycle's time (and peak RSS) goes, step by step, timed in-process by
  wrapping rorfeed's functions at run time (src/ is not changed; a renamed step is skipped and
  said so), for the first cycle of a process and a warm one; plus import costs.
- `--profile N`: one `run-once` at N under pyinstrument (`pip install pyinstrument`), text and
  HTML into `--profile-out`.

The destination's `timeout_seconds` is raised to DELIVERY_TIMEOUT (see there). Needs the test
extras (`pip install -e '.[test]'`: pytest, psycopg) and, on the machine, the PostgreSQL server
binaries, openssh-server and openssh-client (sftp); PostgreSQL's own psql is used.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.pg, tests.sshd

FINESS = "750712184"
QUERY = (
    "SELECT code_uf AS unit, nb_inst AS installed, nb_ferm AS closed, nb_dispo AS available,"
    " maj AS updated_at FROM lits"
)
FORMATS = ("xml", "json", "csv")
DEST = "bench-sftp"
# The destination's `timeout_seconds` bounds the whole delivery, ledger updates included. With
# the default 30 s, 100,000 units do not get delivered (the ledger's per-unit updates spend the
# budget: see bench/README.md); the benchmark gives it room, to measure the rest.
DELIVERY_TIMEOUT = 900
# What the daemon imports beyond the cycle's own modules (SPEC §9), when installed.
DAEMON_EXTRA_IMPORTS = (
    "rorfeed.daemon",
    "rorfeed.metrics",
    "apscheduler.schedulers.background",
    "apscheduler.triggers.cron",
    "prometheus_client",
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- measuring one process -----------------------------------------------------------------------


@dataclass
class Measure:
    wall: float
    maxrss_kb: int
    cpu: float


class CommandFailed(RuntimeError):
    pass


def measure(
    cmds: Sequence[Sequence[str]], out_dir: Path, tag: str, env: dict[str, str] | None = None
) -> tuple[Measure, list[str]]:
    """Run `cmds` one after the other; wall time of all, peak RSS of the largest, stderr texts.

    Output goes to files (no pipe to drain), so that the child can be reaped with `os.wait4`,
    which gives that child's own resource usage.
    """
    errs: list[str] = []
    peak, cpu = 0, 0.0
    started = time.perf_counter()
    for i, cmd in enumerate(cmds):
        out_path, err_path = out_dir / f"{tag}.{i}.out", out_dir / f"{tag}.{i}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env
            )
            _pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        peak = max(peak, usage.ru_maxrss)
        cpu += usage.ru_utime + usage.ru_stime
        errs.append(err_path.read_text(errors="replace"))
        if proc.returncode != 0:
            raise CommandFailed(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{errs[-1][-3000:]}"
                f"\n{out_path.read_text(errors='replace')[-2000:]}"
            )
    wall = time.perf_counter() - started
    return Measure(wall, peak, cpu), errs


def wait_for_new_second(after: float) -> None:
    """Sleep until the wall clock is past the second `after` falls in (file names have the
    cycle time to the second: two cycles in one second would collide)."""
    target = int(after) + 1.02
    delay = target - time.time()
    if delay > 0:
        time.sleep(delay)


# -- the site: bed table, mapping, config ------------------------------------------------------


def fill_beds(pg: Any, db: str, n: int) -> str:
    url: str = pg.create_db(db)
    pg.execute(
        db,
        "CREATE TABLE lits (code_uf text PRIMARY KEY, nb_inst integer NOT NULL,"
        " nb_ferm integer NOT NULL, nb_dispo integer NOT NULL, maj timestamptz NOT NULL)",
        # Plausible, valid counts (closed ≤ installed, available ≤ open, ≤ 500), fresh times.
        f"INSERT INTO lits SELECT 'UF' || lpad(i::text, 6, '0'), 10 + i % 41, i % 3,"
        f" (i * 7) % (10 + i % 41 - i % 3 + 1), now() - (i % 30) * interval '1 minute'"
        f" FROM generate_series(1, {n}) AS i",
        "ANALYZE lits",
    )
    return url


def write_mapping(path: Path, n: int) -> None:
    lines = ["local_code;ror_id;label"]
    lines += [f"UF{i:06d};52/{i:07d};Unité {i}" for i in range(1, n + 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_config(
    site: Path,
    db_url: str,
    sshd: Any,
    remote_dir: Path,
    metrics_listen: str = "",
    schedule: str = "5 * * * *",
) -> Path:
    config = f"""\
[daemon]
work_dir = "work"
schedule = "{schedule}"

[metrics]
listen = "{metrics_listen}"

[[establishments]]
name = "Hôpital Bench"
finess = "{FINESS}"
mapping = "{site.parent / "mapping.csv"}"

[establishments.source]
kind = "sql"
url = "{db_url}"
query = "{QUERY}"

[[destinations]]
name = "{DEST}"
kind = "sftp"
host = "{sshd.host}"
port = {sshd.port}
username = "{sshd.user}"
private_key = "{sshd.ed25519}"
known_hosts = "{sshd.known_hosts}"
remote_dir = "{remote_dir}"
formats = {json.dumps(list(FORMATS))}
timeout_seconds = {DELIVERY_TIMEOUT}
"""
    site.mkdir(parents=True, exist_ok=True)
    path = site / "rorfeed.toml"
    path.write_text(config, encoding="utf-8")
    return path


def rorfeed_cmd() -> list[str]:
    script = Path(sys.executable).parent / "rorfeed"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rorfeed.cli"]


def clean_delivered(sites: Sequence[Path], remote_dirs: Sequence[Path]) -> None:
    """Between rounds, outside the timing: keep the disk bounded at 100,000 units.

    Delivered files leave the remote folders and the local archives (which the cycle's purge
    would otherwise keep for `archive_days`).
    """
    for remote in remote_dirs:
        for path in remote.iterdir():
            path.unlink()
    for site in sites:
        archive = site / "work" / "archive"
        if archive.exists():
            for path in archive.rglob("*"):
                if path.is_file():
                    path.unlink()


def check_delivered(stderr: str, what: str) -> None:
    if not re.search(rf"→ {DEST}: {len(FORMATS)} delivered(?!,)", stderr):
        raise CommandFailed(f"{what}: not {len(FORMATS)} files delivered:\n{stderr[-3000:]}")


# -- the floor -----------------------------------------------------------------------------------


@dataclass
class Floor:
    psql: Path
    pg: Any
    db: str
    sshd: Any
    remote_dir: Path
    files: list[Path]
    work: Path

    def commands(self, run: int) -> list[list[str]]:
        extract = self.work / "extract.csv"
        copy = f"\\copy ({QUERY}) TO '{extract}' WITH (FORMAT csv, HEADER)"
        psql = [
            str(self.psql),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.pg.host,
            "-p",
            str(self.pg.port),
            "-U",
            "postgres",
            "-d",
            self.db,
            "-c",
            copy,
        ]
        batch = self.work / f"batch-{run}"
        lines = []
        for local in self.files:
            final = f"{self.remote_dir}/floor{run}-{local.name}"
            temp = f"{self.remote_dir}/.floor{run}-{local.name}.part"
            lines += [f'put "{local}" "{temp}"', f'rename "{temp}" "{final}"']
        batch.write_text("\n".join(lines) + "\n", encoding="utf-8")
        sftp = [
            "sftp",
            "-q",
            "-b",
            str(batch),
            "-F",
            "/dev/null",
            "-i",
            str(self.sshd.ed25519),
            "-P",
            str(self.sshd.port),
            "-o",
            f"UserKnownHostsFile={self.sshd.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            f"{self.sshd.user}@{self.sshd.host}",
        ]
        return [psql, sftp]


# -- the daemon-like process (hidden sub-command `_cycles`) ------------------------------------


def _status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


# Steps of a cycle, timed in-process by `--phases` (inclusive times; a missing name is skipped,
# so that the benchmark survives renames in src/). (label, module, attribute path)
PHASES: tuple[tuple[str, str, str], ...] = (
    ("cycle total (Cycle.run)", "rorfeed.cycle", "Cycle.run"),
    ("  mapping: parse_mapping_text", "rorfeed.cycle", "parse_mapping_text"),
    ("  state: sync_mapping (and feed states)", "rorfeed.state", "Store.sync_mapping"),
    ("  state: units() (all calls)", "rorfeed.state", "Store.units"),
    ("  source: SqlSource.fetch", "rorfeed.sources.sql.query", "SqlSource.fetch"),
    ("  rules: Cycle._judge", "rorfeed.cycle", "Cycle._judge"),
    ("  state: record_verdicts", "rorfeed.state", "Store.record_verdicts"),
    ("  rules: Cycle._apply_decisions", "rorfeed.cycle", "Cycle._apply_decisions"),
    ("  state: add_snapshot_once", "rorfeed.state", "Store.add_snapshot_once"),
    ("  pivot: prepare (sort, dates as text)", "rorfeed.pivot", "prepare"),
    ("  pivot xml: render", "rorfeed.pivot.xml", "write"),
    ("  pivot xml: validate (XSD)", "rorfeed.pivot.xml", "validate"),
    ("  pivot json: render", "rorfeed.pivot.json", "write"),
    ("  pivot json: validate", "rorfeed.pivot.json", "validate"),
    ("  pivot csv: render", "rorfeed.pivot.csv", "write"),
    ("  pivot csv: validate", "rorfeed.pivot.csv", "validate"),
    ("    of which JSON Schema check (json, csv lots)", "rorfeed.pivot.json", "fast_accepts"),
    ("  outbox: stage (fsync, ledger row)", "rorfeed.outbox", "Outbox.stage"),
    ("  state: add_file", "rorfeed.state", "Store.add_file"),
    ("  delivery: Outbox.deliver", "rorfeed.outbox", "Outbox.deliver"),
    ("    sftp: connect + auth (open)", "rorfeed.transports.sftp.client", "SftpTransport.open"),
    ("    sftp: upload + size check", "rorfeed.transports.sftp.client", "SftpSession.upload"),
    ("    sftp: rename (commit)", "rorfeed.transports.sftp.client", "SftpSession.commit"),
    ("    state: set_file_status", "rorfeed.state", "Store.set_file_status"),
    ("    state: mark_delivered", "rorfeed.state", "Store.mark_delivered"),
    ("    outbox: archive", "rorfeed.outbox", "Outbox.archive"),
    ("  outbox: purge_archive", "rorfeed.outbox", "Outbox.purge_archive"),
    ("  notifications: flush", "rorfeed.control", "Control.flush_notifications"),
    ("  state: record_cycle", "rorfeed.state", "Store.record_cycle"),
)
_phase_totals: dict[str, list[float]] = {}


def _install_phase_timers() -> list[str]:
    """Wrap each step of PHASES with a timer; the labels that could not be wrapped."""
    import functools
    import importlib
    import inspect

    missing = []
    for label, module_name, attr in PHASES:
        try:
            owner: Any = importlib.import_module(module_name)
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            original = getattr(owner, name)
        except (ImportError, AttributeError):
            missing.append(label)
            continue
        totals = _phase_totals.setdefault(label, [0.0, 0, 0])

        def timed(*a: Any, _f: Any = original, _t: list[float] = totals, **k: Any) -> Any:
            # The peak RSS this step pushed up: VmHWM after it minus VmRSS before it, when the
            # step set a new high-water mark (the kernel keeps one peak per process).
            rss_before, hwm_before = _status_kb("VmRSS"), _status_kb("VmHWM")
            started = time.perf_counter()
            try:
                result = _f(*a, **k)
                if inspect.isgenerator(result):  # schema_errors: its work is done when iterated
                    result = iter(list(result))
                return result
            finally:
                _t[0] += time.perf_counter() - started
                _t[1] += 1
                hwm = _status_kb("VmHWM")
                if hwm > hwm_before:
                    _t[2] = max(_t[2], hwm - rss_before)

        setattr(owner, name, functools.wraps(original)(timed))
    return missing


def cycles_child(config_path: Path) -> int:
    """Serve `cycle` / `idle` / `quit` lines on stdin with one JSON line each on stdout."""
    import importlib
    import resource

    from rorfeed import logging as rlog
    from rorfeed.cli import format_summary
    from rorfeed.config import load
    from rorfeed.cycle import Cycle, utc_now
    from rorfeed.state import open_store

    extra = []
    for name in DAEMON_EXTRA_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
            extra.append(name)
    rlog.configure()
    config = load(config_path)
    store = open_store(config.state_url)
    out: TextIO = sys.stdout
    last = 0.0
    # What the daemon does before its first cycle and after each (rorfeed.heap), when this
    # version of rorfeed has it.
    try:
        from rorfeed.heap import settle
    except ImportError:

        def settle() -> None:
            gc.collect()

    settle()
    out.write(json.dumps({"ready": True, "extra_imports": extra}) + "\n")
    out.flush()
    for line in sys.stdin:
        command = line.strip()
        if command == "cycle":
            wait_for_new_second(last)
            now = utc_now().replace(microsecond=0)
            started = time.perf_counter()
            report = Cycle(config, store).run(now)
            seconds = time.perf_counter() - started
            last = time.time()
            settle()
            delivered = sum(len(d.delivered) for d in report.deliveries)
            answer = {
                "seconds": seconds,
                "delivered": delivered,
                "outcome": report.outcome,
                "summary": format_summary(report),
                "rss_kb": _status_kb("VmRSS"),
                "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        elif command == "phases":
            missing = _install_phase_timers() if not _phase_totals else []
            for totals in _phase_totals.values():
                totals[0], totals[1], totals[2] = 0.0, 0, 0
            rss_start = _status_kb("VmRSS")
            wait_for_new_second(last)
            now = utc_now().replace(microsecond=0)
            report = Cycle(config, store).run(now)
            last = time.time()
            settle()
            answer = {
                "phases": [
                    [label, *_phase_totals[label]] for label, *_ in PHASES if label in _phase_totals
                ],
                "missing": missing,
                "delivered": sum(len(d.delivered) for d in report.deliveries),
                "rss_start_kb": rss_start,
                "hwm_kb": _status_kb("VmHWM"),
            }
        elif command == "idle":
            gc.collect()
            time.sleep(2)
            answer = {
                "rss_kb": _status_kb("VmRSS"),
                "anon_kb": _status_kb("RssAnon"),
                "hwm_kb": _status_kb("VmHWM"),
            }
        elif command == "trim":
            # What glibc keeps of the cycle's freed memory: a daemon could give it back.
            import ctypes

            gc.collect()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            time.sleep(1)
            answer = {"rss_kb": _status_kb("VmRSS"), "anon_kb": _status_kb("RssAnon")}
        elif command == "quit":
            return 0
        else:
            answer = {"error": f"unknown command {command!r}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


class CyclesProcess:
    def __init__(self, config: Path, stderr_path: Path) -> None:
        self._err = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_cycles", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        hello = self._read()
        self.extra_imports: list[str] = hello.get("extra_imports", [])

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait()
            self._err.flush()
            raise CommandFailed(
                f"cycle process died ({self.proc.returncode}):\n"
                + Path(self._err.name).read_text(errors="replace")[-3000:]
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str) -> dict[str, Any]:
        if self.proc.stdin is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        return self._read()

    def cycle(self) -> dict[str, Any]:
        answer = self.ask("cycle")
        if answer.get("delivered") != len(FORMATS):
            raise CommandFailed(f"in-process cycle did not deliver 3 files:\n{answer}")
        return answer

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            if self.proc.stdin is not None:  # quit has no answer
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


# -- one size ------------------------------------------------------------------------------------


@dataclass
class SizeResult:
    n: int
    runs: int
    floor: list[float] = field(default_factory=list)
    floor_rss: list[int] = field(default_factory=list)
    run_once: list[float] = field(default_factory=list)
    run_once_rss: list[int] = field(default_factory=list)
    run_once_cpu: list[float] = field(default_factory=list)
    cycle: list[float] = field(default_factory=list)
    cycle_maxrss_kb: int = 0
    idle_rss_kb: int = 0
    idle_anon_kb: int = 0
    trimmed_rss_kb: int = 0
    bytes_delivered: int = 0
    extra_imports: list[str] = field(default_factory=list)

    def ratios(self, values: list[float]) -> list[float]:
        return [v / f for v, f in zip(values, self.floor, strict=True)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_size(n: int, runs: int, pg: Any, sshd: Any, base: Path) -> SizeResult:
    result = SizeResult(n, runs)
    root = base / f"n{n}"
    (root / "logs").mkdir(parents=True)
    db = f"bench_{n}"
    log(f"N={n}: filling the bed table and the mapping")
    db_url = fill_beds(pg, db, n)
    write_mapping(root / "mapping.csv", n)
    remote_once, remote_cycle, remote_floor = (
        sshd.remote_dir(),
        sshd.remote_dir(),
        sshd.remote_dir(),
    )
    cfg_once = write_config(root / "run-once", db_url, sshd, remote_once)
    cfg_cycle = write_config(root / "cycle", db_url, sshd, remote_cycle)
    cmd = [*rorfeed_cmd(), "--config", str(cfg_once), "run-once"]
    logs = root / "logs"

    # Warm-up (uncounted): creates the state store and its N units, fills the caches.
    started = time.perf_counter()
    _m, errs = measure([cmd], logs, "warmup-run-once")
    check_delivered(errs[0], "warm-up run-once")
    last_once = time.time()
    log(
        f"N={n}: warm-up run-once (first run: creates the state)"
        f" {time.perf_counter() - started:.1f} s"
    )
    files = sorted(remote_once.iterdir())
    if len(files) != len(FORMATS):
        raise CommandFailed(f"warm-up delivered {[f.name for f in files]}")
    # The floor sends exactly these bytes: copies, since the remote folder is cleaned.
    floor_files = root / "floor-files"
    floor_files.mkdir()
    for f in files:
        shutil.copy2(f, floor_files / f.name)
    result.bytes_delivered = sum(f.stat().st_size for f in files)
    floor_work = root / "floor"
    floor_work.mkdir()
    floor = Floor(
        pg.bin_dir / "psql", pg, db, sshd, remote_floor, sorted(floor_files.iterdir()), floor_work
    )
    measure(floor.commands(-1), logs, "warmup-floor")
    started = time.perf_counter()
    daemon = CyclesProcess(cfg_cycle, logs / "cycles.err")
    result.extra_imports = daemon.extra_imports
    try:
        daemon.cycle()  # warm-up: first cycle of a fresh state
        log(f"N={n}: warm-up in-process cycle {time.perf_counter() - started:.1f} s")
        clean = ((root / "run-once", root / "cycle"), (remote_once, remote_cycle, remote_floor))
        clean_delivered(*clean)

        for run in range(runs):
            m, _ = measure(floor.commands(run), logs, f"floor-{run}")
            result.floor.append(m.wall)
            result.floor_rss.append(m.maxrss_kb)

            wait_for_new_second(last_once)
            m, errs = measure([cmd], logs, f"run-once-{run}")
            last_once = time.time()
            check_delivered(errs[0], f"run-once {run}")
            result.run_once.append(m.wall)
            result.run_once_rss.append(m.maxrss_kb)
            result.run_once_cpu.append(m.cpu)

            answer = daemon.cycle()
            result.cycle.append(answer["seconds"])
            result.cycle_maxrss_kb = max(result.cycle_maxrss_kb, answer["maxrss_kb"])

            clean_delivered(*clean)
            log(
                f"N={n} round {run + 1}/{runs}: floor {result.floor[-1]:.3f} s,"
                f" run-once {result.run_once[-1]:.3f} s, cycle {result.cycle[-1]:.3f} s"
            )
        idle = daemon.ask("idle")
        result.idle_rss_kb, result.idle_anon_kb = idle["rss_kb"], idle["anon_kb"]
        with contextlib.suppress(OSError, KeyError, CommandFailed):
            result.trimmed_rss_kb = daemon.ask("trim")["rss_kb"]
    finally:
        daemon.close()
    return result


# -- whole-process figures that do not depend on N -----------------------------------------------


def help_time(runs: int, out_dir: Path) -> tuple[float, float]:
    cmd = [*rorfeed_cmd(), "--help"]
    bare = [sys.executable, "-c", "pass"]
    measure([cmd], out_dir, "help-warmup")
    helps, bares = [], []
    for i in range(runs):
        helps.append(measure([cmd], out_dir, f"help-{i}")[0].wall)
        bares.append(measure([bare], out_dir, f"python-{i}")[0].wall)
    return median(helps), median(bares)


def daemon_cmd() -> list[str]:
    """How to start the daemon: `rorfeed --config {config} serve`, as systemd does."""
    return [*rorfeed_cmd(), "--config", "{config}", "serve"]


def _events(path: Path, name: str) -> int:
    """How many log lines of event `name` the daemon wrote (JSON lines on stderr)."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return len(re.findall(rf'"event":\s*"{name}"', text))


def serve_idle_rss(n: int, pg: Any, sshd: Any, base: Path) -> tuple[str, int, int, int] | None:
    """The real daemon's RSS idle after one cycle: (what, RSS kB, peak RSS kB, anonymous kB).

    The daemon runs on a copy of the N-unit site whose state already has cycles, with an
    every-minute schedule: it catches the missed fire time up at once, then idles until the
    next minute; the RSS is read 3 s after that cycle's end.
    """
    template = daemon_cmd()
    root = base / f"serve-n{n}"
    (root / "site").mkdir(parents=True)
    src_site = base / f"n{n}" / "run-once"
    shutil.copytree(src_site / "work", root / "site" / "work")
    shutil.copy2(base / f"n{n}" / "mapping.csv", root / "mapping.csv")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = write_config(
        root / "site",
        pg.url(f"bench_{n}"),
        sshd,
        sshd.remote_dir(),
        metrics_listen=f"127.0.0.1:{port}",
        schedule="* * * * *",
    )
    cmd = [part.replace("{config}", str(cfg)) for part in template]
    err_path = root / "serve.err"
    with err_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            deadline = time.monotonic() + 240
            while _events(err_path, "cycle_end") < 1:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log(f"daemon: no cycle seen (exit {proc.poll()}); see {err_path}")
                    return None
                time.sleep(0.2)
            time.sleep(3)
            status = Path(f"/proc/{proc.pid}/status").read_text()
            kb = {
                key: int(value)
                for key, value in re.findall(r"^(VmRSS|VmHWM|RssAnon):\s+(\d+)", status, re.M)
            }
            what = f"rorfeed serve, {n:,} units, 3 s after its first cycle"
            return what, kb["VmRSS"], kb["VmHWM"], kb["RssAnon"]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _pg_bin() -> Path:
    from tests.pg import locate_pg_bin

    return locate_pg_bin()


def machine() -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        mem = f"{kb / 1024 / 1024:.1f} GiB"

    def version(cmd: list[str]) -> str:
        with contextlib.suppress(OSError):
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        return "?"

    import paramiko
    import sqlalchemy

    return [
        f"CPU: {cpu}, {os.cpu_count()} logical CPUs, RAM {mem}",
        f"OS: {platform.system()} {platform.release()}",
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__},"
        f" paramiko {paramiko.__version__}",
        f"{version(['ssh', '-V'])}, {version([str(_pg_bin() / 'postgres'), '--version'])}",
    ]


# -- report --------------------------------------------------------------------------------------


def table(results: list[SizeResult]) -> str:
    head = (
        "N",
        "floor s",
        "run-once s (x floor)",
        "cycle in-process s (x floor)",
        "run-once peak RSS MB",
        "in-process peak RSS MB",
        "idle RSS MB (private)",
        "runs",
    )
    rows = []
    for r in results:
        rows.append(
            (
                f"{r.n:,}",
                f"{median(r.floor):.3f}",
                f"{median(r.run_once):.3f} ({median(r.ratios(r.run_once)):.2f}x)",
                f"{median(r.cycle):.3f} ({median(r.ratios(r.cycle)):.2f}x)",
                f"{median(r.run_once_rss) / 1024:.0f}",
                f"{r.cycle_maxrss_kb / 1024:.0f}",
                f"{r.idle_rss_kb / 1024:.0f} ({r.idle_anon_kb / 1024:.0f})",
                str(r.runs),
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def growth(results: list[SizeResult]) -> list[str]:
    out = []
    for a, b in itertools.pairwise(results):
        k = b.n / a.n
        out.append(
            f"{a.n:,} → {b.n:,} units (x{k:g}): floor x{median(b.floor) / median(a.floor):.1f},"
            f" run-once x{median(b.run_once) / median(a.run_once):.1f},"
            f" cycle x{median(b.cycle) / median(a.cycle):.1f},"
            f" run-once peak RSS +{(median(b.run_once_rss) - median(a.run_once_rss)) / 1024:.0f} MB"
        )
    return out


@contextlib.contextmanager
def servers(base: Path) -> Iterator[tuple[Any, Any]]:
    from tests.pg import PgUnavailable, running_pg_server
    from tests.sshd import SshdUnavailable, running_sshd

    try:
        with running_pg_server(announce=log) as pg:
            sshd_base = base / "sshd"
            sshd_base.mkdir()
            with running_sshd(sshd_base) as sshd:
                log(f"sshd ready on 127.0.0.1:{sshd.port}")
                yield pg, sshd
    except (PgUnavailable, SshdUnavailable) as exc:
        raise SystemExit(f"bench: {exc}") from exc


def profile(n: int, out: Path, base: Path) -> None:
    with servers(base) as (pg, sshd):
        root = base / f"profile-n{n}"
        (root / "logs").mkdir(parents=True)
        db_url = fill_beds(pg, f"bench_{n}", n)
        write_mapping(root / "mapping.csv", n)
        remote = sshd.remote_dir()
        cfg = write_config(root / "site", db_url, sshd, remote)
        cmd = [*rorfeed_cmd(), "--config", str(cfg), "run-once"]
        measure([cmd], root / "logs", "warmup")  # creates the state: profile the steady state
        clean_delivered([root / "site"], [remote])
        time.sleep(1.1)
        out.mkdir(parents=True, exist_ok=True)
        for renderer, ext in (("text", "txt"), ("html", "html")):
            target = out / f"run-once-{n}.{ext}"
            prof = [
                sys.executable,
                "-m",
                "pyinstrument",
                "-r",
                renderer,
                "-o",
                str(target),
                "-m",
                "rorfeed.cli",
                "--config",
                str(cfg),
                "run-once",
            ]
            _m, errs = measure([prof], root / "logs", f"profile-{ext}")
            check_delivered(errs[0], "profiled run-once")
            clean_delivered([root / "site"], [remote])
            time.sleep(1.1)
            log(f"profile written to {target}")


IMPORT_PROBE = (
    "import time; t = time.perf_counter(); import rorfeed.cli; a = time.perf_counter() - t;"
    " import rorfeed.cycle, rorfeed.state, rorfeed.sources.sql.query,"
    " rorfeed.transports.sftp.client, rorfeed.pivot, sqlalchemy.dialects.postgresql.psycopg;"
    " print(a, time.perf_counter() - t)"
)


def import_costs(out_dir: Path) -> list[str]:
    """Import time of the CLI alone and of everything a cycle needs, and the heaviest packages."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True
    )
    cli_s, all_s = (float(x) for x in done.stdout.split())
    lines = [f"import rorfeed.cli: {cli_s:.3f} s; + everything a cycle imports: {all_s:.3f} s"]
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", IMPORT_PROBE],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    (out_dir / "importtime.txt").write_text(trace, encoding="utf-8")
    top: dict[str, int] = {}
    for line in trace.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \| \s*(\S+)", line)
        if m:
            pkg = m.group(2).split(".")[0]
            top[pkg] = top.get(pkg, 0) + int(m.group(1))
    heavy = sorted(top.items(), key=lambda kv: -kv[1])[:10]
    lines.append(
        "import time by package (own time of its modules, -X importtime, inflated by it): "
        + ", ".join(f"{k} {v / 1e6:.3f} s" for k, v in heavy)
    )
    return lines


def phases(n: int, base: Path) -> None:
    """Where one cycle's time goes, in a warm process, without a profiler's overhead."""
    with servers(base) as (pg, sshd):
        root = base / f"phases-n{n}"
        (root / "logs").mkdir(parents=True)
        db_url = fill_beds(pg, f"bench_{n}", n)
        write_mapping(root / "mapping.csv", n)
        remote = sshd.remote_dir()
        cfg = write_config(root / "site", db_url, sshd, remote)
        cmd = [*rorfeed_cmd(), "--config", str(cfg), "run-once"]
        log(f"N={n}: warm-up run-once (creates the state)")
        measure([cmd], root / "logs", "warmup")
        clean_delivered([root / "site"], [remote])
        runs = []
        for i in range(3):
            wait_for_new_second(time.time())
            m, errs = measure([cmd], root / "logs", f"run-once-{i}")
            check_delivered(errs[0], "run-once")
            runs.append(m.wall)
            clean_delivered([root / "site"], [remote])
        daemon = CyclesProcess(cfg, root / "logs" / "cycles.err")
        try:
            # The first cycle of a process (what run-once pays, imports apart), then a warm one.
            cold = daemon.ask("phases")
            clean_delivered([root / "site"], [remote])
            warm = daemon.ask("phases")
        finally:
            daemon.close()
    for answer in (cold, warm):
        if answer.get("delivered") != len(FORMATS):
            raise CommandFailed(f"phases: the cycle did not deliver 3 files: {answer}")
    first = {label: (sec, calls) for label, sec, calls, _grow in cold["phases"]}
    total = {
        "cold": cold["phases"][0][1] if cold["phases"] else float("nan"),
        "warm": warm["phases"][0][1] if warm["phases"] else float("nan"),
    }
    print(f"\nOne cycle at N={n:,} in-process, inclusive times and share of the cycle;")
    print("first = the first cycle of a fresh process (as in run-once, imports apart),")
    print("warm = the next cycle in the same process (as in the daemon).")
    print("peak+ MB = how far above the RSS at its start a step pushed the process's peak RSS")
    print("(first cycle; blank when the step did not raise the peak).")
    head = f"{'step':<40} {'first s':>8} {'share':>6} {'warm s':>8} {'share':>6} calls"
    print(f"  {head} {'peak+ MB':>8}")
    grows = {label: grow for label, _s, _c, grow in cold["phases"]}
    for label, seconds, calls, _grow in warm["phases"]:
        cold_s = first.get(label, (float("nan"), 0))[0]
        grow = grows.get(label, 0)
        print(
            f"  {label:<40} {cold_s:8.3f} {cold_s / total['cold']:6.1%}"
            f" {seconds:8.3f} {seconds / total['warm']:6.1%} {calls:5}"
            f" {f'{grow / 1024:8.0f}' if grow else '':>8}"
        )
    print(
        f"  RSS at the first cycle's start {cold['rss_start_kb'] / 1024:.0f} MB,"
        f" peak {cold['hwm_kb'] / 1024:.0f} MB"
    )
    if cold["missing"]:
        print(f"  (not found in src/, not timed: {', '.join(cold['missing'])})")
    print(
        f"run-once at N={n:,}, whole process, median of 3: {median(runs):.3f} s"
        f" (first cycle in-process {total['cold']:.3f} s, warm {total['warm']:.3f} s)"
    )
    for line in import_costs(root):
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["_cycles"]:
        return cycles_child(Path(args_list[1]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="100,1000,10000,100000",
        help="units per run, comma-separated (default: %(default)s)",
    )
    parser.add_argument("--runs", type=int, default=5, help="counted runs per size (default 5)")
    parser.add_argument(
        "--runs-large",
        type=int,
        default=None,
        help="counted runs for sizes ≥ 100,000 (default: --runs)",
    )
    parser.add_argument(
        "--daemon-n",
        type=int,
        default=1000,
        help="units of the site the real daemon runs for its idle RSS (default %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, sites)")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="N",
        help="only profile one run-once at N units with pyinstrument",
    )
    parser.add_argument(
        "--phases",
        type=int,
        metavar="N",
        help="only time each step of one cycle at N units, in-process",
    )
    parser.add_argument(
        "--profile-out",
        type=Path,
        default=Path("bench-profile"),
        help="folder for --profile output (default: %(default)s)",
    )
    args = parser.parse_args(args_list)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]

    base = Path(tempfile.mkdtemp(prefix="rorfeed-bench-"))
    try:
        if args.profile:
            profile(args.profile, args.profile_out.resolve(), base)
            return 0
        if args.phases:
            phases(args.phases, base)
            return 0
        results: list[SizeResult] = []
        serve: tuple[str, int, int, int] | None = None
        with servers(base) as (pg, sshd):
            for n in sizes:
                runs = args.runs if n < 100_000 or args.runs_large is None else args.runs_large
                results.append(bench_size(n, runs, pg, sshd, base))
            daemon_n = args.daemon_n if args.daemon_n in sizes else min(sizes)
            serve = serve_idle_rss(daemon_n, pg, sshd, base)
        help_s, python_s = help_time(max(args.runs, 5), base)
        print()
        print(table(results))
        print()
        print(
            "floor = psql \\copy of the query to CSV + one sftp -b batch putting the three files"
            " rorfeed produced (temporary name, then rename)."
        )
        print(
            "run-once = whole process; cycle in-process = Cycle(config, store).run() in a warm"
            " process; x floor = median of the per-round ratios; RSS = ru_maxrss / VmRSS."
        )
        for r in results:
            trimmed = (
                f"; idle RSS after malloc_trim(0): {r.trimmed_rss_kb / 1024:.0f} MB"
                if r.trimmed_rss_kb
                else ""
            )
            print(
                f"  N={r.n:,}: {r.bytes_delivered / 1e6:.2f} MB delivered per cycle (3 files);"
                f" run-once CPU {median(r.run_once_cpu):.2f} s{trimmed}"
            )
        for line in growth(results):
            print(f"  {line}")
        extra = results[0].extra_imports if results else []
        print(
            f"idle RSS: the in-process cycle's process after its cycles, gc.collect() and 2 s"
            f" (imports the cycle's modules{', ' + ', '.join(extra) if extra else ''})"
        )
        if serve:
            print(
                f"daemon idle RSS ({serve[0]}): {serve[1] / 1024:.0f} MB, of which"
                f" {serve[3] / 1024:.0f} MB private (RssAnon; the rest is shared library pages);"
                f" its peak so far {serve[2] / 1024:.0f} MB"
            )
        else:
            print("daemon: not measured (no cycle seen; see the log above)")
        print(f"rorfeed --help: {help_s:.3f} s wall (python -c pass: {python_s:.3f} s)")
        print("machine: " + "; ".join(machine()))
        if args.json:
            doc = {
                "machine": machine(),
                "help_seconds": help_s,
                "python_startup_seconds": python_s,
                "daemon_idle_rss_kb": serve[1] if serve else None,
                "daemon_peak_rss_kb": serve[2] if serve else None,
                "sizes": [r.__dict__ for r in results],
            }
            args.json.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        return 0
    finally:
        if args.keep:
            log(f"work folder kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
