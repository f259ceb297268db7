"""Hot reload of rule packs under continuous load, on the real service."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from cds.audit.store import TraceFilter
from tests.conftest import ROOT
from tests.load import Load
from tests.packs import core_data

R1_SUMMARY = "Hip drop/adduction while running ({side}): hip strengthening PLUS gait retraining"


def _serving(live: Any) -> list[str]:
    """The pack versions of the newest answered call (health checks reveal no packs)."""
    items, _ = live.store.search_page(TraceFilter(), size=1)
    return [f"{p['id']}@{p['version']}" for rec, _ in items for p in rec.body.get("packs", [])]


def _wait_for(live: Any, version: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(k.endswith(f"@{version}") for k in _serving(live)):
        assert time.monotonic() < deadline, _serving(live)
        time.sleep(0.1)


def _wait_logged(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 60) -> None:
    """Wait until the watcher has logged an error containing ``text``.

    Each step waits for its own outcome: a reload that runs the scenarios can
    take longer than a fixed pause, and the watcher only ever sees the latest file.
    """
    deadline = time.monotonic() + timeout
    while not any(text in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR):
        assert time.monotonic() < deadline, f"no error logged with {text!r}"
        time.sleep(0.1)


CORE_VERSION: str = core_data()["version"]
_MAJOR_MINOR, _PATCH = CORE_VERSION.rsplit(".", 1)
NEXT, BROKEN = (f"{_MAJOR_MINOR}.{int(_PATCH) + n}" for n in (1, 2))


def _edit(pack: Path, version: str, **replace: str) -> None:
    text = (ROOT / "rule_packs" / "runform-core" / "pack.yaml").read_text()
    text = text.replace(f"version: {CORE_VERSION}\n", f"version: {version}\n", 1)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    pack.write_text(text)


def test_reload_under_load_swaps_good_versions_and_keeps_serving_through_bad_ones(
    tmp_path: Path, service_factory: Any, es_signer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    packs = tmp_path / "packs"
    shutil.copytree(ROOT / "rule_packs" / "runform-core", packs / "runform-core")
    pack = packs / "runform-core" / "pack.yaml"
    live = service_factory(packs={"dir": str(packs), "watch_interval_s": 0.1}, real_port=True)
    caplog.set_level(logging.INFO, logger="cds.service.reload")
    with Load(live.url, es_signer) as load:
        time.sleep(0.5)
        # 1. a good new version replaces the old one
        _edit(pack, NEXT, **{R1_SUMMARY: "RELOADED ({side}): strengthening PLUS gait retraining"})
        _wait_for(live, NEXT)
        time.sleep(0.5)
        # 2. a version whose scenarios fail is refused; the new version keeps serving
        drop = "value: 5\n    unit: deg\n    provenance: placeholder"
        _edit(pack, BROKEN, **{drop: drop.replace("value: 5", "value: 50")})
        _wait_logged(caplog, "scenario(s) failed")
        # 3. a broken file is refused
        pack.write_text(pack.read_text() + "\n  - this is: [not valid\n")
        _wait_logged(caplog, "not valid YAML")
        # 4. a changed active version without a version bump is refused
        _edit(
            pack, NEXT, **{R1_SUMMARY: "SNEAKY EDIT ({side}): strengthening PLUS gait retraining"}
        )
        _wait_logged(caplog, "is immutable")
        time.sleep(0.5)
        assert _serving(live) == [f"runform-core@{NEXT}"]

    statuses = [call.status for call in load.calls]
    assert len(statuses) > 50
    assert set(statuses) == {200}, load.failed[:3]
    summaries = [call.detail for call in load.calls]
    assert any(s.startswith("Hip drop/adduction") for s in summaries)
    first_new = next(i for i, s in enumerate(summaries) if s.startswith("RELOADED"))
    assert not any(s.startswith("SNEAKY") for s in summaries)
    assert all(s.startswith("RELOADED") for s in summaries[first_new + 4 :])

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("scenario(s) failed" in e and "previous version keeps serving" in e for e in errors)
    assert any("not valid YAML" in e for e in errors)
    assert any("is immutable" in e for e in errors)
    versions = {
        json.loads(r.body_json)["packs"][0]["version"]
        for r in live.store.iter_raw()
        if r.kind == "trace"
    }
    assert versions == {CORE_VERSION, NEXT}  # every trace names the version that produced it
