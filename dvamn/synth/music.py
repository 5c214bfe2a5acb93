"""Synthetic music: a score of timed events (beats, drums, notes, energy) and its audio.

The score is what both the soundtrack and the dancer are made from, so the motion carries
the music's tempo, meter, accents, energy sections and melody. Everything is numpy and
deterministic for a ``MusicParams`` (random choices come from its ``seed``).

Time is in seconds from the start of the track; the grid is eighth notes (2 steps a beat).
"""

from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np

TIMBRES = ("sine", "square", "saw", "organ", "pluck", "bell")
SCALES: Dict[str, Tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "pentatonic": (0, 2, 4, 7, 9),
}
KEY_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
TEMPO_RANGE_BPM = (70.0, 170.0)
STEPS_PER_BEAT = 2  # eighth-note grid

# Drum patterns on the eighth-note grid of one bar: (kick, snare, hat), "x" = hit.
DRUM_PATTERNS: Dict[int, Tuple[Tuple[str, str, str], ...]] = {
    4: (
        ("x...x...", "..x...x.", "xxxxxxxx"),  # rock
        ("x.....x.", "..x...x.", "x.x.x.x."),  # backbeat with pickup kick
        ("x.x.x.x.", "..x...x.", ".x.x.x.x"),  # four on the floor, off-beat hats
        ("x..x..x.", "....x...", "xxxxxxxx"),  # half-time with syncopated kick
        ("x...x.x.", "..x..x..", "x.xxx.xx"),  # funk
    ),
    3: (
        ("x.....", "..x.x.", "x.x.x."),  # waltz
        ("x...x.", "..x...", "xxxxxx"),
        ("x.x...", "....x.", ".x.x.x"),
    ),
}
# Chord roots (scale degrees) a progression draws from: I, IV, V, vi.
CHORD_DEGREES = (0, 3, 4, 5)


@dataclass(frozen=True)
class MusicParams:
    """Everything that defines a track; ``seed`` drives its melody, chords and noise."""

    tempo_bpm: float
    meter: int  # beats per bar: 3 or 4
    key: int  # root pitch class, 0 = C
    scale: str
    timbre: str
    drum_pattern: int  # index into DRUM_PATTERNS[meter]
    section_bars: int  # bars per energy section
    seed: int

    @property
    def beat_s(self) -> float:
        return 60.0 / self.tempo_bpm

    @property
    def bar_s(self) -> float:
        return self.meter * self.beat_s

    def to_json(self) -> dict:
        out = asdict(self)
        out["key_name"] = f"{KEY_NAMES[self.key]} {self.scale}"
        out["meter_name"] = f"{self.meter}/4"
        return out


def random_music_params(rng: np.random.Generator) -> MusicParams:
    """Draw a track's parameters: tempo 70-170 BPM, 3/4 or 4/4, any key, a timbre."""
    meter = int(rng.choice([3, 4], p=[0.3, 0.7]))
    return MusicParams(
        tempo_bpm=round(float(rng.uniform(*TEMPO_RANGE_BPM)), 1),
        meter=meter,
        key=int(rng.integers(12)),
        scale=str(rng.choice(list(SCALES))),
        timbre=str(rng.choice(TIMBRES)),
        drum_pattern=int(rng.integers(len(DRUM_PATTERNS[meter]))),
        section_bars=int(rng.choice([2, 4])),
        seed=int(rng.integers(2**31)),
    )


