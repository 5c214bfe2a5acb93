"""Keypoint files: our .npz format, AIST++ pickles, finding them, resampling to 10 fps."""

import pickle

import numpy as np
import pytest

from dvamn.pose import (
    KeypointFileError,
    KeypointTrack,
    aist_view_from_name,
    find_keypoint_file,
    load_aist_keypoints,
    load_keypoint_file,
    load_keypoints_for_video,
    resample_track,
    save_keypoint_file,
)


def _track(num_frames: int = 30, fps: float = 30.0) -> KeypointTrack:
    keypoints = np.zeros((num_frames, 17, 2), np.float32)
    keypoints[:, :, 0] = np.arange(num_frames)[:, None]  # x = source frame index
    return KeypointTrack(keypoints, np.full((num_frames, 17), 0.9, np.float32), fps, 640, 360)


def test_save_and_load_round_trip(tmp_path):
    path = str(tmp_path / "clip.npz")
    save_keypoint_file(path, _track())
    track = load_keypoint_file(path)
    assert track.keypoints.shape == (30, 17, 2) and track.keypoints.dtype == np.float32
    assert track.fps == 30.0 and (track.width, track.height) == (640, 360)
    np.testing.assert_array_equal(track.keypoints, _track().keypoints)


def test_width_and_height_are_optional(tmp_path):
    path = tmp_path / "clip.npz"
    np.savez(
        path,
        keypoints=np.zeros((3, 17, 2), np.float32),
        scores=np.ones((3, 17), np.float32),
        fps=25,
    )
    track = load_keypoint_file(str(path))
    assert track.width is None and track.height is None and track.fps == 25.0


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(scores=np.ones((3, 17)), fps=30), "'keypoints' is missing"),
        (
            dict(keypoints=np.zeros((3, 18, 2)), scores=np.ones((3, 17)), fps=30),
            r"shape \[3, 18, 2\]",
        ),
        (
            dict(keypoints=np.zeros((3, 17, 2), np.int32), scores=np.ones((3, 17)), fps=30),
            "dtype int32",
        ),
        (dict(keypoints=np.full((3, 17, 2), np.nan), scores=np.ones((3, 17)), fps=30), "NaN"),
        (dict(keypoints=np.zeros((3, 17, 2)), scores=np.ones((2, 17)), fps=30), "3 frames but"),
        (dict(keypoints=np.zeros((3, 17, 2)), scores=np.ones((3, 17))), "'fps' is missing"),
        (dict(keypoints=np.zeros((3, 17, 2)), scores=np.ones((3, 17)), fps=-1), "positive"),
    ],
)
def test_bad_keypoint_files_name_the_file_and_field(tmp_path, fields, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **fields)
    with pytest.raises(KeypointFileError, match=match) as info:
        load_keypoint_file(str(path))
    assert "bad.npz" in str(info.value)


def test_a_text_file_is_not_a_keypoint_file(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("hello")
    with pytest.raises(KeypointFileError, match="not a readable .npz"):
        load_keypoint_file(str(path))


def test_resample_picks_the_frame_on_screen_at_each_tenth_of_a_second():
    keypoints, scores = resample_track(_track(30, fps=30.0))  # 1 s at 30 fps -> 10 frames
    np.testing.assert_array_equal(keypoints[:, 0, 0], np.arange(0, 30, 3))
    keypoints, _ = resample_track(_track(25, fps=25.0))  # 25 fps: frame 2.5 -> the one before
    np.testing.assert_array_equal(keypoints[:, 0, 0], [0, 2, 5, 7, 10, 12, 15, 17, 20, 22])


def test_resample_marks_frames_past_the_end_missing():
    keypoints, scores = resample_track(_track(30, fps=30.0), num_frames=14)
    assert (scores[10:] == 0).all() and (scores[:10] > 0).all()


def _aist_pickle(path, num_frames: int = 120) -> np.ndarray:
    """A fake AIST++ keypoints2d pickle with the documented layout."""
    points = np.zeros((9, num_frames, 17, 3), np.float32)
    points[..., 0] = np.arange(num_frames)[None, :, None]  # x = frame index
    points[..., 1] = np.arange(9)[:, None, None] * 100.0  # y = view * 100
    points[..., 2] = 0.8
    points[2, 7] = np.nan  # view 2 lost the dancer at frame 7
    det_scores = np.ones((9, num_frames), np.float32)
    det_scores[2, 13] = 0.0
    with open(path, "wb") as f:
        pickle.dump(
            {
                "keypoints2d": points,
                "det_scores": det_scores,
                "timestamps": np.arange(num_frames) * 16,
            },
            f,
            protocol=pickle.HIGHEST_PROTOCOL,
        )
    return points


def test_aist_keypoints_one_view_at_60_fps(tmp_path):
    path = tmp_path / "gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    _aist_pickle(path)
    track = load_aist_keypoints(str(path), view=2)
    assert track.fps == 60.0 and (track.width, track.height) == (1920, 1080)
    assert (
        track.keypoints.shape == (120, 17, 2)
        and (track.keypoints[:, :, 1][track.scores > 0] == 200).all()
    )
    assert (track.scores[[7, 13]] == 0).all() and (track.keypoints[7] == 0).all()
    keypoints, _ = resample_track(track)  # 2 s -> 20 frames, every 6th
    np.testing.assert_array_equal(keypoints[:, 0, 0], np.arange(0, 120, 6))
    with pytest.raises(KeypointFileError, match="view 9 does not exist"):
        load_aist_keypoints(str(path), view=9)


def test_aist_pickle_refuses_foreign_objects(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"keypoints2d": KeypointTrack(None, None, 1.0)}, f)
    with pytest.raises(KeypointFileError, match="refusing"):
        load_aist_keypoints(str(path))


def test_find_keypoint_files_beside_the_video_in_a_dir_and_with_aist_names(tmp_path):
    videos, keypoints_dir = tmp_path / "videos", tmp_path / "kp"
    (keypoints_dir / "keypoints2d").mkdir(parents=True)
    videos.mkdir()
    save_keypoint_file(str(videos / "a.npz"), _track())
    save_keypoint_file(str(keypoints_dir / "b.npz"), _track())
    _aist_pickle(keypoints_dir / "keypoints2d" / "gBR_sBM_cAll_d04_mBR0_ch01.pkl")

    assert find_keypoint_file(str(videos / "a.mp4")) == str(videos / "a.npz")
    assert find_keypoint_file(str(videos / "b.mp4"), str(keypoints_dir)) == str(
        keypoints_dir / "b.npz"
    )
    aist_video = str(videos / "gBR_sBM_c03_d04_mBR0_ch01.mp4")
    assert find_keypoint_file(aist_video, str(keypoints_dir)).endswith(
        "keypoints2d/gBR_sBM_cAll_d04_mBR0_ch01.pkl"
    )
    assert aist_view_from_name(aist_video) == 2
    track = load_keypoints_for_video(aist_video, str(keypoints_dir))
    assert track.fps == 60.0 and track.keypoints[0, 0, 1] == 200.0  # view 2
    with pytest.raises(FileNotFoundError, match="--keypoints-dir"):
        find_keypoint_file(str(videos / "c.mp4"), str(keypoints_dir))
