"""Training data: windows, the by-video split, provenance, statistics."""

import numpy as np
import pytest

from dvamn.pose.features import pose_features
from dvamn.pose.tracking import fill_gaps
from dvamn.scoring import onset_target
from dvamn.training.data import (
    COCO_MIRROR,
    MIN_NEGATIVE_SHIFT_AUDIO_FRAMES,
    AugmentConfig,
    Video,
    augment_poses,
    batch_to_videos,
    check_provenance,
    collect_features,
    cut_windows,
    drop_and_fill,
    hard_negative_windows,
    is_validation,
    mirror_poses,
    read_features,
    split_by_video,
    survey_features,
    window_starts,
    windows_dataset,
)
from tests.training.features import write_features


def test_window_starts_fit_both_sequences_and_are_even():
    assert window_starts(240, 120, 120, 20) == [0, 20, 40, 60, 80, 100, 120]
    assert window_starts(241, 110, 120, 20) == [0, 20, 40, 60, 80, 100]  # audio is shorter
    assert window_starts(119, 60, 120, 20) == []
    with pytest.raises(ValueError, match="even"):
        window_starts(240, 120, 120, 15)


def test_windows_pair_pose_frames_with_their_audio_frames():
    pose = np.arange(200, dtype=np.float32)[:, None].repeat(68, 1)
    audio = np.arange(100, dtype=np.float32)[:, None].repeat(128, 1)
    windows = list(cut_windows(Video("v", pose, audio), 120, 40))
    assert [w["start"] for w in windows] == [0, 40, 80]
    for w in windows:
        assert w["pose"].shape == (120, 68) and w["audio"].shape == (60, 128)
        assert w["pose"][0, 0] == w["start"] and w["audio"][0, 0] == w["start"] // 2


def test_split_is_deterministic_and_close_to_four_to_one():
    ids = [f"dance_{i:04d}" for i in range(2000)]
    first = [is_validation(i) for i in ids]
    assert first == [is_validation(i) for i in ids]
    assert 0.17 < np.mean(first) < 0.23


def test_survey_split_and_windows_on_ray(ray_local, tmp_path):
    features = write_features(str(tmp_path / "f"), num_videos=12, num_pose_frames=160)
    ds = read_features(features).materialize()
    videos, provenance = collect_features(ds)
    assert provenance == {
        "pose_model": "keypoints",
        "audio_embedding_kind": "logmel",
        "audio_weights": "",
    }
    assert [v.video_id for v in videos] == sorted(v.video_id for v in videos)

    survey = survey_features(ds)
    train_videos = [v for v in videos if not is_validation(v.video_id)]
    assert survey.provenance == provenance
    assert survey.num_train_videos == len(train_videos)
    assert survey.num_val_videos == 12 - len(train_videos) > 0
    audio = np.concatenate([v.audio for v in train_videos])
    np.testing.assert_allclose(survey.stats["target_mean"], audio.mean(0), rtol=1e-4)
    np.testing.assert_allclose(survey.stats["target_std"], audio.std(0), rtol=1e-3)
    assert survey.stats["input_mean"].shape == (68,)

    train, _ = split_by_video(ds)
    windows = windows_dataset(train, stride_pose_frames=20).take_all()
    assert len(windows) == len(train_videos) * 3  # starts 0, 20, 40 in 160 frames
    assert windows[0]["pose"].shape == (120, 68) and windows[0]["audio"].shape == (60, 128)
    # An onset head's targets: each window's smoothed audio_onset, and its negatives'.
    with_onset = windows_dataset(train, stride_pose_frames=20, hard_negatives=2, with_onset=True)
    first = with_onset.take(1)[0]
    video = next(v for v in train_videos if np.array_equal(v.pose[:120], first["pose"]))
    np.testing.assert_allclose(first["onset"], onset_target(video.onset)[:120], rtol=1e-5)
    assert first["negatives_onset"].shape == (2, 120)
    for audio, onset in zip(first["negatives"], first["negatives_onset"]):
        a = next(
            a
            for a in range(len(video.audio) - 59)
            if np.array_equal(video.audio[a : a + 60], audio)
        )
        np.testing.assert_allclose(onset, onset_target(video.onset)[2 * a : 2 * a + 120], rtol=1e-5)


def test_mixed_provenance_is_refused_naming_both(ray_local, tmp_path):
    root = str(tmp_path / "mixed")
    write_features(root, num_videos=3, num_pose_frames=130, seed=0, audio_kind="logmel")
    write_features(root, num_videos=3, num_pose_frames=130, seed=1, audio_kind="vggish")
    with pytest.raises(ValueError, match="logmel.*vggish|vggish.*logmel"):
        check_provenance(read_features(root))


def test_rows_without_the_onset_channel_become_videos_without_it():
    # Features extracted before the channel existed (and old parts beside new ones in one
    # output, which Ray Data reads with nulls) still load; only the rhythm baseline notices.
    pose, audio = np.zeros((130, 68), np.float32), np.zeros((65, 128), np.float32)
    new = {"video_id": np.array(["a"]), "pose": [pose], "audio_embedding": [audio]}
    assert batch_to_videos(new)[0].onset is None
    new["audio_onset"] = [np.arange(130, dtype=np.float32)]
    np.testing.assert_array_equal(batch_to_videos(new)[0].onset, np.arange(130))
    new["audio_onset"] = [None]
    assert batch_to_videos(new)[0].onset is None


def test_missing_features_name_the_fix(ray_local, tmp_path):
    with pytest.raises(FileNotFoundError, match="dvamn extract"):
        read_features(str(tmp_path / "nowhere"))


