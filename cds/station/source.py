"""Where the station's frames come from: a camera, a network stream or a video file.

A reader thread takes frames as fast as the source gives them and keeps only
the newest: the pose model always works on the latest frame, never on a
backlog, and every frame it never saw is counted as dropped. A file is played
at its own frame rate, as a camera would deliver it (for demos, replays and
tests), and stops at its end unless ``loop`` is set.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cds.errors import StationError
from cds.measures.video import Frame

__all__ = ["Captured", "FrameSource", "open_source"]


@dataclass(frozen=True)
class Captured:
    """A frame and when it was read (``time.time()``, so a browser can compare)."""

    frame: Frame
    at: float
    number: int


class FrameSource:
    """The newest frame of a running capture, and how many were dropped."""

    def __init__(self, capture: cv2.VideoCapture, name: str, *, paced: bool, loop: bool) -> None:
        self.name = name
        self._capture = capture
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 1.0 <= fps <= 240.0 else 30.0
        self.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self._paced, self._loop = paced, loop
        self._newest: Captured | None = None
        self._taken = 0
        self.read = 0
        self.ended = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source {name}", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Frames read but replaced by a newer one before anyone took them."""
        with self._cond:
            return self.read - self._taken

    def _next(self, started: float, count: int) -> Frame | None:
        ok, frame = self._capture.read()
        if not ok and self._loop and self._paced and count > 0:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._capture.read()
        if not ok:
            return None
        if self._paced:  # deliver as a camera would: frame n at started + n / fps
            delay = started + count / self.fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        return np.asarray(frame, dtype=np.uint8)

    def _run(self) -> None:
        started, count = time.perf_counter(), 0
        while not self._stop.is_set():
            frame = self._next(started, count)
            if frame is None:
                break
            with self._cond:
                self.read += 1
                self._newest = Captured(frame, time.time(), self.read)
                self._cond.notify_all()
            count += 1
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def take(self, after: int, timeout: float = 1.0) -> Captured | None:
        """The newest frame numbered above ``after`` (waits up to ``timeout``); None at
        the end of a file or on a timeout."""
        with self._cond:
            self._cond.wait_for(
                lambda: self.ended or (self._newest is not None and self._newest.number > after),
                timeout,
            )
            newest = self._newest
            if newest is None or newest.number <= after:
                return None
            self._taken += 1
            return newest

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._capture.release()


def _describe(spec: str) -> tuple[int | str, str]:
    if spec.isdigit():
        return int(spec), f"camera {spec}"
    if "://" in spec:
        return spec, spec.split("@")[-1]  # never print credentials of a stream URL
    return spec, spec


def open_source(spec: str, *, loop: bool = False) -> FrameSource:
    """A camera index (``0``), a stream URL (``rtsp://``, ``http://``) or a video file."""
    target, name = _describe(spec)
    is_file = isinstance(target, str) and "://" not in target
    if is_file and not Path(spec).is_file():
        raise StationError(f"{spec}: no such video file")
    cv2.setLogLevel(1)  # OpenCV's own complaint about a missing camera: ours is clearer
    capture = cv2.VideoCapture(target)
    ok = capture.isOpened()
    if ok:
        ok, _ = capture.read()
        if is_file:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    if not ok:
        capture.release()
        if isinstance(target, int):
            why = "is it connected, and not in use by another program?"
        elif not is_file:
            why = "check the address and that the camera is on the network"
        else:
            why = "the file cannot be decoded as video"
        article = "" if isinstance(target, int) else "the stream " if not is_file else "the video "
        raise StationError(f"cannot open {article}{name}: {why}")
    return FrameSource(capture, name, paced=is_file, loop=loop)
