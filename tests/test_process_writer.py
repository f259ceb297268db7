"""The trace writer process: traces committed by a child process, in order, chained,
each call answered only once its own trace is stored, and every failure an error for
the calls it touches (never an answer without a trace)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from cds.audit.process_writer import ProcessTraceWriter
from cds.audit.store import open_store
from cds.audit.writer import TraceWriter
from cds.client import CdsClient, JwtSigner
from cds.errors import ConfigError, TraceWriteError
from cds.examples import hook_request
from cds.service.app import create_app
from tests.conftest import IN_PROCESS_BASE, _settings
from tests.servers import in_process_transport
from tests.test_audit import _trace


def _append_all(writer: ProcessTraceWriter, traces: list[dict[str, Any]]) -> list[Any]:
    async def calls() -> list[Any]:
        return await asyncio.gather(*(writer.append(t) for t in traces), return_exceptions=True)

    return asyncio.run(calls())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_concurrent_calls_are_each_answered_with_their_own_committed_record(
    store_url: str,
) -> None:
    batches: list[int] = []
    writer = ProcessTraceWriter(store_url, on_commit=lambda _, n: batches.append(n))
    traces = [_trace(i) for i in range(60)]
    try:
        stored = _append_all(writer, traces)
    finally:
        writer.close()
    assert [r.trace_id for r in stored] == [t["trace_id"] for t in traces]
    assert [r.seq for r in stored] == list(range(1, 61))  # in the order they came
    assert all(a.hash == b.prev_hash for a, b in itertools.pairwise(stored))
    assert sum(batches) == 60 and len(batches) < 60  # traces sent together share commits
    store = open_store(store_url)
    try:
        assert store.verify().ok and store.count() == 60
        kept = store.records_of_trace(traces[7]["trace_id"])
        assert kept[0].body == traces[7] and kept[0].hash == stored[7].hash
    finally:
        store.close()


def test_its_records_match_the_thread_writers_for_the_same_traces(tmp_path: Path) -> None:
    """The child decodes what the event loop encoded: the stored body is the trace."""
    traces = [_trace(i) for i in range(3)]
    traces[0]["facts"] = [{"kind": "patient", "age": 29, "hip_drop_deg": 7.5, "big": 10**20}]
    bodies = []
    for name, make in (
        ("thread", lambda url: TraceWriter(open_store(url))),
        ("process", ProcessTraceWriter),
    ):
        url = f"sqlite:///{tmp_path / name}.db"
        writer = make(url)
        try:
            _append_all(writer, traces)
        finally:
            writer.close()
        store = open_store(url)
        bodies.append([store.records_of_trace(t["trace_id"])[0].body for t in traces])
        store.close()
    assert bodies[0] == bodies[1] == traces


def test_a_batch_the_store_refuses_fails_its_calls_and_the_writer_goes_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    writer = ProcessTraceWriter(url)
    first = _trace(1)
    again = _trace(2)
    again["cards"] = first["cards"]  # a card uuid already stored: the store refuses it

    async def calls() -> list[Any]:
        ok = await writer.append(first)
        refused = await asyncio.gather(writer.append(again), return_exceptions=True)
        after = await writer.append(_trace(3))
        return [ok, refused[0], after]

    try:
        ok, refused, after = asyncio.run(calls())
        assert not writer.stuck()
    finally:
        writer.close()
    assert ok.seq == 1 and after.seq == 2
    assert isinstance(refused, TraceWriteError) and "trace not stored" in str(refused)
    store = open_store(url)
    assert store.verify().ok and store.count() == 2
    store.close()


def test_when_the_writer_process_dies_waiting_and_later_calls_fail_and_it_is_stuck(
    tmp_path: Path,
) -> None:
    writer = ProcessTraceWriter(f"sqlite:///{tmp_path / 'audit.db'}")
    writer.restart_after_s = 3600  # not replaced within this test

    async def calls() -> tuple[Any, list[Any]]:
        first = await writer.append(_trace(0))
        os.kill(writer._child.process.pid, signal.SIGKILL)
        writer._child.process.wait()
        later = await asyncio.gather(
            *(writer.append(_trace(i)) for i in range(1, 4)), return_exceptions=True
        )
        await asyncio.sleep(0.05)  # the loop sees the socket close
        after = await asyncio.gather(writer.append(_trace(9)), return_exceptions=True)
        return first, later + after

    try:
        first, failed = asyncio.run(calls())
        assert writer.stuck()
    finally:
        writer.close()
    assert first.seq == 1
    assert failed and all(isinstance(f, TraceWriteError) for f in failed)


def test_a_writer_process_that_ended_is_replaced_and_the_chain_goes_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    writer = ProcessTraceWriter(url)
    writer.restart_after_s = 0
    first_pid = writer._child.process.pid

    async def calls() -> list[Any]:
        first = await writer.append(_trace(0))
        os.kill(first_pid, signal.SIGKILL)
        writer._child.process.wait()
        await asyncio.sleep(0.05)  # the loop sees the socket close
        assert writer.stuck()
        return [first, *await asyncio.gather(*(writer.append(_trace(i)) for i in (1, 2)))]

    try:
        stored = asyncio.run(calls())
        assert not writer.stuck() and writer._child.process.pid != first_pid
    finally:
        writer.close()
    assert [r.seq for r in stored] == [1, 2, 3]
    store = open_store(url)
    assert store.verify().ok and store.count() == 3
    store.close()


def test_a_second_event_loop_is_refused_rather_than_left_waiting(tmp_path: Path) -> None:
    writer = ProcessTraceWriter(f"sqlite:///{tmp_path / 'audit.db'}")
    try:
        assert _append_all(writer, [_trace(0)])[0].seq == 1
        (refused,) = _append_all(writer, [_trace(1)])
    finally:
        writer.close()
    assert isinstance(refused, TraceWriteError) and "one event loop" in str(refused)


def test_a_store_it_cannot_open_fails_the_start_and_leaves_no_process() -> None:
    with pytest.raises(ConfigError, match="cannot open the store") as raised:
        ProcessTraceWriter("postgresql://nobody@127.0.0.1:1/none")
    assert "port 1 failed" in str(raised.value)
    assert _writer_children() == []


def _writer_children() -> list[int]:
    """Living child processes of this one that run the trace writer."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = int(status.read_text().split("PPid:")[1].split()[0])
            cmdline = (status.parent / "cmdline").read_bytes()
        except (OSError, IndexError):  # it ended while we looked
            continue
        if ppid == os.getpid() and b"cds.audit.process_writer" in cmdline:
            found.append(int(status.parent.name))
    return found


