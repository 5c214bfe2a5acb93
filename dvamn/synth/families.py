"""Choreography families: different rules for how a dancer answers the same music.

A model that learned one set of rules should be measured on another (issue 13). Each
family maps the score's events to body parts its own way, with its own phrasing, style,
camera and detector noise; the music is the same generator for every family, so a seed
gives the same tracks whatever the family.

| family | who answers what | phrasing | style, camera, keypoints |
|---|---|---|---|
| ``classic`` | kicks dip the body, snares punch an arm, hats nod the head, the lead hand follows the melody, feet step on loud beats | on the beat; hips sway once a bar, arms swing every 2 beats | the original generator (``dancer.body_pose``), bit for bit |
| ``swap`` | kicks pump the arms, snares drop the knees, hats shrug the shoulders, the lead hand follows the bass | on the beat; sway every 2 bars, arms wave every beat | per-clip weights +-50%, slow-moving camera |
| ``swing`` | snares nod the head, kicks lift the feet, hats flick the arms, downbeats dip the body | a half beat late (off-beat) with a 2:1 swing on off-eighths; sway every beat | smooth (tau x1.6), jittery keypoints, 2% dropped frames |
| ``halftime`` | every other kick dips the body, every other snare punches, beats shrug, the lead hand follows the melody | half time: only events on even beats; sway every 2 bars, wave every 4 beats | big and slow (tau x2.5, moves x1.3), a moving, shaking camera |
| ``melodic`` | melody notes punch the arms, bass notes dip the body, snares lift the feet, hats nod | on the notes; sway per bar | per-clip weights +-80%, jitter, dropped frames, unsure joints, moving camera |
| ``random`` | drawn per video (``draw_family``): each body part answers a random source or none | drawn: delay, swing, half time, sway and wave periods | drawn: smoothness, size, weights, camera, jitter, dropped frames |

``FAMILIES`` holds the fixed ones; ``random`` (domain randomisation) has no fixed rules,
``family_rules`` draws a video's from its own random stream, never a copy of ``melodic``
(the family held out as unseen). ``family_pose`` makes a non-default family's joints, the
default family goes through ``dancer.body_pose`` unchanged so that today's figures
reproduce.
"""

from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import numpy as np

from dvamn.constants import NUM_JOINTS
from dvamn.synth.dancer import (
    _ANKLE_REST_Y,
    _BASE_STYLES,
    _FOREARM,
    _HIP_HALF_WIDTH,
    _SHOULDER_HALF_WIDTH,
    _STANCE_HALF_WIDTH,
    _TORSO,
    _UPPER_ARM,
    Camera,
    _impulses,
    _knee,
    _rotate,
    random_camera,
)
from dvamn.synth.music import Score

DEFAULT_FAMILY = "classic"
# What can drive a move: the drums, the beats (all, or bar starts), melody and bass notes.
EVENT_SOURCES = ("kick", "snare", "hat", "beat", "downbeat", "note", "bass")


@dataclass(frozen=True)
class Family:
    """One family's rules. A move's source is one of ``EVENT_SOURCES`` or "" (off)."""

    name: str
    description: str
    dip: str = ""  # the pelvis drops and the knees bend
    arms: str = ""  # an arm punches up, sides alternating
    head: str = ""  # the head nods
    shoulders: str = ""  # the shoulders shrug
    steps: str = ""  # a foot lifts, sides alternating
    lead_hand: str = "melody"  # what the lead hand's height follows: "melody", "bass", ""
    delay_beats: float = 0.0  # moves land this many beats after their event (0.5: off-beat)
    swing: float = 0.5  # where an off-eighth move lands within its beat (0.5: straight)
    half_time: bool = False  # only events on even beats move the body
    sway_beats: float = 0.0  # hip sway period in beats (0: one bar)
    wave_beats: float = 2.0  # arm swing period in beats
    tau_scale: float = 1.0  # x the style's time constant: larger is smoother
    amplitude: float = 1.0  # x every move
    weight_spread: float = 0.2  # per-clip weights drawn in [1 - s, 1 + s] x the base
    camera_shake: float = 0.0  # smooth camera shake, fraction of the frame's short side
    camera_speed: float = 1.0  # x the pan and zoom speed
    jitter: float = 0.0  # extra detector noise in the keypoint file, body units (sd)
    drop_frame_rate: float = 0.0  # frames the detector misses entirely
    drop_joint_rate: float = 0.0  # single joint detections missed

    def to_json(self) -> dict:
        return asdict(self)


