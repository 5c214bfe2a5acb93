"""2D pose of the main dancer, 10 times a second, as DVAMN's 68 values per frame.

- ``estimators``: rtmlib's RTMO (one stage) or YOLOX + RTMPose on ONNX Runtime, batched.
- ``keypoint_files``: pre-extracted keypoints (our ``.npz`` format, AIST++ pickles read with
  every limit checked, and their one-time conversion to ``.npz``: ``dvamn convert-aist``).
- ``tracking``: keep the main dancer over time; fill frames where nobody was found.
- ``features``: normalised pose + motion, 68 values per frame.

rtmlib itself is imported only when an estimator is built.
"""

from dvamn.pose.estimators import (
    FramePoses,
    PoseEstimator,
    PoseWeightsError,
    RTMOEstimator,
    TwoStageEstimator,
    load_pose_estimator,
)
from dvamn.pose.features import (
    PoseSequence,
    keypoint_confidence,
    pose_features,
    pose_sequence,
)
from dvamn.pose.keypoint_files import (
    KeypointFileError,
    KeypointTrack,
    aist_keypoints_from_bytes,
    aist_video_stem,
    aist_view_from_name,
    convert_aist_pickle,
    find_keypoint_file,
    load_aist_keypoints,
    load_keypoint_file,
    load_keypoints_for_video,
    resample_track,
    save_keypoint_file,
)
from dvamn.pose.tracking import NoPersonError, fill_gaps, present_from_scores, track_main_dancer

__all__ = [
    "FramePoses",
    "KeypointFileError",
    "KeypointTrack",
    "NoPersonError",
    "PoseEstimator",
    "PoseSequence",
    "PoseWeightsError",
    "RTMOEstimator",
    "TwoStageEstimator",
    "aist_keypoints_from_bytes",
    "aist_video_stem",
    "aist_view_from_name",
    "convert_aist_pickle",
    "fill_gaps",
    "find_keypoint_file",
    "keypoint_confidence",
    "load_aist_keypoints",
    "load_keypoint_file",
    "load_keypoints_for_video",
    "load_pose_estimator",
    "pose_features",
    "pose_sequence",
    "present_from_scores",
    "resample_track",
    "save_keypoint_file",
    "track_main_dancer",
]
