"""dvamn synth: real mp4 files that MediaReader decodes, keypoint files in the documented
format, the broken kinds failing as extraction expects, determinism, and a dancer whose
motion is locked to its music's beats."""

import json
from pathlib import Path

import numpy as np
import pytest

from dvamn.constants import NUM_JOINTS, num_pose_frames
from dvamn.media import MediaError, MediaReader, read_audio
from dvamn.synth.broken import BROKEN_KINDS
from dvamn.synth.dancer import JOINT_COLORS_BGR
from dvamn.synth.generate import load_manifest, synthesize
from dvamn.synth.music import MusicParams, compose

SECONDS = 13.0
SEED = 7


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    result = synthesize(str(out), videos=3, seconds=SECONDS, seed=SEED, broken=len(BROKEN_KINDS))
    assert len(result.videos) == 3 and len(result.broken) == len(BROKEN_KINDS)
    return out


@pytest.fixture(scope="module")
def manifest(synth_dir) -> dict:
    return load_manifest(str(synth_dir))


def test_manifest_lists_each_video_with_its_music_and_each_broken_kind(synth_dir, manifest):
    assert [v["id"] for v in manifest["videos"]] == ["dance_0000", "dance_0001", "dance_0002"]
    for video in manifest["videos"]:
        music = video["music"]
        assert 70 <= music["tempo_bpm"] <= 170 and music["meter"] in (3, 4)
        assert {"key", "scale", "timbre", "drum_pattern", "seed"} <= music.keys()
        assert (synth_dir / video["video"]).is_file() and (synth_dir / video["keypoints"]).is_file()
    assert manifest["videos"][1]["variable_frame_rate"]
    assert [b["kind"] for b in manifest["broken"]] == list(BROKEN_KINDS)
    names = [b["video"] for b in manifest["broken"]]
    assert names[0] == "broken_zero_byte_00.mp4" and all((synth_dir / n).exists() for n in names)


def test_videos_decode_with_media_reader(synth_dir, manifest):
    for video in manifest["videos"]:
        with MediaReader(str(synth_dir / video["video"])) as reader:
            shapes = {f.shape[1:] for f, _ in reader.frame_batches(64)}
            audio = reader.audio()
        assert reader.info.duration_s == pytest.approx(SECONDS, abs=0.1)
        assert reader.info.video_codec == "h264" and reader.info.audio_codec == "aac"
        assert shapes == {(video["height"], video["width"], 3)}
        assert reader.num_frames == num_pose_frames(SECONDS)
        assert abs(len(audio) / 16_000 - SECONDS) < 0.1
        assert 0.3 < np.abs(audio).max() <= 1.0


def test_keypoint_files_match_the_format(synth_dir, manifest):
    for video in manifest["videos"]:
        z = np.load(synth_dir / video["keypoints"])
        assert set(z.files) == {"keypoints", "scores", "fps", "width", "height"}
        keypoints, scores = z["keypoints"], z["scores"]
        frames = int(np.ceil(SECONDS * video["fps"] - 1e-9))
        assert keypoints.dtype == np.float32 and keypoints.shape == (frames, NUM_JOINTS, 2)
        assert scores.dtype == np.float32 and scores.shape == (frames, NUM_JOINTS)
        assert float(z["fps"]) == video["fps"]
        assert (int(z["width"]), int(z["height"])) == (video["width"], video["height"])
        visible = scores[:, 0] > 0
        assert 0.7 < visible.mean() < 1.0  # short gaps lose the dancer
        assert np.all(scores[~visible] == 0) and np.all(scores[visible] >= 0.85)
        inside = keypoints[visible]
        assert inside[..., 0].min() >= 0 and inside[..., 0].max() < video["width"]
        assert inside[..., 1].min() >= 0 and inside[..., 1].max() < video["height"]


