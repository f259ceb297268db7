"""Several worker processes, each accepting on its own listening socket.

uvicorn's ``Multiprocess`` hands every worker the same listening socket. The
worker that wakes first accepts every pending connection (asyncio accepts up to
the backlog per wake-up), so a burst of keep-alive connections can land mostly
on one worker while the other idles: 37 of wrk's 50 were seen on one of two.
Here each worker has a socket of its own, all bound to the same address with
``SO_REUSEPORT``, and the kernel spreads new connections over them by a hash of
the client's address and port.

The sockets belong to this supervising process, not to the workers: a worker
that dies is replaced on the same socket, and the connections queued on it
wait for the replacement instead of being reset. Only processes of the same
user can bind the port beside ours (the kernel's rule for ``SO_REUSEPORT``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Process

from cds.errors import ConfigError

__all__ = ["Workers", "listening_sockets"]

logger = logging.getLogger("uvicorn.error")


def listening_sockets(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port`` sharing the port (port 0: one free
    port, chosen by the kernel for the first socket and taken by the others)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            # IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio turns Nagle's
            # algorithm off only on sockets that say they are TCP; with it on, every
            # response waited for the client's delayed ACK (about 40 ms a call)
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            port = sock.getsockname()[1]
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}", expression="server.port"
        ) from exc
    return sockets


class Workers:
    """Run ``count`` uvicorn workers of ``config``, each on its own socket; replace a
    worker that dies or stops answering; on SIGINT or SIGTERM stop them all, each
    finishing its calls in flight. A worker that fails to start stops them all."""

    def __init__(self, config: uvicorn.Config, count: int) -> None:
        self.config = config
        self.sockets = listening_sockets(config.host, config.port, count, config.backlog)
        self.processes: list[Process] = []
        self.should_exit = threading.Event()
        #: the exit status for the command: 0, or uvicorn's for a failed start
        self.exit_code = 0

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def run(self) -> int:
        """Serve until told to stop; the exit status (see :attr:`exit_code`)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.should_exit.set())
        logger.info(
            "Running %d workers on http://%s:%d, one socket each (parent process %d)",
            len(self.sockets), self.config.host, self.port, os.getpid(),
        )  # fmt: skip
        self.processes = [self._start(sock) for sock in self.sockets]
        try:
            while not self.should_exit.wait(0.5):
                self._replace_the_dead()
        finally:
            for process in self.processes:
                process.terminate()
            for process in self.processes:
                process.join()
            for sock in self.sockets:
                sock.close()
        return self.exit_code

    def _start(self, sock: socket.socket) -> Process:
        process = Process(self.config, [sock])
        process.start()
        return process

    def _replace_the_dead(self) -> None:
        for slot, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # dead, or alive but not answering
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # the app or its store is broken: every replacement would fail alike
                logger.error("Worker %s failed to start; stopping.", process.pid)
                self.exit_code = STARTUP_FAILURE
                self.should_exit.set()
                return
            logger.info("Worker %s died; starting another on its socket", process.pid)
            self.processes[slot] = self._start(self.sockets[slot])
