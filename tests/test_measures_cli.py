"""``runform-cds measure`` and ``strength`` end to end: files, FHIR Bundles, a real FHIR server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle

from cds.fhir.facts import ClinicalData, FactPolicy, build_facts
from cds.fhir.parse import Observation, parse_entries
from tests.media import demo_video
from tests.servers import FhirBehaviour

CLI = [sys.executable, "-m", "cds"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """One CLI run on the demo clip, posted to a real FHIR server on loopback."""
    from tests.servers import fhir_app, free_port, serve

    behaviour = FhirBehaviour()
    out = tmp_path_factory.mktemp("measure")
    with serve(fhir_app(behaviour), free_port()) as url:
        done = run(
            "measure", str(demo_video()), "--view", "side", "--patient", "Patient/p-17",
            "--roi", "0,490,1768,504", "--out", "out/walk.bundle.json",
            "--date", "2026-11-20T10:00:00+00:00", "--post", f"{url}/fhir", cwd=out,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    yield out, (done, behaviour)


def test_measure_writes_a_valid_transaction_bundle(measured: tuple[Path, Any]) -> None:
    out, _ = measured
    bundle = json.loads((out / "out/walk.bundle.json").read_text())
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    (device,) = resources(bundle, "Device")
    versions = {v["type"]["text"]: v["value"] for v in device["version"]}
    assert versions["mediapipe"] == "0.10.21" and "model_complexity=1" in versions["pose model"]
    (video,) = resources(bundle, "DocumentReference")
    assert video["identifier"][0]["value"] == (
        "d9a66417185647b112304b57093f0c180f37a768e6a14daca75ca541f3b78039"
    )
    assert video["content"][0]["attachment"]["hash"]
    observations = resources(bundle, "Observation")
    assert len(observations) == 10  # 4 metrics x 2 sides + trunk lean + cadence
    for obs in observations:
        assert obs["subject"]["reference"] == "Patient/p-17"
        assert obs["effectiveDateTime"].startswith("2026-11-20T10:00:00")
        assert "model_complexity=1" in obs["method"]["text"] and "Zeni" in obs["method"]["text"]
        assert obs["derivedFrom"][0]["reference"].startswith("urn:uuid:")
        codes = {
            c["code"]["coding"][0]["code"]: c.get("valueQuantity") or c["valueCodeableConcept"]
            for c in obs["component"]
        }
        assert codes["frame-rate"]["value"] == 30.0 and "visible-fraction" in codes
        # the Sports2D demo is a side-view walk: measure says so, and the service reads it
        assert codes["gait-mode"]["coding"][0]["code"] == "walking"
        assert codes["capture-view"]["coding"][0]["code"] == "side"
        assert ("valueQuantity" in obs) != ("dataAbsentReason" in obs)


def _key(obs: dict[str, Any]) -> tuple[str, str]:
    site = obs.get("bodySite", {"coding": [{"code": "-"}]})["coding"][0]["code"]
    return obs["code"]["coding"][0]["code"], site


def test_far_limb_and_slow_video_values_are_absent_with_a_reason(
    measured: tuple[Path, Any],
) -> None:
    out, _ = measured
    bundle = json.loads((out / "out/walk.bundle.json").read_text())
    by_key = {_key(o): o for o in resources(bundle, "Observation")}
    far_knee = by_key[("knee-flexion-initial-contact", "6757004")]  # right knee
    assert "far limb" in far_knee["dataAbsentReason"]["text"]
    near_foot = by_key[("foot-inclination-initial-contact", "82169009")]
    assert "120 fps" in near_foot["dataAbsentReason"]["text"]
    near_knee = by_key[("knee-flexion-initial-contact", "82169009")]
    assert near_knee["valueQuantity"]["unit"] == "deg"
    assert 5 <= near_knee["valueQuantity"]["value"] <= 15
    assert any("fewer than the 7" in n["text"] for n in near_knee["note"])


def test_the_service_reads_what_measure_writes_and_never_uses_walking_for_running(
    measured: tuple[Path, Any],
) -> None:
    out, _ = measured
    bundle = json.loads((out / "out/walk.bundle.json").read_text())
    parsed, bad = parse_entries(resources(bundle, "Observation"), "bundle", Observation)
    assert not bad
    policy = FactPolicy(min_strides=3, max_age_days=30)
    now = datetime(2026, 11, 21, tzinfo=UTC)
    facts = build_facts(ClinicalData(observations=parsed), policy, now=now)
    read = {(r.code, r.side): r for r in facts.excluded}
    assert 95 <= float(read[("cadence", None)].canonical or 0) <= 100
    assert 5 <= float(read[("knee-flexion-initial-contact", "left")].canonical or 0) <= 15
    far = read[("knee-flexion-initial-contact", "right")]  # the far limb: no value at all
    assert far.canonical is None and far.reason == "dataAbsentReason present"
    assert all("walking capture" in r.reason for r in read.values() if r.canonical is not None)
    assert "cadence" not in facts.patient and facts.patient["q_walking"] >= 2


def test_post_reports_what_the_fhir_server_created(measured: tuple[Path, Any]) -> None:
    _, (done, behaviour) = measured
    assert len(behaviour.transactions) == 1
    assert "12 resources created" in done.stdout
    assert "Observation/t3/_history/1" in done.stdout


def test_overlay_plots_and_report_are_written(measured: tuple[Path, Any]) -> None:
    out, _ = measured
    overlay = cv2.VideoCapture(str(out / "out/walk.overlay.mp4"))
    assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == 230
    overlay.release()
    assert (out / "out/walk.plots.png").stat().st_size > 10_000
    page = (out / "out/walk.report.html").read_text()
    assert "Knee flexion" in page and "not reported" in page and "data:image/png;base64," in page


def test_strength_from_flags(tmp_path: Path) -> None:
    done = run(
        "strength", "--patient", "Patient/p-17", "--mass", "70", "--lever", "0.45",
        "--abduction", "180,150", "--side-plank", "60,45", "--sls-rating", "good,poor",
        "--trendelenburg", "negative,positive", "--out", "s.json", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    bundle = json.loads((tmp_path / "s.json").read_text())
    Bundle.model_validate(bundle)
    obs = resources(bundle, "Observation")
    assert len(obs) == 8
    abduction = [o for o in obs if o["code"]["coding"][0]["code"] == "hip-abduction-strength"]
    left = next(o for o in abduction if o["bodySite"]["coding"][0]["code"] == "287679003")
    assert left["valueQuantity"]["value"] == pytest.approx(180 * 0.45 / 70, abs=1e-3)
    assert left["valueQuantity"]["unit"] == "N.m/kg"
    comps = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in left["component"]}
    assert comps["limb-symmetry-index"] == pytest.approx(120.0)
    assert comps["percent-body-weight"] == pytest.approx(100 * 180 / (70 * 9.80665), abs=0.01)
    assert "LSI 120.0 %" in done.stdout
    trend = [o for o in obs if o["code"]["coding"][0]["code"] == "trendelenburg-test"]
    assert {o["valueCodeableConcept"]["coding"][0]["code"] for o in trend} == {
        "positive", "negative",
    }  # fmt: skip


def test_strength_from_csv_and_json_forms(tmp_path: Path) -> None:
    (tmp_path / "form.csv").write_text(
        "test,side,force_n,lever_arm_m,hold_s,rating,body_mass_kg\n"
        "hip-abduction,left,200,0.40,,,80\n"
        "hip-abduction,right,160,0.40,,,80\n"
        "single-leg-squat,left,,,,fair,80\n"
    )
    done = run("strength", "--patient", "Patient/x", "--form", "form.csv", "--out", "a.json",
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    csv_obs = resources(json.loads((tmp_path / "a.json").read_text()), "Observation")
    assert csv_obs[0]["valueQuantity"]["value"] == pytest.approx(1.0)
    form = {
        "body_mass_kg": 80,
        "tests": [
            {"test": "hip-abduction", "side": "left", "force_n": 200, "lever_arm_m": 0.4},
            {"test": "hip-abduction", "side": "right", "force_n": 160, "lever_arm_m": 0.4},
            {"test": "single-leg-squat", "side": "left", "rating": "fair"},
        ],
    }
    (tmp_path / "form.json").write_text(json.dumps(form))
    done = run("strength", "--patient", "Patient/x", "--form", "form.json", "--out", "b.json",
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    json_obs = resources(json.loads((tmp_path / "b.json").read_text()), "Observation")
    strip = [
        {k: v for k, v in o.items() if k not in ("device", "effectiveDateTime")} for o in json_obs
    ]
    assert strip == [{k: v for k, v in o.items() if k not in ("device", "effectiveDateTime")}
                     for o in csv_obs]  # fmt: skip


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        ({"f.csv": "test,side,force_n\nhip-abduction,left,180\nhip-abduction,middle,150\n"},
         ["--form", "f.csv"], "f.csv:line 3: field side"),
        ({"f.csv": "test,side,force_n\nhip-abduction,left,-5\n"},
         ["--form", "f.csv"], "f.csv:line 2: field force_n"),
        ({"f.csv": "test,side,grip\nhip-abduction,left,5\n"},
         ["--form", "f.csv"], "unknown column"),
        ({"f.json": '{"tests": [\n  {"test": "side-plank", "side": "left"}\n]}'},
         ["--form", "f.json"], "side-plank needs hold_s"),
        ({"f.json": '{"tests": [}'}, ["--form", "f.json"], "f.json:1: not valid JSON"),
        ({}, ["--abduction", "180"], "--abduction takes LEFT,RIGHT"),
        ({}, ["--form", "missing.csv"], "no such form file"),
        ({"f.csv": "test,side,hold_s\nside-plank,left,5\n"},
         ["--form", "f.csv", "--side-plank", "3,4"], "not both (--side-plank)"),
        ({}, [], "the strength form holds no tests"),
    ],
)  # fmt: skip
def test_strength_input_errors_name_file_line_and_field(
    tmp_path: Path, files: dict[str, str], args: list[str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    done = run("strength", "--patient", "Patient/x", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "strength.bundle.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nothing.mp4", "--view", "side", "--patient", "Patient/x"], "no such video file"),
        (["NOTVIDEO", "--view", "side", "--patient", "Patient/x"], "not a video this tool"),
        (["VIDEO", "--view", "side", "--patient", "Patient/x", "--roi", "1,2,3"], "--roi must be"),
        (["VIDEO", "--view", "side", "--patient", "Patient/x", "--roi", "5000,0,100,100"],
         "leaves less than 32x32"),
        (["VIDEO", "--view", "side", "--patient", "bob"], "--patient must be Patient/ID"),
    ],
)  # fmt: skip
def test_measure_input_errors_are_clear(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "NOTVIDEO").write_text("hello")
    video = str(demo_video())
    done = run("measure", *[video if a == "VIDEO" else a for a in args], "--quiet", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_video_without_anyone_in_it_is_refused_clearly(tmp_path: Path) -> None:
    writer = cv2.VideoWriter(str(tmp_path / "empty.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), 30.0,
                             (320, 240))  # fmt: skip
    for _ in range(60):
        writer.write(np.full((240, 320, 3), 40, dtype=np.uint8))
    writer.release()
    done = run("measure", "empty.mp4", "--view", "posterior", "--patient", "Patient/x", "--quiet",
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "empty.mp4: no person was found in any frame" in done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.glob("*.json"))


def test_post_failure_keeps_the_bundle_and_says_so(tmp_path: Path, fhir_server: Any) -> None:
    url, behaviour = fhir_server
    behaviour.fail_status = 503
    done = run("strength", "--patient", "Patient/x", "--side-plank", "30,40", "--post", url,
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert "HTTP 503" in done.stderr and "kept on disk" in done.stderr
    Bundle.model_validate(json.loads((tmp_path / "strength.bundle.json").read_text()))


def test_report_renders_in_a_real_browser(measured: tuple[Path, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    out, _ = measured
    browser.get((out / "out/walk.report.html").resolve().as_uri())
    assert "Running form" in browser.title
    rows = browser.find_elements(By.CSS_SELECTOR, "table tr")
    assert len(rows) == 1 + 10
    absent = browser.find_elements(By.CSS_SELECTOR, "tr.absent")
    assert len(absent) == 5  # far limb (4) and the foot angle at 30 fps
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 2
    for image in images:
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 200
    browser.save_screenshot(str(out / "report.png"))
    assert (out / "report.png").stat().st_size > 20_000


def test_static_clip_removes_the_trunk_landmark_bias(tmp_path: Path) -> None:
    demo = str(demo_video())
    done = run(
        "measure", demo, "--view", "side", "--patient", "Patient/p", "--roi", "0,490,1768,504",
        "--static", demo, "--no-overlay", "--quiet", "--out", "s.bundle.json", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    bundle = json.loads((tmp_path / "s.bundle.json").read_text())
    (trunk,) = [o for o in resources(bundle, "Observation")
                if o["code"]["coding"][0]["code"] == "trunk-forward-lean"]  # fmt: skip
    assert "static offset from" in trunk["method"]["text"]
    assert not any("static" in n["text"] for n in trunk.get("note", []))
    # the walker's own median posture is the offset: what is left is the change within strides
    assert abs(trunk["valueQuantity"]["value"]) < 3
    assert not (tmp_path / "s.overlay.mp4").exists()
