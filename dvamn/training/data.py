"""Training data: extraction output -> per-video sequences -> 12 s windows, with Ray Data.

Input: the ``OUT/videos/`` Parquet of ``dvamn extract`` (``dvamn.schema.VIDEO_SCHEMA``), as
a URI or as the Dataset the pipeline function returns. One row per video, pose (T, 68) at
10 fps and audio embeddings (T_a, 128) at 5 Hz.

- Provenance: every row must come from the same pose model and audio embedding (the
  ``PROVENANCE_COLUMNS``); mixed features are refused with a message naming the values.
- Split by video: a video's fate is decided by a hash of its ``video_id`` (4:1 by
  default), so the split is the same on every machine and every run, and no validation
  window shares frames with a training one.
- Windows are cut at training time (``flat_map`` per video): 120 pose frames and the 60
  audio frames aligned with them (audio frame k belongs with pose frames 2k, 2k+1, see
  ``dvamn.constants``), every ``stride`` pose frames (even, so the audio stays aligned).
- Target scaling: targets stay in their own units in the data (quantised VGGish 0..255,
  or whatever the extraction wrote); the model standardises them per dimension with the
  training set's mean/std (``feature_statistics``, stored as model buffers), computes the
  loss there, and every reported loss/RMSE/MAE is converted back to the targets' own units
  (comparable with the paper's Table 1 for quantised VGGish).
- Hard negatives (the contrastive objective): each window can carry K target windows of
  its own video at other offsets, at least ``MIN_NEGATIVE_SHIFT_AUDIO_FRAMES`` away
  (``negatives`` (K, 60, 128) and ``negatives_valid`` (K,)), chosen by a seeded hash of
  the video and start, so runs repeat.
- Pose augmentation (``AugmentConfig``, ``augment_poses``): left-right mirroring, small
  rotation and scale jitter, dropped frames filled by inference's own gap filling
  (``dvamn.pose.tracking.fill_gaps``), and a frame or two of temporal jitter; applied to
  training batches only, with a generator seeded per run, epoch and worker.
"""

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from dvamn.constants import (
    EMBEDDING_DIM,
    NUM_JOINTS,
    POSE_FEATURES,
    POSE_FRAMES_PER_AUDIO_FRAME,
    WINDOW_POSE_FRAMES,
)
from dvamn.schema import PROVENANCE_COLUMNS, VIDEOS_DIR, sequence_to_numpy

log = logging.getLogger(__name__)

FEATURE_COLUMNS = ["video_id", "pose", "audio_embedding", *PROVENANCE_COLUMNS]
# Extraction writes it since issue 13; features made before lack it and still load.
ONSET_COLUMN = "audio_onset"
DEFAULT_VAL_FRACTION = 0.2  # the paper's 4:1 split
# Pose frames between the starts of consecutive windows (even: the audio stays aligned).
# Training cuts a window every 2 s; evaluation queries start every 6 s, so that queries
# of one video overlap by half a window at most.
TRAIN_STRIDE_POSE_FRAMES = 20
QUERY_STRIDE_POSE_FRAMES = WINDOW_POSE_FRAMES // 2
_HASH_BUCKETS = 10_000


@dataclass
class Video:
    """One video's sequences in numpy: pose (T, 68), audio (T_a, 128)."""

    video_id: str
    pose: np.ndarray
    audio: np.ndarray
    # (T,) the ``audio_onset`` channel at the pose rate, where the features have it.
    onset: Optional[np.ndarray] = None


def is_validation(video_id: str, val_fraction: float = DEFAULT_VAL_FRACTION) -> bool:
    """Deterministic by-video split: the same answer on every machine, run and Python
    (sha1 of the id, not Python's salted ``hash``)."""
    bucket = int(hashlib.sha1(video_id.encode()).hexdigest()[:8], 16) % _HASH_BUCKETS
    return bucket < round(val_fraction * _HASH_BUCKETS)


