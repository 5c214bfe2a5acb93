"""DVAMN's network configuration (``DVAMNConfig``), importable without torch so that the
CLI takes its defaults from here; ``dvamn.model`` builds the network from it."""

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Tuple

from dvamn.constants import EMBEDDING_DIM, NUM_JOINTS, POSE_FEATURES

# Extra input channels per ``DVAMNConfig.rhythm`` setting (see ``rhythm_features``).
RHYTHM_FEATURES = {"none": 0, "accel": 2 * NUM_JOINTS + NUM_JOINTS + 1}


@dataclass
class DVAMNConfig:
    """The network's shape; defaults are the paper's (and the authors' code's kernels)."""

    pose_features: int = POSE_FEATURES  # 34 normalised coordinates + 34 motion residuals
    audio_dim: int = EMBEDDING_DIM  # VGGish embedding size
    widths: Tuple[int, ...] = (128, 256, 512)  # the three MFC blocks before the GRUs
    gru_hidden: int = 512  # per direction; each bidirectional layer outputs 2 * gru_hidden
    post_gru_widths: Tuple[int, ...] = (512, 256)  # the two MFC blocks after the GRUs
    fc_width: int = 128  # the frame-wise fully connected layer before the output
    kernel_size: int = 7  # MFC kernel in frames (see the module docstring)
    output_kernel_size: int = 5  # the last MFC layer
    dropout: float = 0.1  # before the 3rd layer of blocks 2.. (authors: Keras Dropout(0.9))
    layer: str = "mfc"  # "mfc" or "fc" (kernel size 1 everywhere: the paper's ablation)
    # Rhythm the network sees beside the 68 features, derived in the network from them
    # (``rhythm_features``): "none" (the paper), or "accel": per-joint acceleration (34),
    # speed (17) and the motion onset, the rectified rise of summed joint speed (1).
    rhythm: str = "none"
    # An onset head: the network also predicts the music's onset strength at the pose rate
    # (B, T), from the pose blocks' output, for the rhythm term of "+onset" scorings
    # (dvamn.scoring) and the objective (dvamn.training.train). False: the paper.
    onset_head: bool = False

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.post_gru_widths = tuple(int(w) for w in self.post_gru_widths)
        if self.layer not in ("mfc", "fc"):
            raise ValueError(f"DVAMNConfig.layer must be 'mfc' or 'fc', got {self.layer!r}")
        if self.rhythm not in RHYTHM_FEATURES:
            raise ValueError(
                f"DVAMNConfig.rhythm must be one of {sorted(RHYTHM_FEATURES)}, got {self.rhythm!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DVAMNConfig.dropout must be in [0, 1), got {self.dropout}")
        for name in ("kernel_size", "output_kernel_size"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"DVAMNConfig.{name} must be odd and >= 1 to keep T, got {k}")

    @property
    def input_features(self) -> int:
        """Channels of the first MFC block: the 68 pose features and the rhythm ones."""
        return self.pose_features + RHYTHM_FEATURES[self.rhythm]

    def kernel(self, k: int) -> int:
        """The kernel actually used: ``k`` for MFC, 1 for the frame-wise FC ablation."""
        return 1 if self.layer == "fc" else k

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "DVAMNConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown DVAMNConfig fields {sorted(unknown)} in checkpoint config")
        return cls(**values)
