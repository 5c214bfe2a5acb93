"""The pose track a match used, as the match endpoints return it with ``include_pose``.

Format (``"pose"`` in the answer; docs/serving.md, "The pose track")::

    {"fps": 10.0,                       # frames at POSE_FPS, frame i at i / fps seconds
     "width": W, "height": H,           # the frame the coordinates are in (pixels)
     "joints": ["nose", ...],           # COCO-17 joint order
     "edges": [[i, j], ...],            # the skeleton's bones, as joint indices
     "keypoints": [[[x, y] x 17] x T],  # the main dancer's joints in pixels (0.1 px)
     "present": [true, false, ...]}     # false: the dancer was lost in that frame; its
                                        # joints are interpolated or the nearest seen

``keypoints`` are the joints the features were computed from (after gap filling), so
the page draws what the service saw.
"""

from typing import Any, Dict

import numpy as np

from dvamn.constants import POSE_FPS

COCO_JOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
SKELETON_EDGES = (
    (0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10),
    (5, 11), (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16),
)  # fmt: skip


def pose_track_arrays(keypoints: np.ndarray, present: np.ndarray) -> Dict[str, np.ndarray]:
    """What a query's description carries between deployments (arrays, not JSON)."""
    return {
        "keypoints": np.asarray(keypoints, np.float32),
        "present": np.asarray(present, bool),
    }


def pose_track_json(arrays: Dict[str, np.ndarray], width: float, height: float) -> Dict[str, Any]:
    """The documented JSON form (module docstring) of ``pose_track_arrays``' output."""
    keypoints = np.round(arrays["keypoints"].astype(np.float64), 1)
    return {
        "fps": float(POSE_FPS),
        "width": float(width),
        "height": float(height),
        "joints": list(COCO_JOINTS),
        "edges": [list(edge) for edge in SKELETON_EDGES],
        "keypoints": keypoints.tolist(),
        "present": arrays["present"].tolist(),
    }