def window_starts(
    num_pose_frames: int,
    num_audio_frames: int,
    window_pose_frames: int = WINDOW_POSE_FRAMES,
    stride_pose_frames: int = TRAIN_STRIDE_POSE_FRAMES,
) -> List[int]:
    """Pose-frame starts of every full window that fits both sequences. Starts are even so
    that audio frame ``start // 2`` is the one aligned with pose frame ``start``."""
    if stride_pose_frames < POSE_FRAMES_PER_AUDIO_FRAME or stride_pose_frames % 2:
        raise ValueError(
            f"window stride must be an even number of pose frames, got {stride_pose_frames}"
        )
    window_audio = window_pose_frames // POSE_FRAMES_PER_AUDIO_FRAME
    usable = min(num_pose_frames, num_audio_frames * POSE_FRAMES_PER_AUDIO_FRAME)
    if usable < window_pose_frames or num_audio_frames < window_audio:
        return []
    return list(range(0, usable - window_pose_frames + 1, stride_pose_frames))


def cut_windows(
    video: Video,
    window_pose_frames: int = WINDOW_POSE_FRAMES,
    stride_pose_frames: int = TRAIN_STRIDE_POSE_FRAMES,
) -> Iterator[Dict[str, Any]]:
    """Windows of one video: dicts with pose (120, 68), audio (60, 128), video_id, start
    (pose frame)."""
    window_audio = window_pose_frames // POSE_FRAMES_PER_AUDIO_FRAME
    for start in window_starts(
        len(video.pose), len(video.audio), window_pose_frames, stride_pose_frames
    ):
        a = start // POSE_FRAMES_PER_AUDIO_FRAME
        yield {
            "pose": video.pose[start : start + window_pose_frames],
            "audio": video.audio[a : a + window_audio],
            "video_id": video.video_id,
            "start": start,
        }


def row_to_video(row: Dict[str, Any]) -> Video:
    onset = row.get(ONSET_COLUMN)
    return Video(
        str(row["video_id"]),
        sequence_to_numpy(row["pose"], POSE_FEATURES),
        sequence_to_numpy(row["audio_embedding"], EMBEDDING_DIM),
        None if onset is None else sequence_to_numpy(onset, 1).reshape(-1),
    )


def batch_to_videos(batch: Dict[str, np.ndarray]) -> List[Video]:
    """A numpy batch of extraction rows as Videos (with their onset channel if the batch
    has that column)."""
    keys = [k for k in ("video_id", "pose", "audio_embedding", ONSET_COLUMN) if k in batch]
    return [row_to_video({k: batch[k][i] for k in keys}) for i in range(len(batch["video_id"]))]


def read_features(features: Union[str, "ray.data.Dataset"]):  # noqa: F821
    """The extraction output as a Ray Dataset of the columns training needs.

    ``features``: a Parquet URI (directory, file, glob; local or ``s3://``), the extraction
    output root (its ``videos/`` is used), or a Dataset."""
    import ray

    from dvamn import storage

    if isinstance(features, str):
        uri = features
        videos_dir = storage.join(uri, VIDEOS_DIR)
        if storage.exists(videos_dir):
            uri = videos_dir
        if not storage.exists(uri) and not any(ch in uri for ch in "*?["):
            raise FileNotFoundError(
                f"features {features!r} not found: pass the --out of `dvamn extract` "
                "(or its videos/ directory)"
            )
        ds = ray.data.read_parquet(uri)
    else:
        ds = features
    missing = [c for c in FEATURE_COLUMNS if c not in ds.schema().names]
    if missing:
        raise ValueError(
            f"features {features!r} lack columns {missing}: expected the Parquet written by "
            "`dvamn extract` (dvamn.schema.VIDEO_SCHEMA)"
        )
    optional = [ONSET_COLUMN] if ONSET_COLUMN in ds.schema().names else []
    return ds.select_columns(FEATURE_COLUMNS + optional)


