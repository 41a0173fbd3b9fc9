"""The figures of a fault-injection run: one table (fault, runs, invariant violations).

`python -m tests.faults.figures REPORT` reads the JSON lines that `pytest --faults-report
REPORT` wrote (one per run of a case) and prints the table in Markdown, with the machine it
ran on; `scripts/faults-long` runs the long counts and calls it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# The order of the table; a fault not listed here comes after, by name.
ORDER = (
    "SIGKILL of run-once at a random instant",
    "SIGKILL of run-once right after a remote rename",
    "SIGKILL of serve mid-cycle, restarted",
    "SIGKILL while the state store commits (SQLite)",
    "server accepts TCP then says nothing",
    "connection cut mid-upload, loud (RST) and silent",
    "packet loss and a slow link",
    "PostgreSQL source down before and during the query",
    "PostgreSQL state store down mid-cycle (or between cycles)",
    "disk full in the work folder",
    "clock jumps ±2 h between cycles",
    "SIGTERM of serve during a delivery",
    "SIGHUP of serve with an invalid configuration",
)


def _version(cmd: list[str], pattern: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    m = re.search(pattern, done.stdout + done.stderr)
    return m.group(0) if m else "?"


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        kb = int(Path("/proc/meminfo").read_text(encoding="utf-8").split()[1])
        memory = f"{kb / 1024 / 1024:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        memory = "? RAM"
    pg = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    postgres = _version([str(pg[-1]), "--version"], r"\d+\.\d+") if pg else "?"
    ssh = _version(["ssh", "-V"], r"OpenSSH_[\w.]+")
    return (
        f"{os.cpu_count()} x {cpu}, {memory}; {platform.system()} {platform.release()}"
        f" ({platform.freedesktop_os_release().get('PRETTY_NAME', '?')}); Python"
        f" {platform.python_version()}, {ssh}, PostgreSQL {postgres}"
    )


def table(lines: list[dict[str, object]]) -> str:
    runs: dict[str, int] = defaultdict(int)
    violations: dict[str, int] = defaultdict(int)
    seconds: dict[str, float] = defaultdict(float)
    for line in lines:
        fault = str(line["fault"])
        runs[fault] += int(str(line.get("runs", 1)))
        violations[fault] += int(str(line.get("violations", 0)))
        seconds[fault] += float(str(line.get("seconds", 0.0)))
    faults = sorted(runs, key=lambda f: (ORDER.index(f) if f in ORDER else len(ORDER), f))
    out = [
        "| fault | runs | invariant violations | time (s) |",
        "|---|---:|---:|---:|",
    ]
    out += [f"| {f} | {runs[f]} | {violations[f]} | {seconds[f]:.0f} |" for f in faults]
    out.append(
        f"| **all** | **{sum(runs.values())}** | **{sum(violations.values())}**"
        f" | **{sum(seconds.values()):.0f}** |"
    )
    return "\n".join(out)


def main(argv: list[str]) -> int:
    path = Path(argv[1])
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    print(table(lines))
    print()
    print(f"Machine: {machine()}.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
