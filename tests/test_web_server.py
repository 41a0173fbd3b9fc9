"""The web page's server under hostile clients (SPEC §10.3, "Requests are bounded").

Each test runs `rorfeed web` as its own process on loopback and talks raw HTTP/1.1 to it over
sockets, as an attacker would: a header line far over 16 KiB, a body over 4 MiB, twenty
clients that trickle their headers (and one its body), a slow client over TLS. Every wait has a
deadline; the figures they measure are in the assertion messages.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from rorfeed.web.server import (
    BODY_BYTES,
    BODY_SECONDS,
    GRACE_SECONDS,
    HEADER_BYTES,
    HEADER_SECONDS,
)
from tests.sites import directory_destination, mapping_csv, site_toml, write_export, write_site
from tests.smtp import TlsFiles, free_port, self_signed

HOST = "127.0.0.1"
MIB = 1024 * 1024


@dataclass
class Web:
    """A `rorfeed web` process listening on HOST:port."""

    proc: subprocess.Popen[str]
    port: int
    tls: TlsFiles | None = None

    def rss_kib(self) -> int:
        """The process's resident memory (VmRSS), in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def connect(self, timeout: float = 5) -> socket.socket:
        return socket.create_connection((HOST, self.port), timeout=timeout)

    def get_login_page(self, timeout: float = 5) -> float:
        """GET /connexion as a browser would; the seconds it took."""
        start = time.monotonic()
        url, handlers = f"http://{HOST}:{self.port}/connexion", []
        if self.tls is not None:
            url = f"https://{HOST}:{self.port}/connexion"
            handlers.append(urllib.request.HTTPSHandler(context=self.tls.client_context()))
        with urllib.request.build_opener(*handlers).open(url, timeout=timeout) as response:
            assert response.status == 200
            assert "Connexion" in response.read().decode()
        return time.monotonic() - start


