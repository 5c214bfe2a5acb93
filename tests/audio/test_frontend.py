"""The shared log-mel front end: VGGish's numbers, our 0.2 s framing, centred examples."""

import numpy as np
import pytest

from dvamn.audio.frontend import centred_examples, log_mel_spectrogram, torchvggish_module
from dvamn.constants import AUDIO_HOP_S, SAMPLE_RATE_HZ


def test_log_mel_is_torchvggish_front_end():
    waveform = np.random.default_rng(0).standard_normal(SAMPLE_RATE_HZ * 2).astype(np.float32)
    mel_features = torchvggish_module("mel_features")
    reference = mel_features.log_mel_spectrogram(
        waveform.astype(np.float64),
        audio_sample_rate=16000,
        log_offset=0.01,
        window_length_secs=0.025,
        hop_length_secs=0.010,
        num_mel_bins=64,
        lower_edge_hertz=125,
        upper_edge_hertz=7500,
    )
    ours = log_mel_spectrogram(waveform)
    assert ours.shape == reference.shape == (198, 64)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize(
    "duration_s, frames", [(12.0, 60), (12.3, 61), (1.0, 5), (0.2, 1), (0.19, 0), (0.0, 0)]
)
def test_one_example_per_audio_frame(duration_s, frames):
    waveform = np.zeros(round(duration_s * SAMPLE_RATE_HZ), np.float32)
    assert centred_examples(waveform).shape == (frames, 96, 64)


def test_example_k_is_centred_on_the_middle_of_audio_frame_k():
    """A click at (k + 0.5) * 0.2 s sits in the middle two spectrogram frames of example k."""
    waveform = np.zeros(SAMPLE_RATE_HZ * 3, np.float32)
    for k in (0, 7, 14):
        centre = round((k + 0.5) * AUDIO_HOP_S * SAMPLE_RATE_HZ)
        waveform[centre - 8 : centre + 8] = 1.0
    examples = centred_examples(waveform)
    for k in (0, 7, 14):
        energy = examples[k].sum(axis=1)  # (96,)
        loud = np.flatnonzero(energy > energy.min() + 1.0)
        # 25 ms windows every 10 ms: a 1 ms click is in 2-3 frames, symmetric about 47.5
        assert loud.min() + loud.max() in (94, 95, 96), (k, loud)
