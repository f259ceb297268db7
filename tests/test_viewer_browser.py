"""The trace viewer, end to end in a real headless Chromium (Debian's chromium + chromedriver)."""

from __future__ import annotations

import io
import os
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from cds.audit.passwords import hash_password
from cds.examples import demo_observations, hook_request
from tests.conftest import LiveService

PV = "runform-patient-view"
PASSWORD = "correct horse battery"


@pytest.fixture
def viewer(service_factory: Any) -> LiveService:
    users = [{"name": "auditor", "password_hash": hash_password(PASSWORD, iterations=1000)}]
    live: LiveService = service_factory(viewer={"users": users})
    for i, obs in enumerate([None, demo_observations("p2", right_abduction=1.7), None]):
        body = hook_request("patient-view", f"p{i}", observations=obs)
        card = live.post(PV, body).json()["cards"][0]
        if i == 0:
            live.client.feedback(
                PV,
                [
                    {
                        "card": card["uuid"],
                        "outcome": "overridden",
                        "overrideReason": {"userComment": "runner prefers to wait"},
                        "outcomeTimestamp": "2026-11-23T10:00:00Z",
                    }
                ],
            )
    return live


def _login(driver: webdriver.Chrome, base: str, password: str = PASSWORD) -> None:
    driver.get(f"{base}/audit/")
    assert driver.current_url.endswith("/audit/login")
    driver.find_element(By.NAME, "username").send_keys("auditor")
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 15).until(lambda d: not d.current_url.endswith("/audit/login"))


def _not_blank(png: bytes) -> None:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size[0] >= 1000
    colours = image.getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text, badges, header: not a blank page


def test_auditor_logs_in_filters_and_reads_a_trace_timeline(
    browser: webdriver.Chrome, viewer: LiveService, tmp_path: Path
) -> None:
    _login(browser, viewer.url)
    assert "Hash chain verified" in browser.find_element(By.ID, "chain-status").text
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.trace-row")
    assert len(rows) == 3
    browser.get(f"{viewer.url}/audit/?indicator=info")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.trace-row")) == 1
    browser.get(f"{viewer.url}/audit/?outcome=overridden")
    [row] = browser.find_elements(By.CSS_SELECTOR, "tr.trace-row")
    row.find_element(By.TAG_NAME, "a").click()
    WebDriverWait(browser, 15).until(lambda d: "/audit/trace/" in d.current_url)
    page = browser.find_element(By.TAG_NAME, "main").text
    for expected in (
        "Request",
        "Inputs",
        "contralateral-pelvic-drop",
        "7.5 deg",
        "r1-hip-drop-symptomatic on right",
        "pelvic_drop_high = 5",
        "Hip drop/adduction while running (right)",
        "Feedback: overridden",
        "runner prefers to wait",
        "matches its hash",
    ):
        assert expected in page, expected
    png = browser.get_screenshot_as_png()
    (tmp_path / "trace.png").write_bytes(png)
    if os.environ.get("RUNFORM_SCREENSHOT_DIR"):
        Path(os.environ["RUNFORM_SCREENSHOT_DIR"], "audit-trace.png").write_bytes(png)
    _not_blank(png)


def test_wrong_password_and_cds_jwts_do_not_open_the_viewer(
    browser: webdriver.Chrome, viewer: LiveService
) -> None:
    _login(browser, viewer.url, password="wrong password!")
    assert "Wrong name or password" in browser.find_element(By.TAG_NAME, "main").text
    token = viewer.client.signer.token(f"{viewer.url}/audit/")  # type: ignore[union-attr]
    r = httpx.get(f"{viewer.url}/audit/", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 303 and r.headers["location"] == "/audit/login"


def test_viewer_cookie_does_not_open_the_cds_api(
    browser: webdriver.Chrome, viewer: LiveService
) -> None:
    _login(browser, viewer.url)
    cookie = browser.get_cookie("runform_audit")
    assert cookie is not None and cookie["httpOnly"]
    r = httpx.get(f"{viewer.url}/cds-services", cookies={"runform_audit": cookie["value"]})
    assert r.status_code == 401


def test_the_viewer_shows_a_broken_chain(browser: webdriver.Chrome, viewer: LiveService) -> None:
    path = viewer.settings.store.url.removeprefix("sqlite:///")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE records SET body = replace(body, 'warning', 'info') WHERE seq = 1")
    db.close()
    _login(browser, viewer.url)
    banner = browser.find_element(By.ID, "chain-status").text
    assert "BROKEN at position 1" in banner
