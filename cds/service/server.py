"""Run the service with uvicorn, with the limits a hospital network needs.

uvicorn has no deadline for receiving a request: its keep-alive timer is reset
by every byte, so a client trickling a header one byte at a time holds a
connection for ever (Slowloris). :class:`DeadlineProtocol` closes a connection
that has not delivered a whole request (headers and body) within
``server.request_timeout_s`` of its first byte, or of connecting, and answers
400 to a header section over :data:`MAX_HEADER_BYTES`. The ``Server`` header is
not sent, idle keep-alive connections are closed after ``server.keep_alive_s``,
and connections past ``server.max_connections`` get a 503.

Requests are parsed by httptools (llhttp, in C): about 3 % less CPU per call than
h11. The event loop is asyncio's own, even where uvloop is installed: uvloop
saved another 4 % of CPU but, with the machine saturated (50 connections, one
process), served connections so unevenly that p99 rose from 0.6 to 1.6-2.2 s.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cds.config import Settings
from cds.service.workers import Workers

__all__ = ["MAX_HEADER_BYTES", "DeadlineProtocol", "serve", "server_config"]

#: the largest request line and header section taken (what uvicorn's h11 parser allowed)
MAX_HEADER_BYTES = 16 * 1024


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for receiving each request and a
    cap on the size of its header section.

    The deadline is ``config.request_timeout_s`` (set by :func:`server_config`; it
    travels with the config to worker processes). It is armed on connecting and by
    the first byte of each request, and disarmed once the request is complete; a
    request pipelined behind one still being answered waits for that answer.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        #: a request is owed: none has come yet, or bytes have come since the last ended
        self._owed = True
        #: bytes received since the last request ended, while its successor's headers
        #: are incomplete (None: the headers are complete)
        self._header_bytes: int | None = 0
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
        if not self._owed or self.transport.is_closing():
            return
        if self._answering_earlier():
            self._arm()  # uvicorn reads no further until that answer is sent
            return
        self.logger.info("closing a connection that did not send its request in time")
        self.transport.close()

    def _answering_earlier(self) -> bool:
        """Whether the owed request is pipelined behind one still being answered."""
        if self.cycle is None or self.cycle.response_complete:
            return False
        return self._header_bytes is not None or bool(self.pipeline)

    def data_received(self, data: bytes) -> None:
        # any byte is owed a whole request, even the blank lines the parser skips
        # between requests (and uvicorn's keep-alive timer stops at every byte)
        self._owed = True
        self._arm()
        if self._header_bytes is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        too_long = self._header_bytes is not None and self._header_bytes > MAX_HEADER_BYTES
        if too_long and not self.transport.is_closing():
            self.logger.warning("closing a connection whose request headers are too long")
            self.send_400_response("Request headers too long.")

    def on_message_begin(self) -> None:  # a pipelined request, in the chunk that ended one
        super().on_message_begin()
        self._owed = True
        self._arm()

    def on_headers_complete(self) -> None:
        self._header_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._owed = False
        self._header_bytes = 0
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
        "loop": "asyncio",  # not uvloop: see the module docstring
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
