"""The `/metrics` HTTP endpoint of `rorfeed serve`, on `metrics.listen` (SPEC §9)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from rorfeed.listen import parse_listen

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

log = structlog.get_logger("rorfeed.daemon")


class MetricsEndpoint:
    """prometheus-client's HTTP server for one registry; started, stopped, started again at a
    reload that changes `metrics.listen`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.address: tuple[str, int] | None = None  # where it listens, the port resolved
        self._server: WSGIServer | None = None

    def start(self, listen: str) -> None:
        """Listen on `listen` ("" = no endpoint); OSError when the address cannot be bound."""
        from prometheus_client import start_http_server

        if not listen:
            log.info("metrics_disabled")
            return
        host, port = parse_listen(listen)
        server, _thread = start_http_server(port, host, registry=self.registry)
        self._server = server
        self.address = (host, int(server.server_address[1]))
        log.info("metrics_listening", url=self.url, port=self.address[1])

    def try_start(self, listen: str) -> str | None:
        """`start`, or why it could not listen."""
        try:
            self.start(listen)
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self.address = None

    @property
    def url(self) -> str | None:
        if self.address is None:
            return None
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
