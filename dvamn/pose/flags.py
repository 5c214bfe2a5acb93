"""The pose flags of every command that runs a pose model (``dvamn extract``, ``dvamn serve``)."""

import argparse
from typing import Sequence

from dvamn.devices import add_device_argument
from dvamn.pose.estimators import POSE_KINDS

POSE_SOURCES = (*POSE_KINDS, "keypoints")  # extraction may also read keypoint files
DEFAULT_POSE = "rtmo"

_SOURCE_HELP = {
    "rtmo": "one-stage RTMO",
    "rtmpose": "YOLOX detector + RTMPose",
    "keypoints": "read <stem>.npz keypoint files (or AIST++ .pkl) instead of detecting",
}


def add_pose_arguments(
    parser: argparse.ArgumentParser,
    sources: Sequence[str] = POSE_SOURCES,
    default: str = DEFAULT_POSE,
    device_what: str = "the pose model",
) -> None:
    """Add --pose (one of ``sources``), --pose-model, --pose-detector and --device."""
    group = parser.add_argument_group("pose")
    group.add_argument(
        "--pose",
        choices=tuple(sources),
        default=default,
        help="; ".join(f"{s}: {_SOURCE_HELP[s]}" for s in sources) + f" (default: {default})",
    )
    group.add_argument(
        "--pose-model",
        metavar="PATH|URI",
        help="ONNX pose model (RTMO or RTMPose), local or s3://; default: rtmlib's URL",
    )
    group.add_argument(
        "--pose-detector",
        metavar="PATH|URI",
        help="ONNX YOLOX person detector for --pose rtmpose; default: rtmlib's URL",
    )
    add_device_argument(group, what=device_what)
