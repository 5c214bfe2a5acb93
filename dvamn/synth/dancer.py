"""A COCO-17 stick figure that dances to a ``Score``, and the camera that films it.

The motion is made from the music's events so that a model can tell from the motion alone
which track it belongs to:

- kicks dip the body (knees bend), snares punch an arm up (alternating sides), hi-hats nod
  the head; downbeats are accented because the score's gains are;
- the hips sway once a bar (3/4 and 4/4 differ) and the arms swing once every two beats;
- the lead hand's height follows the melody's pitch;
- at high energy the feet step on the beats; every amplitude scales with the energy
  envelope, so energy sections show;
- a per-video ``DanceStyle`` (time constant and the weight of each move) is drawn around
  a base style tied to the track's timbre, so the way of moving carries the instrument.

Body coordinates are in "body units" (the figure is about 1.7 tall), x to the image right,
y down, pelvis at the origin at rest. The figure faces the camera, so its left joints are
on the image's right.
"""

from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import numpy as np

from dvamn.constants import NUM_JOINTS
from dvamn.synth.music import Score

JOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
# One fully saturated colour per joint (BGR), hues 21 degrees apart on the wheel and
# ordered so that joints next to each other on the body differ most; a stand-in pose
# network can find each joint by its colour.
JOINT_COLORS_BGR: Tuple[Tuple[int, int, int], ...] = (
    (0, 0, 255),  # nose, hue 0
    (120, 255, 0),  # left_eye, hue 148
    (255, 0, 240),  # right_eye, hue 296
    (0, 255, 150),  # left_ear, hue 84
    (255, 29, 0),  # right_ear, hue 232
    (0, 89, 255),  # left_shoulder, hue 21
    (209, 255, 0),  # right_shoulder, hue 169
    (180, 0, 255),  # left_elbow, hue 317
    (0, 255, 60),  # right_elbow, hue 105
    (255, 0, 60),  # left_wrist, hue 254
    (0, 179, 255),  # right_wrist, hue 42
    (255, 209, 0),  # left_hip, hue 190
    (90, 0, 255),  # right_hip, hue 338
    (30, 255, 0),  # left_knee, hue 127
    (255, 0, 149),  # right_knee, hue 275
    (0, 255, 240),  # left_ankle, hue 63
    (255, 120, 0),  # right_ankle, hue 211
)
LIMB_COLOR_BGR = (200, 200, 200)
# COCO-17 skeleton (joint index pairs) drawn as limbs.
SKELETON_EDGES = (
    (0, 1), (0, 2), (1, 3), (2, 4),
    (5, 6), (5, 7), (7, 9), (6, 8), (8, 10),
    (5, 11), (6, 12), (11, 12),
    (11, 13), (13, 15), (12, 14), (14, 16),
)  # fmt: skip

# Body proportions in body units.
_UPPER_ARM = 0.28
_FOREARM = 0.25
_THIGH = 0.42
_SHIN = 0.42
_TORSO = 0.5  # pelvis to mid-shoulders
_SHOULDER_HALF_WIDTH = 0.18
_HIP_HALF_WIDTH = 0.12
_STANCE_HALF_WIDTH = 0.16
_ANKLE_REST_Y = 0.8  # slightly bent knees at rest
# Extent of any pose in body units (raised hands to feet, arms out): the camera keeps it
# inside the frame.
BODY_EXTENT_X = (-0.75, 0.75)
BODY_EXTENT_Y = (-1.15, 0.85)


