"""The live retraining station: causal strides, schedule, session, record, source and API."""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle

from cds.errors import StationError
from cds.fhir.facts import ClinicalData, build_facts
from cds.fhir.parse import parse_resource
from cds.rules.compile import CompiledPack
from cds.station.live import LiveAnalyzer, StrideValue
from cds.station.record import session_bundle
from cds.station.schedule import Schedule, load_schedule
from cds.station.session import Session, Setup
from cds.station.source import open_source
from tests.stations import KEY, blank_clip, hip_drop_then_level, replay, running_station
from tests.synthetic import Frontal, Gait, posterior_view, side_view

SIDE = Setup("Patient/p-7", "contralateral-pelvic-drop", "right", 0.0, 5.0, 1, "Keep level")


def _feed(analyzer: LiveAnalyzer, data: np.ndarray, fps: float, drop: float = 0.0,
          seed: int = 1) -> list[StrideValue]:  # fmt: skip
    rng = np.random.default_rng(seed)
    out: list[StrideValue] = []
    for i, landmarks in enumerate(data):
        if rng.random() < drop:
            continue  # the model was busy: the station never saw this frame
        analyzer.add(i / fps, landmarks)
        if i % 3 == 0:  # as the station does, not on every frame
            out += analyzer.update()
    return out


# -- live strides ---------------------------------------------------------------------------


@pytest.mark.parametrize("drop", [0.0, 0.3], ids=["every-frame", "30%-dropped"])
def test_each_stride_is_reported_once_with_the_value_the_geometry_implies(drop: float) -> None:
    gait = Gait(fps=30.0, seconds=20.0)
    track, truth = posterior_view(gait, Frontal())
    analyzer = LiveAnalyzer("posterior", "contralateral-pelvic-drop", rate=30.0,
                            width=track.width, height=track.height)  # fmt: skip
    got = _feed(analyzer, track.data, 30.0, drop)
    for side in ("left", "right"):
        values = [v for v in got if v.side == side]
        starts = np.array([v.started for v in values])
        assert len(values) >= 24  # 28 strides in 20 s, less the first window's
        assert np.all(np.diff(starts) > 0.5 * gait.stride_s)  # never the same stride twice
        expected = truth.mean("contralateral-pelvic-drop", side)
        assert np.median([v.value for v in values]) == pytest.approx(expected, abs=0.3)
    for v in got:  # causal: reported only from frames at or after the stride's end
        assert v.seen_at >= v.ended + analyzer.settle_s


def test_side_view_cadence_follows_a_change_of_step_rate() -> None:
    slow, _ = side_view(Gait(fps=60.0, seconds=10.0, cadence=160.0))
    fast, _ = side_view(Gait(fps=60.0, seconds=10.0, cadence=176.0))
    analyzer = LiveAnalyzer("side", "cadence", rate=60.0, width=slow.width, height=slow.height)
    got = _feed(analyzer, np.concatenate([slow.data, fast.data]), 60.0)
    assert {v.side for v in got} == {"right"}  # facing right: the far (left) limb is not used
    early = [v.value for v in got if v.ended < 9.0]
    late = [v.value for v in got if v.started > 12.0]
    assert early and late
    assert np.median(early) == pytest.approx(160.0, abs=2.0)
    assert np.median(late) == pytest.approx(176.0, abs=2.0)


def test_a_change_of_form_shows_within_two_strides() -> None:
    track = hip_drop_then_level()
    analyzer = LiveAnalyzer("posterior", "contralateral-pelvic-drop", rate=30.0, width=320,
                            height=240)  # fmt: skip
    right = [v for v in _feed(analyzer, track.data, 30.0) if v.side == "right"]
    after = [v for v in right if v.started > 12.0]
    assert all(v.value > 6.5 for v in right if v.ended < 11.5)
    assert all(v.value < 3.5 for v in after[1:]) and after[0].started < 13.5


# -- the schedule -------------------------------------------------------------------------------


