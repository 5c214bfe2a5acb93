"""A training run's configuration (``TrainConfig``), importable without torch so that
``dvamn train``'s flags take their defaults from here; ``dvamn.training.train`` runs it."""

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from dvamn import storage
from dvamn.model_config import DVAMNConfig
from dvamn.scoring_names import DEFAULT_SCORING, ONSET_TERM, SCORINGS
from dvamn.training.data import (
    DEFAULT_VAL_FRACTION,
    QUERY_STRIDE_POSE_FRAMES,
    TRAIN_STRIDE_POSE_FRAMES,
    AugmentConfig,
)

OBJECTIVES = ("logcosh", "contrastive", "both")
DEFAULT_OBJECTIVE = "both"
# `dvamn train` and the demo give the network an onset head unless told not to: on clips
# whose rules no training clip had, its rhythm term is most of the retrieval (README,
# issue 13's sixth session). DVAMNConfig's own default stays the paper's network.
DEFAULT_ONSET_HEAD = True


def epoch_scoring(onset_head: bool) -> str:
    """Per-epoch retrieval's (and so selection's) scoring where none is named: with an onset
    head, with the rhythm term the service will add (``dvamn.scoring_names.default_scoring``)."""
    return f"{DEFAULT_SCORING}+{ONSET_TERM}" if onset_head else DEFAULT_SCORING


INITIAL_TEMPERATURE = 0.1  # of the learnable temperature (CLIP starts at 0.07)
MIN_TEMPERATURE = 0.01


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved in every checkpoint's metadata."""

    features: str  # extraction output URI (OUT or OUT/videos)
    out: str  # the run directory RUN: local path or s3:// URI
    workers: int = 1  # Ray Train workers (0: run the loop in-process, no DDP)
    gpu: bool = False
    epochs: int = 20
    batch_size: int = 64  # per worker, as the paper's single-GPU batch
    lr: float = 2e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    stride: int = TRAIN_STRIDE_POSE_FRAMES  # pose frames between training window starts
    val_fraction: float = DEFAULT_VAL_FRACTION  # the paper's 4:1 split, by video
    seed: int = 0
    resume: bool = False
    model: DVAMNConfig = field(default_factory=DVAMNConfig)
    max_failures: int = 2  # worker-group restarts before the run fails
    num_to_keep: Optional[int] = 3  # best checkpoints kept (the latest is always kept)
    cpus_per_worker: float = 1.0
    shuffle_buffer: int = 1024  # windows in each worker's local shuffle buffer
    query_stride: int = QUERY_STRIDE_POSE_FRAMES  # between validation retrieval queries
    max_retrieval_queries: Optional[int] = 256  # per epoch (evaluate uses them all)
    scoring: str = DEFAULT_SCORING  # how per-epoch retrieval compares (scoring.SCORINGS)
    max_steps_per_epoch: Optional[int] = None  # caps epochs for smoke runs and benchmarks
    objective: str = DEFAULT_OBJECTIVE  # OBJECTIVES (see the module docstring)
    contrastive_weight: float = 1.0  # of the contrastive term in "both"
    temperature: Optional[float] = None  # None: learnable from INITIAL_TEMPERATURE
    hard_negatives: int = 4  # per window, for the contrastive term
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    patience: Optional[int] = None  # epochs without a better checkpoint before stopping
    query_bank_size: int = 128  # training predictions stored for hubness correction
    # Weight of the onset head's own loss (1 - correlation with the true onsets), for a
    # model with ``onset_head``.
    onset_loss_weight: float = 1.0
    # Fault-injection for tests: the worker of this rank exits hard at this global step,
    # once (the marker file records that it happened).
    crash_at_step: Optional[int] = None
    crash_marker: Optional[str] = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective != "logcosh" and not self.scoring.startswith("cosine"):
            raise ValueError(
                f"the contrastive objective uses the cosine scorings' similarity; --scoring "
                f"{self.scoring!r} is not one of them (cosine-w, cosine-std, cosine)"
            )
        allowed = SCORINGS + (
            tuple(f"{s}+{ONSET_TERM}" for s in SCORINGS) if self.model.onset_head else ()
        )
        if self.scoring not in allowed:
            raise ValueError(f"scoring must be one of {', '.join(allowed)}, got {self.scoring!r}")
        if self.onset_loss_weight < 0:
            raise ValueError(f"onset_loss_weight must be >= 0, got {self.onset_loss_weight}")
        if self.temperature is not None and not MIN_TEMPERATURE <= self.temperature <= 10.0:
            raise ValueError(
                f"temperature must be in [{MIN_TEMPERATURE}, 10], got {self.temperature}"
            )
        if self.contrastive_weight < 0 or self.hard_negatives < 0 or self.query_bank_size < 0:
            raise ValueError("contrastive_weight, hard_negatives and query_bank_size must be >= 0")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 epoch, got {self.patience}")
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)

    @property
    def retrieval_objective(self) -> bool:
        return self.objective != "logcosh"

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    def run_location(self) -> Tuple[str, str]:
        """(storage_path, name) for Ray Train's RunConfig: RUN's parent and its last part."""
        out = self.out.rstrip("/")
        if storage.is_remote(out):
            parent, name = out.rsplit("/", 1)
            return parent, name
        out = os.path.abspath(os.path.expanduser(out))
        return os.path.dirname(out), os.path.basename(out)
