"""Settings of the extraction job, defined once, built from the CLI, saved in the manifest."""

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from dvamn.audio import AUDIO_KINDS
from dvamn.constants import (
    MAX_DURATION_S,
    MAX_FRAME_PIXELS,
    MAX_GAP_FRAMES,
    MIN_DURATION_S,
    POSE_FRAME_BATCH,
)
from dvamn.pose.flags import DEFAULT_POSE, POSE_SOURCES


@dataclass
class StageResources:
    """Actor pool and resource share of one Ray Data stage."""

    min_actors: int = 1
    max_actors: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    videos_per_batch: int = 1


@dataclass
class ExtractConfig:
    """Everything `dvamn extract` needs; the defaults are the paper's settings."""

    input: str
    out: str
    pose: str = DEFAULT_POSE  # one of POSE_SOURCES
    pose_model: Optional[str] = None  # ONNX path / s3:// URI; None = rtmlib's default URL
    pose_detector: Optional[str] = None  # YOLOX for the two-stage "rtmpose" source
    keypoints_dir: Optional[str] = None  # where keypoint files live, if not beside the videos
    aist_view: Optional[int] = None  # AIST++ camera view (0-8); None = from the video name
    audio: str = "vggish"  # one of AUDIO_KINDS
    vggish_weights: Optional[str] = None
    vggish_pca: Optional[str] = None
    device: str = "auto"  # pose model: auto | cpu | cuda
    audio_device: str = "auto"  # VGGish: auto | cpu | cuda
    frame_batch_size: int = POSE_FRAME_BATCH  # frames per pose-model call
    max_gap_frames: int = MAX_GAP_FRAMES
    max_frame_pixels: int = MAX_FRAME_PIXELS
    min_duration_s: float = MIN_DURATION_S
    max_duration_s: float = MAX_DURATION_S  # longer videos become error rows
    limit: Optional[int] = None  # only the first N inputs (smoke runs)
    pose_stage: StageResources = dataclasses.field(default_factory=StageResources)
    # With --pose keypoints the audio actors do the whole job, so they get whole CPUs.
    audio_stage: StageResources = dataclasses.field(
        default_factory=lambda: StageResources(max_actors=2, num_cpus=1.0, videos_per_batch=4)
    )

    def __post_init__(self) -> None:
        if self.pose not in POSE_SOURCES:
            raise ValueError(f"--pose must be one of {', '.join(POSE_SOURCES)}, not {self.pose!r}")
        if self.audio not in AUDIO_KINDS:
            raise ValueError(f"--audio must be one of {', '.join(AUDIO_KINDS)}, not {self.audio!r}")
        if self.frame_batch_size < 1:
            raise ValueError("--frame-batch must be at least 1")
        if not self.max_duration_s > 0:
            raise ValueError(f"--max-duration must be > 0 seconds, not {self.max_duration_s}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