def test_the_default_schedule_follows_the_trials() -> None:
    schedule = load_schedule()
    assert len(schedule.sessions) == 8 and schedule.provenance == "placeholder"
    assert [s.minutes for s in schedule.sessions][::7] == [15, 30]
    shares = [s.feedback_share for s in schedule.sessions]
    assert shares[:4] == [1.0] * 4
    assert all(a > b for a, b in itertools.pairwise(shares[3:]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nsessions:\n  - minutes: 10\n    blocks: [{minutes: 10, feedbak: true}]\n",
         "4:28: unknown key 'feedbak' — did you mean 'feedback'? [schedule-unknown-key]"),
        ("name: x\nsessions:\n  - minutes: 10\n    blocks: [{minutes: 6, feedback: true}]\n",
         "3:5: the blocks add up to 6 minutes, the session lasts 10 [schedule-schema]"),
        ("name: x\nsessions:\n  - minutes: 10\n   blocks: []\n",
         "[schedule-yaml-syntax]"),
    ],
    ids=["typo", "blocks-do-not-fill", "indentation"],
)  # fmt: skip
def test_a_bad_schedule_is_refused_with_file_line_and_column(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "clinic.yaml"
    path.write_text(text)
    with pytest.raises(StationError) as info:
        load_schedule(path)
    assert f"{path}:" in info.value.message and expected in info.value.message


def _quick(*blocks: tuple[float, bool]) -> Schedule:
    minutes = sum(m for m, _ in blocks)
    return Schedule(name="quick", sessions=[{"minutes": minutes,  # type: ignore[list-item]
        "blocks": [{"minutes": m, "feedback": f} for m, f in blocks]}])  # fmt: skip


# -- the session -----------------------------------------------------------------------------------


def _value(side: str, value: float) -> StrideValue:
    now = time.time()
    return StrideValue(side, value, now - 0.7, now, now)  # type: ignore[arg-type]


def test_strides_go_into_the_running_block_and_feedback_follows_the_schedule() -> None:
    session = Session(_quick((0.01, True), (0.01, False), (1.0, True)))
    session.start(SIDE, 2, "posterior")
    session.add([_value("right", 4.0), _value("left", 9.0), _value("right", 6.0)])
    first = session.snapshot()
    assert first["feedback"] and first["blocks"][0]["strides"] == 2  # the left side is not chosen
    assert first["blocks"][0]["in_band"] == 1
    time.sleep(0.7)
    assert not session.snapshot()["feedback"]  # block 2: feedback withheld
    session.add([_value("right", 3.0)])
    session.pause()
    paused = session.elapsed_s
    time.sleep(0.3)
    assert session.elapsed_s == paused and session.snapshot()["state"] == "paused"
    session.add([_value("right", 3.5)])  # not counted while paused
    session.resume()
    time.sleep(0.6)
    state = session.snapshot()
    assert state["feedback"] and state["block"] == 2
    assert [b["strides"] for b in state["blocks"]] == [2, 1, 0]
    session.stop(1)
    assert session.snapshot()["state"] == "stopped" and session.pain_after == 1


@pytest.mark.parametrize(
    ("setup", "view", "message"),
    [
        (SIDE, "side", "needs the posterior view"),
        (Setup("Patient/p", "contralateral-pelvic-drop", "right", 5, 5, 1), "posterior", "empty"),
        (Setup("p 7", "contralateral-pelvic-drop", "right", 0, 5, 1), "posterior", "Patient/ID"),
        (Setup("Patient/p", "contralateral-pelvic-drop", "right", 0, 5, 9), "posterior",
         "session 9 is not in the schedule"),
        (Setup("Patient/p", "cadence", "left", 150, 170, 1), "side", "choose 'both'"),
        (Setup("Patient/p", "hip-abduction-strength", "left", 0, 5, 1), "posterior",
         "cannot be retrained live"),
    ],
)  # fmt: skip
def test_a_setup_that_cannot_work_is_refused_before_it_starts(
    setup: Setup, view: Any, message: str
) -> None:
    session = Session(load_schedule())
    with pytest.raises(StationError, match=message):
        session.start(setup, 2, view)
    assert session.state == "idle"


def test_pain_must_be_a_rating() -> None:
    session = Session(load_schedule())
    with pytest.raises(StationError, match="0 to 10"):
        session.start(SIDE, 11, "posterior")


# -- the record ---------------------------------------------------------------------------------


def _recorded_session() -> Session:
    session = Session(_quick((0.01, True), (1.0, False)))
    setup = Setup("Patient/p-7", "contralateral-pelvic-drop", "both", 0, 5, 1, "Keep level",
                  "ServiceRequest/sr-1")  # fmt: skip
    session.start(setup, 3, "posterior")
    session.add([_value("right", 4.0), _value("right", 5.5), _value("left", 2.0)])
    time.sleep(0.7)
    session.add([_value("right", 7.0 + i % 2) for i in range(8)])  # enough strides to count
    session.stop(1)
    return session


def test_a_session_becomes_a_valid_r4_procedure_with_observations_per_block() -> None:
    bundle = session_bundle(_recorded_session())
    Bundle.model_validate(bundle)
    resources = [e["resource"] for e in bundle["entry"]]
    [procedure] = [r for r in resources if r["resourceType"] == "Procedure"]
    assert procedure["basedOn"] == [{"reference": "ServiceRequest/sr-1"}]
    assert procedure["status"] == "stopped" and "stopped after" in procedure["statusReason"]["text"]
    assert procedure["code"]["coding"][0]["code"] == "gait-retraining-video-feedback"
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    codes = [o["code"]["coding"][0]["code"] for o in observations]
    assert codes.count("pain-before-session") == 1 and codes.count("pain-after-session") == 1
    blocks = [
        o for o in observations if codes[observations.index(o)] == "contralateral-pelvic-drop"
    ]
    summary = {(o["bodySite"]["coding"][0]["code"], _feedback(o)): o["valueQuantity"]["value"]
               for o in blocks}  # fmt: skip
    assert summary == {("287579007", "given"): 4.75, ("287679003", "given"): 2.0,
                       ("287579007", "withheld"): 7.5}  # fmt: skip
    for o in blocks:
        assert o["referenceRange"][0]["high"]["value"] == 5
        assert o["partOf"][0]["reference"] == bundle["entry"][1]["fullUrl"]


def _feedback(obs: dict[str, Any]) -> str:
    return next(
        c["valueCodeableConcept"]["coding"][0]["code"]
        for c in obs["component"]
        if c["code"]["coding"][0]["code"] == "real-time-feedback"
    )


def test_blocks_with_feedback_never_stand_for_the_runners_form(core_pack: CompiledPack) -> None:
    """The closing of the loop: what the station records goes back into the CDS facts,
    and only the block without feedback is read as the runner's pelvic drop."""
    bundle = session_bundle(_recorded_session())
    observations = []
    for i, entry in enumerate(bundle["entry"]):
        res = {**entry["resource"], "id": f"s{i}"}
        if res["resourceType"] == "Observation":
            observations.append(parse_resource(res, f"entry[{i}]"))
    facts = build_facts(ClinicalData(observations=observations), core_pack.policy,  # type: ignore[arg-type]
                        now=datetime.now(UTC))  # fmt: skip
    assert facts.sides["right"]["contralateral_pelvic_drop"] == 7.5
    reasons = [r.reason or "" for r in facts.excluded]
    assert sum("real-time feedback" in r for r in reasons) == 2  # both "given" blocks


# -- the source ---------------------------------------------------------------------------------


def test_a_missing_camera_file_or_stream_is_a_clear_message() -> None:
    with pytest.raises(StationError, match="cannot open camera 9"):
        open_source("9")
    with pytest.raises(StationError, match="no such video file"):
        open_source("/no/such/clip.mp4")
    with pytest.raises(StationError, match=r"cannot open the stream 127\.0\.0\.1:9/live") as info:
        open_source("rtsp://nurse:secret@127.0.0.1:9/live")
    assert "secret" not in info.value.message


def test_a_file_plays_at_its_own_rate_and_the_reader_only_gets_the_newest(tmp_path: Path) -> None:
    source = open_source(str(blank_clip(tmp_path / "c.mp4", 60)))
    began, last, taken = time.monotonic(), 0, 0
    while (frame := source.take(last, timeout=2)) is not None:
        last, taken = frame.number, taken + 1
        time.sleep(0.1)  # a slow consumer
    took = time.monotonic() - began
    assert 1.8 < took < 3.0  # 60 frames at 30 fps
    assert source.read == 60 and taken < 30 and source.dropped == 60 - taken
    source.close()


# -- the web API (a real server on loopback) ----------------------------------------------------


def test_pages_and_calls_need_the_key_and_errors_are_plain(tmp_path: Path) -> None:
    clip = blank_clip(tmp_path / "c.mp4", 90)
    with running_station(tmp_path, source=clip, detect=replay(hip_drop_then_level())) as live:
        assert httpx.get(f"{live.url}/api/state").status_code == 401
        page = httpx.get(f"{live.url}/console?patient=Patient/p-1")
        assert page.status_code == 401 and "station key" in page.text
        assert httpx.get(f"{live.url}/records/p-1/x.json").status_code == 401
        with httpx.Client(base_url=live.url, follow_redirects=False) as client:
            entered = client.get("/console", params={"key": KEY, "patient": "Patient/p-1"})
            assert entered.status_code == 303
            assert entered.headers["location"] == "/console?patient=Patient/p-1"
            assert KEY not in entered.headers["location"]
            assert client.get("/api/state").json()["state"] == "idle"
            bad = client.post("/api/start", json={**_start_body(), "low": 9, "high": 2})
            assert bad.status_code == 400 and "empty" in bad.json()["error"]
            assert client.post("/api/start", content=b"{").json()["error"] == "the body is not JSON"
            assert client.post("/api/pause").json()["error"] == "no running session to pause"
            escape = client.get("/records/..%2F..%2Fetc/passwd")
            assert escape.status_code == 404
            for elsewhere in ("//evil.example/x", "/\\evil.example/x", "https://evil.example/"):
                sent = client.get("/runner", params={"key": KEY, "next": elsewhere})
                assert sent.headers["location"] == "/console"  # never off the station


def _start_body(**changes: Any) -> dict[str, Any]:
    body = {"patient": "Patient/p-7", "metric": "contralateral-pelvic-drop", "side": "right",
            "low": 0, "high": 5, "session": 1, "cue": "Keep level", "pain_before": 2}  # fmt: skip
    return body | changes


def test_a_session_through_the_api_is_recorded_and_posted(
    tmp_path: Path, fhir_server: tuple[str, Any]
) -> None:
    base, behaviour = fhir_server
    clip = blank_clip(tmp_path / "c.mp4", 90)
    with (
        running_station(tmp_path, source=clip, detect=replay(hip_drop_then_level()),
                        fhir_base=base, post=True) as live,
        httpx.Client(base_url=live.url, cookies={"runform_station": KEY}) as client,
    ):  # fmt: skip
        assert client.post("/api/start", json=_start_body()).json()["state"] == "running"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if client.get("/api/state").json()["blocks"][0]["strides"] >= 5:
                break
            time.sleep(0.3)
        done = client.post("/api/stop", json={"pain_after": 1}).json()
        assert "posted to" in done["posted"]
        bundle = client.get(done["bundle"]).json()
        report = client.get(done["report"]).text
    Bundle.model_validate(bundle)
    assert behaviour.transactions == [bundle]
    folder = live.records / "p-7"
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in folder.iterdir())
    assert "Gait retraining: session 1 of 8" in report and "data:image/png;base64," in report
    values = [
        e["resource"]
        for e in bundle["entry"]
        if "contralateral-pelvic-drop" in json.dumps(e["resource"].get("code", {}))
    ]
    assert values and all(v["valueQuantity"]["value"] > 6 for v in values)  # 8 deg hip drop


