"""One synthetic dance video: music, dancer, camera, and the files that hold them.

``make_video(spec, out_dir)`` writes ``<id>.mp4`` (H.264 + AAC), ``<id>.npz`` (the true
keypoints in the keypoint-file format: ``keypoints`` float32 [T,17,2] pixels COCO-17,
``scores`` float32 [T,17], ``fps``, ``width``, ``height``; T = frames at k / fps) and
optionally ``music/<id>.wav`` (the whole track the soundtrack was cut from).
"""

import math
import os
import wave
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from dvamn.synth.dancer import body_pose, dance_style, random_camera, random_gaps, visible_at
from dvamn.synth.families import (
    DEFAULT_FAMILY,
    RANDOM_FAMILY,
    detector_noise,
    family_camera,
    family_pose,
    family_rules,
    family_style,
)
from dvamn.synth.music import compose, random_music_params, render_audio
from dvamn.synth.video import blank_frame, encode_mp4, make_background, render_frame

MUSIC_SAMPLE_RATE_HZ = 22_050
FRAME_RATES = (15.0, 20.0, 24.0, 25.0, 30.0)
FRAME_SIZES = ((320, 240), (256, 256), (240, 320), (320, 192))  # (width, height), even
JITTER_BODY_UNITS = 0.004  # keypoint noise, about 1/400 of the figure's height


@dataclass(frozen=True)
class VideoSpec:
    """What to write for one file; everything random derives from ``seed``."""

    video_id: str
    seed: int
    seconds: float
    track_seconds: float
    variable_frame_rate: bool = False
    include_audio: bool = True
    draw_dancer: bool = True
    faststart: bool = False
    huge_size: Optional[Tuple[int, int]] = None  # (w, h): two blank frames at this size
    write_music: bool = False
    family: str = DEFAULT_FAMILY  # choreography family (``dvamn.synth.families``)


def video_seed(seed: int, index: int, broken: bool = False) -> int:
    """The seed of video ``index`` of a run with ``seed`` (independent streams)."""
    sequence = np.random.SeedSequence([seed, int(broken), index])
    return int(sequence.generate_state(1)[0])


def frame_times(rng: np.random.Generator, seconds: float, fps: float, vfr: bool) -> np.ndarray:
    """Presentation times [F] in s: k / fps, or for variable frame rate intervals drawn
    between 0.5 and 1.5 frame periods (rounded to ms)."""
    if not vfr:
        return np.arange(math.ceil(seconds * fps - 1e-9)) / fps
    steps = rng.uniform(0.5, 1.5, size=int(seconds * fps * 2) + 2) / fps
    times = np.round(np.concatenate([[0.0], np.cumsum(steps)]), 3)
    return times[times < seconds]


def _write_wav(path: str, audio: np.ndarray, sample_rate_hz: int) -> None:
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate_hz)
        f.writeframes(pcm.tobytes())


