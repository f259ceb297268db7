"""The station's two screens in a real headless Chromium, driven by a real station: a
clip played as the camera, with landmarks of known geometry for the pose model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from cds.station.schedule import Schedule
from tests.stations import (
    CuttableProxy,
    LiveStation,
    blank_clip,
    hip_drop_then_level,
    replay,
    running_station,
)

#: session 1: feedback throughout; session 2: feedback for 6 s, then none
SCHEDULE = Schedule(
    name="test",
    sessions=[
        {"minutes": 3, "blocks": [{"minutes": 3, "feedback": True}]},  # type: ignore[list-item]
        {"minutes": 2, "blocks": [{"minutes": 0.1, "feedback": True},  # type: ignore[list-item]
                                  {"minutes": 1.9, "feedback": False}]},
    ],
)  # fmt: skip


@pytest.fixture
def station(tmp_path: Path) -> Iterator[LiveStation]:
    track = hip_drop_then_level()
    clip = blank_clip(tmp_path / "treadmill.mp4", track.frames)
    with running_station(tmp_path, source=clip, detect=replay(track), schedule=SCHEDULE) as live:
        yield live


def _wait(driver: webdriver.Chrome, what: str, timeout: float, check: object) -> None:
    WebDriverWait(driver, timeout).until(check, what)  # type: ignore[arg-type]


def _start_from_console(driver: webdriver.Chrome, live: LiveStation, session: int = 1) -> None:
    driver.get(live.page("/console?patient=Patient/p-7"))
    assert driver.find_element(By.ID, "patient").get_attribute("value") == "Patient/p-7"
    Select(driver.find_element(By.ID, "side")).select_by_value("right")
    for field, value in (("low", "0"), ("high", "5"), ("pain_before", "2")):
        driver.find_element(By.ID, field).send_keys(value)
    session_field = driver.find_element(By.ID, "session")
    session_field.clear()
    session_field.send_keys(str(session))
    driver.find_element(By.ID, "cue").send_keys("Squeeze your buttocks as you land")
    driver.find_element(By.ID, "start").click()
    _wait(driver, "the console shows the session running", 10,
          lambda d: "running" in d.find_element(By.ID, "state").text)  # fmt: skip


def _marker(driver: webdriver.Chrome) -> str:
    return str(driver.execute_script("return document.getElementById('marker').className"))


def _body(driver: webdriver.Chrome) -> str:
    return str(driver.find_element(By.TAG_NAME, "body").get_attribute("class"))


def _shoot(driver: webdriver.Chrome, name: str) -> None:
    folder = os.environ.get("RUNFORM_SCREENSHOT_DIR")
    if folder:
        driver.save_screenshot(str(Path(folder) / name))


def test_runner_and_console_follow_one_session_and_the_gauge_changes_colour(
    browser: webdriver.Chrome, station: LiveStation
) -> None:
    browser.set_window_size(1400, 800)
    console = browser.current_window_handle
    _start_from_console(browser, station)
    browser.switch_to.new_window("window")
    browser.get(station.page("/runner"))
    runner = browser.current_window_handle
    assert "Squeeze your buttocks" in browser.find_element(By.ID, "cue").text
    assert "target 0\u20135 deg" in browser.find_element(By.ID, "metric").text
    # 8 deg of hip drop: out of the 0-5 band, amber
    _wait(browser, "an amber stride", 25, lambda d: _marker(d) == "out")
    assert float(browser.find_element(By.ID, "value").text) > 6
    _shoot(browser, "station-runner.png")
    # the runner levels the pelvis (3 deg): in the band, green
    _wait(browser, "a green stride", 30, lambda d: _marker(d) == "in")
    assert float(browser.find_element(By.ID, "value").text) < 4
    # the console, open all along, counts the strides in band
    browser.switch_to.window(console)
    counted = browser.execute_script("return document.getElementById('inband').innerText")
    assert "this session" in counted and not counted.startswith("in band: 0 of 0")
    # the table is redrawn on every update: read it in one step, not element by element
    latest = browser.execute_script("return document.querySelector('#recent tr')?.innerText")
    assert latest and "right" in latest
    _shoot(browser, "station-console.png")
    # a reload of the runner's screen picks the session up again
    browser.switch_to.window(runner)
    browser.refresh()
    _wait(browser, "the gauge back after a reload", 10,
          lambda d: d.find_element(By.ID, "value").text not in ("", "\u2013"))  # fmt: skip
    latencies = browser.execute_script("return window.latencies")
    assert latencies and max(latencies) < 2.0  # seconds from the frame to the screen


def test_feedback_fades_to_a_neutral_screen_and_the_console_keeps_measuring(
    browser: webdriver.Chrome, station: LiveStation
) -> None:
    browser.set_window_size(1400, 800)
    _start_from_console(browser, station, session=2)
    console = browser.current_window_handle
    browser.switch_to.new_window("window")
    browser.get(station.page("/runner"))
    _wait(browser, "the live gauge", 10, lambda d: d.find_element(By.ID, "live").is_displayed())
    _wait(browser, "the neutral screen once feedback fades", 20,
          lambda d: d.find_element(By.ID, "message").text == "Keep going")  # fmt: skip
    assert not browser.find_element(By.ID, "live").is_displayed()  # no gauge, no mirror
    assert "left" in browser.find_element(By.ID, "left").text
    browser.switch_to.window(console)
    _wait(browser, "strides counted without feedback", 25,
          lambda d: d.execute_script("return document.querySelector("
                                     "'#blocks tr:nth-child(2) td:nth-child(3)')?.innerText")
          not in (None, "", "0"))  # fmt: skip
    assert "feedback off" in browser.find_element(By.ID, "state").text


def test_the_runners_screen_reconnects_after_the_network_drops(
    browser: webdriver.Chrome, station: LiveStation
) -> None:
    _start_from_console(browser, station)
    proxy = CuttableProxy(int(station.url.rsplit(":", 1)[1]))
    try:
        browser.get(station.page("/runner").replace(station.url, f"http://127.0.0.1:{proxy.port}"))
        _wait(browser, "a first stride", 25,
              lambda d: d.find_element(By.ID, "value").text not in ("", "\u2013"))  # fmt: skip
        before = browser.execute_script("return window.latencies.length")
        proxy.cut()
        _wait(browser, "the page notices the drop", 10, lambda d: "offline" in _body(d))
        _wait(browser, "strides again after reconnecting", 30,
              lambda d: d.execute_script("return window.latencies.length") > before + 1
              and "offline" not in _body(d))  # fmt: skip
    finally:
        proxy.close()


def test_a_cadence_session_beats_a_metronome_at_the_target_step_rate(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    import httpx

    from tests.stations import KEY
    from tests.synthetic import Gait, side_view

    track, _ = side_view(Gait(fps=30.0, seconds=12.0))
    clip = blank_clip(tmp_path / "side.mp4", track.frames)
    with running_station(tmp_path, source=clip, view="side", detect=replay(track),
                         schedule=SCHEDULE) as live:  # fmt: skip
        setup = {"patient": "Patient/p-7", "metric": "cadence", "side": "both", "low": 160,
                 "high": 180, "session": 1, "pain_before": 1, "metronome": True}  # fmt: skip
        httpx.post(f"{live.url}/api/start", json=setup, cookies={"runform_station": KEY})
        browser.get(live.page("/runner"))
        _wait(
            browser, "the metronome", 10, lambda d: d.execute_script("return window.beating") == 170
        )
        assert browser.find_element(By.ID, "sound").is_displayed()
        _wait(browser, "a stride at the synthetic step rate", 25,
              lambda d: d.find_element(By.ID, "value").text not in ("", "\u2013"))  # fmt: skip
        assert abs(float(browser.find_element(By.ID, "value").text) - 170) < 3
