"""Pre-extracted 2D keypoints: our ``.npz`` format and AIST++'s ``keypoints2d`` pickles.

Our format (``--pose keypoints``): beside ``<stem>.mp4`` a file ``<stem>.npz`` holding

    keypoints  float32 [T, 17, 2]  x, y in pixels, COCO-17 joint order
    scores     float32 [T, 17]     confidence per joint; a frame whose scores are all 0
                                   has nobody in it
    fps        scalar              frame rate of the keypoints (frame i is at i / fps s)
    width      scalar, optional    frame size in pixels the coordinates refer to
    height     scalar, optional

AIST++ (``keypoints2d/<sequence>.pkl``, read by ``load_aist_keypoints``): a pickled dict
with ``keypoints2d`` float [9, N, 17, 3] (9 camera views; x, y in pixels of the
1920x1080 videos, confidence; NaN where nothing was detected), ``det_scores`` [9, N]
(0 where nothing was detected) and ``timestamps`` [N] (frame ids of the 60 fps videos).
"""

import io
import logging
import math
import os
import pickle
import re
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from dvamn import storage
from dvamn.constants import NUM_JOINTS, POSE_FPS, num_pose_frames

log = logging.getLogger(__name__)

AIST_FPS = 60.0
AIST_WIDTH, AIST_HEIGHT = 1920, 1080
AIST_NUM_VIEWS = 9
# AIST video names: gBR_sBM_c01_d04_mBR0_ch01 (genre, situation, camera, dancer, music,
# choreography); the AIST++ sequence holding all 9 cameras replaces c01 with cAll.
_AIST_CAMERA_TAG = re.compile(r"^c(\d{2})$")


class KeypointFileError(ValueError):
    """A keypoint file that cannot be used; the message names the file and the field."""


