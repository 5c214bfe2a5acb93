"""Fixtures for the audio tests: the VGGish stand-in files, written once per session."""

import numpy as np
import pytest

from dvamn.constants import SAMPLE_RATE_HZ
from tests.support.standin_vggish import save_vggish_standin


@pytest.fixture(scope="session")
def vggish_files(tmp_path_factory):
    """(weights_path, pca_path) of the stand-in, in torchvggish's format."""
    return save_vggish_standin(tmp_path_factory.mktemp("vggish"))


@pytest.fixture(scope="session")
def vggish_embedder(vggish_files):
    from dvamn.audio import make_audio_embedder

    weights, pca = vggish_files
    return make_audio_embedder("vggish", str(weights), str(pca), device="cpu")


@pytest.fixture(scope="session")
def vggish_raw_embedder(vggish_files):
    from dvamn.audio import make_audio_embedder

    return make_audio_embedder("vggish-raw", str(vggish_files[0]), device="cpu")


def click_track(bpm: float, seconds: float, seed: int = 0) -> np.ndarray:
    """[N] float32: 10 ms noise bursts every 60 / bpm seconds (a metronome)."""
    rng = np.random.default_rng(seed)
    waveform = np.zeros(int(seconds * SAMPLE_RATE_HZ), np.float32)
    burst = 160
    for start_s in np.arange(0.05, seconds, 60.0 / bpm):
        start = int(start_s * SAMPLE_RATE_HZ)
        n = min(burst, waveform.shape[0] - start)
        waveform[start : start + n] += 0.5 * rng.standard_normal(n) * np.exp(-np.arange(n) / 40)
    return waveform


def tone_with_beat(seconds: float, bpm: float = 100.0, seed: int = 0) -> np.ndarray:
    """[N] float32: a two-partial tone plus a click track, a crude piece of music."""
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    tone = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 440 * t)
    return (tone + 0.8 * click_track(bpm, seconds, seed)).astype(np.float32)
