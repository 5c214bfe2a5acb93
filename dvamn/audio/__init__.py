"""Audio embeddings: waveforms -> one 128-d vector every 0.2 s (VGGish or weight-free log-mel).

    from dvamn.audio import make_audio_embedder
    embedder = make_audio_embedder("vggish")          # or "vggish-raw", "logmel"
    [emb] = embedder.embed([waveform_16k_mono])       # [T_a, 128], T_a = num_audio_frames(s)

Importing this package does not import torch (``load_vggish`` and ``VGGishEmbedder`` are
loaded on first use), so CLIs can add the audio flags and keep ``--help`` fast.
"""

from dvamn.audio.base import AUDIO_KINDS, AudioEmbedder, WeightsUnavailableError
from dvamn.audio.logmel import LogMelEmbedder, logmel_features
from dvamn.audio.select import (
    add_audio_arguments,
    audio_embedder_from_args,
    check_audio_weights,
    make_audio_embedder,
)

_FROM_VGGISH = ("load_vggish", "VGGishEmbedder", "default_weights_url", "default_pca_url")


def __getattr__(name: str):
    if name in _FROM_VGGISH:
        from dvamn.audio import vggish

        return getattr(vggish, name)
    raise AttributeError(f"module 'dvamn.audio' has no attribute {name!r}")


__all__ = [
    "AUDIO_KINDS",
    "AudioEmbedder",
    "LogMelEmbedder",
    "WeightsUnavailableError",
    "add_audio_arguments",
    "audio_embedder_from_args",
    "check_audio_weights",
    "logmel_features",
    "make_audio_embedder",
    *_FROM_VGGISH,
]