@dataclass
class KeypointTrack:
    """One person's 2D keypoints over time, at the rate they were stored.

    keypoints: float32 [T, 17, 2] pixels (COCO-17); scores: float32 [T, 17];
    fps: frames per second; width, height: frame size in pixels when known;
    times_s: float64 [T] presentation time of each frame in seconds, when the frames are
    not evenly spaced at ``fps`` (None: frame i is at i / fps).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    fps: float
    width: Optional[int] = None
    height: Optional[int] = None
    times_s: Optional[np.ndarray] = None

    @property
    def num_frames(self) -> int:
        return int(self.keypoints.shape[0])

    def frame_times_s(self) -> np.ndarray:
        """float64 [T]: when each frame is shown, in seconds."""
        if self.times_s is not None:
            return np.asarray(self.times_s, dtype=np.float64)
        return np.arange(self.num_frames, dtype=np.float64) / self.fps

    @property
    def duration_s(self) -> float:
        """Seconds covered: the last frame is shown for one frame period."""
        if self.num_frames == 0:
            return 0.0
        return float(self.frame_times_s()[-1] + 1.0 / self.fps)


# --- our .npz format ---------------------------------------------------------------------


def _scalar(data, name: str, uri: str, required: bool) -> Optional[float]:
    if name not in data.files:
        if required:
            raise KeypointFileError(f"{uri}: field '{name}' is missing")
        return None
    value = np.asarray(data[name])
    if value.size != 1 or not np.issubdtype(value.dtype, np.number):
        raise KeypointFileError(
            f"{uri}: field '{name}' must be a number, got {value.dtype} of shape {value.shape}"
        )
    number = float(value.reshape(()))
    if not math.isfinite(number) or number <= 0:
        raise KeypointFileError(f"{uri}: field '{name}' must be positive, got {number}")
    return number


def _float_array(data, name: str, uri: str, shape_tail: Tuple[int, ...], layout: str):
    if name not in data.files:
        raise KeypointFileError(f"{uri}: field '{name}' is missing (expected {layout})")
    array = np.asarray(data[name])
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        raise KeypointFileError(
            f"{uri}: field '{name}' has shape {list(array.shape)}, expected {layout}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise KeypointFileError(
            f"{uri}: field '{name}' has dtype {array.dtype}, expected float32 ({layout})"
        )
    if not np.all(np.isfinite(array)):
        bad = int(np.argwhere(~np.isfinite(array))[0][0])
        raise KeypointFileError(
            f"{uri}: field '{name}' holds NaN or infinite values (first in frame {bad}); "
            "mark a missing joint or frame with score 0 and any finite coordinates"
        )
    return array.astype(np.float32)


def load_keypoint_file(uri: str) -> KeypointTrack:
    """Read and validate a keypoint ``.npz`` (see the module docstring for the format).

    Raises ``KeypointFileError`` naming the file and the field when something is wrong.
    """
    try:
        with storage.open_uri(uri, "rb") as f:
            raw = f.read()
        data = np.load(io.BytesIO(raw), allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # numpy raises several types for a file that is not npz
        raise KeypointFileError(f"{uri}: not a readable .npz file ({error})") from error
    if not hasattr(data, "files"):
        raise KeypointFileError(f"{uri}: expected an .npz archive of named arrays")
    keypoints = _float_array(data, "keypoints", uri, (NUM_JOINTS, 2), "[T, 17, 2] pixels")
    scores = _float_array(data, "scores", uri, (NUM_JOINTS,), "[T, 17]")
    if len(scores) != len(keypoints):
        raise KeypointFileError(
            f"{uri}: 'keypoints' has {len(keypoints)} frames but 'scores' has {len(scores)}"
        )
    if len(keypoints) == 0:
        raise KeypointFileError(f"{uri}: 'keypoints' holds no frames")
    fps = _scalar(data, "fps", uri, required=True)
    width = _scalar(data, "width", uri, required=False)
    height = _scalar(data, "height", uri, required=False)
    return KeypointTrack(
        keypoints=keypoints,
        scores=scores,
        fps=fps,
        width=int(round(width)) if width else None,
        height=int(round(height)) if height else None,
    )


def save_keypoint_file(uri: str, track: KeypointTrack) -> None:
    """Write ``track`` in our ``.npz`` format to a local path or URI."""
    arrays = {
        "keypoints": np.asarray(track.keypoints, dtype=np.float32),
        "scores": np.asarray(track.scores, dtype=np.float32),
        "fps": np.float32(track.fps),
    }
    if track.width is not None:
        arrays["width"] = np.int32(track.width)
    if track.height is not None:
        arrays["height"] = np.int32(track.height)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    if not storage.is_remote(uri):
        os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
    with storage.open_uri(uri, "wb") as f:
        f.write(buffer.getvalue())


# --- AIST++ ------------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """AIST++ pickles hold only numpy arrays; refuse anything else (pickles can run code)."""

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy" or (
            module in ("builtins", "collections") and name in ("dict", "list", "OrderedDict")
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a keypoint pickle")


def _aist_times_s(timestamps: Optional[np.ndarray], num_frames: int) -> Optional[np.ndarray]:
    """Frame times in seconds from AIST++ ``timestamps`` (frame ids, unit not documented).

    The ids are evenly spaced for complete sequences; dividing by their median step makes
    the result independent of their unit, and keeps real gaps (frames missing in every
    view) as gaps in time.
    """
    if timestamps is None:
        return None
    stamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if len(stamps) != num_frames or num_frames < 2:
        return None
    steps = np.diff(stamps)
    step = float(np.median(steps))
    if step <= 0 or np.any(steps <= 0):
        return None
    return (stamps - stamps[0]) / step / AIST_FPS


def load_aist_keypoints(uri: str, view: int = 0) -> KeypointTrack:
    """One camera view of an AIST++ ``keypoints2d/<sequence>.pkl`` as a KeypointTrack.

    ``view`` is 0..8 (camera c01..c09). NaN keypoints and frames whose detection score is
    0 become score-0 frames (nobody), at 60 fps and 1920x1080.
    """
    try:
        with storage.open_uri(uri, "rb") as f:
            data = _NumpyOnlyUnpickler(f).load()
    except FileNotFoundError:
        raise
    except Exception as error:
        raise KeypointFileError(
            f"{uri}: not a readable AIST++ keypoints2d pickle ({error})"
        ) from error
    if not isinstance(data, dict) or "keypoints2d" not in data:
        raise KeypointFileError(f"{uri}: expected a dict with 'keypoints2d' (AIST++ layout)")
    all_views = np.asarray(data["keypoints2d"], dtype=np.float32)
    if all_views.ndim != 4 or all_views.shape[2:] != (NUM_JOINTS, 3):
        raise KeypointFileError(
            f"{uri}: 'keypoints2d' has shape {list(all_views.shape)}, expected "
            "[views, N, 17, 3] (x, y, confidence)"
        )
    if not 0 <= view < all_views.shape[0]:
        raise KeypointFileError(
            f"{uri}: view {view} does not exist (the file has views 0..{all_views.shape[0] - 1})"
        )
    points = all_views[view]  # (N, 17, 3)
    keypoints = points[..., :2].copy()
    scores = points[..., 2].copy()
    missing = ~np.isfinite(keypoints).all(axis=(1, 2)) | ~np.isfinite(scores).all(axis=1)
    if "det_scores" in data:
        det_scores = np.asarray(data["det_scores"], dtype=np.float32)
        if det_scores.ndim == 2 and det_scores.shape == all_views.shape[:2]:
            missing |= ~(det_scores[view] > 0)
    keypoints[missing] = 0.0
    scores[missing] = 0.0
    keypoints = np.nan_to_num(keypoints, nan=0.0, posinf=0.0, neginf=0.0)
    scores = np.clip(np.nan_to_num(scores, nan=0.0), 0.0, None)
    return KeypointTrack(
        keypoints=keypoints.astype(np.float32),
        scores=scores.astype(np.float32),
        fps=AIST_FPS,
        width=AIST_WIDTH,
        height=AIST_HEIGHT,
        times_s=_aist_times_s(data.get("timestamps"), len(keypoints)),
    )


def aist_sequence_name(video_name: str) -> Optional[Tuple[str, int]]:
    """``gBR_sBM_c01_d04_mBR0_ch01[.mp4]`` -> (``gBR_sBM_cAll_d04_mBR0_ch01``, view 0).

    None when the name does not follow AIST's naming.
    """
    stem = os.path.splitext(os.path.basename(video_name))[0]
    tags = stem.split("_")
    for index, tag in enumerate(tags):
        match = _AIST_CAMERA_TAG.match(tag)
        if match and len(tags) >= 3:
            camera = int(match.group(1))
            if 1 <= camera <= AIST_NUM_VIEWS:
                tags[index] = "cAll"
                return "_".join(tags), camera - 1
    return None


def aist_view_from_name(video_uri: str) -> int:
    """The AIST++ view (camera number - 1) of an AIST video name; 0 when it has none."""
    parsed = aist_sequence_name(video_uri)
    return parsed[1] if parsed else 0


def find_keypoint_file(video_uri: str, keypoints_dir: Optional[str] = None) -> str:
    """The keypoint file for a video.

    Looks, in order, for ``<keypoints_dir>/<stem>.npz``, then (AIST video names)
    ``<keypoints_dir>/<sequence>.pkl`` and ``<keypoints_dir>/keypoints2d/<sequence>.pkl``,
    then ``<stem>.npz`` beside the video. Raises ``FileNotFoundError`` listing the places
    looked at.
    """
    stem_uri = os.path.splitext(video_uri)[0]
    stem = os.path.basename(stem_uri)
    candidates = []
    if keypoints_dir:
        candidates.append(storage.join(keypoints_dir, f"{stem}.npz"))
        aist = aist_sequence_name(stem)
        if aist:
            candidates.append(storage.join(keypoints_dir, f"{aist[0]}.pkl"))
            candidates.append(storage.join(keypoints_dir, "keypoints2d", f"{aist[0]}.pkl"))
    candidates.append(f"{stem_uri}.npz")
    for candidate in candidates:
        if storage.exists(candidate):
            return candidate
    raise FileNotFoundError(
        f"no keypoint file for {video_uri}: looked for {', '.join(candidates)}. Write "
        f"<stem>.npz beside the video, or pass --keypoints-dir, or use a pose model "
        f"(--pose rtmo) instead of --pose keypoints"
    )


def load_keypoints_for_video(
    video_uri: str, keypoints_dir: Optional[str] = None, view: Optional[int] = None
) -> KeypointTrack:
    """Find and load the keypoint file of a video (our ``.npz`` or an AIST++ ``.pkl``).

    For AIST++ the view is ``view`` when given, else the camera in the video's name.
    """
    path = find_keypoint_file(video_uri, keypoints_dir)
    if path.endswith(".pkl"):
        return load_aist_keypoints(
            path, view if view is not None else aist_view_from_name(video_uri)
        )
    return load_keypoint_file(path)


# --- resampling to the pose rate ---------------------------------------------------------


def resample_track(
    track: KeypointTrack, target_fps: float = POSE_FPS, num_frames: Optional[int] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Keypoints at ``target_fps``: output frame i is the source frame shown at i / target_fps.

    "Shown at" means the latest source frame whose time is <= i / target_fps (the frame
    on screen then), which matches how the video decoder samples frames. ``num_frames``
    defaults to the track's duration at ``target_fps``; output frames past the end of
    the track get score 0 (nobody) so that gap filling treats them as missing.

    Returns keypoints float32 [num_frames, 17, 2] and scores float32 [num_frames, 17].
    """
    if num_frames is None:
        num_frames = (
            num_pose_frames(track.duration_s)
            if target_fps == POSE_FPS
            else int(math.floor(track.duration_s * target_fps + 1e-6))
        )
    keypoints = np.zeros((num_frames, NUM_JOINTS, 2), dtype=np.float32)
    scores = np.zeros((num_frames, NUM_JOINTS), dtype=np.float32)
    if num_frames == 0 or track.num_frames == 0:
        return keypoints, scores
    source_times = track.frame_times_s()
    target_times = np.arange(num_frames, dtype=np.float64) / target_fps
    # 1e-6 s tolerance: 6 / 60 and 1 / 10 must pick the same instant despite rounding.
    index = np.searchsorted(source_times, target_times + 1e-6, side="right") - 1
    index = np.clip(index, 0, track.num_frames - 1)
    inside = target_times < track.duration_s - 1e-6
    keypoints[inside] = track.keypoints[index[inside]]
    scores[inside] = track.scores[index[inside]]
    if not inside.all():
        log.debug(
            "keypoints cover %.2f s; %d of %d frames past their end are marked missing",
            track.duration_s,
            int((~inside).sum()),
            num_frames,
        )
    return keypoints, scores
