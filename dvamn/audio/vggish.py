"""VGGish (torchvggish's network) behind the AudioEmbedder interface.

preprocess: waveform -> centred 0.96 s log-mel examples, one every 0.2 s (``frontend``);
infer: every example of every waveform through the network in chunks, on GPU when present;
postprocess: VGGish's PCA + clip to [-2, 2] + 8-bit quantisation (kind "vggish"), or the raw
128-d embedding (kind "vggish-raw").

Faithful embedding: torchvggish ends its network with a ReLU after the last 128-d layer
(torchvggish issue #24); Google's TensorFlow VGGish, which made the AudioSet / YouTube-8M
embeddings, does not. We drop that ReLU by default (``final_relu=False``), so "vggish-raw"
values can be negative and "vggish" matches the AudioSet release.

Weights never come from inside the network: ``load_vggish`` resolves them from torchvggish's
release URLs (cached in torch's hub folder), a local path or an ``s3://`` (any fsspec) URI,
and raises WeightsUnavailableError naming the flags that fix it when none can be had.

Nothing in a weights file is executed: every file is read with ``torch.load(...,
weights_only=True)``, which admits tensors and containers only, plus numpy array
reconstruction (torchvggish's PCA file holds numpy arrays). A cached download is checked
before each use against the SHA-256 prefix in its name and the SHA-256 recorded at download
(``storage.verify_cached_file``).
"""

import logging
import os
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from dvamn import storage
from dvamn.audio.base import AudioEmbedder, WeightsUnavailableError, as_waveform
from dvamn.audio.frontend import EXAMPLE_FRAMES, NUM_MEL_BANDS, centred_examples, torchvggish_module
from dvamn.constants import EMBEDDING_DIM
from dvamn.devices import resolve_torch_device

log = logging.getLogger(__name__)

PCA_EIGEN_VECTORS_KEY = "pca_eigen_vectors"  # [128, 128]
PCA_MEANS_KEY = "pca_means"  # [128] (torchvggish reshapes it to a column)
QUANTIZE_MIN = -2.0
QUANTIZE_MAX = 2.0
QUANTIZE_LEVELS = 255.0


def default_weights_url() -> str:
    """torchvggish's release URL of the VGGish state dict."""
    return torchvggish_module("torchvggish").VGGISH_WEIGHTS


def default_pca_url() -> str:
    """torchvggish's release URL of the PCA parameters."""
    return torchvggish_module("torchvggish").PCA_PARAMS


def unavailable_message(what: str, reason: str) -> str:
    return (
        f"VGGish {what} unavailable: {reason}. Give local or remote copies with "
        f"--vggish-weights PATH|s3://... and --vggish-pca PATH|s3://... (torchvggish's files "
        f"{os.path.basename(default_weights_url())} and {os.path.basename(default_pca_url())}, "
        f"from {default_weights_url()} and {default_pca_url()}), or use --audio logmel for "
        f"the weight-free embedding."
    )


@lru_cache(maxsize=16)
def _sha256_prefix(path: str, size: int, mtime_ns: int) -> str:
    return storage.file_sha256(path)


def _provenance(source: str, path: Path) -> str:
    stat = path.stat()
    return f"{source} sha256:{_sha256_prefix(str(path), stat.st_size, stat.st_mtime_ns)}"


def _hub_cached_file(url: str) -> Tuple[Path, str]:
    """torch.hub's cached copy of ``url`` (``<hub dir>/checkpoints/<name>``) and its SHA-256.

    Downloaded once with the SHA-256 prefix in its name checked (as
    ``torch.hub.load_state_dict_from_url`` does), the full digest recorded beside it; every
    later use checks the cached file against both (``storage.verify_cached_file``), so a
    cache changed after download raises ``storage.CachedFileError``.
    """
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if target.is_file():
        return target, storage.verify_cached_file(target, name_hash=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, target)
    torch.hub.download_url_to_file(
        url, str(target), hash_prefix=storage.name_hash_prefix(target.name), progress=False
    )
    return target, storage.record_digest(target)


def _resolve(source: Optional[str], default_url: str, what: str) -> Tuple[Path, str]:
    """A local file for ``source`` (None: the default URL) and its provenance string."""
    origin = source or default_url
    try:
        if source is None:
            path, digest = _hub_cached_file(default_url)
            return path, f"{origin} sha256:{digest[:12]}"
        path = storage.fetch_to_local(source)
    except (OSError, RuntimeError, ValueError) as err:
        # URLError/HTTPError/FileNotFoundError are OSErrors; a bad hash or a cached file
        # changed after download (storage.CachedFileError) is a RuntimeError.
        raise WeightsUnavailableError(
            unavailable_message(what, f"cannot get {origin} ({type(err).__name__}: {err})")
        ) from err
    return path, _provenance(origin, path)