def dancing_keypoints(rng, frames=41):
    """A smooth random COCO-17 skeleton trajectory in pixels (T, 17, 2) of a 640x480 frame."""
    base = np.stack([rng.uniform(200, 440, 17), rng.uniform(100, 400, 17)], -1)
    t = np.arange(frames)[:, None, None] / 10.0
    wobble = 20 * np.sin(
        2 * np.pi * rng.uniform(0.3, 2, (1, 17, 2)) * t + rng.uniform(0, 6, (1, 17, 2))
    )
    return (base[None] + wobble).astype(np.float32)


def test_mirroring_twice_is_the_identity_and_swaps_the_coco_left_right_pairs():
    rng = np.random.default_rng(0)
    features = pose_features(dancing_keypoints(rng), 640, 480)  # (41, 68)
    mirrored = mirror_poses(features)
    np.testing.assert_array_equal(mirror_poses(mirrored), features)
    joints = features.reshape(-1, 2, 17, 2)  # (T, [normalised, motion], J, xy)
    flipped = mirrored.reshape(-1, 2, 17, 2)
    for left, right in ((5, 6), (9, 10), (15, 16), (1, 2)):
        assert COCO_MIRROR[left] == right and COCO_MIRROR[right] == left
        np.testing.assert_array_equal(flipped[:, :, left, 0], -joints[:, :, right, 0])
        np.testing.assert_array_equal(flipped[:, :, left, 1], joints[:, :, right, 1])
    np.testing.assert_array_equal(flipped[:, :, 0, 0], -joints[:, :, 0, 0])  # the nose stays
    # The same as mirroring the keypoints in the image, then extracting features.
    keypoints = dancing_keypoints(np.random.default_rng(0))
    image_mirror = keypoints[:, list(COCO_MIRROR)] * np.array([-1.0, 1.0], np.float32) + [640, 0]
    np.testing.assert_allclose(mirrored, pose_features(image_mirror, 640, 480), atol=1e-5)


def test_dropped_frames_are_filled_as_inference_fills_the_keypoints():
    rng = np.random.default_rng(1)
    keypoints = dancing_keypoints(rng, frames=41)
    features = pose_features(keypoints, 640, 480)[:40]  # a window whose last motion is known
    present = np.ones(41, bool)
    present[[3, 4, 5, 17, 30]] = False
    filled, _, _ = fill_gaps(keypoints, np.ones((41, 17), np.float32), present)
    expected = pose_features(filled, 640, 480)[:40]
    got = drop_and_fill(features, present[:40])
    # Motion: exactly that of the filled keypoints; kept frames: untouched.
    np.testing.assert_allclose(got[:, 34:], expected[:, 34:], atol=1e-5)
    np.testing.assert_array_equal(got[present[:40], :34], features[present[:40], :34])
    # Lost frames' normalised pose: near the filled keypoints' normalisation (the body's
    # centre and size move across the gap), far nearer than the frames before filling.
    lost = ~present[:40]
    error = np.abs(got[lost, :34] - expected[lost, :34]).mean()
    assert error < 0.25 * np.abs(features[lost, :34] - expected[lost, :34]).mean()
    np.testing.assert_array_equal(drop_and_fill(features, np.ones(40, bool)), features)


def test_augmentation_defaults_do_nothing_and_settings_change_only_what_they_say():
    rng = np.random.default_rng(2)
    batch = np.stack([pose_features(dancing_keypoints(rng), 640, 480) for _ in range(4)])
    assert not AugmentConfig().active
    np.testing.assert_array_equal(augment_poses(batch, rng, AugmentConfig()), batch)
    mirrored = augment_poses(batch, np.random.default_rng(3), AugmentConfig(mirror=1.0))
    np.testing.assert_array_equal(mirrored, mirror_poses(batch))
    rotated = augment_poses(batch, np.random.default_rng(3), AugmentConfig(rotate_deg=10))
    lengths = np.linalg.norm(batch[..., :34].reshape(4, -1, 17, 2), axis=-1)
    np.testing.assert_allclose(
        np.linalg.norm(rotated[..., :34].reshape(4, -1, 17, 2), axis=-1), lengths, atol=1e-5
    )
    assert not np.allclose(rotated, batch)
    jittered = augment_poses(batch, np.random.default_rng(3), AugmentConfig(time_jitter=2))
    assert jittered.shape == batch.shape
    with pytest.raises(ValueError, match="mirror"):
        AugmentConfig(mirror=1.5)


def test_hard_negatives_are_the_same_track_at_other_offsets():
    rng = np.random.default_rng(4)
    video = Video("v", rng.normal(size=(240, 68)), rng.normal(size=(120, 128)).astype(np.float32))
    windows, valid = hard_negative_windows(video, start=40, count=4, seed=0)
    assert windows.shape == (4, 60, 128) and valid.tolist() == [1, 1, 1, 1]
    true = 40 // 2
    for w in windows:
        offsets = [a for a in range(61) if np.array_equal(video.audio[a : a + 60], w)]
        assert len(offsets) == 1 and abs(offsets[0] - true) >= MIN_NEGATIVE_SHIFT_AUDIO_FRAMES
    again, _ = hard_negative_windows(video, start=40, count=4, seed=0)
    np.testing.assert_array_equal(again, windows)  # seeded: runs repeat
    short = Video("s", rng.normal(size=(120, 68)), rng.normal(size=(61, 128)))
    _, valid = hard_negative_windows(short, start=0, count=3, seed=0)
    assert valid.tolist() == [0, 0, 0]  # offsets 0 and 1 only: none far enough
