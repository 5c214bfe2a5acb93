"""What extraction does to one video, as plain Python (no Ray).

The Ray Data stages in ``extract.py`` and the single-process loop of
``benchmarks/extract.py`` call the same two steps:

1. ``VideoPoseExtractor(uri, video_id)``: one pass over the file decodes 10 fps frames and
   16 kHz mono audio; frames go through the pose model in batches (or a keypoint file is
   read instead); the main dancer is tracked, short gaps are filled, and the 68-value pose
   features are computed. Returns the pose part of the row and the waveform.
2. ``finish_rows(pose_parts, embedder)``: the audio embeddings of several videos in one
   batch, joined to their pose parts into rows of ``dvamn.schema.VIDEO_SCHEMA``.

Every failure becomes a ``VideoError`` naming the stage, so the job can record it as an
error row instead of stopping.
"""

import datetime
import logging
from typing import Any, Optional

import numpy as np

from dvamn.audio.onset import ONSET_KIND, onset_strength
from dvamn.constants import EMBEDDING_DIM, POSE_FPS, num_audio_frames, num_pose_frames
from dvamn.pipeline.config import ExtractConfig

log = logging.getLogger(__name__)


class VideoError(Exception):
    """A video that cannot be extracted; ``stage`` says where it failed."""

    def __init__(self, stage: str, message: str, error_type: str = "VideoError"):
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.error_type = error_type


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def error_row(uri: str, video_id: str, error: BaseException, stage: str = "unknown") -> dict:
    """A row of ``dvamn.schema.ERROR_SCHEMA`` for ``error``."""
    if isinstance(error, VideoError):
        stage, message, error_type = error.stage, error.message, error.error_type
    else:
        message, error_type = f"{type(error).__name__}: {error}", type(error).__name__
    return {
        "video_id": video_id,
        "uri": uri,
        "stage": stage,
        "message": message,
        "error_type": error_type,
        "failed_at": utc_now(),
    }


class VideoPoseExtractor:
    """Pose features and soundtrack of one video; loads its pose model once."""

    def __init__(self, config: ExtractConfig, num_threads: Optional[int] = None):
        """``num_threads``: ONNX Runtime threads (None: its default, all cores); a Ray
        actor passes its CPU share so that several actors do not oversubscribe a node."""
        from dvamn.pose import load_pose_estimator

        self.config = config
        self.decode_threads = num_threads or 0  # 0: FFmpeg's default
        if config.pose == "keypoints":
            self.estimator = None
            self.pose_model, self.pose_weights = "keypoints", "keypoint files"
        else:
            self.estimator = load_pose_estimator(
                kind=config.pose,
                model=config.pose_model,
                detector=config.pose_detector,
                device=config.device,
                num_threads=num_threads,
            )
            self.pose_model, self.pose_weights = self.estimator.name, self.estimator.weights

    def __call__(self, uri: str, video_id: str) -> dict[str, Any]:
        """Returns the pose part of the row plus ``waveform`` (float32 [N] at 16 kHz)."""
        from dvamn.media import MediaError, MediaReader
        from dvamn.pose import NoPersonError, pose_sequence

        config = self.config
        if uri.endswith("/"):
            raise VideoError(
                "input", f"{uri} ends in '/': it names a directory, not a video file", "NotAFile"
            )
        try:
            with MediaReader(
                uri,
                max_frame_pixels=config.max_frame_pixels,
                max_duration_s=config.max_duration_s,
                decode_threads=self.decode_threads,
            ) as reader:
                info = reader.info
                if info.duration_s < config.min_duration_s:
                    raise VideoError(
                        "input",
                        f"video is {info.duration_s:.1f} s long; at least "
                        f"{config.min_duration_s:.0f} s is needed for one training window",
                        "TooShort",
                    )
                num_frames = None
                if self.estimator is None:
                    waveform = reader.audio()
                    poses = self._keypoint_track(uri)
                    width = poses.width or info.width
                    height = poses.height or info.height
                    num_frames = num_pose_frames(info.duration_s)  # the video's, not the file's
                else:
                    poses = []  # FramePoses of each 10 fps frame
                    for frames, _times_s in reader.frame_batches(config.frame_batch_size):
                        poses.extend(self.estimator(frames))
                    waveform = reader.audio()
                    width, height = info.width, info.height
        except MediaError as error:
            # MediaError, MediaLimitError (too long, too large), InconsistentMediaError.
            raise VideoError("decode", str(error), type(error).__name__) from error
        try:
            pose = pose_sequence(
                poses, width, height, num_frames, max_gap_frames=config.max_gap_frames
            )
        except NoPersonError as error:
            raise VideoError("pose", f"nobody in any frame: {error}", "NoPerson") from error
        return self._pose_part(uri, video_id, info, pose, width, height, waveform)

    def _keypoint_track(self, uri: str):
        from dvamn.pose import KeypointFileError, load_keypoints_for_video

        try:
            return load_keypoints_for_video(uri, self.config.keypoints_dir, self.config.aist_view)
        except FileNotFoundError as error:
            raise VideoError("pose", str(error), "NoKeypointFile") from error
        except (KeypointFileError, ValueError, KeyError, OSError) as error:
            raise VideoError("pose", str(error), "BadKeypointFile") from error

    def _pose_part(self, uri, video_id, info, pose, width, height, waveform):
        return {
            "video_id": video_id,
            "uri": uri,
            "duration_s": float(info.duration_s),
            "width": int(width),
            "height": int(height),
            "pose_fps": float(POSE_FPS),
            "num_pose_frames": int(len(pose.features)),
            "pose": pose.features.astype(np.float32),
            "pose_confidence": pose.confidence.astype(np.float32),
            "missing_fraction": float(pose.missing_fraction),
            "pose_model": self.pose_model,
            "pose_weights": self.pose_weights,
            "waveform": np.asarray(waveform, dtype=np.float32),
        }


