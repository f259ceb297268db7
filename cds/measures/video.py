"""Video files: what they are (size, rate, hash) and their frames."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue

import cv2
import numpy as np
from numpy.typing import NDArray

from cds.errors import MeasureError

__all__ = ["Roi", "VideoInfo", "prefetched", "probe_video", "read_frames"]

Frame = NDArray[np.uint8]


@dataclass(frozen=True)
class Roi:
    """A region of interest in pixels of the full frame."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str) -> Roi:
        """``x,y,w,h`` in pixels."""
        parts = text.split(",")
        try:
            x, y, w, h = (int(p.strip()) for p in parts)
        except ValueError:
            raise MeasureError(f"--roi must be x,y,w,h in whole pixels, got {text!r}") from None
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise MeasureError(f"--roi {text!r}: x and y must be >= 0, w and h > 0")
        return cls(x, y, w, h)

    def clip(self, width: int, height: int) -> Roi:
        """This region cut to a frame of ``width`` x ``height``; an error if nothing is left."""
        x0, y0 = min(max(self.x, 0), width), min(max(self.y, 0), height)
        x1, y1 = min(self.x + self.w, width), min(self.y + self.h, height)
        if x1 - x0 < 32 or y1 - y0 < 32:
            raise MeasureError(
                f"region of interest {self.x},{self.y},{self.w},{self.h} leaves less than "
                f"32x32 pixels of the {width}x{height} frame"
            )
        return Roi(x0, y0, x1 - x0, y1 - y0)

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.w},{self.h}"


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float
    frames: int
    width: int
    height: int
    sha256: str
    #: base64 SHA-1, the form FHIR's Attachment.hash takes
    sha1_b64: str
    size_bytes: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps


def _hashes(path: Path) -> tuple[str, str]:
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), base64.b64encode(sha1.digest()).decode()


def probe_video(path: Path) -> VideoInfo:
    """Open ``path`` and read its header; a MeasureError if it is not a readable video."""
    if not path.is_file():
        raise MeasureError(f"{path}: no such video file")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise MeasureError(f"{path}: not a video this tool can read")
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        ok, _ = cap.read()
    finally:
        cap.release()
    if not ok or frames <= 0 or width <= 0:
        raise MeasureError(f"{path}: the file holds no decodable video frames")
    if not 1 <= fps <= 2000:
        raise MeasureError(f"{path}: implausible frame rate {fps!r} in the file header")
    sha256, sha1 = _hashes(path)
    return VideoInfo(path, fps, frames, width, height, sha256, sha1, path.stat().st_size)


def read_frames(
    path: Path,
    start: int = 0,
    stop: int | None = None,
    *,
    decoder_threads: int = 0,
    every: int = 1,
) -> Iterator[Frame]:
    """BGR frames ``start`` .. ``stop`` (exclusive) of ``path``; with ``every`` > 1
    only frames ``start``, ``start + every``, ... (the others are skipped undecoded
    to images).

    ``decoder_threads`` caps FFmpeg's decoding threads (0: its default), so
    parallel workers do not each spread their decoding over every core.
    """
    params = [cv2.CAP_PROP_N_THREADS, decoder_threads] if decoder_threads else []
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, params)
    try:
        if start:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
            if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) != start:  # seek not exact: decode forward
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                for _ in range(start):
                    cap.grab()
        index = start
        while stop is None or index < stop:
            if (index - start) % every:
                if not cap.grab():
                    return
            else:
                ok, frame = cap.read()
                if not ok:
                    return
                yield np.asarray(frame, dtype=np.uint8)
            index += 1
    finally:
        cap.release()


def prefetched(frames: Iterator[Frame], depth: int = 4, batch: int = 4) -> Iterator[Frame]:
    """``frames`` decoded ahead in a thread, so decoding overlaps whatever consumes them.

    Frames cross in batches: every hand-over between threads costs a GIL switch.
    """
    queue: Queue[list[Frame] | BaseException | None] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            pending: list[Frame] = []
            for frame in frames:
                if stop.is_set():
                    return
                pending.append(frame)
                if len(pending) == batch:
                    queue.put(pending)
                    pending = []
            if pending:
                queue.put(pending)
        except BaseException as exc:  # handed to the consumer, raised there
            queue.put(exc)
            return
        queue.put(None)

    thread = threading.Thread(target=produce, name="frame-decoder", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                queue.get_nowait()
            except Empty:
                thread.join(timeout=0.05)
