"""Group commit in a process of its own: traces are stored beside the event loop.

The service's event loop holds the GIL for nearly all of a call. A writer *thread*
(:class:`~cds.audit.writer.TraceWriter`) must win the GIL back from it at every step
of every commit (each SQLite statement, the fsync, the wake-up of the waiting calls),
and the two threads' work on shared objects slows both: measured at concurrency 50,
the event loop spent about 10 % more CPU per call with the writer thread beside it
than with this process. Here the loop only encodes each trace (orjson) and writes it
to a socket; a child process decodes, chains and commits the traces in batches on
the other core, and answers with each record's sequence number and hashes.

The guarantee is the thread writer's: ``await writer.append(trace)`` returns only
once the trace is committed, so no call is answered before its trace is stored. If
the child process dies, every call waiting on it fails (an error, never an answer
without a trace) and :meth:`ProcessTraceWriter.stuck` tells readiness.

Frames on the socket are a 4-byte big-endian length and a JSON document. The parent
sends ``{"store": url}`` first, then one frame per trace; the child answers
``{"ready": true}`` (or ``{"error": ...}``), then one frame per batch:
``{"records": [[seq, recorded_at, prev_hash, hash], ...], "seconds": s}`` or
``{"error": message, "count": n}``, in the order the traces came.

    python -m cds.audit.process_writer FD    (started by ProcessTraceWriter)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import orjson

from cds.audit.chain import canonical_json
from cds.audit.store import StoredRecord, open_store, safe_url
from cds.audit.trace import Trace
from cds.errors import ConfigError, TraceWriteError

__all__ = ["ProcessTraceWriter"]

log = logging.getLogger("cds.audit.process_writer")

MAX_BATCH = 64
_LENGTH = struct.Struct(">I")
#: seconds the child may take to start and open the store
_START_TIMEOUT_S = 60.0


def _frame(document: Any) -> bytes:
    data = document if isinstance(document, bytes) else orjson.dumps(document)
    return _LENGTH.pack(len(data)) + data


def _encode(trace: Trace) -> bytes:
    """The trace as the child decodes it (orjson; what it refuses, a bigger integer, say,
    goes as the chain's canonical JSON)."""
    try:
        return orjson.dumps(trace, default=str)
    except orjson.JSONEncodeError:
        return canonical_json(trace).encode()


def _decode(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:  # an integer beyond 64 bits: the standard library reads it
        return json.loads(data)


class _Frames:
    """Whole frames out of the bytes read so far."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out = []
        while len(self._buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer)
            end = _LENGTH.size + size
            if len(self._buffer) < end:
                break
            out.append(bytes(self._buffer[_LENGTH.size : end]))
            del self._buffer[:end]
        return out


class _Link(asyncio.Protocol):
    """The parent's end of the socket on the event loop: sends traces, settles calls."""

    def __init__(self, writer: ProcessTraceWriter) -> None:
        self._writer = writer
        self._frames = _Frames()
        self.transport: asyncio.Transport | None = None
        self.pending: deque[tuple[asyncio.Future[StoredRecord], Trace]] = deque()
        self.lost: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for frame in self._frames.feed(data):
            self._settle(_decode(frame))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = "the trace writer process ended" + (f": {exc}" if exc else "")
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(TraceWriteError(self.lost))

    def _settle(self, reply: dict[str, Any]) -> None:
        if "error" in reply:
            for _ in range(int(reply.get("count", 0))):
                future, _ = self.pending.popleft()
                if not future.done():
                    future.set_exception(TraceWriteError(f"trace not stored: {reply['error']}"))
        else:
            for seq, recorded_at, prev_hash, digest in reply["records"]:
                future, trace = self.pending.popleft()
                if not future.done():  # its call was cancelled (the client went away)
                    future.set_result(_record(trace, seq, recorded_at, prev_hash, digest))
            self._writer.committed(float(reply.get("seconds", 0.0)), len(reply["records"]))
        self._writer.settled(bool(self.pending))


def _record(trace: Trace, seq: int, recorded_at: str, prev: str, digest: str) -> StoredRecord:
    body = cast(dict[str, Any], trace)  # the trace as sent: as the thread writer gives it
    return StoredRecord(seq, "trace", trace["trace_id"], trace.get("hook_instance"), recorded_at,
                        body, prev, digest)  # fmt: skip


class _Child:
    """One writer process and our end of its socket, started and past the handshake."""

    def __init__(self, url: str) -> None:
        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "cds.audit.process_writer", str(theirs.fileno())]
        self.process = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self.socket = ours
        try:
            self._handshake(url)
        except BaseException:
            self.stop()
            raise

    def _handshake(self, url: str) -> None:
        self.socket.settimeout(_START_TIMEOUT_S)
        self.socket.sendall(_frame({"store": url}))
        try:
            answer = _Incoming(self.socket).one()
        except TimeoutError:
            answer = None
        if answer is None:
            raise ConfigError(f"the trace writer process for {safe_url(url)} did not start")
        reply = _decode(answer)
        if "error" in reply:
            raise ConfigError(f"the trace writer process cannot open the store: {reply['error']}")
        self.socket.setblocking(False)

    def stop(self) -> None:
        """End our half of the socket directly (not through an event loop, which may not
        be running): the process commits what it was sent, then ends."""
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_WR)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.socket.close()