def test_the_console_proposes_the_order_latest_value_and_band(
    tmp_path: Path, fhir_server: tuple[str, Any], core_pack: CompiledPack
) -> None:
    from cds.examples import demo_observations

    base, behaviour = fhir_server
    order = {"resourceType": "ServiceRequest", "id": "sr-9", "status": "active", "intent": "order",
             "subject": {"reference": "Patient/p-7"},
             "code": {"coding": [{"system": "http://runform-cds.org/fhir/CodeSystem/plans",
                                  "code": "gait-retraining-video-feedback"}]}}  # fmt: skip
    behaviour.resources = {"ServiceRequest": [order], "Observation": demo_observations("p-7")}
    clip = blank_clip(tmp_path / "c.mp4", 90)
    with running_station(tmp_path, source=clip, detect=replay(hip_drop_then_level()),
                         fhir_base=base, pack=core_pack.pack) as live:  # fmt: skip
        found = httpx.get(f"{live.url}/api/defaults", cookies={"runform_station": KEY},
                          params={"patient": "Patient/p-7",
                                  "metric": "contralateral-pelvic-drop"}).json()  # fmt: skip
    assert found["service_request"] == "ServiceRequest/sr-9"
    assert found["latest"] == {"right": 7.5, "left": 3.1}
    assert (found["low"], found["high"]) == (0.0, 5.0)
    assert "pelvic_drop_high" in " ".join(found["notes"])
    assert found["cue"].startswith("Keep your pelvis level")


