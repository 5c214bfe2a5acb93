"""Onset strength at the pose rate: when notes and hits start, at 0.1 s resolution.

The 128-d embeddings come every 0.2 s and each summarises a 0.96 s example, so they cannot
say on which beat a hit fell: averaging over 0.96 s cancels a pulse of period 0.48 s
(125 BPM) and blurs every faster one (measured in issue 13: a rhythm matcher on the
``logmel`` onset-rate dimensions ranks an unseen choreography family's tracks at chance,
and the same matcher on this channel does several times better). This channel, stored
beside the embedding by the extraction job (``audio_onset`` in ``dvamn.schema``), keeps
the timing, for VGGish and ``logmel`` alike: it depends on the waveform only.

Value of pose frame ``i`` (time ``i / POSE_FPS`` s): the sum, over the 10 ms spectrogram
frames whose centres fall in ``[(i - 0.5) / POSE_FPS, (i + 0.5) / POSE_FPS)``, of the
spectral flux: the mean over the 64 bands of the half-wave rectified increase of VGGish's
log-mel spectrogram (``dvamn.audio.frontend``) from the previous frame. That is the
classic onset-strength envelope (as librosa's ``onset_strength`` computes it on log
power), written here on our own front end so that its timing is exactly the embeddings'
and no further dependency is needed.
"""

from typing import Sequence, Tuple

import numpy as np

from dvamn.audio.frontend import (
    NUM_MEL_BANDS,
    STFT_HOP_SAMPLES,
    STFT_WINDOW_SAMPLES,
    log_mel_spectrogram,
)
from dvamn.constants import POSE_FPS, SAMPLE_RATE_HZ

# Recorded with the features (the ``audio_onset_kind`` column), so that a change of method
# shows in the provenance.
ONSET_KIND = "logmel-flux@10Hz"


def onset_strength(waveform: np.ndarray, num_frames: int) -> np.ndarray:
    """[N] float mono 16 kHz -> [num_frames] float32 onset strength at ``POSE_FPS``.

    ``num_frames``: the pose frames of the clip (``dvamn.constants.num_pose_frames``);
    frames past the audio's end are 0."""
    return band_onset_strength(waveform, num_frames, ((0, NUM_MEL_BANDS),))[:, 0]


def band_onset_strength(
    waveform: np.ndarray, num_frames: int, bands: Sequence[Tuple[int, int]]
) -> np.ndarray:
    """[N] float mono 16 kHz -> [num_frames, len(bands)] float32: ``onset_strength`` with
    the flux averaged over each group ``[first, end)`` of the 64 mel bands instead of all
    of them, so that a kick, a snare and a hi-hat each keep their own timing (issue 13:
    measured by ``benchmarks/onset_bands.py``)."""
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    for first, end in bands:
        if not 0 <= first < end <= NUM_MEL_BANDS:
            raise ValueError(f"a band group must be [first, end) within 0..{NUM_MEL_BANDS}")
    log_mel = log_mel_spectrogram(np.asarray(waveform, np.float32).reshape(-1))  # (F, 64)
    out = np.zeros((num_frames, len(bands)), np.float64)
    if len(log_mel) < 2 or num_frames == 0:
        return out.astype(np.float32)
    rise = np.maximum(np.diff(log_mel.astype(np.float64), axis=0), 0.0)  # (F-1, 64)
    centres_s = (np.arange(1, len(log_mel)) * STFT_HOP_SAMPLES + STFT_WINDOW_SAMPLES / 2) / (
        SAMPLE_RATE_HZ
    )
    frame = np.floor(centres_s * POSE_FPS + 0.5).astype(np.int64)
    keep = (frame >= 0) & (frame < num_frames)
    for k, (first, end) in enumerate(bands):
        flux = rise[keep, first:end].mean(axis=1)
        out[:, k] = np.bincount(frame[keep], flux, minlength=num_frames)[:num_frames]
    return out.astype(np.float32)
