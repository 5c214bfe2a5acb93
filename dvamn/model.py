"""DVAMN, the Deep Video Audio Match Network: a pose sequence in, audio embeddings out.

Letters in shape comments: B batch, T pose frames (10 fps), A audio frames (5 fps, A = T // 2),
D features (channels). Convolutions see sequences as (B, D, T); GRUs as (B, T, D).

    pose (B, T, 68)
      -> standardise with the training set's per-feature mean/std (buffers)
      -> MFCBlock 68->128 -> MFCBlock 128->256 -> MFCBlock 256->512        10 fps
      -> max-pool over time, 2 frames -> 1                                  5 fps
      -> bidirectional GRU 1 (512 per direction) -> (B, A, 1024)
      -> bidirectional GRU 2 (512 per direction) -> (B, A, 1024)
      -> concatenate both GRU outputs             -> (B, A, 2048)
      -> MFCBlock 2048->512 -> MFCBlock 512->256
      -> frame-wise fully connected 256->128 (ReLU)
      -> last MFC layer 128->128, linear                  (B, A, 128), standardised targets

With ``onset_head`` (not in the paper), a linear MFC layer (kernel 5) on the pose blocks'
output, before the max-pool, also predicts the music's onset strength per pose frame,
(B, T): unitless, trained by correlation with the track's ``audio_onset``, so that search
can compare the dance's timing with each track's at the resolution where it lives
(``dvamn.scoring``'s rhythm term).

Kernel sizes: the authors' released Keras code uses k = 7 for most MFC layers, 9 for some
deeper ones and 5 for the output layers. We keep k = 7 for every block (0.7 s of context per
layer at 10 fps, ~1.9 s for a block of three, about one bar of dance music at 120 BPM) and
k = 5 for the last layer; all are config fields. ``layer="fc"`` sets every kernel to 1:
the paper's frame-wise fully connected ablation.

Deliberate departures from "every MFC layer has a ReLU": the last layer is linear, because
it predicts standardised targets that are negative half of the time (a ReLU there would
clamp half the outputs to zero). Targets are standardised per dimension with the training
set's mean/std, stored as buffers so that ``predict`` answers in the targets' own units
(quantised VGGish 0..255, or whatever the extraction produced).

Odd sequence lengths: the max-pool drops a trailing odd frame, so a pose sequence of T
frames gives T // 2 audio frames, which equals ``num_audio_frames(d)`` for a video of d
seconds with ``num_pose_frames(d)`` pose frames.

Checkpoints (STYLE.md 7): a directory with ``config.json`` (the DVAMNConfig),
``model.pt`` (the state dict, loaded with ``weights_only=True``) and ``metadata.json``
(feature provenance, target scaling, epoch, metrics, history). ``load_model`` reads one
from a local path or any fsspec URI (``s3://``), or picks the best checkpoint of a training
run directory.
"""

import io
import json
import logging
import math
import os
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dvamn import storage
from dvamn.constants import (
    EMBEDDING_DIM,
    NUM_JOINTS,
    POSE_FRAMES_PER_AUDIO_FRAME,
)

# The network's configuration lives in a module without torch (CLIs read its defaults);
# re-exported here, its usual home.
from dvamn.model_config import RHYTHM_FEATURES, DVAMNConfig  # noqa: F401

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
METADATA_FILE = "metadata.json"
TRAINING_STATE_FILE = "training_state.pt"  # optimiser state, only needed to resume training
# Predictions (Qb, A, 128) in target units for training windows: the query bank of the
# hubness-correcting scorings (dvamn.scoring.set_hubness). float16, read without pickle.
QUERY_BANK_FILE = "query_bank.npy"
# How a run's best checkpoint is chosen, stored in every checkpoint's metadata
# ("selection"): the lowest validation loss (the paper), or, when the objective includes
# retrieval, the highest validation R@1 with ties broken by the lower loss.
SELECT_BY_LOSS = {"metric": "val_loss", "mode": "min"}
SELECT_BY_RECALL = {
    "metric": "val_r_at_1",
    "mode": "max",
    "tie_metric": "val_loss",
    "tie_mode": "min",
}