def _numpy_safe_globals() -> list:
    """What torch's weights-only unpickler must accept for numpy arrays in a .pth file."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
    reconstruct = core.multiarray._reconstruct
    # Files pickled under numpy 1 name the function numpy.core.multiarray._reconstruct.
    items: list = [np.ndarray, np.dtype, reconstruct]
    items.append((reconstruct, "numpy.core.multiarray._reconstruct"))
    items += [type(np.dtype(t)) for t in (np.float32, np.float64)]
    return items


# torch's own message for a refused global advises weights_only=False and names the global
# (file content): neither belongs in ours.
_REFUSED_PICKLE = (
    "is corrupt or holds pickled objects other than tensors and numpy arrays (refused "
    "unread: loading those could run code)"
)


def load_torch_file(path: Path) -> Dict[str, object]:
    """``torch.load`` with weights only (no code runs: tensors, containers and numpy arrays,
    nothing else), whatever the file's origin; ``.npz`` (Google's ``vggish_pca_params.npz``)
    is read with numpy, pickles refused.

    torchvggish's released files load this way: the weights are a state dict of tensors,
    the PCA parameters a dict of numpy arrays (pickled under numpy 1 or 2). A file holding
    any other object raises ``pickle.UnpicklingError``; there is no full-pickle fallback.
    """
    if str(path).endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def build_network(final_relu: bool = False) -> nn.Module:
    """torchvggish's VGG (features + embeddings, no postprocessor), random init on CPU.

    final_relu=False replaces the ReLU after the last 128-d layer by the identity (the
    faithful AudioSet embedding); the state-dict keys are unchanged.
    """
    vggish_module = torchvggish_module("torchvggish")
    network = vggish_module.VGG(vggish_module.make_layers(), postprocess=False)
    if not final_relu:
        network.embeddings[-1] = nn.Identity()
    return network


@lru_cache(maxsize=1)
def _expected_shapes() -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):
        network = build_network()
    return {key: tuple(value.shape) for key, value in network.state_dict().items()}


@dataclass
class VGGishFiles:
    """Loaded and checked VGGish weights (and PCA parameters when postprocessing)."""

    state_dict: Dict[str, torch.Tensor]
    weights_provenance: str
    pca_eigen_vectors: Optional[np.ndarray]  # [128, 128] float32
    pca_means: Optional[np.ndarray]  # [128] float32
    pca_provenance: str


def load_vggish_files(weights: Optional[str], pca: Optional[str], postprocess: bool) -> VGGishFiles:
    """Resolve, load and check the state dict (and PCA params when ``postprocess``).

    weights / pca: None (torchvggish's release URLs), a local path or any fsspec URI.
    Raises WeightsUnavailableError with the fixing flags in its message.
    """
    weights_path, weights_provenance = _resolve(weights, default_weights_url(), "weights")
    try:
        state_dict = load_torch_file(weights_path)
    except pickle.UnpicklingError as err:
        raise WeightsUnavailableError(
            unavailable_message(
                "weights", f"{weights_path} is not a torch state dict: it {_REFUSED_PICKLE}"
            )
        ) from err
    except Exception as err:  # a corrupt or foreign file: say which one
        raise WeightsUnavailableError(
            unavailable_message(
                "weights", f"{weights_path} is not a torch state dict ({type(err).__name__})"
            )
        ) from err
    expected = _expected_shapes()
    got = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        wrong = sorted(k for k in expected if k in got and got[k] != expected[k])
        raise WeightsUnavailableError(
            unavailable_message(
                "weights",
                f"{weights or weights_path} is not torchvggish's VGGish state dict "
                f"(missing keys {missing[:4]}, wrong shapes {wrong[:4]})",
            )
        )
    if not postprocess:
        return VGGishFiles(state_dict, weights_provenance, None, None, "")
    pca_path, pca_provenance = _resolve(pca, default_pca_url(), "PCA parameters")
    try:
        params = load_torch_file(pca_path)
    except pickle.UnpicklingError as err:
        raise WeightsUnavailableError(
            unavailable_message("PCA parameters", f"{pca or pca_path} {_REFUSED_PICKLE}")
        ) from err
    except Exception as err:
        raise WeightsUnavailableError(
            unavailable_message(
                "PCA parameters",
                f"{pca or pca_path} is not a torch or .npz file ({type(err).__name__})",
            )
        ) from err
    try:
        eigen_vectors = np.asarray(params[PCA_EIGEN_VECTORS_KEY], dtype=np.float32)
        means = np.asarray(params[PCA_MEANS_KEY], dtype=np.float32).reshape(-1)
    except Exception as err:
        raise WeightsUnavailableError(
            unavailable_message(
                "PCA parameters",
                f"{pca or pca_path} is not a VGGish PCA file with '{PCA_EIGEN_VECTORS_KEY}' "
                f"and '{PCA_MEANS_KEY}' ({type(err).__name__}: {err})",
            )
        ) from err
    if eigen_vectors.shape != (EMBEDDING_DIM, EMBEDDING_DIM) or means.shape != (EMBEDDING_DIM,):
        raise WeightsUnavailableError(
            unavailable_message(
                "PCA parameters",
                f"{pca or pca_path} has eigen vectors {eigen_vectors.shape} and means "
                f"{means.shape}, expected (128, 128) and (128,)",
            )
        )
    return VGGishFiles(state_dict, weights_provenance, eigen_vectors, means, pca_provenance)


class VGGishEmbedder(AudioEmbedder):
    """VGGish embeddings every 0.2 s; build it with ``load_vggish``."""

    def __init__(
        self,
        network: nn.Module,
        pca_eigen_vectors: Optional[np.ndarray],
        pca_means: Optional[np.ndarray],
        weights: str,
        device: str,
        batch_examples: int,
    ):
        self.postprocess = pca_eigen_vectors is not None
        self.kind = "vggish" if self.postprocess else "vggish-raw"
        self.weights = weights
        self.device = device
        self.batch_examples = batch_examples
        self.network = network.to(device).eval()
        if self.postprocess:
            self._pca_matrix = torch.as_tensor(pca_eigen_vectors, device=device)  # [128, 128]
            self._pca_means = torch.as_tensor(pca_means, device=device)  # [128]

    def preprocess(self, waveforms: Sequence[np.ndarray]) -> List[np.ndarray]:
        """[N_i] waveforms -> [T_a_i, 96, 64] log-mel examples (views, no copies)."""
        return [centred_examples(as_waveform(w, i)) for i, w in enumerate(waveforms)]

    @torch.inference_mode()
    def infer(self, examples: np.ndarray) -> torch.Tensor:
        """[E, 96, 64] log-mel examples -> [E, 128] embeddings on ``device``, in chunks of
        ``batch_examples`` so that memory stays bounded (conv activations ~1.5 MB/example)."""
        outputs = []
        for start in range(0, examples.shape[0], self.batch_examples):
            chunk = torch.from_numpy(
                np.ascontiguousarray(examples[start : start + self.batch_examples])
            )
            chunk = chunk.to(self.device, non_blocking=True)[:, None]  # (B, 1, 96, 64)
            outputs.append(self.network(chunk))  # (B, 128)
        if not outputs:
            return torch.zeros((0, EMBEDDING_DIM), device=self.device)
        return torch.cat(outputs)

    @torch.inference_mode()
    def postprocess_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """VGGish's postprocessor: PCA (with whitening), clip to [-2, 2], quantise to 0..255."""
        if not self.postprocess:
            return embeddings
        pca_applied = (embeddings - self._pca_means) @ self._pca_matrix.T  # (E, 128)
        clipped = pca_applied.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.round(
            (clipped - QUANTIZE_MIN) * (QUANTIZE_LEVELS / (QUANTIZE_MAX - QUANTIZE_MIN))
        )

    def embed(self, waveforms: Sequence[np.ndarray]) -> List[np.ndarray]:
        per_waveform = self.preprocess(waveforms)
        lengths = [e.shape[0] for e in per_waveform]
        if sum(lengths) == 0:
            return [np.zeros((0, EMBEDDING_DIM), np.float32) for _ in lengths]
        examples = np.concatenate(per_waveform)  # (E, 96, 64), E = sum of T_a_i
        embeddings = self.postprocess_embeddings(self.infer(examples))
        flat = embeddings.float().cpu().numpy()
        return [part.copy() for part in np.split(flat, np.cumsum(lengths)[:-1])]


def load_vggish(
    weights: Optional[str] = None,
    pca: Optional[str] = None,
    postprocess: bool = True,
    device: str = "auto",
    final_relu: bool = False,
    batch_examples: Optional[int] = None,
) -> VGGishEmbedder:
    """A VGGish embedder from torchvggish-format files.

    weights: VGGish state dict (None: torchvggish's release URL, cached in torch's hub
        folder; else a local path or s3:// / fsspec URI).
    pca: PCA parameters (``pca_eigen_vectors`` [128, 128], ``pca_means`` [128]), same
        sources; only read when ``postprocess``.
    postprocess: True -> kind "vggish" (PCA + 8-bit, 0..255); False -> "vggish-raw".
    device: 'auto' (CUDA when present), 'cpu' or 'cuda'.
    final_relu: keep torchvggish's ReLU after the last layer (not AudioSet-faithful).
    batch_examples: examples per forward pass (default 128 on CPU, 512 on CUDA).
    Raises WeightsUnavailableError (naming --vggish-weights, --vggish-pca and
    --audio logmel) when the files cannot be had; never falls back to random weights.
    """
    files = load_vggish_files(weights, pca, postprocess)
    network = build_network(final_relu)
    network.load_state_dict(files.state_dict)
    device = resolve_torch_device(device)
    provenance = files.weights_provenance
    if postprocess:
        provenance += f"; pca {files.pca_provenance}"
    if final_relu:
        provenance += "; final ReLU kept (torchvggish)"
    embedder = VGGishEmbedder(
        network,
        files.pca_eigen_vectors,
        files.pca_means,
        weights=provenance,
        device=device,
        batch_examples=batch_examples or (512 if device == "cuda" else 128),
    )
    log.info("VGGish (%s) on %s from %s", embedder.kind, device, provenance)
    return embedder


__all__ = [
    "EXAMPLE_FRAMES",
    "NUM_MEL_BANDS",
    "VGGishEmbedder",
    "VGGishFiles",
    "build_network",
    "default_pca_url",
    "default_weights_url",
    "load_vggish",
    "load_vggish_files",
]
