"""A misbehaving network on loopback: a TCP relay between rorfeed and the test sshd.

There is no `netem` in the CI kernel, so the network faults are made by a relay of our own: it
forwards (optionally throttled, or with the pauses a lossy link causes), refuses, accepts and
says nothing, or cuts the connections it carries — loudly (RST), cleanly (FIN), or silently
(it stops forwarding, as a link that drops every packet).
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

CutKind = Literal["fin", "rst", "silent"]


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket | None
    stalled: threading.Event = field(default_factory=threading.Event)
    reset: bool = False  # cut with a TCP reset: the pumps must not close it cleanly


class Relay:
    """A loopback TCP relay to `target_port`.

    `mode`: "forward" (the default), "drop" (accept, then close at once) or "mute" (accept and
    say nothing, ever). While forwarding, `rate` throttles client → server (bytes per second),
    and `loss` is the chance that a chunk waits `loss_pause` seconds first, either way — the
    retransmission timeouts of a link that loses packets. New connections are made with the
    mode and knobs of the moment; `cut()` acts on the ones already made.
    """

    def __init__(self, target_port: int, *, seed: int = 0) -> None:
        self.target = ("127.0.0.1", target_port)
        self.mode: Literal["forward", "drop", "mute"] = "forward"
        self.rate: float | None = None  # bytes per second, client → server, when set
        self.loss = 0.0
        self.loss_pause: tuple[float, float] = (0.2, 0.6)
        self.chunk = 8192
        self.forwarded = 0  # bytes client → server so far
        # (n, how): cut every connection once n bytes have gone client → server in all.
        self.cut_at: tuple[int, CutKind] | None = None
        self.cuts = 0  # cuts made by `cut_at`
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.pairs: list[_Pair] = []
        self.lock = threading.Lock()
        self.random = random.Random(seed)  # noqa: S311 - a reproducible fault schedule
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    # Kept for the callers that look at the raw sockets.
    @property
    def connections(self) -> list[socket.socket]:
        with self.lock:
            return [s for p in self.pairs for s in (p.client, p.upstream) if s is not None]

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            if self.mode == "drop":
                conn.close()
                continue
            pair = _Pair(conn, None)
            with self.lock:
                self.pairs.append(pair)
            if self.mode == "mute":
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            pair.upstream = upstream
            for src, dst, outbound in ((conn, upstream, True), (upstream, conn, False)):
                pump = threading.Thread(
                    target=self._pump, args=(pair, src, dst, outbound), daemon=True
                )
                pump.start()
                self.threads.append(pump)

    def _pause(self, seconds: float) -> None:
        self.stopping.wait(seconds)

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while data := src.recv(self.chunk):
                if self.loss and self.random.random() < self.loss:
                    self._pause(self.random.uniform(*self.loss_pause))
                if pair.stalled.is_set():
                    # The link dropped everything from now on: nothing goes through, nothing is
                    # answered; the sockets stay open until the relay closes.
                    self.stopping.wait()
                    return
                dst.sendall(data)
                if outbound:
                    self.forwarded += len(data)
                    self._cut_if_due()
                    rate = self.rate
                    if rate:
                        self._pause(len(data) / rate)
        except OSError:
            pass
        finally:
            if not pair.stalled.is_set() and not pair.reset:
                for one in (src, dst):
                    with contextlib.suppress(OSError):
                        one.shutdown(socket.SHUT_RDWR)

    def _cut_if_due(self) -> None:
        with self.lock:
            due = self.cut_at
            if due is None or self.forwarded < due[0]:
                return
            self.cut_at = None
            self.cuts += 1
        # From another thread: the cut closes this pump's own sockets.
        threading.Thread(target=self.cut, args=(due[1],), daemon=True).start()

    def cut(self, how: CutKind = "fin") -> int:
        """Break every connection the relay carries; returns how many.

        "fin": both sides see an orderly close; "rst": both sides get a TCP reset;
        "silent": the relay stops forwarding (both ways) and answers nothing more.
        """
        with self.lock:
            pairs = list(self.pairs)
            if how != "silent":
                self.pairs = []
        for pair in pairs:
            if how == "silent":
                pair.stalled.set()
                continue
            pair.reset = how == "rst"
            socks = [s for s in (pair.client, pair.upstream) if s is not None]
            for sock in socks:
                with contextlib.suppress(OSError):
                    if pair.reset:
                        # Linger 0: the close sends a reset. SHUT_RD only wakes our own pump,
                        # blocked in recv (which holds the socket open), and sends nothing.
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        sock.shutdown(socket.SHUT_RD)
                    else:
                        sock.shutdown(socket.SHUT_RDWR)
            for sock in socks:
                sock.close()
        return len(pairs)

    def close(self) -> None:
        self.stopping.set()
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in (pair.client, pair.upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
        self.listener.close()
        deadline = time.monotonic() + 5
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