FAMILIES: Dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "classic",
            "the original generator: kicks dip, snares punch, hats nod, on the beat",
            dip="kick",
            arms="snare",
            head="hat",
            steps="beat",
        ),
        Family(
            "swap",
            "kicks pump the arms, snares drop the knees, hats shrug, the lead hand follows "
            "the bass",
            dip="snare",
            arms="kick",
            shoulders="hat",
            lead_hand="bass",
            sway_beats=8.0,
            wave_beats=1.0,
            weight_spread=0.5,
            camera_speed=2.0,
        ),
        Family(
            "swing",
            "off-beat and swung: snares nod, kicks lift the feet, hats flick the arms, "
            "downbeats dip",
            dip="downbeat",
            arms="hat",
            head="snare",
            steps="kick",
            lead_hand="",
            delay_beats=0.5,
            swing=2.0 / 3.0,
            sway_beats=1.0,
            tau_scale=1.6,
            weight_spread=0.4,
            jitter=0.012,
            drop_frame_rate=0.02,
        ),
        Family(
            "halftime",
            "half time, big and slow: every other kick dips, every other snare punches, "
            "beats shrug",
            dip="kick",
            arms="snare",
            shoulders="beat",
            half_time=True,
            sway_beats=8.0,
            wave_beats=4.0,
            tau_scale=2.5,
            amplitude=1.3,
            weight_spread=0.4,
            camera_shake=0.03,
            camera_speed=2.5,
            jitter=0.008,
        ),
        Family(
            "melodic",
            "melody notes punch the arms, bass notes dip, snares lift the feet, hats nod",
            dip="bass",
            arms="note",
            head="hat",
            steps="snare",
            weight_spread=0.8,
            camera_shake=0.02,
            camera_speed=1.5,
            jitter=0.01,
            drop_frame_rate=0.03,
            drop_joint_rate=0.02,
        ),
    )
}


# A family whose rules each video draws (``draw_family``): domain randomisation.
RANDOM_FAMILY = "random"
FAMILY_NAMES = (*FAMILIES, RANDOM_FAMILY)
# The part -> source pairs of the family held out as unseen; a drawn family shares at most
# one of them, so ``random`` never dances ``melodic``'s rules.
_HELD_OUT = FAMILIES["melodic"]
_PARTS = ("dip", "arms", "head", "shoulders", "steps")
_HELD_OUT_PAIRS = {(part, getattr(_HELD_OUT, part)) for part in _PARTS if getattr(_HELD_OUT, part)}


def held_out_pairs_shared(family: Family) -> int:
    """How many of ``melodic``'s part -> source pairs ``family`` also has."""
    return sum((part, getattr(family, part)) in _HELD_OUT_PAIRS for part in _PARTS)


def draw_family(rng: np.random.Generator) -> Family:
    """One video's rules for the ``random`` family: each body part answers a random
    source (or none, 1 in 5; at least two parts move), the lead hand follows the melody,
    the bass or nothing; delay, swing, half time, sway and wave periods, smoothness, size,
    per-clip weight spread, camera and detector jitter and dropped frames drawn from the
    ranges of the fixed families. Draws sharing two or more of ``melodic``'s part ->
    source pairs are drawn again, and no drawn family has ``melodic``'s unsure joints or
    its +-80% weights, so ``melodic`` stays unseen."""
    while True:
        sources = {
            part: "" if rng.random() < 0.2 else str(rng.choice(EVENT_SOURCES)) for part in _PARTS
        }
        if sum(bool(v) for v in sources.values()) < 2:
            continue
        family = Family(
            RANDOM_FAMILY,
            "rules drawn per video",
            **sources,
            lead_hand=str(rng.choice(["melody", "bass", ""])),
            delay_beats=float(rng.choice([0.0, 0.0, 0.25, 0.5])),
            swing=float(rng.uniform(0.5, 0.7)),
            half_time=bool(rng.random() < 0.2),
            sway_beats=float(rng.choice([0.0, 1.0, 2.0, 4.0, 8.0])),
            wave_beats=float(rng.choice([1.0, 2.0, 4.0])),
            tau_scale=float(np.exp(rng.uniform(np.log(0.8), np.log(2.5)))),
            amplitude=float(rng.uniform(0.8, 1.3)),
            weight_spread=float(rng.uniform(0.2, 0.5)),
            camera_shake=float(rng.choice([0.0, rng.uniform(0.0, 0.03)])),
            camera_speed=float(rng.uniform(1.0, 2.5)),
            jitter=float(rng.uniform(0.0, 0.012)),
            drop_frame_rate=float(rng.choice([0.0, rng.uniform(0.0, 0.03)])),
        )
        if held_out_pairs_shared(family) < 2:
            return family


