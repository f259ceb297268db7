"""The real pipeline on a real video: Sports2D's demo clip (walking, side view, 30 fps).

Reference values (run-form-measures.md §6): the walker moves right to left
from about 1.8 s to 6.6 s, left side nearest the camera; cadence about
95-100 steps/min (Sports2D's plot: stride about 1.23 s); near-knee flexion
8-15 deg at heel strike and about 83 deg at its swing peak, the swing peaks
in Sports2D's plot at about 2.35, 3.6, 4.8 and 6.05 s; overstride
0.45-0.58 leg lengths; floor tilt about 0.55 deg; trunk "lean" about -9 deg,
a landmark bias that needs a static trial.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cds.measures import Analysis, Roi, analyze_video, probe_video
from cds.measures.pose import MODEL_COMPLEXITY, estimate_track, search_track
from tests.media import DEMO_SHA256, demo_video, sha256

WALKER_ROWS = Roi(0, 490, 1768, 504)  # excludes the person on the roof
SPORTS2D_SWING_PEAKS_S = (2.35, 3.6, 4.8, 6.05)


@pytest.fixture(scope="session")
def demo() -> Path:
    return demo_video()


@pytest.fixture(scope="session")
def cropped(demo: Path) -> Analysis:
    return analyze_video(demo, "side", roi=WALKER_ROWS, workers=1)


@pytest.fixture(scope="session")
def automatic(demo: Path) -> Analysis:
    return analyze_video(demo, "side", workers=2)


def test_the_demo_clip_is_the_pinned_one(demo: Path) -> None:
    assert sha256(demo) == DEMO_SHA256
    info = probe_video(demo)
    assert (info.width, info.height, info.frames, info.fps) == (1768, 994, 230, 30.0)


def test_cadence_and_stride_times_match_the_reference(cropped: Analysis) -> None:
    cadence = cropped.result("cadence")
    assert 95 <= cadence.mean <= 100
    fps = cropped.video.fps
    strides = cropped.events.side_strides("left")
    assert len(strides) >= 3
    for stride in strides:
        assert 1.17 <= stride.frames / fps <= 1.27
    assert cropped.events.mode == "walking" and cropped.events.method == "zeni"


def test_near_side_is_left_and_far_limb_is_not_reported(cropped: Analysis) -> None:
    assert cropped.geometry.facing == -1  # walking right to left
    for code in ("knee-flexion-initial-contact", "peak-knee-flexion-stance", "overstride"):
        assert cropped.result(code, "left").usable, code
        far = cropped.result(code, "right")
        assert not far.usable and far.problems[0].startswith("far limb")


def test_near_knee_waveform_matches_the_reference(cropped: Analysis) -> None:
    knee = cropped.geometry.knee_flexion("left")
    fps = cropped.video.fps
    at_contact = cropped.result("knee-flexion-initial-contact", "left")
    assert all(5 <= v <= 15 for v in at_contact.values), at_contact.values
    swing_peaks = []
    for stride in cropped.events.side_strides("left"):
        frames = np.arange(int(stride.to), int(stride.next_ic))
        peak = frames[np.nanargmax(knee[frames])]
        swing_peaks.append((peak / fps, float(knee[peak])))
    assert max(v for _, v in swing_peaks) == pytest.approx(83, abs=8)
    assert all(v > 60 for _, v in swing_peaks)
    for when, _ in swing_peaks:  # each of our swing peaks is one of Sports2D's
        assert min(abs(when - ref) for ref in SPORTS2D_SWING_PEAKS_S) < 0.15, when


def test_heel_strike_events_precede_each_swing_peak_by_a_stance(cropped: Analysis) -> None:
    fps = cropped.video.fps
    contacts = cropped.events.ic["left"] / fps
    assert len(contacts) >= 3
    for ref in SPORTS2D_SWING_PEAKS_S:
        following = contacts[(contacts > ref) & (contacts < ref + 0.6)]
        if ref < contacts.max():
            assert following.size == 1, ref  # heel strike ends each swing


def test_overstride_foot_angle_trunk_and_floor(cropped: Analysis) -> None:
    assert 45 <= cropped.result("overstride", "left").mean <= 58
    foot = cropped.result("foot-inclination-initial-contact", "left")
    assert not foot.usable and "120 fps" in foot.problems[-1]
    assert foot.values and 10 <= foot.mean <= 20  # heel strike, computed but not reported
    trunk = cropped.result("trunk-forward-lean")
    assert trunk.mean == pytest.approx(-9, abs=3)
    assert any("static" in c for c in trunk.cautions)
    assert abs(cropped.events.floor.angle_deg) < 1.5


def test_without_a_roi_the_walker_is_found_and_the_roof_person_ignored(
    automatic: Analysis, cropped: Analysis
) -> None:
    assert automatic.roi_source == "auto" and automatic.roi is not None
    assert automatic.roi.y >= 400  # the roof person stands above row 400
    assert automatic.rejected_frames > 0  # the tracker jumped to someone else near the end
    assert automatic.result("cadence").mean == pytest.approx(
        cropped.result("cadence").mean, abs=1.5
    )
    knee = automatic.result("knee-flexion-initial-contact", "left")
    assert knee.mean == pytest.approx(
        cropped.result("knee-flexion-initial-contact", "left").mean, abs=2
    )


def test_two_workers_join_without_a_seam(demo: Path) -> None:
    info = probe_video(demo)
    one = estimate_track(info, WALKER_ROWS, workers=1)
    two = estimate_track(info, WALKER_ROWS, workers=2, min_share=60)  # short clip: force it
    seam = info.frames // 2
    walker = slice(60, 190)  # both runs follow the walker here (it leaves the frame at ~6.5 s)
    legs = [23, 25, 27, 29, 31]
    diff = np.linalg.norm(one.data[walker, legs, :2] - two.data[walker, legs, :2], axis=2)
    assert not np.isnan(diff).any()
    # the first share is identical; after the warm-up the second differs by tracker crop noise
    assert np.all(diff[: seam - 60] == 0)
    assert np.median(diff) < 0.5 and np.percentile(diff, 95) < 5.0
    steps = np.linalg.norm(np.diff(two.data[walker, 23, :2], axis=0), axis=1)
    assert steps[seam - 61] < 3 * np.median(steps) + 2  # no jump from frame 114 to 115


def test_pose_never_touches_the_network(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    import mediapipe
    from mediapipe.python.solutions import pose as mp_pose

    made: list[Any] = []

    class RecordingPose(mp_pose.Pose):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(kwargs.get("model_complexity"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(mp_pose, "Pose", RecordingPose)
    track = estimate_track(probe_video(demo), WALKER_ROWS, workers=1)
    assert (~np.isnan(track.data[:, 23, 0])).sum() > 100
    # every graph built used complexity 1, the one model the wheel ships (no download)
    assert made and set(made) == {MODEL_COMPLEXITY} == {1}
    models = Path(mediapipe.__file__).parent / "modules" / "pose_landmark"
    assert {p.name for p in models.glob("*.tflite")} == {"pose_landmark_full.tflite"}


def test_progress_is_reported_frame_by_frame_with_one_or_two_workers(demo: Path) -> None:
    info = probe_video(demo)
    for workers, min_share in ((1, 300), (2, 60)):
        steps: list[int] = []
        estimate_track(
            info, WALKER_ROWS, workers=workers, progress=steps.append, min_share=min_share
        )
        assert sum(steps) == info.frames and len(steps) >= 20, workers


def test_short_clips_stay_in_one_process() -> None:
    from cds.measures.pose import plan_chunks

    assert len(plan_chunks(230, 2)) == 1  # a worker's start-up would cost more than it saves
    shares = plan_chunks(920, 2)
    assert [(c.start, c.stop) for c in shares] == [(0, 460), (460, 920)]
    assert len(plan_chunks(5000, 8, min_share=300)) == 8


def test_shares_balance_the_warm_up_and_align_to_the_search_samples() -> None:
    from cds.measures.pose import plan_chunks

    shares = plan_chunks(920, 2, warmup=15)  # the second worker also runs 15 warm-up frames
    assert [(c.start, c.stop) for c in shares] == [(0, 468), (468, 920)]
    work = [c.stop - c.start + (15 if c.start else 0) for c in plan_chunks(5000, 4, warmup=15)]
    assert max(work) - min(work) <= 1
    searched = plan_chunks(1000, 3, align=3)
    assert all(c.start % 3 == 0 for c in searched) and searched[-1].stop == 1000


def test_the_search_pass_splits_across_workers_with_the_same_samples(demo: Path) -> None:
    info = probe_video(demo)
    one = search_track(info, every=3, workers=1)
    two = search_track(info, every=3, workers=2, min_share=60)  # short clip: force it
    assert one.data.shape == two.data.shape == (len(range(0, info.frames, 3)), 33, 4)
    # each sample is detected afresh, so where the split falls changes nothing
    np.testing.assert_allclose(two.data, one.data, atol=1e-3)


WORKER_MAIN = """
import os, time
from concurrent.futures import ProcessPoolExecutor

with open(os.environ["RUNS_FILE"], "a") as fh:
    fh.write(__name__ + "\\n")


def pid_after_a_nap() -> int:
    time.sleep(1)
    return os.getpid()


if __name__ == "__main__":
    from cds.measures.pose import _worker_context

    with ProcessPoolExecutor(2, mp_context=_worker_context()) as pool:
        pids = [pool.submit(pid_after_a_nap) for _ in range(2)]
        print(len({f.result() for f in pids}))
"""


def test_pose_workers_do_not_each_rerun_the_main_script(tmp_path: Path) -> None:
    """The fork server runs it once (the CLI, a benchmark): workers start at once."""
    import os
    import subprocess
    import sys

    from cds.measures._forkserver import MAIN_ENV
    from cds.measures.pose import _worker_context

    _worker_context()  # this process's own server: what it was told is not left behind
    assert MAIN_ENV not in os.environ
    script, runs = tmp_path / "main.py", tmp_path / "runs.txt"
    script.write_text(WORKER_MAIN)
    env = {**os.environ, "RUNS_FILE": str(runs)}
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "2"  # two worker processes served the calls
    assert runs.read_text().split() == ["__main__", "__mp_main__"]  # parent, then server only
