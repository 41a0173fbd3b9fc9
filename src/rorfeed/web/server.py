"""`rorfeed web`: the page served by hypercorn, until SIGTERM/SIGINT.

Requests are bounded (SPEC §10.3): headers at most HEADER_BYTES, a body at most BODY_BYTES,
the headers read within HEADER_SECONDS of the connection (or of the previous answer on a kept
connection) and the body within BODY_SECONDS after them: the whole request within 15 s.
hypercorn reads every connection on one asyncio loop, and hands a request to one of THREADS
worker threads only once it has been read whole: a slow or stuck client holds a coroutine and a
socket, never a thread, so twenty of them cannot keep the page from others (cheroot's threads
read the request themselves, 30 s per socket operation: 8 trickling clients took the page down).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import structlog
from flask import Flask

from rorfeed.config import Config, WebSection
from rorfeed.errors import StateError
from rorfeed.listen import parse_listen
from rorfeed.state import open_store
from rorfeed.web.app import MAX_BODY_BYTES, create_app

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from hypercorn.config import Config as HypercornConfig
    from hypercorn.typing import (
        AppWrapper,
        ASGIReceiveCallable,
        ASGIReceiveEvent,
        ASGISendCallable,
        HTTPScope,
        Scope,
    )

log = structlog.get_logger("rorfeed.web")

HEADER_BYTES = 16 * 1024
BODY_BYTES = MAX_BODY_BYTES  # the same bound as Flask's, which refuses a longer form too
HEADER_SECONDS = 10.0
BODY_SECONDS = 5.0
THREADS = 8
# SIGTERM: requests under way get this long to finish.
GRACE_SECONDS = 5.0


def make_server(config: Config, app: Flask, listen: str | None = None) -> WebServer:
    """The server for `app` on `web.listen` (or `listen`), HTTPS with tls_cert."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.logging import Logger

    section = config.file.web or WebSection()

    class _Log(Logger):
        """hypercorn's own messages through structlog, as every other line of rorfeed's. Its one
        info line, "Running on … (CTRL + C to quit)", goes to debug: web_listening says it."""

        async def critical(self, message: str, *args: Any, **kwargs: Any) -> None:
            log.error("web_server", message=message % args if args else message)

        async def error(self, message: str, *args: Any, **kwargs: Any) -> None:
            log.error("web_server", message=message % args if args else message)

        async def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
            log.warning("web_server", message=message % args if args else message)

        async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
            log.debug("web_server", message=message % args if args else message)

        async def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
            log.debug("web_server", message=message % args if args else message)

        async def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
            log.error("web_server", message=message % args if args else message, exc_info=True)

        async def log(self, level: int, message: str, *args: Any, **kwargs: Any) -> None:
            log.log(level, "web_server", message=message % args if args else message)

    settings = HypercornConfig()
    settings.logger_class = _Log
    settings.accesslog = None  # as before: no line per request (journald would fill up)
    settings.errorlog = None
    settings.h11_max_incomplete_size = HEADER_BYTES  # more: 431, connection closed
    # The page needs HTTP/1.1 only; HTTP/2 (asked for with h2c or a preface) gets the same bound.
    settings.alpn_protocols = ["http/1.1"]
    settings.h2_max_header_list_size = HEADER_BYTES
    # hypercorn's "idle" timer runs from the connection (or the previous answer) until the
    # request's headers are read whole, however slowly they trickle in: the headers' deadline.
    settings.keep_alive_timeout = HEADER_SECONDS
    settings.ssl_handshake_timeout = HEADER_SECONDS
    settings.graceful_timeout = GRACE_SECONDS
    settings.include_server_header = False
    if section.tls_cert:
        settings.certfile = str(config.resolve(section.tls_cert))
        settings.keyfile = str(config.resolve(section.tls_key))
    return WebServer(app, settings, parse_listen(listen or section.listen))