def family_rules(name: str, rng: np.random.Generator) -> Family:
    """The rules a video of family ``name`` dances by: a fixed family's, or for
    ``random`` a fresh draw from ``rng`` (the video's own stream)."""
    if name == RANDOM_FAMILY:
        return draw_family(rng)
    if name not in FAMILIES:
        raise ValueError(
            f"unknown choreography family {name!r}; choose from {', '.join(FAMILY_NAMES)}"
        )
    return FAMILIES[name]


def parse_families(text: str) -> Tuple[str, ...]:
    """``"swap,swing"`` -> ("swap", "swing"); ValueError naming an unknown family."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FAMILY_NAMES]
    if not names or unknown:
        raise ValueError(
            f"unknown choreography famil{'ies' if len(unknown) > 1 else 'y'} "
            f"{', '.join(map(repr, unknown)) or repr(text)}; choose from {', '.join(FAMILY_NAMES)}"
        )
    return names


@dataclass(frozen=True)
class FamilyStyle:
    """One dancer's weights for a non-default family (angles in radians, lengths in body
    units, times in s), drawn around the base style of the track's timbre."""

    family: str
    tau_s: float
    dip: float
    punch: float
    nod: float
    shrug: float
    step: float
    sway: float
    wave: float
    hand: float
    lead_side: int

    def to_json(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def family_style(family: Family, timbre: str, rng: np.random.Generator) -> FamilyStyle:
    """Per-clip weights: the timbre's base style, scaled by the family, each varied by
    the family's ``weight_spread``."""
    base = _BASE_STYLES[timbre]
    s = family.weight_spread

    def vary(value: float) -> float:
        return float(value * family.amplitude * rng.uniform(1.0 - s, 1.0 + s))

    return FamilyStyle(
        family=family.name,
        tau_s=float(base["tau_s"] * family.tau_scale * rng.uniform(0.85, 1.15)),
        dip=vary(base["bounce"]),
        punch=vary(base["punch"]),
        nod=vary(base["nod"]),
        shrug=vary(0.06),
        step=vary(max(base["step"], 0.06)),
        sway=vary(base["sway"]),
        wave=vary(base["arm_wave"]),
        hand=vary(base["hand_pitch"]),
        lead_side=int(rng.choice([-1, 1])),
    )


def _events(score: Score, source: str) -> Tuple[np.ndarray, np.ndarray]:
    """(times [E] s, gains [E]) of one event source."""
    if source == "kick":
        return score.kick_times_s, score.kick_gains
    if source == "snare":
        return score.snare_times_s, score.snare_gains
    if source == "hat":
        return score.hat_times_s, score.hat_gains
    if source in ("beat", "downbeat"):
        times = score.beat_times_s
        gains = score.energy(times) * np.where(score.beat_in_bar == 0, 1.0, 0.8)
        if source == "downbeat":
            keep = score.beat_in_bar == 0
            return times[keep], gains[keep]
        return times, gains
    if source == "note":
        return score.note_onsets_s, score.note_gains * score.energy(score.note_onsets_s)
    if source == "bass":
        return score.bass_onsets_s, 0.8 * score.energy(score.bass_onsets_s)
    raise ValueError(f"unknown event source {source!r}; choose from {', '.join(EVENT_SOURCES)}")


def phrase(family: Family, times_s: np.ndarray, gains: np.ndarray, beat_s: float):
    """Event times and gains as this family dances them: half time keeps the events on
    even beats; swing moves off-eighth events to ``swing`` of their beat; then every
    move lands ``delay_beats`` late."""
    grid = np.round(times_s / (beat_s / 2)).astype(np.int64)  # eighth-note positions
    if family.half_time:
        keep = (grid // 2) % 2 == 0
        times_s, gains, grid = times_s[keep], gains[keep], grid[keep]
    off_eighth = grid % 2 == 1
    times_s = times_s + off_eighth * (family.swing - 0.5) * beat_s
    return times_s + family.delay_beats * beat_s, gains


def _pitch_octaves(onsets_s: np.ndarray, pitches: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Sounding pitch [T] in octaves above the lowest (held until the next onset, glided
    over 50 ms), 0 before the first note; clipped to 0..2."""
    if len(pitches) == 0:
        return np.zeros(len(t))
    lowest = float(np.min(pitches))

    def at(times: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(onsets_s, times, "right") - 1
        return np.where(idx >= 0, pitches[np.clip(idx, 0, None)], lowest).astype(np.float64)

    pitch = 0.5 * (at(t) + at(t - 0.05))
    return np.clip((pitch - lowest) / 12.0, 0.0, 2.0)


def family_pose(
    score: Score, family: Family, style: FamilyStyle, times_s: np.ndarray
) -> np.ndarray:
    """The dancer's joints [T, 17, 2] in body units at track times ``times_s`` [T] under
    ``family``'s rules (same skeleton and units as ``dancer.body_pose``)."""
    t = np.asarray(times_s, np.float64)
    T = len(t)
    beat_s = float(np.median(np.diff(score.beat_times_s))) if len(score.beat_times_s) > 1 else 0.5
    meter = int(score.beat_in_bar.max()) + 1 if len(score.beat_in_bar) else 4
    energy = score.energy(t)
    tau = style.tau_s

    def drive(source: str, side: int = 0, tau_s: float = tau) -> np.ndarray:
        """Impulses [T] of a source's events (``side`` +-1: every other event only)."""
        if not source:
            return np.zeros(T)
        times, gains = phrase(family, *_events(score, source), beat_s)
        if side:
            gains = gains * (np.where(np.arange(len(times)) % 2 == 0, 1, -1) == side)
        return _impulses(t, times, gains, tau_s)

    dip = style.dip * drive(family.dip)
    nod = style.nod * drive(family.head, tau_s=0.6 * tau)
    shrug = style.shrug * drive(family.shoulders)
    punch = {side: drive(family.arms, side) for side in (1, -1)}
    lift = {side: style.step * drive(family.steps, side) for side in (1, -1)}
    sway_period = (family.sway_beats or meter) * beat_s
    sway_x = style.sway * energy * np.sin(2 * np.pi * t / sway_period)
    wave = style.wave * energy * np.sin(2 * np.pi * t / (family.wave_beats * beat_s))
    if family.lead_hand == "melody":
        hand = _pitch_octaves(score.note_onsets_s, score.note_pitches, t)
    elif family.lead_hand == "bass":
        hand = _pitch_octaves(score.bass_onsets_s, score.bass_pitches, t)
    else:
        hand = np.zeros(T)

    joints = np.zeros((T, NUM_JOINTS, 2))
    pelvis = np.stack([sway_x, dip], 1)
    lean = -1.2 * sway_x
    up = _rotate(np.tile([0.0, -1.0], (T, 1)), lean)
    across = _rotate(np.tile([1.0, 0.0], (T, 1)), lean)
    neck = pelvis + _TORSO * up
    shoulder_line = neck + shrug[:, None] * up
    joints[:, 5] = shoulder_line + _SHOULDER_HALF_WIDTH * across
    joints[:, 6] = shoulder_line - _SHOULDER_HALF_WIDTH * across
    nose = neck + (0.18 - nod)[:, None] * up
    joints[:, 0] = nose
    joints[:, 1] = nose + 0.035 * up + 0.035 * across
    joints[:, 2] = nose + 0.035 * up - 0.035 * across
    joints[:, 3] = nose + 0.015 * up + 0.075 * across
    joints[:, 4] = nose + 0.015 * up - 0.075 * across
    for side, shoulder, elbow, wrist in ((1, 5, 7, 9), (-1, 6, 8, 10)):
        hit = style.punch * punch[side]
        raise_angle = 0.35 + side * wave + hit
        if side == style.lead_side:
            raise_angle = raise_angle + style.hand * hand
        raise_angle = np.clip(raise_angle, 0.0, 2.9)
        bend = 0.5 * (1.0 - np.clip(hit, 0.0, 1.0))
        upper = np.stack([side * np.sin(raise_angle), np.cos(raise_angle)], 1)
        fore = np.stack([side * np.sin(raise_angle + bend), np.cos(raise_angle + bend)], 1)
        joints[:, elbow] = joints[:, shoulder] + _UPPER_ARM * _rotate(upper, lean)
        joints[:, wrist] = joints[:, elbow] + _FOREARM * _rotate(fore, lean)
    hip_across = _rotate(np.tile([1.0, 0.0], (T, 1)), 0.3 * lean)
    joints[:, 11] = pelvis + _HIP_HALF_WIDTH * hip_across
    joints[:, 12] = pelvis - _HIP_HALF_WIDTH * hip_across
    for side, hip, knee, ankle in ((1, 11, 13, 15), (-1, 12, 14, 16)):
        foot = np.stack([np.full(T, side * _STANCE_HALF_WIDTH), _ANKLE_REST_Y - lift[side]], 1)
        joints[:, ankle] = foot
        joints[:, knee] = _knee(joints[:, hip], foot, side)
    return joints


@dataclass(frozen=True)
class MovingCamera:
    """A ``Camera`` run ``speed`` times faster and shaken by up to ``shake_px`` (a smooth
    sum of three sines per axis), framed inside the margin the shake needs."""

    base: Camera
    speed: float
    shake_px: float
    shake_freqs_hz: Tuple[float, ...]  # 3 for x, then 3 for y
    shake_phases: Tuple[float, ...]

    @property
    def scale_px(self) -> float:
        return self.base.scale_px

    def project(self, body: np.ndarray, times_s: np.ndarray) -> np.ndarray:
        t = np.asarray(times_s, np.float64)
        pixels = self.base.project(body, t * self.speed)
        f, p = np.asarray(self.shake_freqs_hz), np.asarray(self.shake_phases)
        waves = np.sin(2 * np.pi * f[None, :] * t[:, None] + p[None, :])  # (T, 6)
        shake = self.shake_px / 3.0 * np.stack([waves[:, :3].sum(1), waves[:, 3:].sum(1)], 1)
        return pixels + self.shake_px + shake[:, None, :]

    def to_json(self) -> dict:
        return {
            **self.base.to_json(),
            "speed": self.speed,
            "shake_px": round(self.shake_px, 3),
        }


def family_camera(family: Family, rng: np.random.Generator, width: int, height: int):
    """The family's camera: ``random_camera`` as is when it neither shakes nor speeds up,
    else a ``MovingCamera`` framed inside the shake's margin."""
    if family.camera_shake == 0 and family.camera_speed == 1.0:
        return random_camera(rng, width, height)
    shake = family.camera_shake * min(width, height)
    base = random_camera(rng, int(width - 2 * shake), int(height - 2 * shake))
    return MovingCamera(
        base=base,
        speed=family.camera_speed,
        shake_px=float(shake),
        shake_freqs_hz=tuple(float(v) for v in rng.uniform(0.2, 1.5, size=6)),
        shake_phases=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, size=6)),
    )


def detector_noise(
    family: Family,
    rng: np.random.Generator,
    keypoints: np.ndarray,
    scores: np.ndarray,
    scale_px: float,
) -> Tuple[np.ndarray, np.ndarray]:
    """What a pose detector would have written instead of the true keypoints [T,17,2]
    pixels / scores [T,17]: extra jitter (``jitter`` body units), whole frames missed
    (``drop_frame_rate``: scores and keypoints 0, as the keypoint-file format marks a
    frame without the dancer) and single joints missed (``drop_joint_rate``: score 0 at
    a wrong guess, 0.15 body units off, as detectors report an unsure joint; extraction
    fills whole missing frames only, so a joint at pixel 0 would be a jump across the
    frame rather than a miss)."""
    keypoints, scores = keypoints.copy(), scores.copy()
    if family.jitter:
        noise = rng.normal(0.0, family.jitter * scale_px, size=keypoints.shape)
        keypoints = (keypoints + noise).astype(np.float32)
    if family.drop_joint_rate:
        unsure = rng.random(scores.shape) < family.drop_joint_rate
        guess = rng.normal(0.0, 0.15 * scale_px, size=keypoints.shape)
        keypoints = np.where(unsure[..., None], keypoints + guess, keypoints).astype(np.float32)
        scores[unsure] = 0.0
    if family.drop_frame_rate:
        scores[rng.random(len(scores)) < family.drop_frame_rate] = 0.0
    frame_missed = scores.max(axis=1) == 0
    keypoints[frame_missed] = 0.0
    return keypoints, scores
