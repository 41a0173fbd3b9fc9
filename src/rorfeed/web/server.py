"""`rorfeed web`: the page served by cheroot, until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING

import structlog
from flask import Flask

from rorfeed.config import Config, WebSection
from rorfeed.errors import StateError
from rorfeed.listen import parse_listen
from rorfeed.state import open_store
from rorfeed.web.app import create_app

if TYPE_CHECKING:
    from cheroot.wsgi import Server

log = structlog.get_logger("rorfeed.web")


def make_server(config: Config, app: Flask, listen: str | None = None) -> Server:
    """A cheroot WSGI server for `app` on `web.listen` (or `listen`), HTTPS with tls_cert."""
    from cheroot import wsgi

    section = config.file.web or WebSection()

    class _Server(wsgi.Server):
        def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
            if traceback:
                log.error("web_server", message=msg, exc_info=True)
            elif level >= logging.ERROR:
                log.error("web_server", message=msg)
            else:
                log.info("web_server", message=msg)

    server = _Server(
        parse_listen(listen or section.listen),
        app,
        numthreads=8,
        server_name="rorfeed",
        timeout=30,
        shutdown_timeout=5,
    )
    server.software = "rorfeed"
    if section.tls_cert:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server.ssl_adapter = BuiltinSSLAdapter(
            str(config.resolve(section.tls_cert)), str(config.resolve(section.tls_key))
        )
    return server


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
