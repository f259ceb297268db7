"""What ``pip install runform-cds`` brings, and what needs ``runform-cds[measure]``.

``scripts/check-base-install`` (run by ``./scripts/test``) installs the base
package into a fresh venv and runs the demo; these tests check the declared
requirements and the message a command gives when the video stack is missing.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import requires
from typing import Any

import pytest
from packaging.requirements import Requirement

import cds._optional as optional
from cds._optional import VIDEO_STACK, require_video_stack
from cds.errors import MissingExtraError

VIDEO_DISTS = {"mediapipe", "opencv-contrib-python", "numpy", "scipy", "matplotlib", "tqdm"}


def _requirements() -> list[Requirement]:
    return [Requirement(r) for r in requires("runform-cds") or []]


def test_the_base_install_has_no_video_stack() -> None:
    base = {r.name.lower() for r in _requirements() if r.marker is None}
    assert "fastapi" in base and "durable-rules" in base
    assert not base & VIDEO_DISTS


def test_the_measure_extra_is_the_whole_video_stack() -> None:
    measure = {
        r.name.lower()
        for r in _requirements()
        if r.marker is not None and r.marker.evaluate({"extra": "measure"})
    }
    assert measure == VIDEO_DISTS == set(VIDEO_STACK.values())
    pinned = next(r for r in _requirements() if r.name == "mediapipe")
    assert str(pinned.specifier) == "==0.10.21"  # the last wheel that ships the pose model


def test_a_missing_part_is_named_with_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def without_cv2(name: str) -> Any:
        if name == "cv2":
            raise ImportError("libGL.so.1: cannot open shared object file")
        return import_module(name)

    monkeypatch.setattr(optional, "import_module", without_cv2)
    with pytest.raises(MissingExtraError) as caught:
        require_video_stack("measure")
    message = caught.value.message
    assert "opencv-contrib-python (libGL.so.1" in message
    assert "pip install 'runform-cds[measure]'" in message
    assert "numpy" not in message  # only what failed


def test_the_whole_stack_loads_here() -> None:
    require_video_stack("measure")
