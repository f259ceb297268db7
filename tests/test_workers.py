"""`serve --workers N`: one listening socket per worker, spread by the kernel."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from cds.client import JwtSigner
from cds.errors import ConfigError
from cds.service.workers import listening_sockets

T = TypeVar("T")


def _accepted_per_socket(sockets: list[socket.socket], connections: int) -> list[int]:
    port = sockets[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    counts = [0] * len(sockets)
    with selectors.DefaultSelector() as sel:
        for i, sock in enumerate(sockets):
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, i)
        while sum(counts) < connections:
            for key, _ in sel.select(timeout=5) or pytest.fail("connections lost"):
                conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                conn.close()
                counts[key.data] += 1
    for client in clients:
        client.close()
    return counts


def test_the_kernel_spreads_connections_over_every_socket() -> None:
    sockets = listening_sockets("127.0.0.1", 0, 2, backlog=128)
    try:
        assert len({s.getsockname() for s in sockets}) == 1  # one address, two sockets
        counts = _accepted_per_socket(sockets, 64)
        # by a hash of the client's port: all 64 on one socket has odds of 2**-63
        assert all(n > 0 for n in counts), counts
    finally:
        for sock in sockets:
            sock.close()


def test_connections_accepted_on_the_sockets_have_nagle_off() -> None:
    """Else each response waits for the client's delayed ACK (about 40 ms a call)."""
    import asyncio

    async def accept_one(sock: socket.socket) -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                raw = transport.get_extra_info("socket")
                accepted.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname())
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
            server.close()

    sockets = listening_sockets("127.0.0.1", 0, 1, backlog=16)
    assert asyncio.run(accept_one(sockets[0])) == 1


def test_a_port_in_use_is_a_clear_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}") as err:
            listening_sockets("127.0.0.1", port, 2, backlog=16)
    assert err.value.expression == "server.port"


def _children(pid: int) -> set[int]:
    """The worker processes of the supervisor ``pid`` (not multiprocessing's
    resource tracker)."""
    found = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(int(child))
        except FileNotFoundError:  # it has just been reaped
            pass
    return found


def _two_workers(pid: int, without: int | None = None) -> set[int] | None:
    workers = _children(pid)
    return workers if len(workers) == 2 and without not in workers else None


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the listening TCP sockets on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
            found.add(fields[9])
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _held(workers: set[int], listening: set[str]) -> list[int]:
    """How many of the listening sockets each worker holds (a worker being spawned
    receives its socket as it starts)."""
    return [len(_socket_inodes(w) & listening) for w in sorted(workers)]


def _wait_for(check: Callable[[], T], what: str, timeout: float = 60) -> T:
    """The first truthy answer of ``check``, asked every 0.2 s."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)
    return found


def test_each_worker_has_its_own_socket_and_a_dead_worker_is_replaced(
    tmp_path: Path, es_signer: JwtSigner
) -> None:
    from tests.servers import ServiceProcess

    svc = ServiceProcess(tmp_path, es_signer, f"sqlite:///{tmp_path}/t.db", workers=2)
    try:
        workers = _wait_for(lambda: _two_workers(svc.proc.pid), "two workers")
        listening = _listening_inodes(svc.port)
        assert len(listening) == 2
        _wait_for(lambda: _held(workers, listening) == [1, 1], "each worker's socket")
        assert _socket_inodes(svc.proc.pid) >= listening  # the supervisor keeps them

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = _wait_for(lambda: _two_workers(svc.proc.pid, victim), "a replacement")
        newcomer = (replaced - workers).pop()
        assert _listening_inodes(svc.port) == listening  # the same two sockets
        _wait_for(lambda: _socket_inodes(newcomer) & listening, "the newcomer's socket")
        for _ in range(8):  # fresh connections: whichever socket they hash to is served
            assert httpx.get(f"{svc.base}/livez", timeout=30).status_code == 200
    finally:
        svc.stop()
    assert svc.proc.returncode == 0


def test_a_worker_that_fails_to_start_stops_the_service_with_an_error_status(
    tmp_path: Path,
) -> None:
    """The app cannot be imported in the workers: the supervisor stops, status 3."""
    program = (
        "import sys\n"
        "from cds.config import Settings\n"
        "from cds.service.server import serve\n"
        "sys.exit(serve('no_such_module:app', Settings(), workers=2, host='127.0.0.1', port=0))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 3, done.stderr[-2000:]
    assert "failed to start" in done.stderr