# -- the real pose model on a real video -------------------------------------------------------


def test_a_session_on_a_real_video_agrees_with_measure_within_the_sdd(
    tmp_path: Path, core_pack: CompiledPack
) -> None:
    """Sports2D's demo clip played as the camera through the real pose model: the block's
    knee flexion at contact agrees with ``runform-cds measure`` on the same clip within
    the pack's smallest detectable difference."""
    from cds.measures import Roi, analyze_video
    from tests.media import demo_video

    walker = Roi(0, 490, 1768, 504)  # the person on the roof is outside it
    batch = analyze_video(demo_video(), "side", roi=walker, workers=1)
    near = batch.result("knee-flexion-initial-contact", "left")
    sdd = core_pack.pack.thresholds["sdd_knee_flexion"].value
    setup = {"patient": "Patient/p-7", "metric": "knee-flexion-initial-contact", "side": "left",
             "low": 10, "high": 30, "session": 1, "pain_before": 0}  # fmt: skip
    with (
        running_station(tmp_path, source=demo_video(), view="side", loop=False,
                        roi=walker) as live,
        httpx.Client(base_url=live.url, cookies={"runform_station": KEY}) as client,
    ):  # fmt: skip
        assert client.post("/api/start", json=setup).status_code == 200
        deadline = time.monotonic() + 60
        while not client.get("/api/state").json()["station"]["ended"]:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        block = client.get("/api/state").json()["blocks"][0]
        client.post("/api/stop", json={"pain_after": 0})
    assert block["strides"] >= 2  # the walker crosses the frame in under 5 s
    assert abs(block["mean"] - near.mean) <= sdd


