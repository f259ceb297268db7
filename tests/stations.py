"""Helpers to run a real station in tests: a blank clip played as the camera, with
landmarks of known geometry standing in for the pose model, or a real video."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cds.measures.track import Track
from cds.station.commands import write_record
from cds.station.schedule import Schedule, load_schedule
from cds.station.session import Session
from cds.station.source import Captured, open_source
from cds.station.web import station_app
from cds.station.worker import Station
from tests.servers import free_port, serve
from tests.synthetic import Frontal, Gait, posterior_view

KEY = "a-station-key-for-tests"


def blank_clip(
    path: Path, frames: int, fps: float = 30.0, size: tuple[int, int] = (320, 240)
) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    frame = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    for n in range(frames):
        frame[:] = n % 200  # not all alike, as a camera's are not
        writer.write(frame)
    writer.release()
    return path


def hip_drop_then_level(fps: float = 30.0, seconds: float = 12.0) -> Track:
    """A runner seen from behind: right pelvic drop 8 deg, then 3 deg (17 whole strides each
    at 170 steps/min, so the gait continues seamlessly across the change)."""
    gait = Gait(fps=fps, seconds=seconds, width=320, height=240)
    gait_frontal = [Frontal(drop_deg={"left": 4.0, "right": d}) for d in (8.0, 3.0)]
    tracks = [posterior_view(gait, f)[0] for f in gait_frontal]
    # into the 320x240 frame: a uniform scale keeps every angle
    scale = np.array([0.6, 0.6, 0.6, 1.0])
    data = np.concatenate([t.data for t in tracks]) * scale + np.array([64.0, 120.0, 0.0, 0.0])
    return Track(data, fps, 320, 240)


def replay(track: Track) -> Any:
    """A detector that returns the landmarks of the captured frame's number."""

    def detect(captured: Captured) -> np.ndarray:
        return np.asarray(track.data[(captured.number - 1) % track.frames], dtype=float)

    return detect


@dataclass
class LiveStation:
    url: str
    station: Station
    records: Path

    def page(self, path: str) -> str:
        return f"{self.url}{path}{'&' if '?' in path else '?'}key={KEY}"


@contextmanager
def running_station(
    tmp: Path,
    *,
    source: Path,
    view: str = "posterior",
    detect: Any = None,
    schedule: Schedule | None = None,
    fhir_base: str | None = None,
    pack: Any = None,
    post: bool = False,
    loop: bool = True,
    roi: Any = None,
) -> Iterator[LiveStation]:
    records = tmp / "records"
    with ExitStack() as stack:
        src = open_source(str(source), loop=loop)
        session = Session(schedule or load_schedule())
        station = Station(src, view, session, detect=detect, roi=roi)  # type: ignore[arg-type]
        app = station_app(
            station, key=KEY, records=records, fhir_base=fhir_base, pack=pack,
            record=lambda s: write_record(s, records, fhir_base, post),
        )  # fmt: skip
        station.start()
        stack.callback(station.close)
        url = stack.enter_context(serve(app, free_port()))
        yield LiveStation(url, station, records)


class CuttableProxy:
    """A TCP proxy on loopback whose connections can all be cut, as a flaky network
    would: pages behind it must reconnect on their own."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._writers: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port, family=socket.AF_INET)
        )
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def cut(self) -> None:
        """Close every connection through the proxy (new ones still get through)."""

        def close_all() -> None:
            for w in self._writers:
                w.close()
            self._writers.clear()

        self._loop.call_soon_threadsafe(close_all)

    def close(self) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(timeout=5)