def _provenance_of_batch(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    combos = sorted(
        {tuple(str(batch[c][i]) for c in PROVENANCE_COLUMNS) for i in range(len(batch["video_id"]))}
    )
    return {
        c: np.array([combo[j] for combo in combos], dtype=object)
        for j, c in enumerate(PROVENANCE_COLUMNS)
    }


def _single_provenance(combos: List[Tuple[str, ...]]) -> Dict[str, str]:
    if not combos:
        raise ValueError("the features contain no videos")
    if len(combos) > 1:
        listing = "; ".join(
            ", ".join(f"{c}={v!r}" for c, v in zip(PROVENANCE_COLUMNS, combo)) for combo in combos
        )
        raise ValueError(
            f"features mix {len(combos)} different extraction settings ({listing}); a model "
            "must be trained on one pose model and one audio embedding: re-extract with the "
            "same --pose/--audio settings or train on one output directory"
        )
    return dict(zip(PROVENANCE_COLUMNS, combos[0]))


def provenance_of_rows(rows: List[Dict[str, Any]]) -> Dict[str, str]:
    """The single provenance of extraction rows (dicts); ValueError naming a mix."""
    return _single_provenance(sorted({tuple(str(r[c]) for c in PROVENANCE_COLUMNS) for r in rows}))


def check_provenance(ds) -> Dict[str, str]:
    """The single (pose_model, audio_embedding_kind, audio_weights) of a features Dataset.
    Raises ValueError naming the differing values when rows were made by different models."""
    rows = (
        ds.select_columns(["video_id", *PROVENANCE_COLUMNS])
        .map_batches(_provenance_of_batch, batch_format="numpy")
        .take_all()
    )
    return provenance_of_rows(rows)


def split_by_video(ds, val_fraction: float = DEFAULT_VAL_FRACTION) -> Tuple[Any, Any]:
    """(train, validation) Datasets of videos, split by ``is_validation``."""

    def keep(table, want_val: bool):
        # Arrow batches: filtering keeps the nested lists as they are (no numpy round trip).
        import pyarrow as pa

        ids = table.column("video_id").to_pylist()
        return table.filter(
            pa.array([is_validation(str(v), val_fraction) == want_val for v in ids])
        )

    train = ds.map_batches(keep, fn_kwargs={"want_val": False}, batch_format="pyarrow")
    val = ds.map_batches(keep, fn_kwargs={"want_val": True}, batch_format="pyarrow")
    return train, val


# Hard negatives lie at least this far from the true offset: 0.6 s, beyond the 0.5 s
# within which evaluation counts an offset as found.
MIN_NEGATIVE_SHIFT_AUDIO_FRAMES = 3


def hard_negative_windows(
    video: Video,
    start: int,
    count: int,
    seed: int = 0,
    window_pose_frames: int = WINDOW_POSE_FRAMES,
) -> Tuple[np.ndarray, np.ndarray]:
    """``count`` target windows of ``video``'s own audio at other offsets than the window
    at pose frame ``start``: (count, A, 128) float32 and a validity mask (count,) float32
    (0 where the video has too few other offsets; those rows repeat the true window).
    Offsets are drawn without replacement by a generator seeded with ``seed``, the video
    id and the start."""
    starts, valid = hard_negative_starts(video, start, count, seed, window_pose_frames)
    return _audio_windows(video, starts, window_pose_frames), valid


def _audio_windows(video: Video, starts: List[int], window_pose_frames: int) -> np.ndarray:
    """(len(starts), A, 128) float32: the video's audio windows at these audio frames."""
    window_audio = window_pose_frames // POSE_FRAMES_PER_AUDIO_FRAME
    return np.stack([video.audio[a : a + window_audio] for a in starts]).astype(np.float32)


def hard_negative_starts(
    video: Video,
    start: int,
    count: int,
    seed: int = 0,
    window_pose_frames: int = WINDOW_POSE_FRAMES,
) -> Tuple[List[int], np.ndarray]:
    """The audio-frame starts (count,) of ``hard_negative_windows`` and its validity mask."""
    window_audio = window_pose_frames // POSE_FRAMES_PER_AUDIO_FRAME
    true = start // POSE_FRAMES_PER_AUDIO_FRAME
    candidates = [
        a
        for a in range(len(video.audio) - window_audio + 1)
        if abs(a - true) >= MIN_NEGATIVE_SHIFT_AUDIO_FRAMES
    ]
    digest = int(hashlib.sha1(f"{seed}:{video.video_id}:{start}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(digest)
    chosen = list(rng.choice(candidates, min(count, len(candidates)), replace=False))
    valid = np.zeros(count, np.float32)
    valid[: len(chosen)] = 1.0
    return [int(a) for a in chosen] + [true] * (count - len(chosen)), valid


def windows_dataset(
    ds,
    window_pose_frames: int = WINDOW_POSE_FRAMES,
    stride_pose_frames: int = TRAIN_STRIDE_POSE_FRAMES,
    hard_negatives: int = 0,
    seed: int = 0,
    with_onset: bool = False,
):
    """Dataset of windows (pose (120, 68), audio (60, 128) float32 columns) cut from a
    Dataset of videos; one flat_map call per video. With ``hard_negatives`` K > 0 also
    ``negatives`` (K, 60, 128) and ``negatives_valid`` (K,) (``hard_negative_windows``).
    With ``with_onset`` (an onset head's target) also ``onset`` (120,): the video's
    ``audio_onset`` as the rhythm term compares it (``dvamn.scoring.onset_target``), and
    with hard negatives ``negatives_onset`` (K, 120) at their offsets."""

    def windows(row: Dict[str, Any]) -> List[Dict[str, Any]]:
        # Only the tensors: a string column would stop iter_torch_batches.
        video = row_to_video(row)
        onset = _onset_series(video, window_pose_frames) if with_onset else None
        out = []
        for w in cut_windows(video, window_pose_frames, stride_pose_frames):
            item = {"pose": w["pose"], "audio": w["audio"]}
            if onset is not None:
                item["onset"] = onset[w["start"] : w["start"] + window_pose_frames]
            if hard_negatives > 0:
                starts, item["negatives_valid"] = hard_negative_starts(
                    video, w["start"], hard_negatives, seed, window_pose_frames
                )
                item["negatives"] = _audio_windows(video, starts, window_pose_frames)
                if onset is not None:
                    item["negatives_onset"] = np.stack(
                        [onset[2 * a : 2 * a + window_pose_frames] for a in starts]
                    )
            out.append(item)
        return out

    # Training checks that the column exists (``dvamn.training.train``) before this runs.
    columns = ["video_id", "pose", "audio_embedding"] + ([ONSET_COLUMN] if with_onset else [])
    return ds.select_columns(columns).flat_map(windows)


def _onset_series(video: Video, window_pose_frames: int) -> np.ndarray:
    """The video's onset target (``dvamn.scoring.onset_target``) as float32, zero-padded to
    cover every window of its pose frames."""
    from dvamn.scoring import onset_target

    if video.onset is None:
        raise ValueError(f"video {video.video_id!r} has no {ONSET_COLUMN} channel")
    series = onset_target(video.onset).astype(np.float32)
    need = max(len(video.pose), 2 * len(video.audio)) + window_pose_frames
    return np.pad(series, (0, max(0, need - len(series))))


# ---------------------------------------------------------------------------------------------
# Pose augmentation

# COCO-17 joints after a left-right mirror: nose stays, each left joint trades with its
# right twin (eyes 1/2, ears 3/4, shoulders 5/6, elbows 7/8, wrists 9/10, hips 11/12,
# knees 13/14, ankles 15/16).
COCO_MIRROR = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)


@dataclass
class AugmentConfig:
    """Pose augmentation of training windows; the defaults do nothing (the paper)."""

    mirror: float = 0.0  # probability of a left-right mirror per window
    rotate_deg: float = 0.0  # rotation uniform in +-this many degrees (image plane)
    scale: float = 0.0  # scale factor uniform in 1 +- this
    drop_frames: float = 0.0  # fraction of frames where the dancer is lost (then gap-filled)
    time_jitter: int = 0  # pose shifted against the audio by up to this many frames

    def __post_init__(self) -> None:
        for name in ("mirror", "drop_frames"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"augmentation {name} must be in [0, 1], got {getattr(self, name)}"
                )
        if not 0.0 <= self.rotate_deg <= 45.0:
            raise ValueError(f"augmentation rotate_deg must be in [0, 45], got {self.rotate_deg}")
        if not 0.0 <= self.scale < 1.0:
            raise ValueError(f"augmentation scale must be in [0, 1), got {self.scale}")
        if not 0 <= self.time_jitter <= 10:
            raise ValueError(
                f"augmentation time_jitter must be 0..10 frames, got {self.time_jitter}"
            )

    @property
    def active(self) -> bool:
        return any((self.mirror, self.rotate_deg, self.scale, self.drop_frames, self.time_jitter))


def _joint_xy(pose: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(…, 68) -> normalised (…, 17, 2) and motion (…, 17, 2) views' copies."""
    lead = pose.shape[:-1]
    half = 2 * NUM_JOINTS
    return (
        pose[..., :half].reshape(*lead, NUM_JOINTS, 2).copy(),
        pose[..., half:].reshape(*lead, NUM_JOINTS, 2).copy(),
    )


def _join(normalised: np.ndarray, motion: np.ndarray) -> np.ndarray:
    lead = normalised.shape[:-2]
    return np.concatenate(
        [normalised.reshape(*lead, 2 * NUM_JOINTS), motion.reshape(*lead, 2 * NUM_JOINTS)], -1
    ).astype(np.float32)


def mirror_poses(pose: np.ndarray) -> np.ndarray:
    """Left-right mirror of pose features (…, 68): x of the normalised pose (centred on the
    hips) and of the motion negated, COCO left/right joints swapped. Its own inverse."""
    normalised, motion = _joint_xy(np.asarray(pose, np.float32))
    perm = list(COCO_MIRROR)
    normalised, motion = normalised[..., perm, :], motion[..., perm, :]
    normalised[..., 0] *= -1.0
    motion[..., 0] *= -1.0
    return _join(normalised, motion)


def drop_and_fill(pose: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Pose features (T, 68) of a window as they would be had the dancer been lost in the
    frames where ``present`` (T,) is False, filled by inference's own ``fill_gaps``.

    Motion: each joint's track (up to its starting point, which motion does not keep) is
    rebuilt from the motion, filled, and differenced again; ``fill_gaps`` interpolates
    every coordinate linearly, so this is exactly the motion of the filled keypoints. The
    normalised pose of a lost frame is the same interpolation of the normalised poses
    around it (the filled keypoints' own normalisation differs from it only as much as
    the body's centre and size change across the gap)."""
    from dvamn.pose.tracking import fill_gaps

    if present.all() or not present.any():
        return pose
    normalised, motion = _joint_xy(pose)
    t = len(pose)
    ones = np.ones((t + 1, NUM_JOINTS), np.float32)
    # Each joint's position / frame height, less its first: Q_0 = 0, Q_{i+1} = Q_i + M_i.
    points = np.zeros((t + 1, NUM_JOINTS, 2), np.float64)
    points[1:] = np.cumsum(motion.astype(np.float64), axis=0)
    present_ext = np.append(present, True)  # the frame after the window stays
    filled, _, _ = fill_gaps(points.astype(np.float32), ones, present_ext)
    filled = filled.astype(np.float64)
    motion = (filled[1:] - filled[:-1]).astype(np.float32)
    normalised = fill_gaps(normalised, ones[:t], present)[0]
    return _join(normalised, motion)


def augment_poses(pose: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """A batch of training windows' pose features (B, T, 68), augmented as ``cfg`` says
    (each window drawn independently from ``rng``). Returns a new float32 array."""
    out = np.array(pose, np.float32, copy=True)
    b, t, _ = out.shape
    for i in range(b):
        x = out[i]
        if cfg.time_jitter:
            shift = int(rng.integers(-cfg.time_jitter, cfg.time_jitter + 1))
            x = x[np.clip(np.arange(t) + shift, 0, t - 1)]
        if cfg.drop_frames:
            x = drop_and_fill(x, _present_mask(t, cfg.drop_frames, rng))
        if cfg.mirror and rng.random() < cfg.mirror:
            x = mirror_poses(x)
        if cfg.rotate_deg or cfg.scale:
            angle = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
            factor = rng.uniform(1.0 - cfg.scale, 1.0 + cfg.scale)
            c, s = math.cos(angle) * factor, math.sin(angle) * factor
            transform = np.array([[c, -s], [s, c]], np.float32)  # (2, 2), rotation x scale
            normalised, motion = _joint_xy(x)
            x = _join(normalised @ transform.T, motion @ transform.T)
        out[i] = x
    return out


def _present_mask(t: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(T,) bool: False in runs of 1-3 frames covering about ``fraction`` of the window."""
    present = np.ones(t, bool)
    for _ in range(rng.binomial(t, fraction / 2.0)):  # runs of 2 frames on average
        start = int(rng.integers(0, t))
        present[start : start + int(rng.integers(1, 4))] = False
    return present


@dataclass
class FeatureSurvey:
    """What training needs to know about a features Dataset before it starts: its single
    provenance, the split's video counts and the training set's per-feature statistics
    (input_mean, input_std (68,), target_mean, target_std (128,), in the data's own units)."""

    provenance: Dict[str, str]
    num_train_videos: int
    num_val_videos: int
    stats: Dict[str, np.ndarray]


def _survey_batch(batch: Dict[str, np.ndarray], val_fraction: float) -> Dict[str, np.ndarray]:
    """One output row per batch: its provenance combinations (JSON), split counts and the
    frame count, sum and sum of squares of its training videos' features."""
    import json

    combos = [tuple(map(str, combo)) for combo in zip(*_provenance_of_batch(batch).values())]
    videos = batch_to_videos(batch)
    train = [v for v in videos if not is_validation(v.video_id, val_fraction)]
    out: Dict[str, np.ndarray] = {
        "provenance": np.array([json.dumps(combos)]),
        "num_train": np.array([len(train)]),
        "num_val": np.array([len(videos) - len(train)]),
    }
    for prefix, width, attr in (("pose", POSE_FEATURES, "pose"), ("audio", EMBEDDING_DIM, "audio")):
        frames = [getattr(v, attr).astype(np.float64) for v in train]
        x = np.concatenate(frames) if frames else np.zeros((0, width))
        out[f"{prefix}_n"] = np.array([len(x)])
        out[f"{prefix}_s"] = x.sum(0)[None]  # (1, width)
        out[f"{prefix}_ss"] = (x * x).sum(0)[None]
    return out


def survey_features(ds, val_fraction: float = DEFAULT_VAL_FRACTION) -> FeatureSurvey:
    """One parallel pass over a features Dataset: provenance (refusing a mix, see
    ``check_provenance``), split counts and training statistics."""
    import json

    parts = ds.map_batches(
        _survey_batch, fn_kwargs={"val_fraction": val_fraction}, batch_format="numpy"
    ).take_all()
    combos = sorted({tuple(c) for p in parts for c in json.loads(p["provenance"])})
    provenance = _single_provenance(combos)
    stats = {}
    for key, prefix in (("input", "pose"), ("target", "audio")):
        n = sum(int(p[f"{prefix}_n"]) for p in parts)
        if n == 0:
            break
        total = sum(np.asarray(p[f"{prefix}_s"], np.float64) for p in parts)
        total_sq = sum(np.asarray(p[f"{prefix}_ss"], np.float64) for p in parts)
        mean = total / n
        stats[f"{key}_mean"] = mean.astype(np.float32)
        stats[f"{key}_std"] = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0)).astype(
            np.float32
        )
    return FeatureSurvey(
        provenance,
        sum(int(p["num_train"]) for p in parts),
        sum(int(p["num_val"]) for p in parts),
        stats,
    )


def collect_features(ds, check: bool = True) -> Tuple[List[Video], Dict[str, str]]:
    """Every video of a features Dataset as numpy, sorted by video_id, and their single
    provenance (checked in the same pass unless ``check`` is False). One execution of the
    Dataset, for evaluation-sized data."""
    columns = ["video_id", "pose", "audio_embedding"]
    if ONSET_COLUMN in ds.schema().names:
        columns.append(ONSET_COLUMN)
    if check:
        columns += list(PROVENANCE_COLUMNS)
    videos: List[Video] = []
    combos = set()
    for batch in ds.select_columns(columns).iter_batches(batch_format="numpy", batch_size=64):
        videos.extend(batch_to_videos(batch))
        if check:
            combos |= {
                tuple(str(batch[c][i]) for c in PROVENANCE_COLUMNS)
                for i in range(len(batch["video_id"]))
            }
    provenance = _single_provenance(sorted(combos)) if check else {}
    return sorted(videos, key=lambda v: v.video_id), provenance
