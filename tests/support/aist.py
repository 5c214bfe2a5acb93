"""AIST++ ``keypoints2d`` pickles built by the tests, in the documented layout."""

import pickle

import numpy as np

from dvamn.pose.keypoint_files import AIST_FPS, AIST_NUM_VIEWS


def at_aist_rate(keypoints: np.ndarray, scores: np.ndarray, fps: float):
    """Keypoints (T, 17, 2) and scores (T, 17) at ``fps`` -> the same dance at 60 fps
    (frame i shows the source frame on screen at i / 60 s)."""
    count = int(np.floor(len(keypoints) * AIST_FPS / fps + 1e-6))
    source = np.minimum((np.arange(count) * fps / AIST_FPS + 1e-6).astype(int), len(keypoints) - 1)
    return keypoints[source].astype(np.float32), scores[source].astype(np.float32)


def aist_pickle_bytes(keypoints: np.ndarray, scores: np.ndarray, protocol: int = 5) -> bytes:
    """A keypoints2d pickle whose first view (camera c01) holds ``keypoints`` (N, 17, 2)
    and ``scores`` (N, 17) at 60 fps; the other views hold the same dance, shifted."""
    views = np.zeros((AIST_NUM_VIEWS, len(keypoints), 17, 3), np.float32)
    views[..., :2] = keypoints[None] + 10.0 * np.arange(AIST_NUM_VIEWS)[:, None, None, None]
    views[..., 2] = scores[None]
    return pickle.dumps(
        {
            "keypoints2d": views,
            "det_scores": np.ones(views.shape[:2], np.float32),
            "timestamps": np.arange(len(keypoints)) * 16,
        },
        protocol=protocol,
    )