def test_close_commits_what_was_sent_and_ends_the_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    writer = ProcessTraceWriter(url)

    async def calls() -> Any:
        await asyncio.gather(*(writer.append(_trace(i)) for i in range(5)))
        # a SIGTERM to the whole process group (systemd stopping the service) leaves
        # it be: it ends when the service closes it
        os.kill(writer._child.process.pid, signal.SIGTERM)
        await asyncio.sleep(0.05)
        return await writer.append(_trace(5))

    assert asyncio.run(calls()).seq == 6
    assert _writer_children() == [writer._child.process.pid]
    writer.close()
    assert writer._child.process.returncode == 0 and writer.stuck()
    assert _writer_children() == []
    store = open_store(url)
    assert store.count() == 6
    store.close()


def _app(tmp_path: Path, es_signer: JwtSigner, rs_signer: JwtSigner, url: str, kind: str) -> Any:
    """The service on its own settings (no store handed in, so ``kind`` is obeyed)."""
    settings = _settings(tmp_path, es_signer, rs_signer, IN_PROCESS_BASE, (), None,
                         {"store": {"url": url, "writer": kind}})  # fmt: skip
    return create_app(settings)


def _call(http: httpx.Client, signer: JwtSigner) -> httpx.Response:
    return CdsClient(IN_PROCESS_BASE, signer, http=http).call(
        "runform-patient-view", hook_request("patient-view", "p1")
    )


def test_the_service_commits_through_a_writer_process_unless_told_to_use_a_thread(
    tmp_path: Path, es_signer: JwtSigner, rs_signer: JwtSigner
) -> None:
    for kind, expected in (("process", ProcessTraceWriter), ("thread", TraceWriter)):
        url = f"sqlite:///{tmp_path / kind}.db"
        app = _app(tmp_path, es_signer, rs_signer, url, kind)
        assert isinstance(app.state.runtime.writer, expected)
        with (
            in_process_transport(app) as transport,
            httpx.Client(base_url=IN_PROCESS_BASE, transport=transport) as http,
        ):
            answer = _call(http, es_signer)
        assert answer.status_code == 200 and answer.json()["cards"]
        store = open_store(url)
        assert store.count() == 1 and store.verify().ok
        store.close()


def test_readiness_replaces_a_writer_process_that_ended_without_waiting_for_a_call(
    tmp_path: Path, es_signer: JwtSigner, rs_signer: JwtSigner
) -> None:
    """A load balancer sends no calls to a service that is not ready: the readiness
    check itself must bring the writer back, or the service would stay out for good."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    app = _app(tmp_path, es_signer, rs_signer, url, "process")
    writer: ProcessTraceWriter = app.state.runtime.writer
    writer.restart_after_s = 3600
    first = writer._child
    with (
        in_process_transport(app) as transport,
        httpx.Client(base_url=IN_PROCESS_BASE, transport=transport) as http,
    ):
        assert http.get("/readyz").status_code == 200
        # a call: its trace connects the service to the writer process
        assert _call(http, es_signer).status_code == 200
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait()
        ready = http.get("/readyz")
        assert ready.status_code == 503 and "trace writer stuck" in ready.json()["problems"]
        writer.restart_after_s = 0
        assert http.get("/readyz").status_code == 200
    assert writer._child is not None and writer._child.process.pid != first.process.pid