def rhythm_features(x: torch.Tensor) -> torch.Tensor:
    """Timing the 68 features hold only implicitly, made explicit: x (B, T, 68)
    standardised pose features ([normalised (34), motion (34)], joint-major x, y) ->
    (B, T, 52): per-joint acceleration (the next frame's motion minus this one's, 34),
    per-joint speed (the length of the motion vector, 17) and the motion onset (the
    rise of summed joint speed over the last frame, rectified: the accents dance puts
    on beats, 1). Computed on standardised motion, so every channel is of order 1; the
    last frame's acceleration and the first frame's onset are 0."""
    b, t, _ = x.shape
    motion = x[:, :, 2 * NUM_JOINTS :]  # (B, T, 34)
    accel = F.pad(motion[:, 1:] - motion[:, :-1], (0, 0, 0, 1))  # (B, T, 34)
    speed = motion.reshape(b, t, NUM_JOINTS, 2).norm(dim=-1)  # (B, T, 17)
    total = speed.sum(-1, keepdim=True) / math.sqrt(NUM_JOINTS)  # (B, T, 1)
    onset = F.relu(F.pad(total[:, 1:] - total[:, :-1], (0, 0, 1, 0)))  # (B, T, 1)
    return torch.cat([accel, speed, onset], dim=-1)


