"""Turning a query into pose features (T, 68) at POSE_FPS: uploaded video or keypoints.

Plain Python, used by the Serve deployments and testable without Ray. Every refusal is a
``QueryError`` carrying the HTTP status the service answers with.
"""

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from dvamn.constants import (
    MAX_DURATION_S,
    MAX_FRAME_PIXELS,
    MAX_GAP_FRAMES,
    MAX_NOMINAL_FPS,
    MIN_DURATION_S,
    NUM_JOINTS,
    POSE_FRAME_BATCH,
)
from dvamn.serving.pose_track import pose_track_arrays

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 10
MAX_TOP_K = 100
DEFAULT_MAX_UPLOAD_MB = 200.0
# Overload (docs/serving.md, "Overload"): requests waiting per deployment before callers get
# 503 with Retry-After, and how long an HTTP request may take before Serve's proxy answers 408.
DEFAULT_MAX_QUEUED_REQUESTS = 32
DEFAULT_RETRY_AFTER_S = 5
DEFAULT_REQUEST_TIMEOUT_S = 300.0
# How often Serve's controller checks each replica (docs/serving.md, "Overload"): it finds a
# dead replica only by such a check, and replaces it then. Serve's own default is 10 s.
DEFAULT_HEALTH_CHECK_PERIOD_S = 2.0


class QueryError(ValueError):
    """A query the service refuses; ``status`` is the HTTP status code to answer with."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


# Bytes of JSON one keypoint frame may take in a /match/keypoints body. The longest
# number JSON holds for a float64 is 24 characters (``-2.2250738585072014e-308``), so a
# frame written by ``json.dumps`` takes at most 17 x ``[x, y]`` = 17 x 52 + 16 x 2 + 2 =
# 918 bytes of keypoints, 17 x 24 + 16 x 2 + 2 = 442 of scores and 4 of separators:
# 1,364. 1,536 leaves room for some whitespace; a pretty-printed body (a number per
# line) can take more: send compact JSON.
KEYPOINT_FRAME_JSON_BYTES = 1536
KEYPOINT_BODY_SLACK_BYTES = 64 * 1024  # the other fields, whitespace


@dataclass
class QueryLimits:
    """What the service accepts. ``min_query_s`` defaults to one training window (12 s).

    Keypoint queries: ``fps`` in [min_keypoint_fps, max_keypoint_fps] (the service
    resamples to 10 fps; AIST++ and most cameras give at most 60), coordinates within
    +-``max_coordinate_px`` pixels (also the largest frame width/height), which bounds
    the frames (``max_keypoint_frames``) and the body (``max_keypoint_body_bytes``).
    """

    min_query_s: float = MIN_DURATION_S
    max_query_s: float = MAX_DURATION_S
    max_gap_frames: int = MAX_GAP_FRAMES
    max_frame_pixels: int = MAX_FRAME_PIXELS  # as extraction: what it stores, one can query
    min_keypoint_fps: float = 1.0
    max_keypoint_fps: float = 60.0
    max_coordinate_px: float = 1e6
    # Uploaded videos: a higher nominal (or decoded) frame rate is refused; at most
    # max_video_frames are decoded (None: the video's duration at max_video_fps); past
    # video_timeout_s of decoding and pose estimation the query gets a 503.
    max_video_fps: float = MAX_NOMINAL_FPS
    max_video_frames: Optional[int] = None
    video_timeout_s: float = 120.0

    @property
    def max_keypoint_frames(self) -> int:
        """Frames of the longest keypoint query: ``max_query_s`` at ``max_keypoint_fps``."""
        return int(math.floor(self.max_query_s * self.max_keypoint_fps + 1e-6))

    @property
    def max_keypoint_body_bytes(self) -> int:
        """The /match/keypoints body limit: the longest query as JSON (see above)."""
        return self.max_keypoint_frames * KEYPOINT_FRAME_JSON_BYTES + KEYPOINT_BODY_SLACK_BYTES


def format_number(value: float) -> str:
    """A number for a message: at most 6 significant digits (a client's 1e-300 must not
    become a message hundreds of digits long)."""
    return f"{float(value):.6g}"


Loc = Tuple[Union[str, int], ...]


def field_name(loc: Loc) -> str:
    """("keypoints", 3, 5) -> "keypoints[3][5]"; () -> "body"."""
    if not loc:
        return "body"
    return str(loc[0]) + "".join(f"[{part}]" for part in loc[1:])


class QueryFieldError(QueryError):
    """A refused value of one request field; ``loc`` is its path, as FastAPI's validation
    errors give it (``("keypoints", 3, 5)``), and the message names it too."""

    def __init__(self, loc: Sequence[Union[str, int]], message: str, status: int = 422):
        super().__init__(status, message)
        self.loc: Loc = tuple(loc)

    def validation_error(self, where: str = "body") -> Dict[str, Any]:
        """The error in FastAPI's ``RequestValidationError`` shape."""
        return {"type": "value_error", "loc": [where, *self.loc], "msg": self.detail}


