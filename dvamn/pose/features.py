"""The 68 pose values per frame that DVAMN reads: normalised pose + motion.

For frame i with COCO-17 keypoints P_i (pixels):

- normalised pose P̂_i (34 values): the body moved to the centre and scaled to a standard
  size. Centre: the hip midpoint (joints 11, 12). Size: the torso length (shoulder
  midpoint to hip midpoint), but at least a quarter of the keypoints' extent (the larger
  of width and height), so that a torso foreshortened by a bow does not blow the pose
  up. A pose whose size is zero (all joints on one point) normalises to zeros.
- motion M_i (34 values) = (P_{i+1} - P_i) / frame height, from the original pixel
  poses; the last frame's motion is 0. One divisor for both axes keeps the direction of
  motion; the height because dancers are framed by their height, portrait or landscape.

Both parts are invariant to moving the image (translation) and to its resolution (scaling
keypoints and frame size together). Layout: [P̂ (34), M (34)], each joint-major
(x0, y0, x1, y1, ...), as the released DVAMN code joins [norm, residual].
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from dvamn.constants import MAX_GAP_FRAMES, NUM_JOINTS, POSE_FEATURES, POSE_FPS

if TYPE_CHECKING:
    from dvamn.pose.estimators import FramePoses
    from dvamn.pose.keypoint_files import KeypointTrack

LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_HIP, RIGHT_HIP = 5, 6, 11, 12
MIN_EXTENT_FRACTION = 0.25  # scale >= this x the keypoints' extent
DEGENERATE_SCALE_PX = 1e-6


def normalise_poses(keypoints: np.ndarray) -> np.ndarray:
    """Per-frame centred and scaled poses: float32 [T, 17, 2] -> float32 [T, 17, 2]."""
    points = np.asarray(keypoints, np.float64)  # (T, J, 2)
    hip_mid = 0.5 * (points[:, LEFT_HIP] + points[:, RIGHT_HIP])  # (T, 2)
    shoulder_mid = 0.5 * (points[:, LEFT_SHOULDER] + points[:, RIGHT_SHOULDER])
    torso = np.linalg.norm(shoulder_mid - hip_mid, axis=1)  # (T,)
    extent = (points.max(axis=1) - points.min(axis=1)).max(axis=1)  # (T,)
    scale = np.maximum(torso, MIN_EXTENT_FRACTION * extent)
    safe_scale = np.where(scale > DEGENERATE_SCALE_PX, scale, 1.0)
    normalised = (points - hip_mid[:, None, :]) / safe_scale[:, None, None]
    normalised[scale <= DEGENERATE_SCALE_PX] = 0.0
    return normalised.astype(np.float32)


def motion_residuals(keypoints: np.ndarray, height: float) -> np.ndarray:
    """M_i = (P_{i+1} - P_i) / height; the last frame's is 0. [T, 17, 2] -> [T, 17, 2]."""
    points = np.asarray(keypoints, np.float64)
    motion = np.zeros_like(points)
    motion[:-1] = (points[1:] - points[:-1]) / float(height)
    return motion.astype(np.float32)


def pose_features(keypoints: np.ndarray, width: int, height: int) -> np.ndarray:
    """keypoints float32 [T, 17, 2] pixels in a ``width`` x ``height`` frame -> [T, 68].

    ``width`` is checked but unused: motion is relative to the frame height (see the
    module docstring).
    """
    keypoints = np.asarray(keypoints)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_JOINTS, 2):
        raise ValueError(f"keypoints must be [T, 17, 2], got {list(keypoints.shape)}")
    if not (width and width > 0 and height and height > 0):
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    num_frames = keypoints.shape[0]
    if num_frames == 0:
        return np.zeros((0, POSE_FEATURES), np.float32)
    normalised = normalise_poses(keypoints).reshape(num_frames, 2 * NUM_JOINTS)  # (T, 34)
    motion = motion_residuals(keypoints, height).reshape(num_frames, 2 * NUM_JOINTS)  # (T, 34)
    return np.concatenate([normalised, motion], axis=1).astype(np.float32)


def keypoint_confidence(scores: np.ndarray) -> np.ndarray:
    """Per-frame pose confidence: mean keypoint score, float32 [T, 17] -> [T]."""
    scores = np.asarray(scores, np.float32)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [T, 17], got {list(scores.shape)}")
    return scores.mean(axis=1).astype(np.float32)


@dataclass
class PoseSequence:
    """What extraction stores for a video's pose: features float32 [T, 68], confidence
    float32 [T] (0 where the dancer was missing), missing_fraction in [0, 1]; and the
    gap-filled keypoints float32 [T, 17, 2] pixels with ``present`` bool [T] (frames where
    the dancer was found), which the service can return with a match."""

    features: np.ndarray
    confidence: np.ndarray
    missing_fraction: float
    keypoints: np.ndarray
    present: np.ndarray


def pose_sequence(
    poses: Union["KeypointTrack", Sequence["FramePoses"]],
    width: float,
    height: float,
    num_frames: Optional[int] = None,
    max_gap_frames: int = MAX_GAP_FRAMES,
) -> PoseSequence:
    """The one path from poses to the 68 features a frame, for extraction and the service.

    ``poses``: a ``KeypointTrack`` at any rate (resampled to POSE_FPS, ``num_frames``
    long, default its duration; a frame without the dancer has all scores 0), or the
    detections (``FramePoses``) of frames sampled at POSE_FPS (the main dancer is
    tracked). Frames without the dancer are filled (``fill_gaps``), then featurised in a
    ``width`` x ``height`` frame. Raises ``dvamn.pose.tracking.NoPersonError`` when no
    frame has the dancer.
    """
    from dvamn.pose.keypoint_files import KeypointTrack, resample_track
    from dvamn.pose.tracking import fill_gaps, present_from_scores, track_main_dancer

    if isinstance(poses, KeypointTrack):
        keypoints, scores = resample_track(poses, POSE_FPS, num_frames)
        present = present_from_scores(scores)
    else:
        if num_frames is not None:
            raise ValueError("num_frames applies to a KeypointTrack, not to detected frames")
        keypoints, scores, present = track_main_dancer(poses, width, height)
    filled, filled_scores, missing_fraction = fill_gaps(keypoints, scores, present, max_gap_frames)
    return PoseSequence(
        features=pose_features(filled, width, height),
        confidence=keypoint_confidence(filled_scores),
        missing_fraction=missing_fraction,
        keypoints=filled,
        present=np.asarray(present, bool),
    )