# -- the loop: a retraining card opens the station ---------------------------------------------


def _station_links(cards: list[dict[str, Any]]) -> list[str]:
    return [
        link["url"]
        for card in cards
        for link in card.get("links", [])
        if "retraining station" in link["label"]
    ]


def test_retraining_cards_link_to_the_station_for_the_patient(service_factory: Any) -> None:
    from cds.examples import hook_request

    body = hook_request("patient-view", "p-7")
    plain = service_factory().post("runform-patient-view", body).json()["cards"]
    assert plain and _station_links(plain) == []  # no station configured: no link
    live = service_factory(station={"base_url": "http://127.0.0.1:8765"})
    cards = live.post("runform-patient-view", hook_request("patient-view", "p-7")).json()["cards"]
    retraining = [c for c in cards if "gait retraining" in json.dumps(c.get("suggestions", []))]
    assert retraining
    for card in retraining:
        assert _station_links([card]) == ["http://127.0.0.1:8765/console?patient=Patient/p-7"]
    others = [c for c in cards if c not in retraining]
    assert _station_links(others) == []


def test_live_step_width_is_the_batch_definition_stride_by_stride() -> None:
    from cds.measures.analyze import analyze_track

    track, _ = posterior_view(Gait(fps=30.0, seconds=20.0), Frontal())
    batch = analyze_track(track, "posterior").result("step-width")
    analyzer = LiveAnalyzer("posterior", "step-width", rate=30.0, width=track.width,
                            height=track.height)  # fmt: skip
    live = [v.value for v in _feed(analyzer, track.data, 30.0)]
    assert len(live) >= 45
    assert np.median(live) == pytest.approx(np.median(batch.values), abs=0.3)


def test_the_report_shows_the_trend_across_earlier_sessions(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from cds.station.commands import write_record
    from cds.station.report import earlier_sessions

    written = []
    for _ in range(2):
        station = SimpleNamespace(session=_recorded_session())
        written.append(write_record(station, tmp_path, None, post=False))
        time.sleep(1.1)  # one file per second
    history = earlier_sessions(tmp_path / "p-7", "contralateral-pelvic-drop")
    assert [(h.number, h.with_feedback, h.without_feedback) for h in history] == [
        (1, 3.375, 7.5), (1, 3.375, 7.5)  # the sides with feedback: 4.75 and 2.0
    ]  # fmt: skip
    first, second = (tmp_path / w["report"].removeprefix("/records/") for w in written)
    assert "Across sessions" not in first.read_text()
    assert "Across sessions" in second.read_text()
    (tmp_path / "p-7" / "session-broken.json").write_text("{not json")
    assert len(earlier_sessions(tmp_path / "p-7", "contralateral-pelvic-drop")) == 2