@contextmanager
def _serving(folder: Path, tls: TlsFiles | None = None) -> Iterator[Web]:
    """`rorfeed web` on a site in `folder` (HTTPS with `tls`), listening; stopped by SIGTERM
    afterwards, which must end it with status 0."""
    port = free_port()
    web = f'\n[web]\nlisten = "{HOST}:{port}"\n'
    if tls is not None:
        web += f'tls_cert = "{tls.cert}"\ntls_key = "{tls.key}"\n'
    toml = site_toml(destinations=directory_destination("depot"), extra=web)
    config = write_site(folder, toml, mapping_csv([("MED", "52/200", "Médecine")]), [])
    write_export(folder, [("MED", 10, 0, 4)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "rorfeed", "--config", str(config), "web"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    server = Web(proc, port, tls)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                server.get_login_page(timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "rorfeed web did not start listening"
                time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    with _serving(tmp_path) as server:
        yield server


def _status_line(sock: socket.socket, timeout: float) -> bytes:
    """The first line the server answered, b"" when it closed (or reset) without answering."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        pass
    return data.split(b"\r\n", 1)[0]


def _answered_or_closed(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def test_a_header_line_over_16_kib_is_refused_and_the_process_does_not_grow(web: Web) -> None:
    assert HEADER_BYTES == 16 * 1024
    web.get_login_page()  # the first request's imports and caches are in the baseline
    before = web.rss_kib()
    sent = 0
    chunk = b"a" * MIB
    start = time.monotonic()
    with web.connect() as sock:
        sock.sendall(b"GET /connexion HTTP/1.1\r\nHost: rorfeed\r\nX-Flood: ")
        try:
            # Up to 64 MiB of one header line, for at most 20 s; stop as soon as the server
            # answers or hangs up.
            while sent < 64 * MIB and time.monotonic() - start < 20:
                if _answered_or_closed(sock):
                    break
                sock.sendall(chunk)
                sent += len(chunk)
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            pass
        status = _status_line(sock, timeout=5)
    after = web.rss_kib()
    figures = f"sent {sent // MIB} MiB in {time.monotonic() - start:.1f} s, answer {status!r}, "
    figures += f"RSS {before // 1024} -> {after // 1024} MiB"
    # Refused early: a 4xx answer (431), or the connection closed, long before the 64 MiB were
    # sent (what was sent is mostly in the kernel's socket buffers, a few MiB on loopback).
    assert status.startswith(b"HTTP/1.1 4") or not status, figures
    assert sent < 16 * MIB, figures
    assert after - before < 30 * 1024, figures
    web.get_login_page()  # and the page still answers


def test_a_body_over_4_mib_is_refused(web: Web) -> None:
    assert BODY_BYTES == 4 * MIB
    head = "POST /connexion HTTP/1.1\r\nHost: rorfeed\r\nContent-Type: application/octet-stream\r\n"
    # Declared too long: refused on the headers alone, before any of the body is read.
    with web.connect() as sock:
        sock.sendall(f"{head}Content-Length: {BODY_BYTES + 1}\r\n\r\n".encode())
        assert _status_line(sock, timeout=5).startswith(b"HTTP/1.1 413")
    # Sent in chunks without a length: refused once past 4 MiB.
    with web.connect() as sock:
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        sent = 0
        chunk = b"%x\r\n%s\r\n" % (MIB, b"b" * MIB)
        try:
            while sent < 16 * MIB and not _answered_or_closed(sock):
                sock.sendall(chunk)
                sent += MIB
        except (ConnectionResetError, BrokenPipeError):
            pass
        status = _status_line(sock, timeout=5)
        # (The kernel's socket buffers take a few MiB more before the client sees the answer.)
        assert status.startswith(b"HTTP/1.1 413") and sent < 16 * MIB, (status, sent)
    web.get_login_page()


class _SlowClients:
    """`count` connections, each sending one more header line every `every` seconds."""

    def __init__(self, web: Web, count: int, every: float) -> None:
        self.every = every
        self.start = time.monotonic()
        self.socks = [web.connect() for _ in range(count)]
        self.cut_after: dict[int, float] = {}
        self.stop = threading.Event()
        for sock in self.socks:
            sock.sendall(b"GET /connexion HTTP/1.1\r\nHost: rorfeed\r\n")
            sock.setblocking(False)
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        line = 0
        while not self.stop.wait(self.every) and len(self.cut_after) < len(self.socks):
            line += 1
            for i, sock in enumerate(self.socks):
                if i in self.cut_after:
                    continue
                try:
                    if _answered_or_closed(sock):
                        raise ConnectionResetError
                    sock.send(b"X-Slow-%d: %d\r\n" % (line, i))
                except OSError:
                    self.cut_after[i] = time.monotonic() - self.start

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in self.socks:
            sock.close()


def test_twenty_slow_clients_neither_block_the_page_nor_stay_past_the_deadline(web: Web) -> None:
    assert HEADER_SECONDS + BODY_SECONDS <= 15
    slow = _SlowClients(web, count=20, every=1)
    # One more that sends its headers at once, then its body a byte a second.
    with web.connect() as trickler:
        trickler.sendall(
            b"POST /connexion HTTP/1.1\r\nHost: rorfeed\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
        )
        body_start = time.monotonic()
        try:
            time.sleep(2)  # every slow client is connected and has sent two lines by now
            elapsed = web.get_login_page(timeout=10)
            assert elapsed < 2, f"the login page took {elapsed:.2f} s with 20 slow clients"
            body_status = b""
            while time.monotonic() - body_start < HEADER_SECONDS + BODY_SECONDS + 5:
                if _answered_or_closed(trickler):
                    body_status = _status_line(trickler, timeout=5)
                    break
                trickler.sendall(b"x")
                time.sleep(1)
            body_cut = time.monotonic() - body_start
            deadline = time.monotonic() + HEADER_SECONDS + 5
            while len(slow.cut_after) < 20 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            slow.close()
    cuts = sorted(slow.cut_after.values())
    figures = f"login page in {elapsed * 1000:.0f} ms; {len(cuts)} slow headers cut after "
    figures += f"{cuts[0] if cuts else 0:.1f}-{cuts[-1] if cuts else 0:.1f} s; "
    figures += f"slow body cut after {body_cut:.1f} s ({body_status!r})"
    assert len(cuts) == 20, figures
    # Each header trickler is cut once the headers' deadline passes (plus one `every`: the
    # client notices at its next line), none of them before.
    assert cuts[0] >= HEADER_SECONDS - 0.5 and cuts[-1] <= HEADER_SECONDS + 2.5, figures
    # The body trickler gets 408 once the body's deadline passes.
    assert body_status.startswith(b"HTTP/1.1 408"), figures
    assert BODY_SECONDS - 0.5 <= body_cut <= BODY_SECONDS + 2.5, figures
    web.get_login_page()


def test_over_tls_a_slow_client_is_cut_and_sigterm_still_stops_at_once(tmp_path: Path) -> None:
    tls = self_signed(tmp_path)
    (tmp_path / "site").mkdir()
    with _serving(tmp_path / "site", tls) as web:
        start = time.monotonic()
        slow = tls.client_context().wrap_socket(web.connect(), server_hostname=HOST)
        slow.sendall(b"GET /connexion HTTP/1.1\r\nHost: rorfeed\r\n")
        elapsed = web.get_login_page()
        assert elapsed < 2, f"the login page took {elapsed:.2f} s with a slow client"
        slow.settimeout(HEADER_SECONDS + 5)
        assert slow.recv(4096) == b""
        cut = time.monotonic() - start
        # The cut client does not close its side (nor answer the server's TLS close): SIGTERM
        # must not wait for it.
        stop = time.monotonic()
        web.proc.terminate()
        web.proc.wait(timeout=20)
        stopped = time.monotonic() - stop
        slow.close()
    figures = f"login page in {elapsed * 1000:.0f} ms, slow client cut after {cut:.1f} s, "
    figures += f"stopped {stopped:.1f} s after SIGTERM"
    assert HEADER_SECONDS - 0.5 <= cut <= HEADER_SECONDS + 2, figures
    assert stopped < GRACE_SECONDS + 4, figures
