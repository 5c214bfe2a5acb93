"""A weight-free audio embedding in VGGish's layout: 128 values every 0.2 s (kind "logmel").

Built on the same centred log-mel front end as VGGish (``frontend``), so it runs offline and
has the same timing. For audio frame ``k`` (centred on ``(k + 0.5) * AUDIO_HOP_S`` s), with
L the 64-band log-mel spectrogram (10 ms frames), G the mean of L over 16 groups of 4
adjacent bands, and flux the half-wave rectified frame-to-frame increase:

    [0:64]    band level    mean of L over the 0.96 s example, per band: timbre and loudness;
                            (mean - log 0.01) / 5, so digital silence is 0 and loud is ~2
    [64:80]   onset rate    mean of flux(G) over the example, per band group: how often and
                            how hard notes / drum hits start in that register (x 2)
    [80:96]   variation     standard deviation of G over the example, per band group:
                            sustained vs. percussive, dynamics (/ 2)
    [96:128]  periodicity   normalised autocorrelation of the broadband onset envelope (mean
                            flux(L) over the 64 bands) over a wider 2.4 s window centred on
                            the same time, at lags 0.08-1.03 s, max-pooled in 32 bins of
                            30 ms: bin i covers lags (8 + 3i .. 10 + 3i) * 10 ms; a beat of
                            period p gives peaks in the bins of p, 2p, ...; values in [-1, 1]

Deterministic, numpy on CPU, about the cost of the spectrogram itself.
"""

from typing import List, Sequence

import numpy as np

from dvamn.audio.base import AudioEmbedder, as_waveform
from dvamn.audio.frontend import EXAMPLE_FRAMES, LOG_OFFSET, centred_log_mel, frame_windows
from dvamn.constants import EMBEDDING_DIM

BAND_GROUPS = 16  # 64 bands -> 16 groups of 4
RHYTHM_WINDOW_FRAMES = 240  # 2.4 s: a slow beat (0.67-1 s) repeats inside it
MIN_LAG_FRAMES = 8  # 80 ms
LAG_BIN_FRAMES = 3
NUM_LAG_BINS = 32  # lags 8..103 frames (0.08-1.03 s, 58-750 beats per minute)
LEVEL_SCALE = 5.0
ONSET_SCALE = 2.0
VARIATION_SCALE = 0.5

# The 96-frame example sits in the middle of the 240-frame rhythm window.
_EXAMPLE_OFFSET = (RHYTHM_WINDOW_FRAMES - EXAMPLE_FRAMES) // 2


def _rectified_flux(series: np.ndarray) -> np.ndarray:
    """[F, D] -> [F, D]: max(0, x[t] - x[t-1]), 0 for the first row."""
    flux = np.zeros_like(series)
    np.maximum(series[1:] - series[:-1], 0.0, out=flux[1:])
    return flux


def _periodicity(envelope_windows: np.ndarray) -> np.ndarray:
    """[T_a, W] onset envelopes -> [T_a, 32] max-pooled normalised autocorrelation."""
    centred = envelope_windows - envelope_windows.mean(axis=1, keepdims=True)
    energy = (centred**2).sum(axis=1) + 1e-8  # silence: autocorrelation 0, not 0/0
    max_lag = MIN_LAG_FRAMES + LAG_BIN_FRAMES * NUM_LAG_BINS
    acf = np.stack(
        [
            (centred[:, :-lag] * centred[:, lag:]).sum(axis=1)
            for lag in range(MIN_LAG_FRAMES, max_lag)
        ],
        axis=1,
    )  # (T_a, 96 lags)
    acf /= energy[:, None]
    return acf.reshape(acf.shape[0], NUM_LAG_BINS, LAG_BIN_FRAMES).max(axis=2)


def logmel_features(waveform: np.ndarray) -> np.ndarray:
    """[N] float32 mono 16 kHz -> [T_a, 128] float32 (layout in the module docstring)."""
    log_mel, num_frames = centred_log_mel(waveform, RHYTHM_WINDOW_FRAMES)  # (F, 64)
    if num_frames == 0:
        return np.zeros((0, EMBEDDING_DIM), np.float32)
    bands = log_mel.shape[1]
    groups = log_mel.reshape(-1, BAND_GROUPS, bands // BAND_GROUPS).mean(axis=2)  # (F, 16)
    group_flux = _rectified_flux(groups)  # (F, 16)
    envelope = _rectified_flux(log_mel).mean(axis=1)  # (F,) broadband onset strength

    example = slice(_EXAMPLE_OFFSET, _EXAMPLE_OFFSET + EXAMPLE_FRAMES)
    level = frame_windows(log_mel, num_frames, RHYTHM_WINDOW_FRAMES)[:, example].mean(axis=1)
    onset = frame_windows(group_flux, num_frames, RHYTHM_WINDOW_FRAMES)[:, example].mean(axis=1)
    variation = frame_windows(groups, num_frames, RHYTHM_WINDOW_FRAMES)[:, example].std(axis=1)
    periodicity = _periodicity(frame_windows(envelope, num_frames, RHYTHM_WINDOW_FRAMES))
    features = np.concatenate(
        [
            (level - np.log(LOG_OFFSET)) / LEVEL_SCALE,  # (T_a, 64)
            onset * ONSET_SCALE,  # (T_a, 16)
            variation * VARIATION_SCALE,  # (T_a, 16)
            periodicity,  # (T_a, 32)
        ],
        axis=1,
    )
    return features.astype(np.float32)


class LogMelEmbedder(AudioEmbedder):
    """The weight-free "logmel" embedding; runs on CPU whatever device is asked for."""

    kind = "logmel"
    weights = ""
    device = "cpu"

    def embed(self, waveforms: Sequence[np.ndarray]) -> List[np.ndarray]:
        return [logmel_features(as_waveform(w, i)) for i, w in enumerate(waveforms)]
