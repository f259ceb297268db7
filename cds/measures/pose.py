"""MediaPipe 0.10.21 legacy Pose over a video, split across worker processes.

Only ``model_complexity=1`` is used: it is the one model the 0.10.21 wheel
ships, so nothing is downloaded at run time (complexities 0 and 2 would fetch
a model from the network). ``smooth_landmarks=False`` because MediaPipe's
built-in filter is causal and assumes 30 fps; we filter offline instead.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue as queue_module
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.queues import Queue
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from cds.errors import MeasureError
from cds.measures._forkserver import main_handed_to_server
from cds.measures.track import Track
from cds.measures.video import Frame, Roi, VideoInfo, prefetched, read_frames

__all__ = [
    "MODEL_COMPLEXITY",
    "PoseEstimator",
    "estimate_track",
    "mediapipe_version",
    "model_input",
    "plan_chunks",
    "search_track",
]

MODEL_COMPLEXITY = 1
#: frames a worker runs before its share of the clip, so its tracker has locked on
WARMUP_S = 0.5
#: below this many frames per worker, splitting costs more than it gains: a worker
#: takes ~0.3 s to start and runs a warm-up (measured: a 230-frame clip is slower on 2)
MIN_FRAMES_PER_WORKER = 300

Progress = Callable[[int], None]


def mediapipe_version() -> str:
    import mediapipe

    return str(mediapipe.__version__)


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Hide what MediaPipe's C++ prints while its graph starts (TFLite and absl notices).

    They go straight to file descriptor 2 and would break the progress bars;
    failures still surface as Python exceptions.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def model_input(frame: Frame, roi: Roi | None) -> Frame:
    """What the model sees: the region of interest of a BGR frame, as RGB."""
    if roi is not None:
        frame = frame[roi.y : roi.y + roi.h, roi.x : roi.x + roi.w]
    return np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), dtype=np.uint8)


class PoseEstimator:
    """One MediaPipe Pose graph, reused over the frames of one clip, then closed.

    ``search=True`` detects the most prominent person afresh in every frame
    (MediaPipe's static-image mode) instead of tracking the one found first:
    used to find the runner, not to measure them.
    """

    def __init__(self, roi: Roi | None = None, *, search: bool = False) -> None:
        from mediapipe.python.solutions import pose as mp_pose

        self.roi = roi
        self._started = False
        with _native_stderr_silenced():
            self._pose: Any = mp_pose.Pose(
                static_image_mode=search,
                model_complexity=MODEL_COMPLEXITY,
                smooth_landmarks=False,
                enable_segmentation=False,
                min_detection_confidence=0.5,
                min_tracking_confidence=0.5,
            )

    def __enter__(self) -> PoseEstimator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pose.close()

    def detect(self, rgb: Frame) -> NDArray[np.float64]:
        """(33, 4) x, y (pixels of the full frame), z (scaled like x), visibility; NaN if
        none. ``rgb`` is ``model_input`` of a frame with this estimator's ROI."""
        x0, y0 = (self.roi.x, self.roi.y) if self.roi is not None else (0, 0)
        crop_h, crop_w = rgb.shape[:2]
        if self._started:
            result = self._pose.process(rgb)
        else:  # the first frame loads the TFLite delegates, which announce themselves
            with _native_stderr_silenced():
                result = self._pose.process(rgb)
            self._started = True
        if result.pose_landmarks is None:
            return np.full((33, 4), np.nan)
        out = np.array([(p.x, p.y, p.z, p.visibility) for p in result.pose_landmarks.landmark])
        out *= (crop_w, crop_h, crop_w, 1.0)
        out += (x0, y0, 0.0, 0.0)
        return out


_progress_queue: Queue[int] | None = None


def _init_worker(queue: Queue[int] | None) -> None:
    global _progress_queue
    _progress_queue = queue


def _ignore(frames: int) -> None:
    pass


def _report_to_parent(frames: int) -> None:
    if _progress_queue is not None:
        _progress_queue.put(frames)


def _estimate_chunk(
    info: VideoInfo,
    start: int,
    stop: int,
    warmup: int,
    roi: Roi | None,
    report: Progress = _report_to_parent,
    every: int = 1,
) -> NDArray[np.float64]:
    """Landmarks of frames ``start`` .. ``stop``, after ``warmup`` frames to lock on.

    With ``every`` > 1, a search: every ``every``-th frame, each detected
    afresh, one row per sampled frame.
    """
    first = max(0, start - warmup)
    out = np.full((len(range(start, stop, every)), 33, 4), np.nan)
    reported = 0
    with PoseEstimator(roi, search=every > 1) as estimator:
        # decoding, cropping and colour conversion run in a thread, overlapping the model
        decoded = read_frames(info.path, first, stop, decoder_threads=1, every=every)
        frames = prefetched(model_input(f, roi) for f in decoded)
        for row, frame in enumerate(frames):
            landmarks = estimator.detect(frame)
            index = first + row * every
            if index >= start:
                out[(index - start) // every] = landmarks
                if (index - start) // every % 10 == 9:
                    report(index + 1 - start - reported)
                    reported = index + 1 - start
    if stop - start > reported:
        report(stop - start - reported)
    return out


@dataclass(frozen=True)
class Chunk:
    start: int
    stop: int


def plan_chunks(
    frames: int,
    workers: int,
    min_share: int = MIN_FRAMES_PER_WORKER,
    *,
    warmup: int = 0,
    align: int = 1,
) -> list[Chunk]:
    """Consecutive shares of ``frames`` for at most ``workers`` processes.

    Every share but the first also runs ``warmup`` frames before it, so the
    first share is that much longer: each worker gets the same work. Shares
    start on multiples of ``align`` (a search samples every ``align``-th frame).
    """
    count = max(1, min(workers, frames // min_share))
    bounds = np.linspace(warmup, frames, count + 1)
    bounds[0] = 0
    aligned = (np.round(bounds / align) * align).astype(int)
    aligned[-1] = frames
    return [Chunk(int(a), int(b)) for a, b in itertools.pairwise(aligned)]


def estimate_track(
    info: VideoInfo,
    roi: Roi | None = None,
    *,
    workers: int = 1,
    progress: Progress | None = None,
    min_share: int = MIN_FRAMES_PER_WORKER,
) -> Track:
    """Run pose estimation over the whole clip; long clips are split across processes.

    Each worker starts ``WARMUP_S`` before its share and discards those frames,
    so the tracker is locked on at the seam and the shares join without a jump.
    A clip is split only into shares of at least ``min_share`` frames.
    """
    if roi is not None:
        roi = roi.clip(info.width, info.height)
    warmup = max(1, round(WARMUP_S * info.fps))
    chunks = plan_chunks(info.frames, workers, min_share, warmup=warmup)
    data = _estimate_chunks(info, chunks, warmup, roi, progress)
    if np.isnan(data[:, 23, 0]).all():
        where = f" inside the region of interest {roi}" if roi else ""
        raise MeasureError(f"{info.path}: no person was found in any frame{where}")
    return Track(data=data, fps=info.fps, width=info.width, height=info.height)


def search_track(
    info: VideoInfo,
    every: int,
    progress: Progress | None = None,
    *,
    workers: int = 1,
    min_share: int = MIN_FRAMES_PER_WORKER,
) -> Track:
    """Every ``every``-th frame of the whole picture, each searched afresh for a person.

    MediaPipe's tracker keeps the person it found first (on Sports2D's demo, a
    person on a roof for 5 s while the walker crosses below); detecting in each
    sampled frame finds whoever is most prominent at that moment. The Track has
    one row per sample (its ``fps`` is the sampling rate). Samples are
    independent, so long clips split across ``workers`` with no warm-up.
    """
    chunks = plan_chunks(info.frames, workers, min_share, align=every)
    data = _estimate_chunks(info, chunks, 0, None, progress, every)
    return Track(data=data, fps=info.fps / every, width=info.width, height=info.height)


def _estimate_chunks(
    info: VideoInfo,
    chunks: list[Chunk],
    warmup: int,
    roi: Roi | None,
    progress: Progress | None,
    every: int = 1,
) -> NDArray[np.float64]:
    if len(chunks) == 1:
        return _estimate_chunk(info, 0, info.frames, 0, roi, progress or _ignore, every)
    return _estimate_parallel(info, chunks, warmup, roi, progress, every)


def _worker_context() -> mp.context.BaseContext:
    """Workers fork from a clean server that has MediaPipe imported already.

    Not plain fork: this process may hold MediaPipe graph threads, which do not
    survive a fork. Not spawn: each worker would re-import MediaPipe (~1.5 s).
    The server also runs our main script once, for all its forks (see
    ``_forkserver``).
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["cds.measures._forkserver", "cds.measures.pose", "mediapipe.python.solutions.pose"]
    )
    with main_handed_to_server():
        forkserver.ensure_running()
    return ctx


def _estimate_parallel(
    info: VideoInfo,
    chunks: list[Chunk],
    warmup: int,
    roi: Roi | None,
    progress: Progress | None,
    every: int,
) -> NDArray[np.float64]:
    ctx = _worker_context()
    queue: Queue[int] = ctx.Queue()
    with ProcessPoolExecutor(
        len(chunks), mp_context=ctx, initializer=_init_worker, initargs=(queue,)
    ) as pool:
        futures = [
            pool.submit(_estimate_chunk, info, c.start, c.stop, warmup, roi, every=every)
            for c in chunks
        ]
        pending = info.frames
        while pending > 0 and not all(f.done() for f in futures):
            try:
                step = queue.get(timeout=0.2)
            except queue_module.Empty:  # a crashed worker shows in its future below
                continue
            pending -= step
            if progress:
                progress(step)
        parts = [f.result() for f in futures]
    while not queue.empty():
        step = queue.get()
        if progress:
            progress(step)
    data: NDArray[np.float64] = np.concatenate(parts)
    return data
