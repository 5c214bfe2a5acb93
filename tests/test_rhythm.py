"""The no-training rhythm matcher: motion accents at the audio rate, and a query whose
accents follow one track's onsets at a known offset finds that track first, there."""

import numpy as np
import pytest

from dvamn.constants import POSE_FEATURES
from dvamn.rhythm import (
    LOGMEL_ONSET_DIMS,
    RhythmBank,
    motion_accents,
    onset_dims,
    pose_accents,
    track_onsets,
)
from dvamn.training.data import Video
from dvamn.training.evaluate import rhythm_baseline


def dancing_pose(num_frames, rng):
    """Pose features (T, 68) whose joints move in random bursts: each burst adds speed."""
    pose = np.zeros((num_frames, POSE_FEATURES), np.float32)
    bursts = rng.random(num_frames) < 0.15
    speed = np.convolve(bursts * rng.uniform(0.5, 1.5, num_frames), np.ones(3), "same")
    directions = rng.normal(size=(num_frames, 34))
    pose[:, 34:] = (speed[:, None] * directions / 30.0).astype(np.float32)
    return pose


def soundtrack_from(accents, rng, noise=0.001):
    """(L, 128) logmel-like embeddings whose onset-rate dimensions follow ``accents``."""
    audio = rng.uniform(0, 2, size=(len(accents), 128)).astype(np.float32)
    spread = rng.uniform(0.5, 1.5, size=16)
    audio[:, LOGMEL_ONSET_DIMS] = accents[:, None] * spread / 16 + rng.normal(
        0, noise, size=(len(accents), 16)
    )
    return audio


def test_accents_rise_with_the_motion_at_the_audio_rate():
    pose = np.zeros((40, POSE_FEATURES), np.float32)
    pose[20:, 34:] = 0.01  # everything starts moving at pose frame 20 (audio frame 10)
    accents = motion_accents(pose)
    assert accents.shape == (20,)
    # Audio frame k averages pose frames 2k - 3 .. 2k + 5 (0.96 s around 2k + 1).
    np.testing.assert_array_equal(np.nonzero(accents)[0], [8, 9, 10, 11])
    np.testing.assert_allclose(accents[8:12], np.sqrt(2) * 0.01 * 17 / 9)
    with pytest.raises(ValueError, match="pose must be"):
        motion_accents(np.zeros((10, 34)))


def test_a_query_following_one_track_at_a_known_offset_finds_it_there():
    rng = np.random.default_rng(0)
    long_pose = dancing_pose(240, rng)  # 24 s
    own = soundtrack_from(motion_accents(long_pose), rng)  # (120, 128), aligned with it
    others = [soundtrack_from(motion_accents(dancing_pose(240, rng)), rng) for _ in range(29)]
    tracks = others[:7] + [own] + others[7:]
    bank = RhythmBank([track_onsets(t) for t in tracks])
    query = long_pose[46:166]  # 12 s cut at pose frame 46 = audio frame 23
    distances, offsets = bank.score(motion_accents(query))
    assert int(np.argmin(distances)) == 7 and offsets[7] == 23
    assert distances[7] < 0.2  # a correlation above 0.8
    assert np.sort(distances)[1] > distances[7] + 0.3


def test_the_baseline_in_evaluation_ranks_aligned_queries_first_and_refuses_vggish():
    rng = np.random.default_rng(1)
    videos = []
    for i in range(12):
        pose = dancing_pose(240, rng)
        videos.append(Video(f"v{i}", pose, soundtrack_from(motion_accents(pose), rng)))
    padding = [
        Video(f"p{i}", v.pose, soundtrack_from(motion_accents(dancing_pose(240, rng)), rng))
        for i, v in enumerate(videos)
    ]
    queries = [(i, s) for i in range(12) for s in (0, 60, 120)]
    m = rhythm_baseline(videos, queries, padding, "logmel")
    assert m["available"] and m["num_queries"] == 36 and m["pool_size"] == 12
    assert m["r_at_1"] == 1.0 and m["median_rank"] == 1.0 and m["offset_within_0_5s"] == 1.0
    assert m["pool100_size"] == 24 and m["pool100_padding_tracks"] == 12
    assert m["pool100_r_at_1"] == 1.0
    shuffled = [(i, s) for i, s in queries]
    wrong = [Video(v.video_id, videos[(k + 1) % 12].pose, v.audio) for k, v in enumerate(videos)]
    m = rhythm_baseline(wrong, shuffled, padding, "logmel")
    assert m["r_at_1"] < 0.25  # poses that belong to other tracks find them, not their own
    assert onset_dims("vggish") is None
    refused = rhythm_baseline(videos, queries, padding, "vggish")
    assert refused["available"] is False and "audio_onset" in refused["reason"]


def test_the_baseline_uses_the_onset_channel_at_the_pose_rate_for_any_embedding():
    rng = np.random.default_rng(2)

    def video(name, pose, onset_pose):
        # audio without timing in it: only the onset channel can match.
        onset = pose_accents(onset_pose) + rng.normal(0, 1e-4, len(onset_pose))
        return Video(name, pose, rng.uniform(0, 2, (len(pose) // 2, 128)), np.abs(onset))

    poses = [dancing_pose(240, rng) for _ in range(12)]
    videos = [video(f"v{i}", p, p) for i, p in enumerate(poses)]
    padding = [video(f"p{i}", dancing_pose(240, rng), dancing_pose(240, rng)) for i in range(5)]
    queries = [(i, s) for i in range(12) for s in (0, 61, 120)]  # 61: an odd pose frame
    m = rhythm_baseline(videos, queries, padding, "vggish")
    assert m["available"] and m["channel"] == "audio_onset"
    assert m["r_at_1"] == 1.0 and m["offset_within_0_5s"] == 1.0 and m["pool100_size"] == 17
    # Poses swapped between tracks find their own poses' tracks, not the video's.
    wrong = [Video(v.video_id, poses[(k + 1) % 12], v.audio, v.onset) for k, v in enumerate(videos)]
    assert rhythm_baseline(wrong, queries, padding, "vggish")["r_at_1"] < 0.25
    # One candidate without the channel (features made before it): logmel dims instead.
    old = [Video(v.video_id, v.pose, v.audio) for v in padding]
    assert rhythm_baseline(videos, queries, old, "logmel")["channel"] == "logmel onset-rate dims"
