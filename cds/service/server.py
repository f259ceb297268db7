"""Run the service with uvicorn, with the limits a hospital network needs.

uvicorn has no deadline for receiving a request: its keep-alive timer is reset
by every byte, so a client trickling a header one byte at a time holds a
connection for ever (Slowloris). :class:`DeadlineProtocol` closes a connection
that has not delivered a whole request (headers and body) within
``server.request_timeout_s`` of its first byte, or of connecting. The
``Server`` header is not sent, idle keep-alive connections are closed after
``server.keep_alive_s``, and connections past ``server.max_connections`` get a
503.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol

from cds.config import Settings
from cds.service.workers import Workers

__all__ = ["DeadlineProtocol", "serve", "server_config"]

_RECEIVED = {h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR, h11.SWITCHED_PROTOCOL}


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for receiving each request.

    The deadline is ``config.request_timeout_s`` (set by :func:`server_config`; it
    travels with the config to worker processes).
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._deadline is None:
            timeout = float(getattr(self.config, "request_timeout_s", 10.0))
            self._deadline = self.loop.call_later(timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.conn.their_state not in _RECEIVED and not self.transport.is_closing():
            self.logger.info("closing a connection that did not send its request in time")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of a request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state in _RECEIVED:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration for ``app`` (an app object or an import string)."""
    options: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "http": DeadlineProtocol,
        "server_header": False,
        "timeout_keep_alive": settings.server.keep_alive_s,
        "limit_concurrency": settings.server.max_connections,
        "log_level": "info",
        # our root logger (text or JSON, with request ids) formats uvicorn's lines too
        "log_config": None,
        # on SIGTERM: stop taking connections, finish the calls in flight (each commits
        # its trace before it answers), then drain the trace writer on shutdown
        "timeout_graceful_shutdown": 30,
    }
    options.update(overrides)
    config = uvicorn.Config(app, **options)
    config.request_timeout_s = settings.server.request_timeout_s  # type: ignore[attr-defined]
    return config


def serve(app: Any, settings: Settings, *, workers: int = 1, **overrides: Any) -> int:
    """Serve ``app`` until SIGINT or SIGTERM: in this process, or in ``workers``
    processes each accepting on a socket of its own (``app`` is then an import string,
    imported by every worker). Returns the exit status: 0, or uvicorn's
    ``STARTUP_FAILURE`` if the service never started."""
    config = server_config(app, settings, workers=workers, **overrides)
    if workers > 1:
        return Workers(config, workers).run()
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else STARTUP_FAILURE
