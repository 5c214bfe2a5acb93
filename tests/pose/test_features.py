"""The 68 pose values: normalisation, motion residual, invariances, degenerate poses."""

import numpy as np
import pytest

from dvamn.constants import POSE_FEATURES
from dvamn.pose import KeypointTrack, keypoint_confidence, pose_features, pose_sequence
from tests.support.standin_pose import TEMPLATE


def _dance(num_frames: int = 20, seed: int = 0) -> np.ndarray:
    """A skeleton 200 px tall walking and waving in a 640x360 frame: [T, 17, 2] pixels."""
    rng = np.random.default_rng(seed)
    base = np.asarray(TEMPLATE, np.float64) * np.array([100.0, 200.0]) + np.array([250.0, 80.0])
    t = np.arange(num_frames)[:, None, None]
    moves = np.concatenate([4.0 * t, 10.0 * np.sin(t / 2.0)], axis=2)
    return (base + moves + rng.normal(0, 3, (num_frames, 17, 2))).astype(np.float32)


def test_layout_normalised_then_motion():
    keypoints = _dance()
    features = pose_features(keypoints, 640, 360)
    assert features.shape == (20, POSE_FEATURES) and features.dtype == np.float32
    motion = features[:, 34:].reshape(20, 17, 2)
    np.testing.assert_allclose(motion[:-1], (keypoints[1:] - keypoints[:-1]) / 360.0, atol=1e-6)
    assert (motion[-1] == 0).all()
    normalised = features[:, :34].reshape(20, 17, 2)
    hip_mid = normalised[:, 11:13].mean(axis=1)
    np.testing.assert_allclose(hip_mid, 0.0, atol=1e-5)  # centred on the hips
    torso = np.linalg.norm(normalised[:, 5:7].mean(axis=1) - hip_mid, axis=1)
    np.testing.assert_allclose(torso, 1.0, atol=1e-5)  # torso length is the unit


@pytest.mark.parametrize(
    "scale,shift", [(2.0, (0.0, 0.0)), (0.5, (37.0, -12.0)), (3.0, (400.0, 90.0))]
)
def test_invariant_to_image_translation_and_scale(scale, shift):
    keypoints = _dance()
    reference = pose_features(keypoints, 640, 360)
    moved = keypoints * scale + np.asarray(shift, np.float32)
    # Translation moves the picture inside a larger canvas: the frame size follows scale only.
    features = pose_features(moved, round(640 * scale), round(360 * scale))
    np.testing.assert_allclose(features, reference, atol=1e-4)


def test_degenerate_poses_give_finite_zeros():
    keypoints = np.full((5, 17, 2), 100.0, np.float32)  # every joint on one point
    features = pose_features(keypoints, 640, 360)
    assert np.isfinite(features).all() and (features == 0).all()
    assert pose_features(np.zeros((0, 17, 2), np.float32), 640, 360).shape == (0, 68)


def test_foreshortened_torso_does_not_blow_up_the_pose():
    keypoints = _dance(1)
    keypoints[0, 5:7] = keypoints[0, 11:13]  # shoulders on the hips (bowing to the camera)
    features = pose_features(keypoints, 640, 360)
    assert np.abs(features[:, :34]).max() < 5.0


def test_bad_inputs_are_rejected_with_the_expected_shape():
    with pytest.raises(ValueError, match=r"\[T, 17, 2\]"):
        pose_features(np.zeros((4, 18, 2)), 640, 360)
    with pytest.raises(ValueError, match="positive"):
        pose_features(np.zeros((4, 17, 2)), 0, 360)


def test_confidence_and_pose_sequence():
    keypoints = _dance(10)
    scores = np.full((10, 17), 0.8, np.float32)
    assert keypoint_confidence(scores).shape == (10,)
    scores[4] = 0.0  # the dancer is missing in frame 4
    track = KeypointTrack(keypoints, scores, fps=10.0)
    sequence = pose_sequence(track, 640, 360)
    assert sequence.features.shape == (10, 68)
    assert sequence.missing_fraction == pytest.approx(0.1)
    assert sequence.confidence[4] == 0 and sequence.confidence[3] == pytest.approx(0.8)
