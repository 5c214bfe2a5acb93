"""The service's pose features for a keypoint query are extraction's, bit for bit."""

import numpy as np

from dvamn.pipeline.config import ExtractConfig
from dvamn.pipeline.video import VideoPoseExtractor
from dvamn.pose import KeypointTrack, save_keypoint_file
from dvamn.serving.queries import keypoint_features
from dvamn.synth.video import encode_mp4

SECONDS, KEYPOINT_FPS, WIDTH, HEIGHT = 13.0, 30.0, 640, 360


def _dance(num_frames: int, seed: int = 3) -> tuple:
    """Keypoints (T, 17, 2) that move, with scores (T, 17) that drop out: a 0.3 s gap
    (filled by interpolation), a 1 s gap (longer than MAX_GAP_FRAMES: not interpolated)
    and single missing joints."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames)[:, None, None] / KEYPOINT_FPS
    base = rng.uniform([200, 60], [440, 320], size=(1, 17, 2))
    keypoints = base + 25 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6, (1, 17, 2)))
    scores = rng.uniform(0.3, 1.0, size=(num_frames, 17))
    scores[rng.random((num_frames, 17)) < 0.05] = 0.0
    scores[40:49] = 0.0
    scores[150:180] = 0.0
    return keypoints.astype(np.float32), scores.astype(np.float32)


def test_keypoint_query_features_equal_extraction_features_bit_for_bit(tmp_path):
    video = tmp_path / "dance.mp4"
    frames = ((np.full((48, 64, 3), 90, np.uint8), k / 10) for k in range(int(SECONDS * 10)))
    tone = 0.1 * np.sin(np.linspace(0, 440 * 2 * np.pi * SECONDS, int(SECONDS * 16_000)))
    encode_mp4(
        str(video), frames, 64, 48, 10.0, audio=tone.astype(np.float32), sample_rate_hz=16_000
    )
    keypoints, scores = _dance(int(SECONDS * KEYPOINT_FPS))
    track = KeypointTrack(keypoints, scores, KEYPOINT_FPS, width=WIDTH, height=HEIGHT)
    save_keypoint_file(str(tmp_path / "dance.npz"), track)

    config = ExtractConfig(str(tmp_path), str(tmp_path / "out"), pose="keypoints", audio="logmel")
    extracted = VideoPoseExtractor(config)(str(video), "dance")
    served, description = keypoint_features(
        keypoints, KEYPOINT_FPS, scores, width=WIDTH, height=HEIGHT
    )

    assert extracted["pose"].dtype == served.dtype == np.float32
    assert extracted["pose"].shape == served.shape == (130, 68)
    assert extracted["pose"].tobytes() == served.tobytes()
    assert description["missing_fraction"] == round(extracted["missing_fraction"], 4) > 0