class WebServer:
    """`prepare()` binds, `serve()` serves until `stop()` (from any thread, or a signal's)."""

    def __init__(self, app: Flask, settings: HypercornConfig, address: tuple[str, int]) -> None:
        self.app = app
        self.settings = settings
        self.address = address
        self.bind_addr: tuple[str, int] = address
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._trigger: asyncio.Event | None = None
        self._stop_asked = threading.Event()
        self._done = threading.Event()
        self._serving: threading.Thread | None = None

    def prepare(self) -> None:
        """Load the TLS key and listen: OSError (ssl.SSLError for TLS) when it cannot."""
        self._listen()

    def _listen(self) -> socket.socket:
        if self.settings.ssl_enabled:
            self.settings.create_ssl_context()  # a bad key or certificate fails here, not later
        host, port = self.address
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(self.settings.backlog)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.bind_addr = sock.getsockname()[:2]
        return sock

    def serve(self) -> None:
        """Serve until stop(); the calling thread runs the event loop."""
        sock = self._sock or self._listen()
        self._serving = threading.current_thread()
        try:
            asyncio.run(self._serve(sock))
        finally:
            self._done.set()

    def stop(self) -> None:
        """Stop serving (idempotent); from another thread, wait until serve() has returned."""
        self._stop_asked.set()
        loop, trigger = self._loop, self._trigger
        if loop is not None and trigger is not None:
            # RuntimeError: the loop has already closed, nothing is left to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(trigger.set)
        if self._serving is not None and self._serving is not threading.current_thread():
            self._done.wait(GRACE_SECONDS + 5)

    async def _serve(self, sock: socket.socket) -> None:
        from hypercorn.app_wrappers import WSGIWrapper
        from hypercorn.asyncio.run import worker_serve
        from hypercorn.config import Sockets

        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_loop_error)
        # The WSGI application runs in the loop's default executor: THREADS of them, at most.
        loop.set_default_executor(ThreadPoolExecutor(THREADS, thread_name_prefix="rorfeed-web"))
        self._trigger = asyncio.Event()
        self._loop = loop
        if self._stop_asked.is_set():  # stop() came before the loop existed
            self._trigger.set()
        tls = self.settings.ssl_enabled
        sockets = Sockets([sock], [], []) if tls else Sockets([], [sock], [])
        app = _BoundedBody(WSGIWrapper(_never_empty(self.app), BODY_BYTES))
        trigger = self._trigger
        serving = asyncio.create_task(
            worker_serve(app, self.settings, sockets=sockets, shutdown_trigger=trigger.wait)
        )
        stopping = asyncio.create_task(trigger.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            # hypercorn gives the connections GRACE_SECONDS, then cancels them. A TLS connection
            # cut by a deadline may still be waiting for its client's close_notify (asyncio
            # waits 30 s for it) and take no notice of that cancel: cancel it once more.
            _, pending = await asyncio.wait({serving}, timeout=GRACE_SECONDS + 1)
            if pending:
                stuck = asyncio.all_tasks() - {serving, stopping, asyncio.current_task()}
                log.info("web_connections_cut", count=len(stuck))
                for task in stuck:
                    task.cancel()
                await asyncio.wait({serving}, timeout=5)
        finally:
            stopping.cancel()
            sock.close()
        # hypercorn's own way out after cancelling connections is a CancelledError: not a failure.
        error = serving.exception() if serving.done() and not serving.cancelled() else None
        if error is not None:
            raise error


def _never_empty(app: WSGIApplication) -> WSGIApplication:
    """`app`, its answers' bodies made of one chunk at least.

    hypercorn's WSGI wrapper sends the status and headers with the first chunk of the body: an
    empty one (a redirect, a 304) would never send them, and hypercorn then fails the request
    (UnexpectedMessageError) instead of answering.
    """

    def wsgi(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        result = app(environ, start_response)
        try:
            empty = True
            for chunk in result:
                empty = False
                yield chunk
            if empty:
                yield b""
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    return wsgi


def _loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's own errors through structlog. A cancelled connection is none: Python 3.11's
    streams report one as an error (a callback asks the cancelled task for its exception)."""
    error = context.get("exception")
    if isinstance(error, asyncio.CancelledError):
        return
    log.error("web_server", message=context.get("message", "asyncio error"), exc_info=error)


class _BoundedBody:
    """Reads the body within BODY_SECONDS and at most BODY_BYTES (else 408 or 413), then hands
    it whole to hypercorn's WSGI wrapper, which takes a thread to run the application."""

    def __init__(self, wsgi: AppWrapper) -> None:
        self.wsgi = wsgi

    async def __call__(
        self,
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        if scope["type"] != "http":  # lifespan (nothing to do) or websocket (refused)
            await self.wsgi(scope, receive, send, sync_spawn, call_soon)
            return
        declared = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), b"0")
        if int(declared) > BODY_BYTES:  # h11 has checked that it is a number
            await _refuse(send, scope, 413, "Requête trop volumineuse (4 Mio au plus).")
            return
        body = bytearray()
        try:
            async with asyncio.timeout(BODY_SECONDS):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client has gone
                        return
                    body += message["body"]
                    if len(body) > BODY_BYTES or not message["more_body"]:
                        break
        except TimeoutError:
            await _refuse(send, scope, 408, "Requête trop lente : délai dépassé.")
            return
        if len(body) > BODY_BYTES:
            await _refuse(send, scope, 413, "Requête trop volumineuse (4 Mio au plus).")
            return
        whole: ASGIReceiveEvent = {"type": "http.request", "body": bytes(body), "more_body": False}

        async def replay() -> ASGIReceiveEvent:
            return whole

        await self.wsgi(scope, replay, send, sync_spawn, call_soon)


async def _refuse(send: ASGISendCallable, scope: HTTPScope, status: int, text: str) -> None:
    client = scope["client"]
    reason = "body too large" if status == 413 else "body too slow"
    log.info("web_request_refused", status=status, reason=reason, client=client and client[0])
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"connection", b"close"),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
            ],
            "trailers": False,
        }
    )
    await send({"type": "http.response.body", "body": (text + "\n").encode(), "more_body": False})


def serve(config: Config) -> int:
    """`rorfeed web`: serve until SIGTERM/SIGINT (exit 0); 1 when it cannot start."""
    from rorfeed import systemd

    section = config.file.web or WebSection()
    try:
        store = open_store(config.state_url, config.state_password)
        app = create_app(config, store)
    except StateError as exc:
        print(f"rorfeed: {exc}", file=sys.stderr)
        return 1
    server = make_server(config, app)
    try:
        server.prepare()
    except ssl.SSLError as exc:
        print(f"rorfeed: web: cannot use tls_cert/tls_key: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"rorfeed: web: cannot listen on {section.listen}: {exc}", file=sys.stderr)
        return 1

    def _stop(signum: int, _frame: object) -> None:
        log.info("web_stopping", signal=signal.Signals(signum).name)
        threading.Thread(target=server.stop, name="rorfeed-web-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    scheme = "https" if section.tls_cert else "http"
    log.info("web_listening", url=f"{scheme}://{section.listen}/")
    notifier = systemd.Notifier.from_env()
    notifier.ready(f"web page on {scheme}://{section.listen}/")
    try:
        server.serve()
    finally:
        server.stop()
        notifier.stopping("stopped")
    log.info("web_stopped")
    return 0