_TOP_K_TEXT = re.compile(r"[0-9]{1,6}")


def check_top_k(value: Any, default: int) -> int:
    """``top_k`` of a request (a JSON integer, or the text of a form field; None: the
    default) -> an int in [1, MAX_TOP_K], or a QueryFieldError naming ``top_k``."""
    if value is None:
        return default
    if isinstance(value, str) and _TOP_K_TEXT.fullmatch(value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise QueryFieldError(("top_k",), f"top_k must be an integer from 1 to {MAX_TOP_K}")
    if not 1 <= value <= MAX_TOP_K:
        raise QueryFieldError(
            ("top_k",), f"top_k must be from 1 to {MAX_TOP_K}, got {format_number(value)}"
        )
    return value


def check_duration(duration_s: float, limits: QueryLimits, what: str) -> None:
    if duration_s < limits.min_query_s:
        raise QueryError(
            422,
            f"{what} is {format_number(duration_s)} s long; at least {limits.min_query_s:g} s "
            "of dancing is needed",
        )
    if duration_s > limits.max_query_s:
        raise QueryError(
            413,
            f"{what} is {format_number(duration_s)} s long; at most {limits.max_query_s:g} s "
            "is accepted",
        )


def frame_size_from_keypoints(keypoints: np.ndarray, scores: np.ndarray) -> Tuple[float, float]:
    """Guess the frame size of pixel keypoints (T, 17, 2) when the client does not say it.

    Assumes the dancer is, on average, horizontally and vertically centred: the frame is
    then as wide as ``min x + max x`` of the confident keypoints (equal margins on both
    sides), and as high as ``min y + max y``. The size only scales the motion features
    (the normalised pose does not depend on it), so a rough guess costs little.
    """
    confident = scores > 0  # (T, J)
    where = confident[..., None] if confident.any() else np.ones((1, 1, 1), bool)
    # Reductions under a mask rather than a copy of the confident points: (2,) each.
    low = np.min(keypoints, axis=(0, 1), where=where, initial=np.inf)
    high = np.max(keypoints, axis=(0, 1), where=where, initial=-np.inf)
    size = np.maximum(np.maximum(low + high, high - low), 1.0)
    return float(size[0]), float(size[1])


def check_keypoint_fps(fps: Any, limits: QueryLimits) -> float:
    """``fps`` of keypoints -> float in [min_keypoint_fps, max_keypoint_fps], or a 422."""
    value = _finite_number(fps)
    if value is None or not limits.min_keypoint_fps <= value <= limits.max_keypoint_fps:
        raise QueryFieldError(
            ("fps",),
            f"fps must be from {limits.min_keypoint_fps:g} to {limits.max_keypoint_fps:g} "
            f"frames per second, got {_describe_number(fps)}",
        )
    return value


def check_frame_size(size: Any, name: str, limits: QueryLimits) -> Optional[float]:
    """A frame ``width`` or ``height`` (None: derived later) -> float in [1, max px]."""
    if size is None:
        return None
    value = _finite_number(size)
    if value is None or not 1.0 <= value <= limits.max_coordinate_px:
        raise QueryFieldError(
            (name,),
            f"{name} must be from 1 to {limits.max_coordinate_px:g} pixels, got "
            f"{_describe_number(size)}",
        )
    return value


def check_keypoint_values(keypoints: np.ndarray, scores: np.ndarray, limits: QueryLimits) -> None:
    """Coordinates finite and within +-max_coordinate_px, scores finite and >= 0: else a
    422 naming the first joint at fault (``keypoints[t][j]``, ``scores[t][j]``)."""
    bound = limits.max_coordinate_px
    # (T, J); NaN compares False. Two bool arrays rather than a float copy (np.abs).
    bad = ~((keypoints >= -bound) & (keypoints <= bound)).all(axis=2)
    if bad.any():
        t, j = (int(i) for i in np.argwhere(bad)[0])
        raise QueryFieldError(
            ("keypoints", t, j),
            f"keypoints[{t}][{j}] holds a coordinate that is not a finite number within "
            f"+-{bound:g} pixels: [{format_number(keypoints[t, j, 0])}, "
            f"{format_number(keypoints[t, j, 1])}] (as float32)",
        )
    bad = ~(np.isfinite(scores) & (scores >= 0))
    if bad.any():
        t, j = (int(i) for i in np.argwhere(bad)[0])
        raise QueryFieldError(
            ("scores", t, j),
            f"scores[{t}][{j}] is {format_number(scores[t, j])}: scores must be finite and "
            ">= 0 (0 = missing joint)",
        )


def _finite_number(value: Any) -> Optional[float]:
    """A real, finite number as float, else None (bools, strings, NaN and inf are not)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _describe_number(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return f"a {type(value).__name__}"
    try:
        return format_number(value)
    except OverflowError:
        return "a number too large for a float"


def keypoint_features(
    keypoints: np.ndarray,
    fps: float,
    scores: Optional[np.ndarray] = None,
    width: Optional[float] = None,
    height: Optional[float] = None,
    limits: Optional[QueryLimits] = None,
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Keypoints (T, 17, 2) in pixels at ``fps`` -> pose features (T', 68) at POSE_FPS.

    ``scores`` (T, 17): confidence per joint, 0 = missing (default: all present). Missing
    frames are interpolated over gaps up to ``limits.max_gap_frames``. Returns the
    features and a description (frame size used, missing fraction). Values outside
    ``limits`` (see ``QueryLimits``) raise a ``QueryFieldError`` naming the field.
    """
    from dvamn.pose import KeypointTrack, NoPersonError, pose_sequence

    limits = limits or QueryLimits()
    keypoints = np.asarray(keypoints, np.float32)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_JOINTS, 2):
        raise QueryFieldError(
            ("keypoints",),
            f"keypoints must be [T][{NUM_JOINTS}][2], got {list(keypoints.shape)}",
        )
    scores = (
        np.ones(keypoints.shape[:2], np.float32)
        if scores is None
        else np.asarray(scores, np.float32)
    )
    if scores.shape != keypoints.shape[:2]:
        raise QueryFieldError(
            ("scores",),
            f"scores must be [T][{NUM_JOINTS}] like keypoints, got {list(scores.shape)}",
        )
    fps = check_keypoint_fps(fps, limits)
    width = check_frame_size(width, "width", limits)
    height = check_frame_size(height, "height", limits)
    check_keypoint_values(keypoints, scores, limits)
    track = KeypointTrack(keypoints=keypoints, scores=scores, fps=fps)
    check_duration(track.duration_s, limits, "the keypoint sequence")
    if not np.any(scores > 0):
        raise QueryError(422, "no person: every keypoint score is 0")
    derived = width is None or height is None
    if derived:
        guess_w, guess_h = frame_size_from_keypoints(keypoints, scores)
        width, height = width or guess_w, height or guess_h
    try:
        pose = pose_sequence(track, width, height, max_gap_frames=limits.max_gap_frames)
    except NoPersonError as error:
        raise QueryError(422, f"no person: {error}") from error
    features, missing_fraction = pose.features, pose.missing_fraction
    if not np.isfinite(features).all():  # bounded inputs give finite features: a backstop
        raise QueryFieldError(("keypoints",), "keypoints give non-finite pose features")
    return features.astype(np.float32), {
        "frames": int(len(features)),
        "width": float(width),
        "height": float(height),
        "frame_size": "derived from the keypoints' extent" if derived else "given",
        "missing_fraction": round(float(missing_fraction), 4),
        "pose_track": pose_track_arrays(pose.keypoints, pose.present),  # the ingress takes it out
    }


