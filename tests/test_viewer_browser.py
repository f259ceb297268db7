"""The trace viewer, end to end in a real headless Chromium (Debian's chromium + chromedriver)."""

from __future__ import annotations

import io
import os
import sqlite3
from datetime import UTC, datetime
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
    live: LiveService = service_factory(viewer={"users": users}, real_port=True)  # a browser
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
        "Patient/p0 (age 29 years)",
        # the measured value against the threshold that decided the rule, per side
        "right: contralateral pelvic drop (contralateral-pelvic-drop): 7.5 deg is at least "
        "pelvic_drop_high (5 deg) [X]",
        "X = placeholder",
        # the card as returned, with the text other rules attached to it
        "Hip drop/adduction while running (right)",
        "Why both:",
        "suggestion: Order hip and knee strengthening",
        "text attached by: r7-cadence-alternative, r9-education",
        "its text was attached to the r1-hip-drop-symptomatic card",
        "Feedback: overridden",
        "comment runner prefers to wait",
        "this trace record verifies",
        "this record verifies",
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


def test_an_altered_feedback_record_is_flagged_where_the_auditor_looks(
    browser: webdriver.Chrome, viewer: LiveService
) -> None:
    path = viewer.settings.store.url.removeprefix("sqlite:///")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "UPDATE records SET body = replace(body, '\"overridden\"', '\"accepted\"') "
        "WHERE kind = 'feedback'"
    )
    db.close()
    _login(browser, viewer.url)
    flagged = browser.find_elements(By.CSS_SELECTOR, "tr.trace-row.tampered")
    assert len(flagged) == 1 and "does NOT verify" in flagged[0].text
    assert "p0" in flagged[0].text
    flagged[0].find_element(By.TAG_NAME, "a").click()
    WebDriverWait(browser, 15).until(lambda d: "/audit/trace/" in d.current_url)
    feedback = browser.find_element(By.CSS_SELECTOR, ".event.feedback").text
    assert "accepted" in feedback and "this record does NOT verify" in feedback
    assert "altered" in feedback
    # the trace record itself was not touched, and says so
    assert "this trace record verifies" in browser.find_element(By.ID, "trace-integrity").text


def test_filters_take_dates_from_pickers_and_refuse_bad_ones(
    browser: webdriver.Chrome, viewer: LiveService
) -> None:
    _login(browser, viewer.url)
    for name in ("since", "until"):
        assert browser.find_element(By.NAME, name).get_attribute("type") == "date"
    today = datetime.now(UTC).date().isoformat()
    browser.get(f"{viewer.url}/audit/?since={today}&until={today}")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.trace-row")) == 3
    browser.get(f"{viewer.url}/audit/?until=2026-01-01")
    assert browser.find_elements(By.CSS_SELECTOR, "tr.trace-row") == []
    for bad in ("yesterday", "2026-13-45", "29/11/2026"):
        browser.get(f"{viewer.url}/audit/?since={bad}")
        error = browser.find_element(By.ID, "filter-error").text
        assert bad in error and "YYYY-MM-DD" in error
    # a prefix of the patient id, in any case
    browser.get(f"{viewer.url}/audit/?patient=P")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.trace-row")) == 3
    browser.get(f"{viewer.url}/audit/?patient=patient/P1")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.trace-row")) == 1
    # the hookInstance the auditor was given, or its start
    browser.get(f"{viewer.url}/audit/")
    hook_instance = browser.find_elements(By.CSS_SELECTOR, "tr.trace-row a code")[1].text
    browser.get(f"{viewer.url}/audit/?hook_instance={hook_instance[:8]}")
    [row] = browser.find_elements(By.CSS_SELECTOR, "tr.trace-row")
    assert hook_instance in row.text
    # a rule filter says whether the rule showed its card or was suppressed, and by what
    browser.get(f"{viewer.url}/audit/?rule=r7-cadence-alternative")
    verdicts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".verdict")]
    assert verdicts and all(v.startswith("r7-cadence-alternative ") for v in verdicts)
