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
"""

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Tuple, Union

import numpy as np

from dvamn.constants import (
    EMBEDDING_DIM,
    POSE_FEATURES,
    POSE_FRAMES_PER_AUDIO_FRAME,
    WINDOW_POSE_FRAMES,
)
from dvamn.schema import PROVENANCE_COLUMNS, sequence_to_numpy

log = logging.getLogger(__name__)

FEATURE_COLUMNS = ["video_id", "pose", "audio_embedding", *PROVENANCE_COLUMNS]
DEFAULT_VAL_FRACTION = 0.2  # the paper's 4:1 split
_HASH_BUCKETS = 10_000


@dataclass
class Video:
    """One video's sequences in numpy: pose (T, 68), audio (T_a, 128)."""

    video_id: str
    pose: np.ndarray
    audio: np.ndarray


def is_validation(video_id: str, val_fraction: float = DEFAULT_VAL_FRACTION) -> bool:
    """Deterministic by-video split: the same answer on every machine, run and Python
    (sha1 of the id, not Python's salted ``hash``)."""
    bucket = int(hashlib.sha1(video_id.encode()).hexdigest()[:8], 16) % _HASH_BUCKETS
    return bucket < round(val_fraction * _HASH_BUCKETS)


def window_starts(
    num_pose_frames: int,
    num_audio_frames: int,
    window_pose_frames: int = WINDOW_POSE_FRAMES,
    stride_pose_frames: int = WINDOW_POSE_FRAMES // 2,
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
    stride_pose_frames: int = WINDOW_POSE_FRAMES // 2,
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
    return Video(
        str(row["video_id"]),
        sequence_to_numpy(row["pose"], POSE_FEATURES),
        sequence_to_numpy(row["audio_embedding"], EMBEDDING_DIM),
    )


def batch_to_videos(batch: Dict[str, np.ndarray]) -> List[Video]:
    """A numpy batch of extraction rows as Videos."""
    return [
        row_to_video({k: batch[k][i] for k in ("video_id", "pose", "audio_embedding")})
        for i in range(len(batch["video_id"]))
    ]


def read_features(features: Union[str, "ray.data.Dataset"]):  # noqa: F821
    """The extraction output as a Ray Dataset of the columns training needs.

    ``features``: a Parquet URI (directory, file, glob; local or ``s3://``), the extraction
    output root (its ``videos/`` is used), or a Dataset."""
    import ray

    from dvamn import storage

    if isinstance(features, str):
        uri = features
        videos_dir = storage.join(uri, "videos")
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
    return ds.select_columns(FEATURE_COLUMNS)


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


def windows_dataset(ds, window_pose_frames: int = WINDOW_POSE_FRAMES, stride_pose_frames: int = 20):
    """Dataset of windows (pose (120, 68), audio (60, 128) float32 columns) cut from a
    Dataset of videos; one flat_map call per video."""

    def windows(row: Dict[str, Any]) -> List[Dict[str, Any]]:
        # Only the tensors: a string column would stop iter_torch_batches.
        return [
            {"pose": w["pose"], "audio": w["audio"]}
            for w in cut_windows(row_to_video(row), window_pose_frames, stride_pose_frames)
        ]

    return ds.select_columns(["video_id", "pose", "audio_embedding"]).flat_map(windows)


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


def collect_videos(ds) -> List[Video]:
    """Every video of a Dataset as numpy (for retrieval, which needs whole soundtracks).
    Sorted by video_id so that candidate order is the same everywhere."""
    return collect_features(ds, check=False)[0]


def collect_features(ds, check: bool = True) -> Tuple[List[Video], Dict[str, str]]:
    """Every video of a features Dataset as numpy, sorted by video_id, and their single
    provenance (checked in the same pass unless ``check`` is False). One execution of the
    Dataset, for evaluation-sized data."""
    columns = ["video_id", "pose", "audio_embedding"]
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
