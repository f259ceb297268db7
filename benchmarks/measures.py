"""Video pipeline speed: the raw pose model against the full pipeline, 1 and 2 workers.

    ./benchmarks/run measures [--repeat N] [--runs R]

Baseline (same run): MediaPipe Pose alone (``process()`` on frames already
decoded, cropped and converted to RGB in memory). Then the full
``analyze_video`` (decode, crop, pose, person selection, cleaning, events,
metrics) with 1 and 2 worker processes, on Sports2D's demo clip and on the
clip looped N times (a longer session), walker rows as the region of
interest. A second baseline runs the raw model in two processes at once:
what two cores can give at best. Every figure is the best of R runs (the
machine is shared; the best run is the least disturbed). Goals: the pipeline
keeps >= 90 % of the raw model's frames per second per worker, and 2 workers
reach >= 1.7x one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds.measures import Roi, analyze_video, probe_video  # noqa: E402
from cds.measures.pose import PoseEstimator, plan_chunks  # noqa: E402
from cds.measures.video import read_frames  # noqa: E402
from tests.media import demo_video  # noqa: E402

WALKER_ROWS = Roi(0, 490, 1768, 504)


def raw_model_fps(path: Path, roi: Roi, passes: int = 4) -> float:
    """The model alone, over the clip's frames held in memory, ``passes`` times."""
    frames = [
        cv2.cvtColor(f[roi.y : roi.y + roi.h, roi.x : roi.x + roi.w], cv2.COLOR_BGR2RGB)
        for f in read_frames(path)
    ]
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


def pipeline_fps(path: Path, workers: int, runs: int) -> tuple[float, float]:
    info = probe_video(path)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        analyze_video(path, "side", roi=WALKER_ROWS, workers=workers)
        best = min(best, time.perf_counter() - start)
    return info.frames / best, info.duration_s / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=4, help="loops of the clip (default 4)")
    parser.add_argument("--runs", type=int, default=3, help="best of this many runs (default 3)")
    args = parser.parse_args()
    demo = demo_video()
    with tempfile.TemporaryDirectory() as tmp:
        long_clip = looped(demo, args.repeat, Path(tmp))
        raw = max(raw_model_fps(demo, WALKER_ROWS) for _ in range(args.runs))
        pair = max(two_raw_models_fps(demo, WALKER_ROWS) for _ in range(args.runs))
        print(f"raw pose model (baseline):   {raw:6.1f} frames/s ({1000 / raw:.1f} ms/frame)")
        print(
            f"2 raw models, 2 processes:   {pair:6.1f} frames/s ({pair / raw:.2f}x: the ceiling)\n"
        )
        print("workers: asked (used: a short clip stays in one process)")
        print(f"{'clip':22} {'workers':>7} {'frames/s':>9} {'vs raw':>7} {'vs 1 worker':>12} "
              f"{'real-time':>10}")  # fmt: skip
        for name, clip in (("demo (7.7 s)", demo), (f"demo x{args.repeat}", long_clip)):
            one = None
            for workers in (1, 2):
                fps, realtime = pipeline_fps(clip, workers, args.runs)
                used = len(plan_chunks(probe_video(clip).frames, workers))
                one = one or fps
                print(f"{name:22} {workers:>3} ({used}) {fps:9.1f} {fps / raw:7.0%} "
                      f"{fps / one:11.2f}x {realtime:9.2f}x")  # fmt: skip
        print("\ngoals: >= 90 % of raw per worker (1 worker row); 2 workers >= 1.7x one")


if __name__ == "__main__":
    main()
