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


# What the original generator (before choreography families) wrote for the fixture's
# videos (seed 7, 13 s): the default family must reproduce it.
ORIGINAL_OUTPUT = {
    "dance_0000": {
        "kp_sum": 1669059.3641376495,
        "kp_motion": 18341.256942749023,
        "scores_sum": 5795.362636446953,
        "kp": {(3, 0): (106.436, 95.437), (40, 9): (172.025, 164.425),
               (150, 15): (124.978, 284.027), (300, 10): (49.585, 173.887)},
        "audio_abs_sum": 19026.519430942564,
        "audio_len": 208051,
    },
    "dance_0001": {
        "kp_sum": 1448969.3317070007,
        "kp_motion": 19422.456882476807,
        "scores_sum": 4764.692938029766,
        "kp": {(3, 0): (110.939, 109.052), (40, 9): (175.834, 173.411),
               (150, 15): (134.134, 264.121), (300, 10): (72.832, 186.578)},
        "audio_abs_sum": 17706.859022437955,
        "audio_len": 208051,
    },
}  # fmt: skip


def test_the_default_family_reproduces_the_original_generator(synth_dir, manifest):
    assert manifest["families"] == ["classic"]
    for name, want in ORIGINAL_OUTPUT.items():
        z = np.load(synth_dir / f"{name}.npz")
        kp = z["keypoints"].astype(np.float64)
        assert kp.sum() == pytest.approx(want["kp_sum"], rel=1e-9)
        assert np.abs(np.diff(kp, axis=0)).sum() == pytest.approx(want["kp_motion"], rel=1e-9)
        assert z["scores"].astype(np.float64).sum() == pytest.approx(want["scores_sum"], rel=1e-9)
        for (frame, joint), xy in want["kp"].items():
            np.testing.assert_allclose(kp[frame, joint], xy, atol=1e-3)
        audio = read_audio(str(synth_dir / f"{name}.mp4"))[0].astype(np.float64)
        assert len(audio) == want["audio_len"]
        assert np.abs(audio).sum() == pytest.approx(want["audio_abs_sum"], rel=1e-6)
    assert all(v["family"] == "classic" for v in manifest["videos"])


FAMILY_FPS = 50.0


@pytest.fixture(scope="module")
def rock_score():
    """A 4/4 rock beat at 100 BPM: kicks on beats 1 and 3, snares on 2 and 4."""
    params = MusicParams(
        tempo_bpm=100.0, meter=4, key=0, scale="major", timbre="square", drum_pattern=0,
        section_bars=4, seed=1,
    )  # fmt: skip
    return compose(params, 40.0)


def dance(score, family_name):
    from dvamn.synth.dancer import body_pose, dance_style
    from dvamn.synth.families import FAMILIES, family_pose, family_style

    t = np.arange(int(40 * FAMILY_FPS)) / FAMILY_FPS
    rng = np.random.default_rng(0)
    if family_name == "classic":
        return body_pose(score, dance_style("square", rng), t)
    family = FAMILIES[family_name]
    return family_pose(score, family, family_style(family, "square", rng), t)


def part_motion(joints):
    """Rectified motion [T-1] of body parts relative to the body: wrists rising above the
    shoulders, the pelvis dropping, the nose dropping towards the shoulders."""
    y = joints[..., 1]
    shoulders, hips = y[:, [5, 6]].mean(1), y[:, [11, 12]].mean(1)
    return {
        "arms": np.maximum(-np.diff(y[:, [9, 10]] - shoulders[:, None], axis=0), 0).sum(1),
        "dip": np.maximum(np.diff(hips), 0),
        "head": np.maximum(np.diff(y[:, 0] - shoulders), 0),
    }


def answer(motion, times_s, gains, lags_s):
    """Best correlation of ``motion`` with an event train over motion lags ``lags_s``
    (negative: the motion comes before the event)."""
    events = np.zeros(len(motion))
    np.add.at(
        events, np.clip(np.round(times_s * FAMILY_FPS).astype(int), 0, len(motion) - 1), gains
    )
    best = -1.0
    for lag in range(int(round(lags_s[0] * FAMILY_FPS)), int(round(lags_s[1] * FAMILY_FPS)) + 1):
        a = motion[max(lag, 0) : len(motion) + min(lag, 0)]
        b = events[max(-lag, 0) : len(events) - max(lag, 0)]
        best = max(best, float(np.corrcoef(a, b)[0, 1]))
    return best


def test_families_answer_the_drums_with_different_body_parts(rock_score):
    on_beat = (-0.25, 0.05)  # a move rises in the tau before its event
    kick = (rock_score.kick_times_s, rock_score.kick_gains)
    snare = (rock_score.snare_times_s, rock_score.snare_gains)
    classic = part_motion(dance(rock_score, "classic"))
    swap = part_motion(dance(rock_score, "swap"))
    # classic: snares punch the arms, kicks dip the body
    assert answer(classic["arms"], *snare, on_beat) > answer(classic["arms"], *kick, on_beat) + 0.3
    assert answer(classic["dip"], *kick, on_beat) > answer(classic["dip"], *snare, on_beat) + 0.3
    # swap: the other way round
    assert answer(swap["arms"], *kick, on_beat) > answer(swap["arms"], *snare, on_beat) + 0.3
    assert answer(swap["dip"], *snare, on_beat) > answer(swap["dip"], *kick, on_beat) + 0.3


