import cds


def test_public_api_is_exactly_all() -> None:
    public = sorted(
        name
        for name in dir(cds)
        if (not name.startswith("_") and name[0].isupper()) or name in cds.__all__
    )
    assert cds.__all__ == sorted(cds.__all__)
    assert set(public) == set(cds.__all__)
    for name in cds.__all__:
        assert getattr(cds, name) is not None


def test_measures_api_is_exactly_all_and_loads_lazily() -> None:
    import subprocess
    import sys

    import cds.measures

    assert cds.measures.__all__ == sorted(cds.measures.__all__)
    assert set(dir(cds.measures)) == set(cds.measures.__all__)
    for name in cds.measures.__all__:
        assert getattr(cds.measures, name).__module__.startswith("cds.measures.")
    # the service reads MeasureSettings from its config without loading the video stack
    probe = (
        "import sys, cds.config; print(sorted({'cv2', 'scipy', 'mediapipe'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
