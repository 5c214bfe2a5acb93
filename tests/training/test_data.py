"""Training data: windows, the by-video split, provenance, statistics."""

import numpy as np
import pytest

from dvamn.training.data import (
    Video,
    check_provenance,
    collect_features,
    cut_windows,
    is_validation,
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


def test_mixed_provenance_is_refused_naming_both(ray_local, tmp_path):
    root = str(tmp_path / "mixed")
    write_features(root, num_videos=3, num_pose_frames=130, seed=0, audio_kind="logmel")
    write_features(root, num_videos=3, num_pose_frames=130, seed=1, audio_kind="vggish")
    with pytest.raises(ValueError, match="logmel.*vggish|vggish.*logmel"):
        check_provenance(read_features(root))


def test_missing_features_name_the_fix(ray_local, tmp_path):
    with pytest.raises(FileNotFoundError, match="dvamn extract"):
        read_features(str(tmp_path / "nowhere"))