def test_the_swing_family_answers_half_a_beat_late(rock_score):
    snare = (rock_score.snare_times_s, rock_score.snare_gains)
    on_beat, late = (-0.25, 0.05), (0.15, 0.45)  # half a beat is 0.3 s at 100 BPM
    swing = part_motion(dance(rock_score, "swing"))["head"]  # snares nod the head
    assert answer(swing, *snare, late) > answer(swing, *snare, on_beat) + 0.3


def test_mixed_families_are_assigned_by_seed_recorded_and_noisier(tmp_path):
    from dvamn.synth import families
    from dvamn.synth.cli import FAMILY_NAMES
    from dvamn.synth.generate import assign_families

    assert FAMILY_NAMES == families.FAMILY_NAMES == (*families.FAMILIES, "random")
    shares = assign_families(9, ("swap", "swing", "melodic"), seed=3)
    assert sorted(shares) == sorted(["swap", "swing", "melodic"] * 3)
    assert shares == assign_families(9, ("swap", "swing", "melodic"), seed=3)
    assert shares != assign_families(9, ("swap", "swing", "melodic"), seed=4)
    with pytest.raises(ValueError, match="unknown choreography famil.*'disco'"):
        assign_families(2, ("swap", "disco"))

    result = synthesize(str(tmp_path), videos=2, seconds=SECONDS, seed=SEED, families=("melodic",))
    m = json.loads(Path(result.manifest).read_text())
    assert m["families"] == ["melodic"] and [v["family"] for v in m["videos"]] == ["melodic"] * 2
    z = np.load(tmp_path / "dance_0000.npz")
    scores, keypoints = z["scores"], z["keypoints"]
    missed_joints = (scores == 0) & (scores.max(axis=1, keepdims=True) > 0)
    assert missed_joints.any()  # single joints the detector was unsure of: score 0 ...
    assert np.all(keypoints[missed_joints] != 0)  # ... at a wrong guess, not at pixel 0
    assert np.all(keypoints[scores.max(axis=1) == 0] == 0)  # frames it missed entirely
    seen = keypoints[scores > 0]
    assert seen[:, 0].min() >= 0 and seen[:, 0].max() < m["videos"][0]["width"]
    assert seen[:, 1].min() >= 0 and seen[:, 1].max() < m["videos"][0]["height"]
    # Same seed, another family: the same music, another dance.
    classic = synthesize(str(tmp_path / "c"), videos=1, seconds=SECONDS, seed=SEED)
    classic_entry = json.loads(Path(classic.manifest).read_text())["videos"][0]
    assert classic_entry["music"] == m["videos"][0]["music"]
    assert not np.allclose(np.load(Path(classic.keypoints[0]))["keypoints"], keypoints)


def test_the_random_family_draws_each_videos_rules_from_its_seed(tmp_path, rock_score):
    from dvamn.synth.families import (
        FAMILIES,
        draw_family,
        family_pose,
        family_style,
        held_out_pairs_shared,
    )

    draws = [draw_family(np.random.default_rng(k)) for k in range(300)]
    assert draws[0] == draw_family(np.random.default_rng(0))  # a seed gives its rules
    assert len({(d.dip, d.arms, d.head, d.shoulders, d.steps) for d in draws}) > 200
    # melodic (the held-out family) shares all 4 of its pairs with itself, a draw < 2
    assert held_out_pairs_shared(FAMILIES["melodic"]) == 4
    assert max(held_out_pairs_shared(d) for d in draws) == 1
    assert all(d.drop_joint_rate == 0 and d.weight_spread <= 0.5 for d in draws)
    # A drawn rule is danced: arms on the kicks answer kicks, not snares.
    kicks = next(d for d in draws if d.arms == "kick" and not d.delay_beats and not d.half_time)
    t = np.arange(int(40 * FAMILY_FPS)) / FAMILY_FPS
    style = family_style(kicks, "square", np.random.default_rng(0))
    arms = part_motion(family_pose(rock_score, kicks, style, t))["arms"]
    kick = (rock_score.kick_times_s, rock_score.kick_gains)
    snare = (rock_score.snare_times_s, rock_score.snare_gains)
    on_beat = (-0.25, 0.05)
    assert answer(arms, *kick, on_beat) > answer(arms, *snare, on_beat) + 0.3

    # Two videos of the family get different rules; the same seed the same video.
    one, two = (
        synthesize(str(tmp_path / name), videos=2, seconds=4.0, seed=SEED, families=("random",))
        for name in ("one", "two")
    )
    entries = [json.loads(Path(r.manifest).read_text())["videos"] for r in (one, two)]
    assert entries[0] == entries[1]
    assert [v["family"] for v in entries[0]] == ["random"] * 2
    assert entries[0][0]["rules"] != entries[0][1]["rules"]
    assert entries[0][0]["rules"]["name"] == "random"
    for a, b in zip(one.keypoints, two.keypoints):
        np.testing.assert_array_equal(np.load(a)["keypoints"], np.load(b)["keypoints"])
