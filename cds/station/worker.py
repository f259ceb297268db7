"""The station's worker: newest frame -> pose -> live strides -> session, and the
picture and state the two screens show.

One thread does the work; the web pages only read what it publishes. When the
pose model is slower than the camera, frames are dropped at the source (the
model always takes the newest), so the screens never lag behind the runner.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from cds.measures.pose import PoseEstimator, model_input
from cds.measures.settings import MeasureSettings
from cds.measures.track import View
from cds.measures.video import Roi
from cds.station.live import LiveAnalyzer
from cds.station.session import Session
from cds.station.source import Captured, FrameSource
from cds.station.targets import TARGETS

__all__ = ["Broadcaster", "Detector", "Station", "Stats"]

#: landmarks (33, 4) of a captured frame, NaN where no pose was found
Detector = Callable[[Captured], NDArray[np.float64]]

#: width of the picture sent to the screens (the model sees the full frame)
DISPLAY_WIDTH = 640
#: the window is analysed every this many processed frames
ANALYSE_EVERY = 2
#: MediaPipe landmark pairs drawn as the skeleton (trunk, arms, legs and feet)
BONES = (
    (11, 12), (11, 23), (12, 24), (23, 24), (11, 13), (13, 15), (12, 14), (14, 16),
    (23, 25), (25, 27), (27, 29), (29, 31), (27, 31), (24, 26), (26, 28), (28, 30), (30, 32),
    (28, 32),
)  # fmt: skip


class Broadcaster:
    """Hands the newest state to every connected page (each on its own event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = []

    def subscribe(self) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=4)
        with self._lock:
            self._subscribers.append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Any]) -> None:
        with self._lock:
            self._subscribers = [(lp, q) for lp, q in self._subscribers if q is not queue]

    def publish(self, message: Any) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            try:
                loop.call_soon_threadsafe(_offer, queue, message)
            except RuntimeError:  # that page's loop has closed
                self.unsubscribe(queue)


def _offer(queue: asyncio.Queue[Any], message: Any) -> None:
    """Put ``message``, dropping the oldest if a slow page has not read the last ones."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(message)


@dataclass
class Stats:
    processed: int = 0
    #: processed frames per second (exponential average)
    fps: float = 0.0
    pose_ms: float = 0.0
    last_at: float = 0.0
    poses: int = 0
    #: seconds from a frame's capture to its values being computed (the last 1000 frames)
    lags: list[float] = field(default_factory=list)

    def frame(self, took_s: float, now: float, had_pose: bool) -> None:
        if self.last_at:
            rate = 1.0 / max(1e-3, now - self.last_at)
            self.fps = rate if self.processed < 2 else 0.9 * self.fps + 0.1 * rate
        self.last_at = now
        self.processed += 1
        self.poses += had_pose
        self.pose_ms = 1000 * took_s if self.processed == 1 else 0.9 * self.pose_ms + 100 * took_s


def draw_skeleton(frame: NDArray[np.uint8], landmarks: NDArray[np.float64], scale: float) -> None:
    if np.isnan(landmarks[23, 0]):
        return
    points = landmarks[:, :2] * scale
    for a, b in BONES:
        pa, pb = points[a], points[b]
        if np.isfinite(pa).all() and np.isfinite(pb).all():
            cv2.line(frame, (int(pa[0]), int(pa[1])), (int(pb[0]), int(pb[1])), (60, 220, 255), 3)
    for i in range(11, 33):
        if np.isfinite(points[i]).all():
            cv2.circle(frame, (int(points[i][0]), int(points[i][1])), 4, (255, 255, 255), -1)


class Station:
    """The live pipeline for one camera view; ``start()`` runs it in a thread."""

    def __init__(
        self,
        source: FrameSource,
        view: View,
        session: Session,
        *,
        roi: Roi | None = None,
        settings: MeasureSettings | None = None,
        on_state: Callable[[dict[str, Any]], None] | None = None,
        detect: Detector | None = None,
    ) -> None:
        """``detect`` replaces the pose model (landmarks of a captured frame): the tests
        feed landmarks of known geometry through the rest of the real pipeline."""
        self.source, self.view, self.session, self.roi = source, view, session, roi
        self._detect = detect
        self.settings = settings or MeasureSettings()
        self.metric = next(code for code, t in TARGETS.items() if t.view == view)
        self.stats = Stats()
        self.broadcast = Broadcaster()
        self.jpeg: bytes = b""
        self.jpeg_number = 0
        self._on_state = on_state
        self._analyzer = self._new_analyzer()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="station", daemon=True)
        self.error: str | None = None

    def _new_analyzer(self) -> LiveAnalyzer:
        return LiveAnalyzer(
            self.view, self.metric, rate=self.source.fps, width=self.source.width,
            height=self.source.height, settings=self.settings,
        )  # fmt: skip

    def watch(self, metric: str) -> None:
        """Analyse ``metric`` from now on (a new session, or the console's preview)."""
        with self._lock:
            if metric != self.metric:
                self.metric = metric
                self._analyzer = self._new_analyzer()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.source.close()

    def state(self) -> dict[str, Any]:
        """What the pages show: the session, the station's health and the newest values."""
        out = self.session.snapshot()
        out["station"] = {
            "view": self.view,
            "watching": self.metric,
            "source": self.source.name,
            "fps": round(self.stats.fps, 1),
            "source_fps": self.source.fps,
            "pose_ms": round(self.stats.pose_ms, 1),
            "processed": self.stats.processed,
            "dropped": self.source.dropped,
            "runner_seen": self.stats.poses > 0,
            "ended": self.source.ended,
            "error": self.error,
        }
        return out

    def _picture(self, captured: Captured, landmarks: NDArray[np.float64]) -> None:
        frame = captured.frame
        scale = DISPLAY_WIDTH / frame.shape[1]
        small = np.asarray(
            cv2.resize(frame, (DISPLAY_WIDTH, round(frame.shape[0] * scale))), dtype=np.uint8
        )
        draw_skeleton(small, landmarks, scale)
        ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 75])
        if ok:
            self.jpeg, self.jpeg_number = encoded.tobytes(), captured.number

    def _step(self, detect: Detector, captured: Captured) -> None:
        began = time.perf_counter()
        landmarks = detect(captured)
        self.stats.frame(time.perf_counter() - began, time.time(), not np.isnan(landmarks[23, 0]))
        self._picture(captured, landmarks)
        with self._lock:
            self._analyzer.add(captured.at, landmarks)
            values = self._analyzer.update() if self.stats.processed % ANALYSE_EVERY == 0 else []
        self.session.add(values)
        self.stats.lags = [*self.stats.lags[-999:], time.time() - captured.at]
        if values or self.stats.processed % 5 == 0:
            self._publish()

    def _publish(self) -> None:
        state = self.state()
        self.broadcast.publish(state)
        if self._on_state is not None:
            self._on_state(state)

    def _loop(self, detect: Detector) -> None:
        last = 0
        while not self._stop.is_set():
            captured = self.source.take(last, timeout=0.5)
            if captured is None:
                if self.source.ended:
                    return
                continue
            last = captured.number
            self._step(detect, captured)

    def _run(self) -> None:
        try:
            if self._detect is not None:
                self._loop(self._detect)
            else:
                with PoseEstimator(self.roi) as estimator:
                    self._loop(lambda c: estimator.detect(model_input(c.frame, self.roi)))
        except Exception as exc:  # shown on the console; the web pages keep running
            self.error = f"{type(exc).__name__}: {exc}"
        self._publish()
