"""AIST++ keypoints2d pickles uploaded to POST /match (the page accepts them): read by the
restricted reader of dvamn/pose/keypoint_files.py, never by plain pickle. Without Ray:
``aist_pickle_features`` is what the pose replica runs on such an upload."""

import pickle

import numpy as np
import pytest

from dvamn.serving.queries import (
    QueryError,
    QueryLimits,
    aist_pickle_features,
    is_aist_pickle,
    keypoint_features,
)
from tests.security.test_hostile_keypoint_files import (
    _call,
    _run_marker_pickle_plainly,
    _text,
)
from tests.support.aist import aist_pickle_bytes

# COCO-17 joints of a person standing in a 1920x1080 frame (nose, eyes, ears, shoulders,
# elbows, wrists, hips, knees, ankles).
STANDING = np.array(
    [
        [960, 300], [945, 285], [975, 285], [930, 295], [990, 295],
        [900, 400], [1020, 400], [870, 500], [1050, 500], [860, 590], [1060, 590],
        [925, 620], [995, 620], [920, 780], [1000, 780], [915, 930], [1005, 930],
    ],
    np.float32,
)  # fmt: skip


def _dance(seconds: float, fps: float = 60.0):
    """Keypoints (T, 17, 2) and scores (T, 17): the arms and legs swinging at 2 Hz."""
    t = np.arange(int(seconds * fps)) / fps
    swing = np.sin(2 * np.pi * 2.0 * t)[:, None] * np.linspace(0, 60, 17)[None, :]
    keypoints = np.repeat(STANDING[None], len(t), axis=0)
    keypoints[..., 0] += swing
    keypoints[..., 1] += 0.5 * swing[:, ::-1]
    return keypoints, np.full(keypoints.shape[:2], 0.9, np.float32)


@pytest.mark.parametrize("protocol", [4, 5])  # what AIST++ wrote (pickle.HIGHEST_PROTOCOL)
def test_an_uploaded_pickle_is_matched_as_the_keypoints_of_its_first_view(protocol):
    keypoints, scores = _dance(14.0)
    raw = aist_pickle_bytes(keypoints, scores, protocol=protocol)
    features, description = aist_pickle_features(raw, "gBR_sBM_cAll_d04_mBR0_ch01.pkl")
    # The same features as those keypoints sent to /match/keypoints at 60 fps, 1920x1080.
    expected, as_keypoints = keypoint_features(keypoints, 60.0, scores, 1920.0, 1080.0)
    np.testing.assert_array_equal(features, expected)
    assert description["frames"] == len(features) == 140
    assert (description["width"], description["height"]) == (1920.0, 1080.0)
    assert description["missing_fraction"] == as_keypoints["missing_fraction"]
    assert "pose_track" in description and description["decode_pose_ms"] >= 0


def test_uploads_are_taken_for_pickles_by_name_or_by_their_first_byte():
    raw = aist_pickle_bytes(*_dance(1.0))
    assert is_aist_pickle(raw, "upload")  # a renamed file still reaches only the reader
    assert is_aist_pickle(b"anything", "Seq.PKL")
    assert not is_aist_pickle(b"\x00\x00\x00\x20ftypisom", "dance.mp4")


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "MARKER"
    raw = _call("numpy.lib._datasource", "os.system", _text(f"touch {marker}"))
    assert _run_marker_pickle_plainly(raw, marker)  # the payload is real
    marker.unlink()
    for name in ("evil.pkl", "evil.mp4"):  # by its name, and by its first byte
        with pytest.raises(QueryError) as refused:
            aist_pickle_features(raw, name)
        assert refused.value.status == 422
        assert f"cannot use {name}: refused to unpickle the global" in refused.value.detail
        assert "os.system" in refused.value.detail
    protocol_0 = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(QueryError, match="refused to unpickle"):
        aist_pickle_features(protocol_0, "evil.pkl")
    objects = pickle.dumps({"keypoints2d": np.array([1, "os"], dtype=object)})
    with pytest.raises(QueryError, match="refused to unpickle"):
        aist_pickle_features(objects, "objects.pkl")
    assert not marker.exists(), "the payload ran"


def test_pickles_past_the_query_limits_or_not_aist_are_refused_with_the_reason():
    short = QueryLimits(max_query_s=20.0)
    with pytest.raises(QueryError) as too_long:
        aist_pickle_features(aist_pickle_bytes(*_dance(30.0)), "long.pkl", short)
    assert too_long.value.status == 413 and "20 s" in too_long.value.detail
    with pytest.raises(QueryError) as too_short:
        aist_pickle_features(aist_pickle_bytes(*_dance(5.0)), "short.pkl")
    assert too_short.value.status == 422 and "12 s" in too_short.value.detail
    with pytest.raises(QueryError, match="not a readable AIST.. keypoints2d pickle"):
        aist_pickle_features(b"these are not the bytes of a pickle", "notes.pkl")
    with pytest.raises(QueryError, match="expected a dict with 'keypoints2d'"):
        aist_pickle_features(pickle.dumps([1, 2, 3]), "list.pkl")
    nobody = aist_pickle_bytes(_dance(14.0)[0], np.zeros((840, 17), np.float32))
    with pytest.raises(QueryError, match="no person"):
        aist_pickle_features(nobody, "nobody.pkl")