@dataclass
class Score:
    """The timed events of a track (times in seconds, gains in 0..1).

    Attributes:
        beat_times_s: [NB] every beat; ``beat_in_bar`` [NB] its position (0 = downbeat).
        kick_times_s, kick_gains, snare_times_s, snare_gains, hat_times_s, hat_gains: drums.
        note_onsets_s, note_durations_s, note_pitches, note_gains: melody, MIDI pitches.
        bass_onsets_s, bass_durations_s, bass_pitches: bass line, MIDI pitches.
        section_starts_s, section_energies: [NS] energy level (0.25..1) from each start.
        duration_s: length of the track.
    """

    beat_times_s: np.ndarray
    beat_in_bar: np.ndarray
    kick_times_s: np.ndarray
    kick_gains: np.ndarray
    snare_times_s: np.ndarray
    snare_gains: np.ndarray
    hat_times_s: np.ndarray
    hat_gains: np.ndarray
    note_onsets_s: np.ndarray
    note_durations_s: np.ndarray
    note_pitches: np.ndarray
    note_gains: np.ndarray
    bass_onsets_s: np.ndarray
    bass_durations_s: np.ndarray
    bass_pitches: np.ndarray
    section_starts_s: np.ndarray
    section_energies: np.ndarray
    duration_s: float
    ramp_s: float  # energy changes ramp over this long around a section start

    def energy(self, times_s: np.ndarray) -> np.ndarray:
        """Energy envelope [T] at ``times_s``: section levels joined by short ramps."""
        knots_t: List[float] = []
        knots_e: List[float] = []
        for i, (start, level) in enumerate(zip(self.section_starts_s, self.section_energies)):
            if i > 0:
                knots_t.append(start - self.ramp_s / 2)
                knots_e.append(self.section_energies[i - 1])
            knots_t.append(start + (self.ramp_s / 2 if i > 0 else 0.0))
            knots_e.append(level)
        return np.interp(np.asarray(times_s, np.float64), knots_t, knots_e)

    def melody_pitch(self, times_s: np.ndarray, rest_pitch: float) -> np.ndarray:
        """The sounding melody pitch [T] at ``times_s`` (the last note's pitch until the
        next onset; ``rest_pitch`` before the first note)."""
        idx = np.searchsorted(self.note_onsets_s, np.asarray(times_s, np.float64), "right") - 1
        pitches = np.where(idx >= 0, self.note_pitches[np.clip(idx, 0, None)], rest_pitch)
        return pitches.astype(np.float64)