class ProcessTraceWriter:
    """:class:`~cds.audit.writer.TraceWriter`'s interface, with the store written by a
    child process. The process is started here, at once, so a store that cannot be
    opened fails the service's start-up rather than its first call; one that ends is
    replaced on the next call or :meth:`revive` (at most every :attr:`restart_after_s`
    seconds), while the calls that were waiting on it fail."""

    #: seconds between attempts to replace a writer process that ended
    restart_after_s = 5.0

    def __init__(self, url: str, on_commit: Callable[[float, int], None] | None = None) -> None:
        """``on_commit(seconds, traces)`` hears of each committed batch (for metrics)."""
        self._url = url
        self._on_commit = on_commit
        self._waiting_since: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: _Link | None = None
        self._connecting: asyncio.Task[_Link] | None = None
        self._started_at = time.monotonic()
        self._closed = False
        self._child = _Child(url)

    @property
    def depth(self) -> int:
        """Traces sent and not yet committed."""
        return len(self._link.pending) if self._link is not None else 0

    def stuck(self, after_s: float = 10.0) -> bool:
        """Whether the writer process has ended (and not yet been replaced), or traces
        have waited ``after_s`` seconds without any commit: the service must then stop
        taking calls."""
        if self._gone():
            return True
        since = self._waiting_since
        return since is not None and time.monotonic() - since > after_s

    def _gone(self) -> bool:
        """Whether the writer process has ended, as far as we know."""
        lost = self._link is not None and self._link.lost is not None
        return lost or self._child.process.poll() is not None

    async def revive(self) -> None:
        """Replace a writer process that ended, if that may be done now: the readiness
        check asks this, so that a service no call reaches while it is not ready (a load
        balancer sends it none) still comes back."""
        if self._gone():
            with contextlib.suppress(TraceWriteError):
                await self._connected()

    async def append(self, trace: Trace) -> StoredRecord:
        link = await self._connected()
        assert link.transport is not None
        future: asyncio.Future[StoredRecord] = asyncio.get_running_loop().create_future()
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        link.pending.append((future, trace))
        link.transport.write(_frame(_encode(trace)))
        return await future

    async def _connected(self) -> _Link:
        """The socket to a living writer process on this event loop: the first call
        connects it, a call after the process ended starts another (a writer serves the
        one event loop of its service process)."""
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise TraceWriteError("a process trace writer serves one event loop")
        self._loop = loop
        if self._closed:
            raise TraceWriteError("the trace writer is closed")
        gone = self._gone()
        if self._link is not None and not gone:
            return self._link
        if self._connecting is None or self._connecting.done():
            if gone and not self._may_restart():
                lost = self._link.lost if self._link is not None else None
                raise TraceWriteError(lost or "the trace writer process ended")
            self._connecting = loop.create_task(self._connect(restart=gone))
        return await asyncio.shield(self._connecting)

    def _may_restart(self) -> bool:
        return time.monotonic() - self._started_at >= self.restart_after_s

    async def _connect(self, *, restart: bool) -> _Link:
        loop = asyncio.get_running_loop()
        if restart:
            ended = self._child.process.poll()
            log.warning("the trace writer process ended (exit code %s): starting another", ended)
            self._started_at = time.monotonic()
            old = self._child
            try:
                self._child = await asyncio.to_thread(_Child, self._url)
            except ConfigError as exc:
                raise TraceWriteError(f"the trace writer process could not restart: {exc}") from exc
            finally:
                await asyncio.to_thread(old.stop)
        _, link = await loop.connect_accepted_socket(lambda: _Link(self), self._child.socket)
        self._link = link
        return link

    def committed(self, seconds: float, traces: int) -> None:
        if self._on_commit is not None:
            self._on_commit(seconds, traces)

    def settled(self, more_waiting: bool) -> None:
        self._waiting_since = time.monotonic() if more_waiting else None

    def close(self) -> None:
        """Stop taking traces; the writer process commits what it was sent, then ends.

        Called when the service stops, after its last call was answered, or from code
        whose event loop has already closed.
        """
        self._closed = True
        self._child.stop()
        transport = self._link.transport if self._link is not None else None
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(RuntimeError):  # its event loop has closed
                transport.close()


# -- the child process -----------------------------------------------------------------
class _Incoming:
    """The child's end of the socket: blocking reads, then whatever else has come."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self._frames = _Frames()
        self._ready: deque[bytes] = deque()

    def _read(self) -> bool:
        data = self._socket.recv(1 << 20)
        self._ready.extend(self._frames.feed(data))
        return bool(data)

    def one(self) -> bytes | None:
        while not self._ready:
            if not self._read():
                return None
        return self._ready.popleft()

    def batch(self) -> list[bytes]:
        """The next traces (up to :data:`MAX_BATCH`): waits for one, takes what came
        meanwhile; empty when the parent has closed the socket."""
        first = self.one()
        if first is None:
            return []
        out = [first]
        while len(out) < MAX_BATCH:
            if not self._ready:
                if not select.select([self._socket], [], [], 0)[0] or not self._read():
                    break
                continue
            out.append(self._ready.popleft())
        return out


def main(argv: list[str]) -> int:
    # the parent decides when to stop (it ends the socket, or dies): a Ctrl-C or a
    # SIGTERM sent to the whole process group (a terminal, systemd) must not end this
    # process while the service still waits for the traces of its last calls
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    incoming = _Incoming(sock)
    config = incoming.one()
    if config is None:
        return 1
    try:
        store = open_store(_decode(config)["store"])
    except Exception as exc:  # told to the parent, which fails its start-up with it
        sock.sendall(_frame({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    sock.sendall(_frame({"ready": True}))
    try:
        while batch := incoming.batch():
            sock.sendall(_frame(_commit(store, batch)))
    finally:
        store.close()
    return 0


def _commit(store: Any, batch: list[bytes]) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        records = store.append_traces([_decode(data) for data in batch])
    except Exception as exc:  # the calls of this batch fail with it; the next may succeed
        return {"error": f"{type(exc).__name__}: {exc}", "count": len(batch)}
    return {
        "records": [[r.seq, r.recorded_at, r.prev_hash, r.hash] for r in records],
        "seconds": time.perf_counter() - began,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv))
