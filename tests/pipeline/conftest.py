"""Fixtures shared by the extraction tests."""

import pytest

EXTRACT_SECONDS = 13.0


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """3 videos of 13 s and 8 bad inputs (one of each kind), shared by the extraction tests."""
    from dvamn.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    result = synthesize(str(out), videos=3, seconds=EXTRACT_SECONDS, seed=3, broken=8)
    return out, result