def compose(params: MusicParams, duration_s: float) -> Score:
    """The events of ``duration_s`` seconds of the track described by ``params``."""
    rng = np.random.default_rng(params.seed)
    beat_s, bar_s = params.beat_s, params.bar_s
    step_s = beat_s / STEPS_PER_BEAT
    steps_per_bar = params.meter * STEPS_PER_BEAT
    num_bars = int(np.ceil(duration_s / bar_s)) + 1
    num_sections = int(np.ceil(num_bars / params.section_bars))

    # Energy sections: neighbours differ clearly, so that changes are visible and audible.
    energies = [float(rng.uniform(0.25, 1.0))]
    for _ in range(num_sections - 1):
        level = float(rng.uniform(0.25, 1.0))
        while abs(level - energies[-1]) < 0.25:
            level = float(rng.uniform(0.25, 1.0))
        energies.append(level)
    section_starts = np.arange(num_sections) * params.section_bars * bar_s
    section_energies = np.asarray(energies)

    kick_pat, snare_pat, hat_pat = DRUM_PATTERNS[params.meter][params.drum_pattern]
    scale = SCALES[params.scale]
    chords = rng.choice(CHORD_DEGREES, size=num_bars)
    chords[0] = 0
    events: Dict[str, List[Tuple[float, float]]] = {"kick": [], "snare": [], "hat": []}
    notes: List[Tuple[float, float, int, float]] = []
    bass: List[Tuple[float, float, int]] = []
    beats: List[Tuple[float, int]] = []
    degree = int(rng.integers(len(scale)))  # melody position as a scale degree
    melody_base = 60 + params.key  # around middle C
    bass_base = 36 + params.key

    for bar in range(num_bars):
        bar_start = bar * bar_s
        section = min(int(bar_start // (params.section_bars * bar_s)), num_sections - 1)
        energy = section_energies[section]
        chord_root = scale[chords[bar] % len(scale)]
        for beat in range(params.meter):
            beats.append((bar_start + beat * beat_s, beat))
        bass_steps = (0, 2 * STEPS_PER_BEAT) if params.meter == 4 else (0,)
        for s in bass_steps:
            length = (steps_per_bar - s) if len(bass_steps) == 1 else 2 * STEPS_PER_BEAT
            bass.append((bar_start + s * step_s, length * step_s * 0.9, bass_base + chord_root))
        for s in range(steps_per_bar):
            t = bar_start + s * step_s
            accent = 1.0 if s == 0 else (0.8 if s % STEPS_PER_BEAT == 0 else 0.6)
            # Quiet sections thin the drums out: kicks stay, snares and hats need energy.
            if kick_pat[s] == "x" and (energy >= 0.4 or s == 0):
                events["kick"].append((t, energy * accent))
            if snare_pat[s] == "x" and energy >= 0.45:
                events["snare"].append((t, energy * accent))
            if hat_pat[s] == "x" and energy >= 0.6:
                events["hat"].append((t, energy * accent * 0.7))
            if rng.random() < 0.25 + 0.55 * energy:
                degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2]), 0, 13))
                octave, step = divmod(degree, len(scale))
                pitch = melody_base + 12 * octave + scale[step]
                length = int(rng.choice([1, 1, 2, 2, 3]))
                notes.append((t, length * step_s, pitch, float(accent * rng.uniform(0.7, 1.0))))

    def keep(times: np.ndarray) -> np.ndarray:
        return times < duration_s

    def drum(kind: str) -> Tuple[np.ndarray, np.ndarray]:
        arr = np.asarray(events[kind], np.float64).reshape(-1, 2)
        arr = arr[keep(arr[:, 0])]
        return arr[:, 0], arr[:, 1]

    kick_t, kick_g = drum("kick")
    snare_t, snare_g = drum("snare")
    hat_t, hat_g = drum("hat")
    note_arr = np.asarray(notes, np.float64).reshape(-1, 4)
    note_arr = note_arr[keep(note_arr[:, 0])]
    bass_arr = np.asarray(bass, np.float64).reshape(-1, 3)
    bass_arr = bass_arr[keep(bass_arr[:, 0])]
    beat_arr = np.asarray(beats, np.float64).reshape(-1, 2)
    beat_arr = beat_arr[keep(beat_arr[:, 0])]
    keep_sections = section_starts < duration_s
    return Score(
        beat_times_s=beat_arr[:, 0],
        beat_in_bar=beat_arr[:, 1].astype(np.int64),
        kick_times_s=kick_t,
        kick_gains=kick_g,
        snare_times_s=snare_t,
        snare_gains=snare_g,
        hat_times_s=hat_t,
        hat_gains=hat_g,
        note_onsets_s=note_arr[:, 0],
        note_durations_s=note_arr[:, 1],
        note_pitches=note_arr[:, 2].astype(np.int64),
        note_gains=note_arr[:, 3],
        bass_onsets_s=bass_arr[:, 0],
        bass_durations_s=bass_arr[:, 1],
        bass_pitches=bass_arr[:, 2].astype(np.int64),
        section_starts_s=section_starts[keep_sections],
        section_energies=section_energies[keep_sections],
        duration_s=float(duration_s),
        ramp_s=min(0.5, beat_s),
    )


# ------------------------------------------------------------------------- audio


def _midi_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69) / 12)


def _instrument_note(
    timbre: str, freq_hz: float, duration_s: float, sample_rate_hz: int
) -> np.ndarray:
    """One note of ``timbre`` [n] float64 with its release tail, peak about 1."""
    tail_s = 0.05 if timbre in ("organ", "square", "saw") else 0.25
    n = int((duration_s + tail_s) * sample_rate_hz)
    t = np.arange(n) / sample_rate_hz
    nyquist = sample_rate_hz / 2

    def additive(weights: List[float], harmonics: List[int]) -> np.ndarray:
        wave = np.zeros(n)
        for w, k in zip(weights, harmonics):
            if k * freq_hz < nyquist * 0.9:  # band-limited: no aliasing
                wave += w * np.sin(2 * np.pi * k * freq_hz * t)
        return wave

    if timbre == "sine":
        wave = additive([1.0, 0.12], [1, 2])
        env = np.minimum(t / 0.04, 1.0) * np.exp(-t / 1.2)
    elif timbre == "square":
        ks = list(range(1, 16, 2))
        wave = additive([1.0 / k for k in ks], ks)
        env = np.minimum(t / 0.005, 1.0) * np.exp(-t / 0.6)
    elif timbre == "saw":
        ks = list(range(1, 21))
        wave = additive([1.0 / k for k in ks], ks)
        env = np.minimum(t / 0.01, 1.0) * (0.6 + 0.4 * np.exp(-t / 0.1))
    elif timbre == "organ":
        wave = additive([1.0, 0.6, 0.4, 0.25, 0.15, 0.1], [1, 2, 3, 4, 6, 8])
        env = np.minimum(t / 0.01, 1.0)
    elif timbre == "pluck":
        wave = np.zeros(n)
        for k in range(1, 12):
            if k * freq_hz < nyquist * 0.9:
                wave += np.sin(2 * np.pi * k * freq_hz * t) * np.exp(-t * (3.0 + 4.0 * k)) / k
        env = np.minimum(t / 0.002, 1.0)
    elif timbre == "bell":  # two-operator FM with a decaying modulation index
        index = 3.0 * np.exp(-t / 0.15)
        wave = np.sin(2 * np.pi * freq_hz * t + index * np.sin(2 * np.pi * 3.5 * freq_hz * t))
        env = np.minimum(t / 0.002, 1.0) * np.exp(-t / 0.5)
    else:
        raise ValueError(f"unknown timbre {timbre!r}; choose one of {', '.join(TIMBRES)}")
    release = np.clip((duration_s + tail_s - t) / tail_s, 0.0, 1.0)
    wave = wave * env * release
    return wave / max(np.abs(wave).max(), 1e-9)


