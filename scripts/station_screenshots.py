"""Screenshots of the station's two screens for the docs, from a real video.

    .venv/bin/python scripts/station_screenshots.py [docs/images]

Sports2D's demo clip is played as the camera (side view, cadence), through the
real pose model, with a session running; headless Chromium photographs the
runner's screen and the console.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cds.measures import Roi  # noqa: E402
from tests.media import demo_video  # noqa: E402
from tests.stations import KEY, running_station  # noqa: E402


def main() -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "images")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["SE_OFFLINE"] = "true"
    with tempfile.TemporaryDirectory() as tmp:
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium") or "chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,800",
                    f"--user-data-dir={tmp}/chrome"):  # fmt: skip
            opts.add_argument(arg)
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        walker = Roi(0, 490, 1768, 504)
        with running_station(Path(tmp), source=demo_video(), view="side", roi=walker) as live:
            setup = {"patient": "Patient/runner-042", "metric": "cadence", "side": "both",
                     "low": 95, "high": 105, "session": 3, "pain_before": 2,
                     "cue": "Quick, light steps: land with the beat"}  # fmt: skip
            httpx.post(f"{live.url}/api/start", json=setup, cookies={"runform_station": KEY})
            browser.get(live.page("/runner"))
            time.sleep(9)
            browser.save_screenshot(str(out / "station-runner.png"))
            browser.get(live.page("/console?patient=Patient/runner-042"))
            time.sleep(4)
            browser.save_screenshot(str(out / "station-console.png"))
        browser.quit()
    print(f"wrote {out / 'station-runner.png'} and {out / 'station-console.png'}")


if __name__ == "__main__":
    main()