def finish_rows(pose_parts: list[dict], embedder) -> list[dict]:
    """Audio embeddings of several videos at once, joined into VIDEO_SCHEMA rows.

    Raises only when the whole batch fails; the caller then records every video of the
    batch as failed in stage "audio".
    """
    embeddings = embedder.embed([part["waveform"] for part in pose_parts])
    rows = []
    for part, embedding in zip(pose_parts, embeddings):
        row = {k: v for k, v in part.items() if k != "waveform"}
        expected = num_audio_frames(part["duration_s"])
        embedding = np.asarray(embedding, dtype=np.float32).reshape(-1, EMBEDDING_DIM)
        # The container's duration and the decoded audio can differ by a few ms; keep
        # exactly the frame count the timing convention promises, padding by repetition.
        if len(embedding) == 0:
            raise VideoError("audio", "the soundtrack is empty", "EmptyAudio")
        if len(embedding) < expected:
            pad = np.repeat(embedding[-1:], expected - len(embedding), axis=0)
            embedding = np.concatenate([embedding, pad])
        row["audio_embedding"] = embedding[:expected]
        row["num_audio_frames"] = int(expected)
        row["audio_embedding_kind"] = embedder.kind
        row["audio_weights"] = embedder.weights
        row["audio_onset"] = onset_strength(part["waveform"], int(part["num_pose_frames"]))
        row["audio_onset_kind"] = ONSET_KIND
        row["extracted_at"] = utc_now()
        rows.append(row)
    return rows


def process_video(
    uri: str, video_id: str, pose_extractor: VideoPoseExtractor, embedder
) -> tuple[Optional[dict], Optional[dict]]:
    """Both steps for one video: ``(row, None)`` on success, ``(None, error_row)`` else."""
    try:
        part = pose_extractor(uri, video_id)
    except Exception as error:  # noqa: BLE001 - every failure must become an error row
        return None, error_row(uri, video_id, error, stage="pose")
    try:
        return finish_rows([part], embedder)[0], None
    except Exception as error:  # noqa: BLE001
        return None, error_row(uri, video_id, error, stage="audio")
