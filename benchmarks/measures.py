"""Video pipeline speed: the raw pose model against the full pipeline, 1 and 2 workers.

    ./benchmarks/run measures [--repeat N] [--runs R]

Baselines (same run): MediaPipe Pose alone (``process()`` on frames already
decoded, cropped and converted to RGB in memory); two of those in two
processes at once (what two cores give the model alone); and decoding alone
(decode, crop, RGB on one core, no model). Then the full ``analyze_video``
(decode, crop, pose, person selection, cleaning, events, metrics) with 1 and
2 worker processes, on Sports2D's demo clip and on the clip looped N times
(a longer session): walker rows as the region of interest, and without one
(a search pass finds the runner first). One worker decodes in a thread beside
the model, so it also uses part of the second core; the "1 worker, 1 core"
row pins it to one core to show what a worker does on its own share.

Every frame must be decoded once and run through the model once, so two cores
give at most ``2 / (model + decode)`` frames per second (the model's time taken
with both cores busy), while one worker gets ``1 / model`` by decoding on the
otherwise idle core: the "at most" figure printed for each clip. Every figure
is the best of R runs (the machine is shared; the best run is the least
disturbed). Goals: the pipeline keeps >= 90 % of the
raw model's frames per second per worker, and 2 workers reach >= 1.7x one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds.measures import Roi, analyze_video, probe_video  # noqa: E402
from cds.measures.pose import PoseEstimator, model_input, plan_chunks  # noqa: E402
from cds.measures.video import read_frames  # noqa: E402
from tests.media import demo_video  # noqa: E402

WALKER_ROWS = Roi(0, 490, 1768, 504)


def raw_model_fps(path: Path, roi: Roi, passes: int = 4) -> float:
    """The model alone, over the clip's frames held in memory, ``passes`` times."""
    frames = [model_input(f, roi) for f in read_frames(path)]
    with PoseEstimator() as estimator:
        estimator._pose.process(frames[0])  # graph start-up is not per-frame cost
        start = time.perf_counter()
        for _ in range(passes):
            for frame in frames:
                estimator._pose.process(frame)
        return passes * len(frames) / (time.perf_counter() - start)


def looped(path: Path, times: int, folder: Path) -> Path:
    """The clip played ``times`` times in a row (re-encoded, same size and rate)."""
    info = probe_video(path)
    out = folder / f"demo-x{times}.mp4"
    writer = cv2.VideoWriter(
        str(out), cv2.VideoWriter.fourcc(*"mp4v"), info.fps, (info.width, info.height)
    )
    for _ in range(times):
        for frame in read_frames(path):
            writer.write(frame)
    writer.release()
    return out


def two_raw_models_fps(path: Path, roi: Roi) -> float:
    """Two raw models in separate processes at once: their summed frames per second."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        return sum(pool.map(raw_model_fps, [path, path], [roi, roi]))


def decode_fps(path: Path, roi: Roi) -> float:
    """Decoding, cropping and colour conversion alone, one decoder thread, no model."""
    start = time.perf_counter()
    count = 0
    for frame in read_frames(path, decoder_threads=1):
        model_input(frame, roi)
        count += 1
    return count / (time.perf_counter() - start)


@contextmanager
def one_core() -> Iterator[None]:
    """This process and the threads it starts run on one CPU only."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


@dataclass(frozen=True)
class Row:
    label: str
    workers: int
    roi: Roi | None = WALKER_ROWS
    pinned: bool = False


ROWS = (
    Row("1 worker", 1),
    Row("1 worker, 1 core", 1, pinned=True),
    Row("2 workers", 2),
    Row("1 worker, no ROI", 1, roi=None),
    Row("2 workers, no ROI", 2, roi=None),
)


def pipeline_fps(path: Path, row: Row, runs: int) -> tuple[float, float]:
    info = probe_video(path)
    best = float("inf")
    for _ in range(runs):
        with one_core() if row.pinned else nullcontext():
            start = time.perf_counter()
            analyze_video(path, "side", roi=row.roi, workers=row.workers)
            best = min(best, time.perf_counter() - start)
    return info.frames / best, info.duration_s / best


def print_baselines(clips: dict[str, Path], runs: int) -> float:
    demo = clips["demo"]
    raw = max(raw_model_fps(demo, WALKER_ROWS) for _ in range(runs))
    pair = max(two_raw_models_fps(demo, WALKER_ROWS) for _ in range(runs))
    print(f"raw pose model (baseline):   {raw:6.1f} frames/s ({1000 / raw:.1f} ms/frame)")
    print(f"2 raw models, 2 processes:   {pair:6.1f} frames/s ({pair / raw:.2f}x raw)")
    busy_model = pair / 2  # one model's speed while both cores are busy
    for name, clip in clips.items():
        decode = max(decode_fps(clip, WALKER_ROWS) for _ in range(runs))
        ceiling = 2 / (1 / busy_model + 1 / decode)
        print(f"decode alone, {name:12} {decode:6.1f} frames/s ({1000 / decode:.1f} ms/frame, "
              f"{probe_codec(clip)}): {raw / decode:.0%} of the model's time; 2 workers "
              f"can reach at most {ceiling:.1f} frames/s ({ceiling / raw:.2f}x raw)")  # fmt: skip
    return raw


def probe_codec(path: Path) -> str:
    cap = cv2.VideoCapture(str(path))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
    cap.release()
    return "".join(chr((fourcc >> 8 * i) & 0xFF) for i in range(4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=4, help="loops of the clip (default 4)")
    parser.add_argument("--runs", type=int, default=3, help="best of this many runs (default 3)")
    args = parser.parse_args()
    demo = demo_video()
    with tempfile.TemporaryDirectory() as tmp:
        clips = {"demo": demo, f"demo x{args.repeat}": looped(demo, args.repeat, Path(tmp))}
        raw = print_baselines(clips, args.runs)
        print("\nworkers: asked (used: a short clip stays in one process)")
        print(f"{'clip':12} {'run':18} {'workers':>7} {'frames/s':>9} {'vs raw':>7} "
              f"{'vs 1 worker':>12} {'real-time':>10}")  # fmt: skip
        for name, clip in clips.items():
            one: dict[bool, float] = {}
            for row in ROWS:
                fps, realtime = pipeline_fps(clip, row, args.runs)
                used = len(plan_chunks(probe_video(clip).frames, row.workers))
                one.setdefault(row.roi is None, fps)
                print(f"{name:12} {row.label:18} {row.workers:>3} ({used}) {fps:9.1f} "
                      f"{fps / raw:7.0%} {fps / one[row.roi is None]:11.2f}x "
                      f"{realtime:9.2f}x")  # fmt: skip
        print("\ngoals: >= 90 % of raw per worker (1 worker row); 2 workers >= 1.7x one")


if __name__ == "__main__":
    main()