def _kick(sample_rate_hz: int) -> np.ndarray:
    t = np.arange(int(0.35 * sample_rate_hz)) / sample_rate_hz
    freq = 50.0 + 110.0 * np.exp(-t / 0.04)  # pitch drop of a bass drum
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate_hz
    return np.sin(phase) * np.exp(-t / 0.15)


def _snare(sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.25 * sample_rate_hz)) / sample_rate_hz
    noise = rng.standard_normal(len(t)) * 0.5
    return noise * np.exp(-t / 0.08) + 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.06)


def _hat(sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.08 * sample_rate_hz)) / sample_rate_hz
    noise = np.diff(rng.standard_normal(len(t) + 1))  # first difference: a high-pass
    return 0.5 * noise * np.exp(-t / 0.025)


def _mix_at(
    out: np.ndarray, times_s: np.ndarray, gains: np.ndarray, sound: np.ndarray, sr: int
) -> None:
    """Add ``sound`` to ``out`` at each time, scaled by its gain (cut at the end)."""
    for time_s, gain in zip(times_s, gains):
        start = int(round(time_s * sr))
        end = min(len(out), start + len(sound))
        if start < end:
            out[start:end] += gain * sound[: end - start]


def render_audio(score: Score, params: MusicParams, sample_rate_hz: int) -> np.ndarray:
    """The track as float32 [N] mono in -1..1, N = duration_s * sample_rate_hz."""
    sr = int(sample_rate_hz)
    rng = np.random.default_rng([params.seed, 1])
    out = np.zeros(int(round(score.duration_s * sr)))
    _mix_at(out, score.kick_times_s, score.kick_gains * 0.9, _kick(sr), sr)
    snare = _snare(sr, rng)
    _mix_at(out, score.snare_times_s, score.snare_gains * 0.6, snare, sr)
    hat = _hat(sr, rng)
    _mix_at(out, score.hat_times_s, score.hat_gains * 0.5, hat, sr)

    cache: Dict[Tuple[int, float, str], np.ndarray] = {}

    def note(pitch: int, duration_s: float, timbre: str) -> np.ndarray:
        key = (pitch, round(duration_s, 4), timbre)
        if key not in cache:
            cache[key] = _instrument_note(timbre, _midi_hz(pitch), duration_s, sr)
        return cache[key]

    melody_gain = 0.35 * (0.6 + 0.4 * score.energy(score.note_onsets_s))
    for onset, length, pitch, gain, g2 in zip(
        score.note_onsets_s,
        score.note_durations_s,
        score.note_pitches,
        score.note_gains,
        melody_gain,
    ):
        _mix_at(
            out, np.array([onset]), np.array([gain * g2]), note(pitch, length, params.timbre), sr
        )
    for onset, length, pitch in zip(
        score.bass_onsets_s, score.bass_durations_s, score.bass_pitches
    ):
        _mix_at(out, np.array([onset]), np.array([0.35]), note(pitch, length, "sine"), sr)
    peak = np.abs(out).max()
    if peak > 0:
        out *= 0.8 / peak
    return out.astype(np.float32)
