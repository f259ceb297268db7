"""Group commit: one writer thread turns many concurrent trace appends into few fsyncs.

``await writer.append(trace)`` returns only after the trace is durably committed,
so the service still never answers before its trace is stored; under load,
traces that arrive together share one transaction.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from cds.audit.store import StoredRecord, TraceStore
from cds.audit.trace import Trace

__all__ = ["TraceAppender", "TraceWriter"]


class TraceAppender(Protocol):
    """What the service needs of a trace writer: this thread writer, or the
    :class:`~cds.audit.process_writer.ProcessTraceWriter`."""

    @property
    def depth(self) -> int: ...

    def stuck(self, after_s: float = 10.0) -> bool: ...

    async def revive(self) -> None: ...

    async def append(self, trace: Trace) -> StoredRecord: ...

    def close(self) -> None: ...


_Future = asyncio.Future[StoredRecord]
_Item = tuple[Trace, _Future, asyncio.AbstractEventLoop]
MAX_BATCH = 64


class TraceWriter:
    def __init__(
        self, store: TraceStore, on_commit: Callable[[float, int], None] | None = None
    ) -> None:
        """``on_commit(seconds, traces)`` hears of each committed batch (for metrics)."""
        self._store = store
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        #: monotonic time since which a trace has waited without a commit (None: none waits)
        self._waiting_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="trace-writer", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Traces queued and not yet taken by the writer thread."""
        return self._queue.qsize()

    def stuck(self, after_s: float = 10.0) -> bool:
        """Whether traces have waited ``after_s`` seconds without any commit, or the
        writer thread has died: the service must then stop taking calls (readiness)."""
        if not self._thread.is_alive():
            return True
        since = self._waiting_since
        return since is not None and time.monotonic() - since > after_s

    async def revive(self) -> None:
        """Nothing to do: a writer thread that died stays dead (see :meth:`stuck`)."""

    async def append(self, trace: Trace) -> StoredRecord:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoredRecord] = loop.create_future()
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        self._queue.put((trace, future, loop))
        return await future

    def _batch(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, stop = [first], False
        while len(batch) < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch, stop = self._batch(first)
            began = time.perf_counter()
            try:
                records = self._store.append_traces([trace for trace, _, _ in batch])
            except BaseException as exc:
                _settle(batch, [exc] * len(batch))
            else:
                _settle(batch, records)
                self._waiting_since = None if self._queue.empty() else time.monotonic()
                if self._on_commit is not None:
                    self._on_commit(time.perf_counter() - began, len(batch))
            if stop:
                return

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)


def _settle(batch: list[_Item], outcomes: Sequence[StoredRecord | BaseException]) -> None:
    """Hand each waiting call its record or error: one callback per event loop.

    Not one per trace: each wakes the loop with a write to its self-pipe, and each
    write lets go of the GIL, which the writer thread must then win back from a busy
    event loop, a wait of up to the interpreter's switch interval (5 ms) each time.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Future, StoredRecord | BaseException]]]
    by_loop = {}
    for (_, future, loop), outcome in zip(batch, outcomes, strict=True):
        by_loop.setdefault(loop, []).append((future, outcome))
    for loop, settled in by_loop.items():
        loop.call_soon_threadsafe(_resolve, settled)


def _resolve(settled: list[tuple[_Future, StoredRecord | BaseException]]) -> None:
    for future, outcome in settled:
        if future.done():  # its call was cancelled (the client went away)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