@dataclass(frozen=True)
class DanceStyle:
    """How one dancer moves. Angles in radians, lengths in body units, times in s."""

    tau_s: float  # time to the peak of a move after its beat: short = sharp
    bounce: float  # body dip on kicks
    punch: float  # arm raise on snares
    nod: float  # head nod on hi-hats
    sway: float  # hip sway once a bar
    arm_wave: float  # arm swing once every two beats
    hand_pitch: float  # lead-hand raise per octave of melody pitch
    step: float  # foot lift on beats at high energy
    lead_side: int  # +1: left hand follows the melody, -1: right hand

    def to_json(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


# Base styles per timbre: smooth waves for sine, sharp punches for square, bounces for saw,
# big sways for organ, nods and steps for pluck, high hands for bell.
_BASE_STYLES: Dict[str, Dict[str, float]] = {
    "sine": dict(tau_s=0.15, bounce=0.07, punch=0.8, nod=0.05, sway=0.10, arm_wave=0.45,
                 hand_pitch=0.8, step=0.05),
    "square": dict(tau_s=0.07, bounce=0.06, punch=1.3, nod=0.08, sway=0.04, arm_wave=0.15,
                   hand_pitch=0.5, step=0.08),
    "saw": dict(tau_s=0.10, bounce=0.11, punch=0.8, nod=0.06, sway=0.05, arm_wave=0.3,
                hand_pitch=0.6, step=0.10),
    "organ": dict(tau_s=0.16, bounce=0.06, punch=0.7, nod=0.05, sway=0.13, arm_wave=0.4,
                  hand_pitch=0.7, step=0.04),
    "pluck": dict(tau_s=0.07, bounce=0.07, punch=0.7, nod=0.12, sway=0.05, arm_wave=0.2,
                  hand_pitch=0.6, step=0.13),
    "bell": dict(tau_s=0.12, bounce=0.05, punch=0.6, nod=0.05, sway=0.07, arm_wave=0.55,
                 hand_pitch=1.2, step=0.05),
}  # fmt: skip


def dance_style(timbre: str, rng: np.random.Generator) -> DanceStyle:
    """The base style of ``timbre`` with each weight varied by +-20% for this dancer."""
    base = _BASE_STYLES[timbre]
    varied = {k: float(v * rng.uniform(0.8, 1.2)) for k, v in base.items()}
    return DanceStyle(**varied, lead_side=int(rng.choice([-1, 1])))


def _impulses(
    times_s: np.ndarray, event_times_s: np.ndarray, gains: np.ndarray, tau_s: float
) -> np.ndarray:
    """Sum of smooth moves [T], one per event: (u/tau) e^(1-u/tau) with
    u = t - event + tau >= 0. Each move starts tau_s before its event and peaks ON it, as a
    dancer lands a move on the beat, then fades within a few tau_s."""
    if len(event_times_s) == 0:
        return np.zeros(len(times_s))
    u = times_s[:, None] - event_times_s[None, :] + tau_s  # [T, E]
    x = np.clip(u / tau_s, 0.0, 12.0)
    shape = np.where(u >= 0, x * np.exp(1.0 - x), 0.0)
    return shape @ gains


def _rotate(vectors: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate [T, 2] vectors by [T] angles (radians; positive turns +x towards +y)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack(
        [c * vectors[:, 0] - s * vectors[:, 1], s * vectors[:, 0] + c * vectors[:, 1]], 1
    )


def _knee(hip: np.ndarray, ankle: np.ndarray, side: int) -> np.ndarray:
    """Knee [T, 2] of a two-bone leg from hip to ankle, bending outwards to ``side``."""
    span = ankle - hip
    dist = np.clip(np.linalg.norm(span, axis=1), 1e-6, _THIGH + _SHIN - 1e-6)
    along = span / dist[:, None]
    # Perpendicular to the leg; for a leg pointing down (0, 1) it is (side, 0): outwards.
    out = np.stack([along[:, 1], -along[:, 0]], 1) * side
    height = np.sqrt(np.clip(_THIGH**2 - (dist / 2) ** 2, 0.0, None))
    return hip + along * (dist / 2)[:, None] + out * height[:, None]


def body_pose(score: Score, style: DanceStyle, times_s: np.ndarray) -> np.ndarray:
    """The dancer's joints [T, 17, 2] in body units at track times ``times_s`` [T]."""
    t = np.asarray(times_s, np.float64)
    T = len(t)
    beat_s = float(np.median(np.diff(score.beat_times_s))) if len(score.beat_times_s) > 1 else 0.5
    meter = int(score.beat_in_bar.max()) + 1 if len(score.beat_in_bar) else 4
    energy = score.energy(t)

    dip = style.bounce * _impulses(t, score.kick_times_s, score.kick_gains, style.tau_s)
    sides = np.where(np.arange(len(score.snare_times_s)) % 2 == 0, 1.0, -1.0)
    punch_left = _impulses(t, score.snare_times_s, score.snare_gains * (sides > 0), style.tau_s)
    punch_right = _impulses(t, score.snare_times_s, score.snare_gains * (sides < 0), style.tau_s)
    nod = style.nod * _impulses(t, score.hat_times_s, score.hat_gains, style.tau_s * 0.6)
    sway_x = style.sway * energy * np.sin(2 * np.pi * t / (meter * beat_s))
    wave = style.arm_wave * energy * np.sin(np.pi * t / beat_s)  # period: two beats

    # Feet step on beats when the energy is high, alternating sides.
    beat_energy = score.energy(score.beat_times_s)
    step_gain = np.clip((beat_energy - 0.55) / 0.45, 0.0, 1.0)
    beat_side = np.where(np.arange(len(score.beat_times_s)) % 2 == 0, 1.0, -1.0)
    lift_left = style.step * _impulses(
        t, score.beat_times_s, step_gain * (beat_side > 0), style.tau_s
    )
    lift_right = style.step * _impulses(
        t, score.beat_times_s, step_gain * (beat_side < 0), style.tau_s
    )

    # Melody pitch in octaves above the track's lowest note, glided over 50 ms.
    lowest = float(np.min(score.note_pitches)) if len(score.note_pitches) else 60.0
    pitch = 0.5 * (score.melody_pitch(t, lowest) + score.melody_pitch(t - 0.05, lowest))
    pitch_octaves = np.clip((pitch - lowest) / 12.0, 0.0, 2.0)

    joints = np.zeros((T, NUM_JOINTS, 2))
    pelvis = np.stack([sway_x, dip], 1)
    lean = -1.2 * sway_x  # the torso leans against the hips' sway
    up = _rotate(np.tile([0.0, -1.0], (T, 1)), lean)
    across = _rotate(np.tile([1.0, 0.0], (T, 1)), lean)  # towards the dancer's left
    neck = pelvis + _TORSO * up
    joints[:, 5] = neck + _SHOULDER_HALF_WIDTH * across
    joints[:, 6] = neck - _SHOULDER_HALF_WIDTH * across

    # Head: a nod shortens the neck (the face tips forward, seen from the front).
    nose = neck + (0.18 - nod)[:, None] * up
    joints[:, 0] = nose
    joints[:, 1] = nose + 0.035 * up + 0.035 * across
    joints[:, 2] = nose + 0.035 * up - 0.035 * across
    joints[:, 3] = nose + 0.015 * up + 0.075 * across
    joints[:, 4] = nose + 0.015 * up - 0.075 * across

    for side, shoulder, elbow, wrist, punch in (
        (1, 5, 7, 9, punch_left),
        (-1, 6, 8, 10, punch_right),
    ):
        # Arm angle from hanging straight down, positive = away from the body and up.
        raise_angle = 0.35 + side * wave + style.punch * punch
        if side == style.lead_side:
            raise_angle = raise_angle + style.hand_pitch * pitch_octaves
        raise_angle = np.clip(raise_angle, 0.0, 2.9)
        bend = 0.5 * (1.0 - np.clip(style.punch * punch, 0.0, 1.0))  # a punch straightens
        upper = np.stack([side * np.sin(raise_angle), np.cos(raise_angle)], 1)
        fore = np.stack([side * np.sin(raise_angle + bend), np.cos(raise_angle + bend)], 1)
        joints[:, elbow] = joints[:, shoulder] + _UPPER_ARM * _rotate(upper, lean)
        joints[:, wrist] = joints[:, elbow] + _FOREARM * _rotate(fore, lean)

    hip_across = _rotate(np.tile([1.0, 0.0], (T, 1)), 0.3 * lean)
    joints[:, 11] = pelvis + _HIP_HALF_WIDTH * hip_across
    joints[:, 12] = pelvis - _HIP_HALF_WIDTH * hip_across
    for side, hip, knee, ankle, lift in ((1, 11, 13, 15, lift_left), (-1, 12, 14, 16, lift_right)):
        foot = np.stack([np.full(T, side * _STANCE_HALF_WIDTH), _ANKLE_REST_Y - lift], 1)
        joints[:, ankle] = foot
        joints[:, knee] = _knee(joints[:, hip], foot, side)
    return joints


@dataclass(frozen=True)
class Camera:
    """Framing over time: scale in pixels per body unit, centre of the pelvis in pixels,
    a slow pan and zoom. Keeps the whole figure inside the frame."""

    width: int
    height: int
    scale_px: float
    zoom: float  # relative zoom amplitude
    zoom_period_s: float
    centre_x_range: Tuple[float, float]
    centre_y_range: Tuple[float, float]
    pan_period_s: float
    pan_phase: float

    def project(self, body: np.ndarray, times_s: np.ndarray) -> np.ndarray:
        """Pixel coordinates [T, 17, 2] of body-unit joints [T, 17, 2] at ``times_s``."""
        t = np.asarray(times_s, np.float64)
        scale = self.scale_px * (1.0 + self.zoom * np.sin(2 * np.pi * t / self.zoom_period_s))
        pan = 0.5 + 0.5 * np.sin(2 * np.pi * t / self.pan_period_s + self.pan_phase)
        drift = 0.5 + 0.5 * np.sin(2 * np.pi * t / (1.7 * self.pan_period_s))
        cx = self.centre_x_range[0] + pan * (self.centre_x_range[1] - self.centre_x_range[0])
        cy = self.centre_y_range[0] + drift * (self.centre_y_range[1] - self.centre_y_range[0])
        return body * scale[:, None, None] + np.stack([cx, cy], 1)[:, None, :]

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def random_camera(rng: np.random.Generator, width: int, height: int) -> Camera:
    """A framing whose figure fills 60-95% of the frame height, panning slowly."""
    span_y = BODY_EXTENT_Y[1] - BODY_EXTENT_Y[0]
    span_x = BODY_EXTENT_X[1] - BODY_EXTENT_X[0]
    zoom = float(rng.uniform(0.0, 0.08))
    fill = float(rng.uniform(0.6, 0.95))
    scale = min(fill * height / span_y, 0.95 * width / span_x) / (1.0 + zoom)
    max_scale = scale * (1.0 + zoom)
    margin = 2.0
    x_lo = margin - BODY_EXTENT_X[0] * max_scale
    x_hi = width - margin - BODY_EXTENT_X[1] * max_scale
    y_lo = margin - BODY_EXTENT_Y[0] * max_scale
    y_hi = height - margin - BODY_EXTENT_Y[1] * max_scale

    # Pan over part of the free room, around a random position.
    def sub_range(lo: float, hi: float) -> Tuple[float, float]:
        a, b = sorted(rng.uniform(lo, hi, size=2))
        return float(a), float(b)

    return Camera(
        width=width,
        height=height,
        scale_px=float(scale),
        zoom=zoom,
        zoom_period_s=float(rng.uniform(6.0, 15.0)),
        centre_x_range=sub_range(x_lo, max(x_lo, x_hi)),
        centre_y_range=sub_range(y_lo, max(y_lo, y_hi)),
        pan_period_s=float(rng.uniform(8.0, 25.0)),
        pan_phase=float(rng.uniform(0, 2 * np.pi)),
    )


def random_gaps(rng: np.random.Generator, duration_s: float) -> np.ndarray:
    """1-2 short intervals [G, 2] (start, end in s, 0.2-0.8 s long) where the dancer is
    out of view."""
    count = int(rng.integers(1, 3))
    starts = np.sort(rng.uniform(1.0, max(1.0, duration_s - 2.0), size=count))
    lengths = rng.uniform(0.2, 0.8, size=count)
    return np.round(np.stack([starts, starts + lengths], 1), 3)


def visible_at(gaps: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """Whether the dancer is in view [T] at ``times_s``."""
    t = np.asarray(times_s, np.float64)[:, None]
    if len(gaps) == 0:
        return np.ones(len(t), bool)
    return ~np.any((t >= gaps[None, :, 0]) & (t < gaps[None, :, 1]), axis=1)
