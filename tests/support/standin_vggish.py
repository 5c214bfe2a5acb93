"""A stand-in for torchvggish's released VGGish files, for tests without internet.

``save_vggish_standin(directory)`` writes a state dict with exactly torchvggish's VGG key
names, shapes and dtype (random values from a fixed seed, He-scaled so activations stay in
a sane range) and a PCA parameters file in torchvggish's format (a dict with
``pca_eigen_vectors`` [128, 128] and ``pca_means`` [128]). Tests load them through
``load_vggish(weights=..., pca=...)``, the path a user's real ``--vggish-weights`` takes.
The embeddings mean nothing; only the contract is real.
"""

import math
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

WEIGHTS_NAME = "vggish-standin.pth"
PCA_NAME = "vggish-pca-standin.pth"

# torchvggish.VGG's state dict: 6 convolutions (features.*) and 3 linear layers
# (embeddings.*), as built by make_layers() and VGG.__init__.
_CONV_CHANNELS = [(1, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
_CONV_INDICES = [0, 3, 6, 8, 11, 13]  # ReLU / MaxPool layers sit between them
_LINEAR_SHAPES = [(4096, 512 * 4 * 6), (4096, 4096), (128, 4096)]
_LINEAR_INDICES = [0, 2, 4]


def standin_state_dict(seed: int = 0) -> dict:
    """torchvggish VGG keys -> float32 tensors of the released shapes, seeded."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (c_in, c_out) in zip(_CONV_INDICES, _CONV_CHANNELS):
        fan_in = c_in * 9
        weight = torch.randn(c_out, c_in, 3, 3, generator=generator) * math.sqrt(2.0 / fan_in)
        state[f"features.{index}.weight"] = weight
        state[f"features.{index}.bias"] = torch.randn(c_out, generator=generator) * 0.01
    for index, (d_out, d_in) in zip(_LINEAR_INDICES, _LINEAR_SHAPES):
        weight = torch.randn(d_out, d_in, generator=generator) * math.sqrt(2.0 / d_in)
        state[f"embeddings.{index}.weight"] = weight
        state[f"embeddings.{index}.bias"] = torch.randn(d_out, generator=generator) * 0.01
    return state


def standin_pca_params(seed: int = 0) -> dict:
    """A random rotation (scaled) and small means, as float64 numpy arrays under
    torchvggish's key names (like Google's vggish_pca_params)."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((128, 128)))
    return {
        "pca_eigen_vectors": rotation * 0.2,
        "pca_means": rng.standard_normal(128) * 0.1,
    }


def save_pca_standin(path, seed: int = 0, as_numpy: bool = False) -> Path:
    """Write the stand-in PCA parameters to ``path``: a torch-saved dict of tensors, or of
    numpy arrays with ``as_numpy`` (dvamn loads both forms). Returns the path."""
    params = standin_pca_params(seed)
    if not as_numpy:
        params = {key: torch.from_numpy(value) for key, value in params.items()}
    torch.save(params, path)
    return Path(path)


def save_vggish_standin(directory, seed: int = 0) -> Tuple[Path, Path]:
    """Write the stand-in weights (~290 MB, the real size; ~2 s) and PCA file into
    ``directory``. Returns (weights_path, pca_path), for ``--vggish-weights`` and
    ``--vggish-pca``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / WEIGHTS_NAME
    torch.save(standin_state_dict(seed), weights_path)
    return weights_path, save_pca_standin(directory / PCA_NAME, seed)