def make_video(spec: VideoSpec, out_dir: str) -> Dict:
    """Write ``spec``'s mp4 and npz (and wav) into local ``out_dir``; return its manifest
    entry."""
    # The first 7 streams are the original generator's (spawning more leaves them as they
    # were), so the default family reproduces its output; the 8th is the detector's, the
    # 9th draws the rules of a ``random`` family video.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(9)]
    rng_music, rng_style, rng_camera, rng_gaps, rng_look, rng_noise, rng_format = streams[:7]
    rng_detector, rng_rules = streams[7:]
    family = family_rules(spec.family, rng_rules)
    classic = spec.family == DEFAULT_FAMILY
    params = random_music_params(rng_music)
    fps = float(rng_format.choice(FRAME_RATES))
    width, height = FRAME_SIZES[int(rng_format.integers(len(FRAME_SIZES)))]
    vfr = spec.variable_frame_rate and spec.huge_size is None
    if spec.huge_size is not None:
        width, height = spec.huge_size
    track_s = max(spec.track_seconds, spec.seconds)
    offset_s = round(float(rng_music.uniform(0.0, track_s - spec.seconds)), 2)

    score = compose(params, track_s)
    track = render_audio(score, params, MUSIC_SAMPLE_RATE_HZ)
    start = int(round(offset_s * MUSIC_SAMPLE_RATE_HZ))
    soundtrack = track[start : start + int(round(spec.seconds * MUSIC_SAMPLE_RATE_HZ))]
    if classic:
        style = dance_style(params.timbre, rng_style)
        camera = random_camera(rng_camera, width, height)
    else:
        style = family_style(family, params.timbre, rng_style)
        camera = family_camera(family, rng_camera, width, height)
    gaps = random_gaps(rng_gaps, spec.seconds)

    def figure(times_s: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Pixel keypoints [T,17,2] float32 and scores [T,17] float32 at ``times_s``."""
        if classic:
            body = body_pose(score, style, times_s + offset_s)
        else:
            body = family_pose(score, family, style, times_s + offset_s)
        body = body + rng_noise.normal(0.0, JITTER_BODY_UNITS, size=body.shape)
        pixels = camera.project(body, times_s).astype(np.float32)
        visible = visible_at(gaps, times_s) & spec.draw_dancer
        scores = rng_noise.uniform(0.85, 1.0, size=pixels.shape[:2]).astype(np.float32)
        scores[~visible] = 0.0
        pixels[~visible] = 0.0
        return pixels, scores

    # The keypoint file samples k / fps (its format has one fps); a variable-frame-rate
    # video shows the same motion at its own irregular times.
    npz_times = frame_times(rng_format, spec.seconds, fps, vfr=False)
    keypoints, scores = figure(npz_times)
    # The video shows the dancer; the keypoint file is what a detector saw (jitter, misses).
    npz_keypoints, npz_scores = (
        (keypoints, scores)
        if classic
        else detector_noise(family, rng_detector, keypoints, scores, camera.scale_px)
    )
    video_path = os.path.join(out_dir, f"{spec.video_id}.mp4")
    npz_path = os.path.join(out_dir, f"{spec.video_id}.npz")
    audio = soundtrack if spec.include_audio else None
    if spec.huge_size is not None:
        blank = blank_frame(width, height)
        encode_mp4(
            video_path,
            [(blank, 0.0), (blank, spec.seconds - 1.0)],
            width,
            height,
            1.0,
            audio=audio,
            sample_rate_hz=MUSIC_SAMPLE_RATE_HZ,
            variable_frame_rate=True,
            preset="ultrafast",
        )
    else:
        times = frame_times(rng_format, spec.seconds, fps, vfr) if vfr else npz_times
        if vfr:
            draw_points, draw_scores = figure(times)
        else:
            draw_points, draw_scores = keypoints, scores
        background = make_background(rng_look, width, height)
        frames = (
            (
                render_frame(
                    background, draw_points[k], bool(draw_scores[k, 0] > 0), camera.scale_px
                ),
                t,
            )
            for k, t in enumerate(times)
        )
        encode_mp4(
            video_path,
            frames,
            width,
            height,
            fps,
            audio=audio,
            sample_rate_hz=MUSIC_SAMPLE_RATE_HZ,
            variable_frame_rate=vfr,
            faststart=spec.faststart,
        )
    np.savez_compressed(
        npz_path,
        keypoints=npz_keypoints,
        scores=npz_scores,
        fps=np.float32(fps),
        width=np.int32(width),
        height=np.int32(height),
    )
    music_file = None
    if spec.write_music:
        music_file = f"music/{spec.video_id}.wav"
        os.makedirs(os.path.join(out_dir, "music"), exist_ok=True)
        _write_wav(os.path.join(out_dir, music_file), track, MUSIC_SAMPLE_RATE_HZ)
    return {
        "id": spec.video_id,
        "video": f"{spec.video_id}.mp4",
        "keypoints": f"{spec.video_id}.npz",
        "duration_s": spec.seconds,
        "fps": fps,
        "variable_frame_rate": vfr,
        "width": width,
        "height": height,
        "num_keypoint_frames": int(len(npz_times)),
        "seed": spec.seed,
        "family": spec.family,
        # A drawn family's rules are only here (a fixed family's are in families.py).
        **({"rules": family.to_json()} if spec.family == RANDOM_FAMILY else {}),
        "music": {
            **params.to_json(),
            "track_file": music_file,
            "track_duration_s": track_s,
            "offset_s": offset_s,
        },
        "style": style.to_json(),
        "camera": camera.to_json(),
        "gaps_s": gaps.tolist(),
    }