def test_each_joint_is_drawn_in_its_palette_colour(synth_dir, manifest):
    video = manifest["videos"][0]  # constant frame rate: npz frame k is video frame k
    z = np.load(synth_dir / video["keypoints"])
    fps = float(z["fps"])
    with MediaReader(str(synth_dir / video["video"])) as reader:
        frames = np.concatenate([f for f, _ in reader.frame_batches(64)])
    palette = np.asarray(JOINT_COLORS_BGR, np.float64)
    hits, total = 0, 0
    for i, frame in enumerate(frames):
        k = int(np.floor(i / 10.0 * fps + 1e-6))
        if z["scores"][k, 0] == 0:
            continue
        for joint in range(5, NUM_JOINTS):  # body joints; the face ones are tiny
            x, y = np.round(z["keypoints"][k, joint]).astype(int)
            pixel = frame[y, x].astype(np.float64)
            hits += int(np.argmin(np.abs(palette - pixel).sum(1)) == joint)
            total += 1
    assert hits / total > 0.9, f"{hits}/{total} joints show their own colour"


def test_broken_files_fail_as_extraction_expects(synth_dir, manifest):
    for entry in manifest["broken"]:
        path = str(synth_dir / entry["video"])
        if entry["kind"] == "nobody":
            z = np.load(synth_dir / entry["keypoints"])
            assert np.all(z["scores"] == 0)
            waveform, info = read_audio(path)  # the media itself is fine
            assert info.duration_s == pytest.approx(SECONDS, abs=0.1)
            continue
        with pytest.raises(MediaError) as caught:
            with MediaReader(path, min_duration_s=12.0) as reader:
                for _ in reader.frame_batches(64):
                    pass
                reader.audio()
        assert entry["expected_error"] in str(caught.value), entry["kind"]


def test_same_seed_gives_the_same_keypoints_and_audio(synth_dir, manifest, tmp_path):
    again = synthesize(str(tmp_path), videos=2, seconds=SECONDS, seed=SEED, workers=2)
    assert json.loads(Path(again.manifest).read_text())["videos"] == manifest["videos"][:2]
    for name in ("dance_0000", "dance_0001"):
        first, second = np.load(synth_dir / f"{name}.npz"), np.load(tmp_path / f"{name}.npz")
        for key in first.files:
            np.testing.assert_array_equal(first[key], second[key])
        np.testing.assert_array_equal(
            read_audio(str(synth_dir / f"{name}.mp4"))[0],
            read_audio(str(tmp_path / f"{name}.mp4"))[0],
        )
    other = synthesize(str(tmp_path / "other"), videos=1, seconds=SECONDS, seed=SEED + 1)
    assert (
        json.loads(Path(other.manifest).read_text())["videos"][0]["music"]
        != (manifest["videos"][0]["music"])
    )


def beat_locking(speed: np.ndarray, fps: float, period_s: float, bins: int = 8) -> float:
    """Peak-to-mean ratio of the motion speed folded at ``period_s``: 1 for motion that
    ignores that period, larger when the moves come at a fixed phase of it."""
    phase = ((np.arange(len(speed)) / fps % period_s) / period_s * bins).astype(int)
    profile = np.array([speed[phase == b].mean() for b in range(bins)])
    return float(profile.max() / profile.mean())


def test_motion_is_locked_to_the_music_beats(synth_dir, manifest):
    for video in manifest["videos"]:
        z = np.load(synth_dir / video["keypoints"])
        fps, keypoints, scores = float(z["fps"]), z["keypoints"], z["scores"]
        both_visible = (scores[1:, 0] > 0) & (scores[:-1, 0] > 0)
        speed = np.linalg.norm(np.diff(keypoints, axis=0), axis=2).mean(1)
        speed = np.where(both_visible, speed, speed[both_visible].mean())
        music = video["music"]
        params = MusicParams(**{k: music[k] for k in MusicParams.__dataclass_fields__})
        score = compose(params, music["track_duration_s"])
        beat_s = float(np.median(np.diff(score.beat_times_s)))
        assert beat_s == pytest.approx(60.0 / music["tempo_bpm"])
        at_beat = beat_locking(speed, fps, beat_s)
        off_tempo = max(beat_locking(speed, fps, beat_s * f) for f in (0.87, 1.13))
        assert at_beat > off_tempo + 0.05, f"{video['id']}: {at_beat:.2f} vs {off_tempo:.2f}"