# An upload that is a pickle: named so, or starting as protocols 2-5 do (no video
# container starts with 0x80). Only the hardened AIST++ reader ever sees its bytes.
AIST_PICKLE_SUFFIX = ".pkl"
AIST_POSE_SOURCE = "keypoints:aist++"


def is_aist_pickle(data: bytes, name: str) -> bool:
    return name.lower().endswith(AIST_PICKLE_SUFFIX) or data[:1] == b"\x80"


def aist_pickle_features(
    data: bytes, name: str = "upload", limits: Optional[QueryLimits] = None
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """An uploaded AIST++ ``keypoints2d`` pickle -> pose features, as ``keypoint_features``.

    Its first camera view (c01) is read by the restricted reader of
    ``dvamn.pose.keypoint_files`` (``aist_keypoints_from_bytes``: every opcode checked
    before anything is unpickled, only numpy's array reconstruction resolved, to checking
    stand-ins; nothing in the file runs) with that reader's limits, then the query's
    (duration, values) as for any keypoints. A file it refuses is a 422 naming why.
    """
    from dvamn.pose import KeypointFileError, aist_keypoints_from_bytes

    started = time.perf_counter()
    try:
        track = aist_keypoints_from_bytes(data, name, view=0)
    except KeypointFileError as error:
        raise QueryError(422, f"cannot use {error}") from None
    features, description = keypoint_features(
        track.keypoints, track.fps, track.scores, track.width, track.height, limits
    )
    description["decode_pose_ms"] = round(1000 * (time.perf_counter() - started), 2)
    return features, description


class VideoPose:
    """Uploaded video bytes -> pose features of the main dancer; loads its model once.

    Args:
        pose: "rtmo" or "rtmpose" (``dvamn.pose.load_pose_estimator`` kinds).
        pose_model / pose_detector: ONNX path or URI (None: rtmlib's default URL).
        device: "auto", "cpu" or "cuda".
        num_threads: ONNX Runtime CPU threads and FFmpeg decoder threads: the replica's
            CPU share (None: each library's default, all cores).

    Refusals (``QueryError``): 413 for a video over a limit (frame size, duration, frame
    rate, decoded frames), 422 for one whose frames contradict its header (another size,
    or a size that changes mid-stream) or that shows nobody, 415 for one that is not
    usable video, and 503 when decoding and pose estimation outrun
    ``limits.video_timeout_s``: the request arrived whole (408 would blame the client's
    sending), the service ran out of the time it grants a query; a 503 tells clients
    and load balancers that the replica did not complete it and may be retried later.
    """

    def __init__(
        self,
        pose: str = "rtmo",
        pose_model: Optional[str] = None,
        pose_detector: Optional[str] = None,
        device: str = "auto",
        limits: Optional[QueryLimits] = None,
        frame_batch: int = POSE_FRAME_BATCH,
        num_threads: Optional[int] = None,
    ):
        from dvamn.pose import load_pose_estimator

        self.estimator = load_pose_estimator(
            kind=pose,
            model=pose_model,
            detector=pose_detector,
            device=device,
            num_threads=num_threads,
        )
        self.limits = limits or QueryLimits()
        self.frame_batch = frame_batch
        self.decode_threads = num_threads or 0  # 0: FFmpeg's default
        self.source = f"video:{getattr(self.estimator, 'name', pose)}"

    def __call__(
        self, data: bytes, name: str = "upload", deadline: Optional[float] = None
    ) -> Tuple[np.ndarray, Dict[str, Any]]:
        """The video file's bytes -> (features (T, 68) at POSE_FPS, description).

        ``deadline``: a ``time.monotonic()`` instant (default: ``limits.video_timeout_s``
        from now) past which the query is refused with a 503.
        """
        from dvamn.media import (
            InconsistentMediaError,
            MediaDeadlineError,
            MediaError,
            MediaLimitError,
            MediaReader,
        )
        from dvamn.pose import NoPersonError, pose_sequence

        started = time.perf_counter()
        limits = self.limits
        if deadline is None:
            deadline = time.monotonic() + limits.video_timeout_s
        out_of_time = QueryError(
            503,
            f"{name} could not be decoded and posed within the "
            f"{limits.video_timeout_s:g} s a video query may take: send a "
            "shorter or smaller video, or keypoints",
        )
        try:
            with MediaReader(
                data,
                name=name,
                require_audio=False,
                require_video=True,
                max_frame_pixels=limits.max_frame_pixels,
                max_duration_s=limits.max_query_s,
                max_fps=limits.max_video_fps,
                max_decoded_frames=limits.max_video_frames,
                deadline=deadline,
                decode_threads=self.decode_threads,
            ) as reader:
                info = reader.info
                check_duration(info.duration_s, limits, f"video {name}")
                per_frame = []
                for frames, _times_s in reader.frame_batches(self.frame_batch):
                    per_frame.extend(self.estimator(frames))
                    if time.monotonic() > deadline:
                        raise out_of_time
        except MediaDeadlineError as error:
            raise out_of_time from error
        except MediaLimitError as error:
            raise QueryError(413, f"cannot use {name} as a video: {error}") from error
        except InconsistentMediaError as error:
            raise QueryError(422, f"cannot use {name} as a video: {error}") from error
        except MediaError as error:
            raise QueryError(415, f"cannot use {name} as a video: {error}") from error
        decode_pose_ms = 1000 * (time.perf_counter() - started)
        try:
            pose = pose_sequence(
                per_frame, info.width, info.height, max_gap_frames=limits.max_gap_frames
            )
        except NoPersonError as error:
            raise QueryError(422, f"no person found in {name}: {error}") from error
        features, missing_fraction = pose.features, pose.missing_fraction
        return features, {
            "frames": int(len(features)),
            "width": int(info.width),
            "height": int(info.height),
            "duration_s": round(float(info.duration_s), 3),
            "missing_fraction": round(float(missing_fraction), 4),
            "decode_pose_ms": round(decode_pose_ms, 2),
            "pose_track": pose_track_arrays(
                pose.keypoints, pose.present
            ),  # the ingress takes it out
        }
