"""The one interface every audio embedding sits behind (no torch import here)."""

import logging
from typing import List, Sequence

import numpy as np

from dvamn.constants import EMBEDDING_DIM, SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

# "vggish": VGGish + PCA + 8-bit quantisation (the paper's targets, 0..255);
# "vggish-raw": VGGish's 128-d embedding before PCA; "logmel": weight-free statistics.
AUDIO_KINDS = ("vggish", "vggish-raw", "logmel")


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be had (no internet, missing or broken file)."""


class AudioEmbedder:
    """Waveforms -> audio embedding sequences, one 128-d vector every AUDIO_HOP_S.

    Attributes:
        kind: one of AUDIO_KINDS.
        weights: provenance of the weights (source URI + sha256 prefix), "" if none.
        dim: values per frame (EMBEDDING_DIM = 128).
        device: where the computation runs ("cpu" or "cuda").

    Subclasses implement ``embed``; everything else (Ray Data actors, the catalog, the
    server) only calls ``embed`` and reads the attributes.
    """

    kind: str = ""
    weights: str = ""
    dim: int = EMBEDDING_DIM
    device: str = "cpu"

    def embed(self, waveforms: Sequence[np.ndarray]) -> List[np.ndarray]:
        """waveforms: list of [N_i] float32 mono at SAMPLE_RATE_HZ (16 kHz).

        Returns a list of [T_a_i, 128] float32 with T_a_i = num_audio_frames(N_i / 16000);
        row k describes the 0.96 s of audio centred on (k + 0.5) * AUDIO_HOP_S seconds.
        """
        raise NotImplementedError

    def __call__(self, waveforms: Sequence[np.ndarray]) -> List[np.ndarray]:
        return self.embed(waveforms)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, weights={self.weights!r}, device={self.device!r})"


def as_waveform(waveform: np.ndarray, index: int = 0) -> np.ndarray:
    """Check one input waveform: 1-D float mono at SAMPLE_RATE_HZ -> [N] float32."""
    array = np.asarray(waveform)
    if array.ndim != 1:
        raise ValueError(
            f"waveform {index} has shape {array.shape}: expected mono [N] samples at "
            f"{SAMPLE_RATE_HZ} Hz (average the channels first)"
        )
    return array.astype(np.float32, copy=False)
