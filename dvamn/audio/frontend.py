"""Waveform -> log-mel spectrogram -> one example per audio frame, centred (numpy only).

The spectrogram is VGGish's own front end (torchvggish's ``mel_features``: 25 ms periodic
Hann window, 10 ms hop, 64 HTK mel bands from 125 to 7500 Hz, ``log(mel + 0.01)``), computed
once per waveform. VGGish frames its 0.96 s examples with a 0.96 s hop; we cut one example
every 20 spectrogram frames (0.2 s) instead, and pad the waveform with silence so that the
example of audio frame ``k`` is centred on ``(k + 0.5) * AUDIO_HOP_S`` seconds exactly (the
timing convention of ``dvamn.constants``) and every audio frame gets an example.
"""

import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Tuple

import numpy as np

from dvamn.constants import AUDIO_HOP_S, SAMPLE_RATE_HZ, num_audio_frames

STFT_WINDOW_S = 0.025
STFT_HOP_S = 0.010
NUM_MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01  # log(mel + LOG_OFFSET): silence is log(0.01) = -4.6
EXAMPLE_FRAMES = 96  # VGGish's 0.96 s example

STFT_WINDOW_SAMPLES = round(STFT_WINDOW_S * SAMPLE_RATE_HZ)  # 400
STFT_HOP_SAMPLES = round(STFT_HOP_S * SAMPLE_RATE_HZ)  # 160
FFT_LENGTH = 1 << (STFT_WINDOW_SAMPLES - 1).bit_length()  # 512, as mel_features
AUDIO_HOP_SAMPLES = round(AUDIO_HOP_S * SAMPLE_RATE_HZ)  # 3200
SPECTROGRAM_FRAMES_PER_AUDIO_FRAME = AUDIO_HOP_SAMPLES // STFT_HOP_SAMPLES  # 20


def torchvggish_module(name: str) -> ModuleType:
    """Load ``torchvggish/<name>.py`` without running the package's ``__init__``.

    torchvggish 0.2's ``__init__`` imports ``vggish_input``, which needs ``soundfile`` (not
    among torchvggish's declared dependencies, and not needed here: we decode audio with
    PyAV). ``mel_features`` and ``torchvggish`` (the network) import only numpy / torch.
    """
    module_name = f"dvamn_torchvggish_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.find_spec("torchvggish")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvggish is not installed: pip install torchvggish==0.2")
    path = Path(list(spec.submodule_search_locations)[0]) / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[module_name] = module
    return module


@lru_cache(maxsize=1)
def _mel_matrix() -> np.ndarray:
    """[FFT_LENGTH // 2 + 1, 64] float64: STFT magnitudes -> mel bands (mel_features)."""
    mel_features = torchvggish_module("mel_features")
    return mel_features.spectrogram_to_mel_matrix(
        num_mel_bins=NUM_MEL_BANDS,
        num_spectrogram_bins=FFT_LENGTH // 2 + 1,
        audio_sample_rate=SAMPLE_RATE_HZ,
        lower_edge_hertz=MEL_MIN_HZ,
        upper_edge_hertz=MEL_MAX_HZ,
    )


def log_mel_spectrogram(waveform: np.ndarray) -> np.ndarray:
    """VGGish's log-mel spectrogram of a 16 kHz mono waveform.

    waveform: [N] float, nominally in [-1, 1]. Returns [F, 64] float32, one row every 10 ms
    (F = 1 + (N - 400) // 160, 0 when N < 400). Same numbers as torchvggish's
    ``mel_features.log_mel_spectrogram`` with VGGish's parameters.
    """
    mel_features = torchvggish_module("mel_features")
    waveform = np.asarray(waveform, dtype=np.float64)
    if waveform.shape[0] < STFT_WINDOW_SAMPLES:
        return np.zeros((0, NUM_MEL_BANDS), dtype=np.float32)
    magnitudes = mel_features.stft_magnitude(
        waveform,
        fft_length=FFT_LENGTH,
        hop_length=STFT_HOP_SAMPLES,
        window_length=STFT_WINDOW_SAMPLES,
    )  # [F, 257]
    return np.log(magnitudes @ _mel_matrix() + LOG_OFFSET).astype(np.float32)


def centred_log_mel(
    waveform: np.ndarray, example_frames: int = EXAMPLE_FRAMES
) -> Tuple[np.ndarray, int]:
    """The log-mel spectrogram of the silence-padded waveform, and the number of audio frames.

    waveform: [N] float at SAMPLE_RATE_HZ. Returns (log_mel [F, 64] float32, T_a) with
    T_a = num_audio_frames(N / SAMPLE_RATE_HZ), such that rows
    ``20k : 20k + example_frames`` of ``log_mel`` are the example of audio frame ``k``: their
    samples are centred on ``(k + 0.5) * AUDIO_HOP_S`` s. The waveform is padded with
    silence at both ends so that the first and last examples exist.
    """
    if example_frames < 19:
        raise ValueError(f"example_frames must be >= 19 (got {example_frames})")
    waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
    num_frames = num_audio_frames(waveform.shape[0] / SAMPLE_RATE_HZ)
    if num_frames == 0:
        return np.zeros((0, NUM_MEL_BANDS), dtype=np.float32), 0
    # The example starting at padded spectrogram frame 20k covers padded samples
    # [3200k, 3200k + span); its centre, 3200k + span / 2 - left, must be 3200k + 1600.
    span = STFT_HOP_SAMPLES * (example_frames - 1) + STFT_WINDOW_SAMPLES
    left = span // 2 - AUDIO_HOP_SAMPLES // 2
    needed = AUDIO_HOP_SAMPLES * (num_frames - 1) + span
    right = max(0, needed - left - waveform.shape[0])
    padded = np.concatenate([np.zeros(left, np.float32), waveform, np.zeros(right, np.float32)])
    return np.ascontiguousarray(log_mel_spectrogram(padded)), num_frames


def frame_windows(series: np.ndarray, num_frames: int, window: int) -> np.ndarray:
    """Rows ``20k : 20k + window`` of ``series`` [F, ...] for k < num_frames, as a
    read-only strided view [num_frames, window, ...] (the overlap is not copied)."""
    series = np.ascontiguousarray(series)
    step = SPECTROGRAM_FRAMES_PER_AUDIO_FRAME
    if num_frames and series.shape[0] < step * (num_frames - 1) + window:
        raise ValueError(f"{series.shape[0]} rows cannot give {num_frames} windows of {window}")
    return np.lib.stride_tricks.as_strided(
        series,
        shape=(num_frames, window) + series.shape[1:],
        strides=(series.strides[0] * step,) + series.strides,
        writeable=False,
    )


def centred_examples(waveform: np.ndarray, example_frames: int = EXAMPLE_FRAMES) -> np.ndarray:
    """One log-mel example per audio frame, centred on the frame's middle.

    waveform: [N] float at SAMPLE_RATE_HZ. Returns [T_a, example_frames, 64] float32 with
    T_a = num_audio_frames(N / SAMPLE_RATE_HZ): example ``k`` is ``example_frames``
    spectrogram frames (25 ms every 10 ms) centred on ``(k + 0.5) * AUDIO_HOP_S`` s
    (see ``centred_log_mel``). A strided view: no copy of the overlap.
    """
    log_mel, num_frames = centred_log_mel(waveform, example_frames)
    if num_frames == 0:
        return np.zeros((0, example_frames, NUM_MEL_BANDS), dtype=np.float32)
    return frame_windows(log_mel, num_frames, example_frames)
