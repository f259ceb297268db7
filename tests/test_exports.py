import subprocess
import sys

import pytest

import cds


def _loaded_after(statement: str, modules: set[str]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after ``statement``."""
    probe = f"import sys; {statement}; print(*sorted(set({sorted(modules)!r}) & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_public_api_is_exactly_all_and_loads_lazily() -> None:
    assert cds.__all__ == sorted(cds.__all__)
    assert set(dir(cds)) == set(cds.__all__)
    for name in cds.__all__:
        value = getattr(cds, name)
        assert value.__name__ == name and value.__module__.startswith("cds.")
    with pytest.raises(AttributeError, match="no_such_name"):
        cds.no_such_name  # noqa: B018
    # a video worker imports cds.measures.pose: the web service must not come with it
    assert _loaded_after("import cds.measures.pose", {"fastapi", "fhir", "durable"}) == []


def test_measures_api_is_exactly_all_and_loads_lazily() -> None:
    import cds.measures

    assert cds.measures.__all__ == sorted(cds.measures.__all__)
    assert set(dir(cds.measures)) == set(cds.measures.__all__)
    for name in cds.measures.__all__:
        assert getattr(cds.measures, name).__module__.startswith("cds.measures.")
    # the service reads MeasureSettings from its config without loading the video stack
    assert _loaded_after("import cds.config", {"cv2", "scipy", "mediapipe"}) == []


def test_station_api_is_exactly_all_and_loads_lazily() -> None:
    import cds.station

    assert cds.station.__all__ == sorted(cds.station.__all__)
    assert set(dir(cds.station)) == set(cds.station.__all__)
    for name in cds.station.__all__:
        assert getattr(cds.station, name).__module__.startswith("cds.station.")
    # the CLI offers `retrain` without loading the video stack or the web framework
    assert _loaded_after("import cds.cli", {"cv2", "mediapipe", "fastapi"}) == []
