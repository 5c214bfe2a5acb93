"""The onset-strength channel: hits land in the pose frame of their time, silence and the
frames past the audio's end are 0, and it depends on the waveform only."""

import numpy as np
import pytest

from dvamn.audio.onset import band_onset_strength, onset_strength
from dvamn.constants import POSE_FPS, SAMPLE_RATE_HZ


def clicks(times_s, seconds):
    """Short 1 kHz bursts (20 ms) at ``times_s`` in ``seconds`` of silence, 16 kHz."""
    wave = np.zeros(int(seconds * SAMPLE_RATE_HZ), np.float32)
    burst = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(320) / SAMPLE_RATE_HZ)
    for t in times_s:
        start = int(t * SAMPLE_RATE_HZ)
        wave[start : start + 320] += burst.astype(np.float32)
    return wave


def test_each_hit_peaks_in_the_pose_frame_of_its_time():
    times = [0.5, 1.2, 2.0, 2.7, 3.55]
    onset = onset_strength(clicks(times, 4.0), 40)
    assert onset.shape == (40,) and onset.dtype == np.float32 and onset.min() >= 0
    frames = [int(round(t * POSE_FPS)) for t in times]
    # Each hit's frame (or its neighbour, for a hit between two frame centres) holds a peak
    # far above what the silence between hits gives.
    for f in frames:
        assert onset[f - 1 : f + 2].max() > 20 * np.median(onset)
    quiet = np.ones(40, bool)
    for f in frames:
        quiet[max(0, f - 1) : f + 3] = False  # the hit, and its decay 0.2 s on
    assert onset[quiet].max() < 0.05 * onset.max()


def test_silence_and_frames_past_the_end_are_zero_and_bad_counts_refused():
    assert not onset_strength(np.zeros(SAMPLE_RATE_HZ * 2, np.float32), 20).any()
    onset = onset_strength(clicks([0.5], 1.0), 30)  # 1 s of audio, 3 s of pose frames
    assert onset[:10].max() > 0 and not onset[12:].any()
    assert onset_strength(np.zeros(100, np.float32), 5).tolist() == [0.0] * 5  # too short
    with pytest.raises(ValueError, match="num_frames"):
        onset_strength(np.zeros(100, np.float32), -1)


def tone_bursts(bursts, seconds):
    """80 ms sine bursts, (time s, frequency Hz) each, in ``seconds`` of silence, 16 kHz;
    Hann-shaped, so that no click at their start spreads over every band."""
    wave = np.zeros(int(seconds * SAMPLE_RATE_HZ), np.float32)
    n = int(0.08 * SAMPLE_RATE_HZ)
    envelope = np.hanning(n)
    for t, hz in bursts:
        start = int(t * SAMPLE_RATE_HZ)
        tone = np.sin(2 * np.pi * hz * np.arange(n) / SAMPLE_RATE_HZ)
        wave[start : start + n] += 0.5 * envelope * tone
    return wave


def test_band_groups_keep_a_low_and_a_high_hit_apart_and_average_to_the_full_channel():
    wave = tone_bursts([(0.5, 200.0), (1.5, 5000.0)], 2.5)
    bands = band_onset_strength(wave, 25, [(0, 16), (48, 64)])
    assert bands.shape == (25, 2) and bands.dtype == np.float32
    low, high = bands[:, 0], bands[:, 1]
    assert low[4:7].max() > 10 * low[14:17].max()  # the 200 Hz hit is in the low group only
    assert high[14:17].max() > 10 * high[4:7].max()  # the 5 kHz hit in the high group only
    halves = band_onset_strength(wave, 25, [(0, 32), (32, 64)])
    np.testing.assert_allclose(halves.mean(1), onset_strength(wave, 25), rtol=1e-5, atol=1e-6)


def test_a_band_group_outside_the_mel_bands_is_refused():
    for bad in ([(0, 65)], [(10, 10)], [(-1, 4)]):
        with pytest.raises(ValueError, match="band group"):
            band_onset_strength(np.zeros(SAMPLE_RATE_HZ, np.float32), 10, bad)
