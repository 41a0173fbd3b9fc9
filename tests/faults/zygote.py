"""A fork server for the fault-injection suite: `rorfeed` processes without the start-up cost.

Started once per test worker (`python -m tests.faults.zygote`), it imports rorfeed and every
library a cycle and the daemon load, then waits for commands on stdin, one JSON object per
line. For each, it forks a child that runs the real entry point — `rorfeed.cli.main(argv)`,
as the `rorfeed` console script does (`serve` appended after the options) — with its
stdout and stderr in files, and answers `{"id": ..., "pid": ...}`. When a child ends it
answers `{"exit": pid, "code": ...}` (negative: killed by that signal, as `subprocess` says).

The zygote is single-threaded, so forking it is safe; the child is a fresh `rorfeed` process
in all but the interpreter's start (some 1.5 s of imports, paid once). A test kills a child
with `os.kill(pid, SIGKILL)` like any process.

`hooks` plant a fault inside the child, without any hook in the product:
- `kill_after_rename: N`: SIGKILL right after the N-th remote rename (SFTP commit) returns;
- `kill_in_commit: [N, delay]`: at the N-th state-store commit, SIGKILL `delay` seconds
  later from another thread — before, during or just after the COMMIT itself;
- `count_commits: PATH`: write how many state-store commits the run made to PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import sys
import threading
import time
import traceback
from typing import Any


def _preload() -> None:
    """Import what a cycle and the daemon import lazily, once, before any fork."""
    import apscheduler.schedulers.background  # type: ignore[import-untyped]
    import apscheduler.triggers.cron  # type: ignore[import-untyped]
    import paramiko
    import prometheus_client
    import psycopg
    import sqlalchemy.dialects.postgresql.psycopg
    import sqlalchemy.dialects.sqlite

    import rorfeed.check
    import rorfeed.cli
    import rorfeed.cycle
    import rorfeed.daemon
    import rorfeed.metrics
    import rorfeed.pivot
    import rorfeed.sources.csv_file
    import rorfeed.sources.sql.query
    import rorfeed.transports.directory
    import rorfeed.transports.sftp.client

    del apscheduler, paramiko, prometheus_client, psycopg, sqlalchemy, rorfeed


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_hooks(hooks: dict[str, Any]) -> None:
    if "kill_after_rename" in hooks:
        from rorfeed.transports.sftp.client import SftpSession

        nth = int(hooks["kill_after_rename"])
        real_commit = SftpSession.commit
        renames = [0]

        def commit(self: SftpSession, temp_name: str, name: str) -> None:
            real_commit(self, temp_name, name)
            renames[0] += 1
            if renames[0] == nth:
                _kill_self()

        SftpSession.commit = commit  # type: ignore[method-assign]

    if "kill_in_commit" in hooks or "count_commits" in hooks:
        from sqlalchemy import event
        from sqlalchemy.engine import Connection, Engine

        commits = [0]
        nth, delay = hooks.get("kill_in_commit", (0, 0.0))

        def on_commit(_conn: Connection) -> None:
            commits[0] += 1
            if commits[0] == nth:
                if delay <= 0:
                    _kill_self()
                timer = threading.Timer(delay, _kill_self)
                timer.daemon = True
                timer.start()

        event.listen(Engine, "commit", on_commit)
        if "count_commits" in hooks:
            path = str(hooks["count_commits"])
            _EXIT_HOOKS.append(lambda: _write(path, str(commits[0])))


_EXIT_HOOKS: list[Any] = []


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def _child(cmd: dict[str, Any]) -> None:
    code: int = 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.setpgid(0, 0)  # its own process group: a test can end it and its children at once
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, key in ((1, "stdout"), (2, "stderr")):
            target = os.open(cmd[key], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(target, fd)
            os.close(target)
        os.close(null)
        os.chdir(cmd["cwd"])
        os.environ.update(cmd.get("env", {}))
        random.seed()
        _install_hooks(cmd.get("hooks", {}))
        argv = list(cmd["argv"])
        if cmd["entry"] == "serve":
            argv.append("serve")  # after the global options, as `rorfeed --config X serve`
        from rorfeed.cli import main as cli_main

        sys.argv = ["rorfeed", *argv]
        code = cli_main(argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - an uncaught exception: what the console script shows
        traceback.print_exc()
        code = 1
    finally:
        for hook in _EXIT_HOOKS:
            with contextlib.suppress(Exception):
                hook()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def main() -> None:
    _preload()
    out = sys.stdout
    buffer = b""
    open_stdin = True
    children: set[int] = set()

    def say(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    say({"ready": os.getpid()})
    while open_stdin or children:
        readable, _, _ = select.select([0] if open_stdin else [], [], [], 0.02)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            children.discard(pid)
            say({"exit": pid, "code": _status(status)})
        if not readable:
            if not open_stdin:
                time.sleep(0.02)
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            open_stdin = False  # the test process is gone: let the children finish
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            continue
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            cmd = json.loads(line)
            out.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(cmd)
            children.add(pid)
            say({"id": cmd["id"], "pid": pid})


if __name__ == "__main__":
    main()
