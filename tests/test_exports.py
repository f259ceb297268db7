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
