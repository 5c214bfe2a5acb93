"""The weight-free "logmel" embedding: layout, timing, onsets and periodicity."""

import numpy as np
import pytest

from dvamn.audio import AudioEmbedder, make_audio_embedder
from dvamn.audio.logmel import LAG_BIN_FRAMES, MIN_LAG_FRAMES
from dvamn.constants import SAMPLE_RATE_HZ

from .conftest import click_track, tone_with_beat

PERIODICITY = slice(96, 128)


def lag_bin(period_s: float) -> int:
    """The periodicity value whose lag range holds ``period_s``."""
    return (round(period_s * 100) - MIN_LAG_FRAMES) // LAG_BIN_FRAMES


@pytest.fixture(scope="module")
def embedder() -> AudioEmbedder:
    return make_audio_embedder("logmel")


def test_interface(embedder):
    assert (embedder.kind, embedder.weights, embedder.dim) == ("logmel", "", 128)


def test_frame_counts_for_known_durations(embedder):
    durations = [12.0, 12.3, 1.0, 0.1]
    waveforms = [tone_with_beat(d) for d in durations]
    outputs = embedder.embed(waveforms)
    assert [o.shape for o in outputs] == [(60, 128), (61, 128), (5, 128), (0, 128)]
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in outputs)


def test_deterministic_and_silence_is_zero(embedder):
    waveform = tone_with_beat(3.0)
    np.testing.assert_array_equal(embedder.embed([waveform])[0], embedder.embed([waveform])[0])
    assert np.abs(embedder.embed([np.zeros(SAMPLE_RATE_HZ * 2, np.float32)])[0]).max() < 1e-5


def test_values_in_a_sane_range(embedder):
    features = embedder.embed([tone_with_beat(6.0)])[0]
    assert 0.5 < features[:, :64].max() < 4.0  # band levels
    assert features[:, 64:96].min() >= 0.0 and features[:, 64:96].max() < 4.0
    assert -1.0 <= features[:, PERIODICITY].min() and features[:, PERIODICITY].max() <= 1.0


def test_onsets_raise_onset_values(embedder):
    seconds = 4.0
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    steady = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    beating = steady + click_track(120, seconds)
    steady_features, beating_features = embedder.embed([steady, beating])
    middle = slice(5, 15)  # away from the edges, where silence padding makes an onset
    assert beating_features[middle, 64:80].mean() > 5 * steady_features[middle, 64:80].mean()


def test_periodicity_tells_120_from_90_bpm(embedder):
    fast, slow = embedder.embed([click_track(120, 12.0), click_track(90, 12.0)])
    fast_p = fast[10:50, PERIODICITY].mean(axis=0)
    slow_p = slow[10:50, PERIODICITY].mean(axis=0)
    beat_120, beat_90 = lag_bin(0.5), lag_bin(60 / 90)
    assert fast_p.argmax() == beat_120
    assert slow_p.argmax() == beat_90
    assert fast_p[beat_120] > slow_p[beat_120] + 0.3
    assert slow_p[beat_90] > fast_p[beat_90] + 0.3