class MFC(nn.Module):
    """Multiple-frame Fully Connected layer: each output frame is a fully connected map of
    the ``kernel_size`` input frames around it (a Conv1d along time whose kernel covers all
    features), with bias and ReLU. Length-preserving: (B, D_in, T) -> (B, D_out, T)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(in_features, out_features, kernel_size, padding=kernel_size // 2)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)  # (B, D_out, T)
        return F.relu(x) if self.relu else x


class MFCBlock(nn.Module):
    """Three MFC layers with a residual shortcut from the first layer's output to the
    third's (as the authors' code: the first layer changes the width, so the shortcut
    starts after it). (B, D_in, T) -> (B, D_out, T)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, dropout: float):
        super().__init__()
        self.first = MFC(in_features, out_features, kernel_size)
        self.second = MFC(out_features, out_features, kernel_size)
        self.dropout = nn.Dropout(dropout)
        self.third = MFC(out_features, out_features, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.first(x)  # (B, D_out, T)
        c = self.third(self.dropout(self.second(a)))  # (B, D_out, T)
        return a + c


class DVAMN(nn.Module):
    """Pose sequence (B, T, 68) -> audio embedding sequence (B, T // 2, 128).

    ``forward`` works in standardised units (the training loss is computed there);
    ``predict`` takes raw pose features and answers in the targets' own units. The scaling
    buffers are set by ``set_scaling`` from training-set statistics and saved with the
    weights.
    """

    def __init__(self, config: DVAMNConfig):
        super().__init__()
        self.config = config
        c = config
        k = c.kernel(c.kernel_size)
        blocks, width = [], c.input_features
        for i, w in enumerate(c.widths):
            # The authors drop out only in the wider blocks, not in the first.
            blocks.append(MFCBlock(width, w, k, c.dropout if i > 0 else 0.0))
            width = w
        self.pose_blocks = nn.Sequential(*blocks)
        self.onset_out = (
            MFC(width, 1, c.kernel(c.output_kernel_size), relu=False) if c.onset_head else None
        )
        self.gru1 = nn.GRU(width, c.gru_hidden, batch_first=True, bidirectional=True)
        self.gru2 = nn.GRU(2 * c.gru_hidden, c.gru_hidden, batch_first=True, bidirectional=True)
        blocks, width = [], 4 * c.gru_hidden  # both GRU layers' outputs, concatenated
        for w in c.post_gru_widths:
            blocks.append(MFCBlock(width, w, k, c.dropout))
            width = w
        self.post_blocks = nn.Sequential(*blocks)
        self.fc = MFC(width, c.fc_width, kernel_size=1)  # frame-wise fully connected
        self.out = MFC(c.fc_width, c.audio_dim, c.kernel(c.output_kernel_size), relu=False)
        self.register_buffer("input_mean", torch.zeros(c.pose_features))
        self.register_buffer("input_std", torch.ones(c.pose_features))
        self.register_buffer("target_mean", torch.zeros(c.audio_dim))
        self.register_buffer("target_std", torch.ones(c.audio_dim))
        # How well each target dimension is predicted (correlation of prediction and target
        # on the training windows, clipped to [0, 1]; set by training): the scorer weighs
        # dimensions by it, so that what dance cannot tell (e.g. timbre) adds no noise.
        self.register_buffer("target_weight", torch.ones(c.audio_dim))
        # Training predictions (Qb, A, 128) for hubness correction, set by load_model.
        self.query_bank: Optional[np.ndarray] = None

    def set_scaling(
        self,
        input_mean: np.ndarray,
        input_std: np.ndarray,
        target_mean: np.ndarray,
        target_std: np.ndarray,
    ) -> None:
        """Per-feature statistics of the training set, shapes (68,), (68,), (128,), (128,).
        Standard deviations are floored so that constant features do not divide by 0."""
        for name, value in (
            ("input_mean", input_mean),
            ("input_std", np.maximum(input_std, 1e-6)),
            ("target_mean", target_mean),
            ("target_std", np.maximum(target_std, 1e-6)),
        ):
            buffer = getattr(self, name)
            buffer.copy_(torch.as_tensor(np.asarray(value), dtype=buffer.dtype))

    def _check_pose(self, pose: torch.Tensor) -> None:
        if pose.dim() != 3 or pose.shape[-1] != self.config.pose_features:
            raise ValueError(
                f"DVAMN expects pose of shape (B, T, {self.config.pose_features}), "
                f"got {tuple(pose.shape)}"
            )
        if pose.shape[1] < POSE_FRAMES_PER_AUDIO_FRAME:
            raise ValueError(
                f"DVAMN needs at least {POSE_FRAMES_PER_AUDIO_FRAME} pose frames, "
                f"got {pose.shape[1]}"
            )

    def forward(self, pose: torch.Tensor, with_onset: bool = False):
        """pose: raw features (B, T, 68) -> standardised audio embeddings (B, T // 2, 128);
        with ``with_onset`` (a model with an onset head), (embeddings, onsets (B, T))."""
        self._check_pose(pose)
        if with_onset and self.onset_out is None:
            raise ValueError("this model has no onset head (train it with --onset-head)")
        x = (pose - self.input_mean) / self.input_std  # (B, T, 68)
        if self.config.rhythm != "none":
            x = torch.cat([x, rhythm_features(x)], dim=-1)  # (B, T, 68 + 52)
        x = self.pose_blocks(x.transpose(1, 2))  # (B, 512, T)
        onsets = self.onset_out(x)[:, 0] if with_onset else None  # (B, T)
        x = F.max_pool1d(x, POSE_FRAMES_PER_AUDIO_FRAME)  # (B, 512, A), odd T: last frame dropped
        x = x.transpose(1, 2)  # (B, A, 512)
        h1, _ = self.gru1(x)  # (B, A, 2H)
        h2, _ = self.gru2(h1)  # (B, A, 2H)
        x = torch.cat([h1, h2], dim=-1).transpose(1, 2)  # (B, 4H, A)
        x = self.post_blocks(x)  # (B, 256, A)
        x = self.out(self.fc(x)).transpose(1, 2)  # (B, A, 128)
        return (x, onsets) if with_onset else x

    def to_target_units(self, standardised: torch.Tensor) -> torch.Tensor:
        """(…, 128) standardised -> the targets' own units."""
        return standardised * self.target_std + self.target_mean

    def standardise_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """(…, 128) in the targets' own units -> standardised (the loss's units)."""
        return (targets - self.target_mean) / self.target_std

    @property
    def has_onset_head(self) -> bool:
        return self.onset_out is not None

    @torch.no_grad()
    def predict(self, pose: torch.Tensor, with_onset: bool = False):
        """Raw pose (B, T, 68) or (T, 68) -> embeddings in target units (B, T//2, 128) or
        (T//2, 128); with ``with_onset``, (embeddings, onsets (B, T) or (T,)). Runs in
        eval mode (no dropout) and restores the previous mode."""
        squeeze = pose.dim() == 2
        if squeeze:
            pose = pose.unsqueeze(0)
        was_training = self.training
        self.eval()
        try:
            out = self(pose, with_onset=with_onset)
        finally:
            self.train(was_training)
        embeddings, onsets = out if with_onset else (out, None)
        embeddings = self.to_target_units(embeddings)
        if squeeze:
            embeddings = embeddings[0]
            onsets = None if onsets is None else onsets[0]
        return (embeddings, onsets) if with_onset else embeddings

    def scoring_transform_tensors(self, weighted: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """(center, scale), each (128,) on the model's device, without gradient: frames
        become (x - target_mean) / target_std, times ``target_weight`` when ``weighted``.
        Search (``scoring_transform``) and the contrastive objective both use it."""
        center = self.target_mean.detach()
        scale = self.target_std.detach()
        if weighted:
            scale = scale / self.target_weight.detach().clamp_min(1e-3)
        return center, scale

    def scoring_transform(self, weighted: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """``scoring_transform_tensors`` as numpy, for ``dvamn.scoring.prepare_tracks`` /
        ``standardise``."""
        center, scale = self.scoring_transform_tensors(weighted)
        return center.cpu().numpy(), scale.cpu().numpy()

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def log_cosh(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean log(cosh(prediction - target)), computed stably: |x| + log1p(exp(-2|x|)) - log 2
    (cosh overflows float32 for |x| > ~89, which raw 0..255 targets reach)."""
    x = (prediction - target).abs()
    return (x + torch.log1p(torch.exp(-2.0 * x)) - math.log(2.0)).mean()


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def save_checkpoint(
    dir_or_uri: str,
    model: DVAMN,
    metadata: Optional[Dict[str, Any]] = None,
    training_state: Optional[Dict[str, Any]] = None,
    query_bank: Optional[np.ndarray] = None,
) -> str:
    """Write ``config.json``, ``model.pt`` and ``metadata.json`` (plus
    ``training_state.pt`` with the optimiser state, and ``query_bank.npy`` with the
    model's predictions (Qb, A, 128) for training windows, when given) to a local
    directory or fsspec URI. ``metadata``: feature provenance, epoch, metrics, history,
    ``selection`` (JSON-able; numpy values are converted). Returns ``dir_or_uri``."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = dict(metadata or {})
    meta["target_mean"] = model.target_mean.cpu().numpy()
    meta["target_std"] = model.target_std.cpu().numpy()
    meta["parameter_count"] = model.parameter_count()
    with tempfile.TemporaryDirectory(prefix="dvamn-ckpt-") as tmp:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(model.config.to_dict(), f, indent=2)
        torch.save(state, os.path.join(tmp, WEIGHTS_FILE))
        if training_state is not None:
            torch.save(training_state, os.path.join(tmp, TRAINING_STATE_FILE))
        if query_bank is not None:
            bank = np.asarray(query_bank)
            if bank.ndim != 3 or bank.shape[2] != model.config.audio_dim:
                raise ValueError(
                    f"query bank must be (Qb, A, {model.config.audio_dim}), got {bank.shape}"
                )
            np.save(os.path.join(tmp, QUERY_BANK_FILE), bank.astype(np.float16))
        # The metadata names every other file with its size: a checkpoint is complete when
        # its metadata exists and every file it names has that size, whatever order a copy
        # (ours, or Ray Train's persisting of a reported checkpoint) wrote them in.
        meta["files"] = {
            name: os.path.getsize(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))
        }
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(_jsonable(meta), f, indent=2)
        for name in sorted(meta["files"]) + [METADATA_FILE]:  # metadata last
            storage.copy_file(os.path.join(tmp, name), storage.join(dir_or_uri, name))
    return dir_or_uri


def _read_json(uri: str) -> Dict[str, Any]:
    with storage.open_uri(uri, "rb") as f:
        return json.loads(f.read().decode())


def checkpoint_problem(uri: str) -> Optional[str]:
    """Why the checkpoint directory ``uri`` is incomplete or unreadable, or None when it is
    complete: ``config.json``, ``model.pt`` and ``metadata.json`` exist, the metadata is
    JSON, and every file it names has the size it records (checkpoints written before
    sizes were recorded are checked for the three files only)."""
    for name in (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE):
        if not storage.exists(storage.join(uri, name)):
            return f"it has no {name}"
    try:
        meta = _read_json(storage.join(uri, METADATA_FILE))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"its {METADATA_FILE} cannot be read ({type(err).__name__}: {err})"
    if not isinstance(meta, dict):
        return f"its {METADATA_FILE} is not a JSON object"
    fs, path = storage.filesystem(uri)
    for name, size in (meta.get("files") or {}).items():
        if "/" in name or name.startswith("."):
            return f"its {METADATA_FILE} names the file {name!r}"
        try:
            found = fs.size(f"{path.rstrip('/')}/{name}")
        except FileNotFoundError:
            return f"it has no {name}"
        if found != size:
            return f"its {name} has {found} bytes, not the {size} written (truncated?)"
    return None


def is_checkpoint(uri: str) -> bool:
    """True for a complete checkpoint directory (``checkpoint_problem`` finds nothing)."""
    return checkpoint_problem(uri) is None


def list_checkpoints(run_uri: str) -> List[str]:
    """Complete checkpoint directories directly inside a training run directory, sorted by
    name (Ray Train names them so that the order is the order they were written). An
    incomplete or unreadable one (a write cut short by a crash) is skipped with a warning
    naming it and saying why."""
    fs, path = storage.filesystem(run_uri)
    if not fs.isdir(path):
        return []
    found = []
    for entry in sorted(fs.ls(path, detail=False)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        uri = storage.join(run_uri, name)
        if not name.startswith("checkpoint") or not fs.isdir(entry):
            continue
        problem = checkpoint_problem(uri)
        if problem:
            log.warning("skipping the checkpoint %s: %s", uri, problem)
        else:
            found.append(uri)
    return found


def _sort_key(metrics: Dict[str, Any], metric: str, mode: str) -> float:
    value = metrics.get(metric)
    sign = 1.0 if mode == "min" else -1.0
    return sign * float(value) if value is not None and math.isfinite(value) else math.inf


def best_checkpoint(run_uri: str, metric: Optional[str] = None, mode: Optional[str] = None) -> str:
    """The best checkpoint of a run. Without ``metric``, by the run's own rule (the
    ``selection`` in its latest checkpoint's metadata: ``SELECT_BY_RECALL`` or
    ``SELECT_BY_LOSS``; runs written before rules were stored: by loss), so that
    evaluation and the service pick the checkpoint training chose. Remaining ties: the
    latest."""
    checkpoints = list_checkpoints(run_uri)
    if not checkpoints:
        raise FileNotFoundError(
            f"{run_uri} is neither a complete DVAMN checkpoint (config.json, model.pt, "
            "metadata.json) nor a training run with complete checkpoint_* directories; pass "
            "the --out directory of `dvamn train`"
        )
    metas = [_read_json(storage.join(uri, METADATA_FILE)) for uri in checkpoints]
    if metric is None:
        rule = dict(metas[-1].get("selection") or SELECT_BY_LOSS)
    else:
        rule = {"metric": metric, "mode": mode or "min"}
    scored = []
    for i, (uri, meta) in enumerate(zip(checkpoints, metas)):
        metrics = meta.get("metrics", {})
        key = _sort_key(metrics, rule["metric"], rule["mode"])
        tie = (
            _sort_key(metrics, rule["tie_metric"], rule["tie_mode"])
            if "tie_metric" in rule
            else 0.0
        )
        scored.append((key, tie, -i, uri))
    return min(scored)[3]


def resolve_checkpoint(uri: str) -> str:
    """A checkpoint directory itself, or the best checkpoint of a training run directory.
    Raises ``FileNotFoundError`` saying why for a checkpoint directory that is incomplete."""
    if storage.exists(storage.join(uri, CONFIG_FILE)):  # a checkpoint, not a run
        problem = checkpoint_problem(uri)
        if problem:
            raise FileNotFoundError(f"the checkpoint {uri} is incomplete or unreadable: {problem}")
        return uri
    return best_checkpoint(uri)


def load_model(uri: str, map_location: str = "cpu") -> Tuple[DVAMN, Dict[str, Any]]:
    """Rebuild a DVAMN from a checkpoint directory or a training run directory (its best
    checkpoint), local or any fsspec URI. Returns (model in eval mode, metadata); the
    metadata gains ``checkpoint_uri``."""
    ckpt = resolve_checkpoint(uri)
    config = checkpoint_config(ckpt)
    metadata = checkpoint_metadata(ckpt)
    with storage.open_uri(storage.join(ckpt, WEIGHTS_FILE), "rb") as f:
        state = torch.load(f, map_location=map_location, weights_only=True)
    model = DVAMN(config)
    model.load_state_dict(state)
    model.eval()
    # Not a buffer: the weights (and their version hash) stay what training wrote.
    model.query_bank = load_query_bank(ckpt, config.audio_dim)
    metadata["checkpoint_uri"] = ckpt
    log.info(
        "loaded DVAMN (%s, %d parameters) from %s", config.layer, model.parameter_count(), ckpt
    )
    return model, metadata


def checkpoint_config(uri: str) -> DVAMNConfig:
    """The network configuration of a checkpoint directory, without its weights."""
    return DVAMNConfig.from_dict(_read_json(storage.join(uri, CONFIG_FILE)))


def checkpoint_metadata(uri: str) -> Dict[str, Any]:
    """The metadata of a checkpoint directory (feature provenance, epoch, metrics,
    history), without loading its weights."""
    return _read_json(storage.join(uri, METADATA_FILE))


def checkpoint_dir_name(epoch: int) -> str:
    """The directory of the checkpoint saved after 0-based ``epoch``: 1-based, as the
    progress lines count (epoch 8 -> ``checkpoint_epoch_0009``)."""
    return f"checkpoint_epoch_{epoch + 1:04d}"


def checkpoint_label(metadata: Dict[str, Any]) -> str:
    """The epoch of a checkpoint as its directory name counts it: "epoch 9" for
    ``checkpoint_epoch_0009`` (metadata epoch 8)."""
    epoch = metadata.get("epoch")
    return "epoch ?" if epoch is None else f"epoch {int(epoch) + 1}"


def load_query_bank(checkpoint_dir: str, dim: int = EMBEDDING_DIM) -> Optional[np.ndarray]:
    """The checkpoint's query bank (Qb, A, 128) float32, or None (saved without one).
    Read with ``allow_pickle=False``: a .npy of plain numbers, nothing executed."""
    uri = storage.join(checkpoint_dir, QUERY_BANK_FILE)
    if not storage.exists(uri):
        return None
    with storage.open_uri(uri, "rb") as f:
        bank = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if bank.ndim != 3 or bank.shape[2] != dim or not np.isfinite(bank).all():
        raise ValueError(f"{uri}: expected a finite (Qb, A, {dim}) array, got {bank.shape}")
    return bank.astype(np.float32)


def load_training_state(checkpoint_dir: str) -> Optional[Dict[str, Any]]:
    """The optimiser state saved beside the weights, or None for an inference-only one."""
    uri = storage.join(checkpoint_dir, TRAINING_STATE_FILE)
    if not storage.exists(uri):
        return None
    with storage.open_uri(uri, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)
