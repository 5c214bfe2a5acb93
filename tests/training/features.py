"""Small extraction outputs for training tests, written with the real Parquet schema.

The audio of each video is a fixed nonlinear function of its own poses (plus a per-video
offset), so a network can learn it and retrieval has something to find."""

import os
from typing import Optional

import numpy as np
import pyarrow.parquet as pq

from dvamn.audio.onset import ONSET_KIND
from dvamn.constants import EMBEDDING_DIM, POSE_FEATURES
from dvamn.schema import VIDEO_SCHEMA, rows_to_table


def make_video_row(
    video_id: str,
    num_pose_frames: int,
    rng: np.random.Generator,
    mixing: np.ndarray,
    audio_kind: str = "logmel",
) -> dict:
    """One VIDEO_SCHEMA row: smooth random poses (T, 68) and audio (T // 2, 128) computed
    from them, on a 0..255 scale like quantised VGGish."""
    t = np.arange(num_pose_frames)[:, None] / 10.0
    freqs = rng.uniform(0.2, 2.0, size=(1, POSE_FEATURES))
    phases = rng.uniform(0, 2 * np.pi, size=(1, POSE_FEATURES))
    pose = np.sin(2 * np.pi * freqs * t + phases) + 0.1 * rng.normal(
        size=(num_pose_frames, POSE_FEATURES)
    )
    pairs = pose[: 2 * (num_pose_frames // 2)].reshape(-1, 2 * POSE_FEATURES)  # (T_a, 136)
    audio = 127.5 + 100.0 * np.tanh(pairs @ mixing)  # (T_a, 128)
    return {
        "video_id": video_id,
        "uri": f"memory://{video_id}.mp4",
        "duration_s": num_pose_frames / 10.0,
        "width": 640,
        "height": 480,
        "pose_fps": 10.0,
        "num_pose_frames": num_pose_frames,
        "pose": pose.astype(np.float32),
        "pose_confidence": np.ones(num_pose_frames, np.float32),
        "missing_fraction": 0.0,
        "num_audio_frames": len(audio),
        "audio_embedding": audio.astype(np.float32),
        "pose_model": "keypoints",
        "pose_weights": "",
        "audio_embedding_kind": audio_kind,
        "audio_weights": "",
        "audio_onset": np.abs(rng.normal(size=num_pose_frames)).astype(np.float32),
        "audio_onset_kind": ONSET_KIND,
        "extracted_at": "2026-01-01T00:00:00Z",
    }


def write_features(
    out_dir: str,
    num_videos: int = 16,
    num_pose_frames: int = 200,
    seed: int = 0,
    audio_kind: str = "logmel",
    file_name: Optional[str] = None,
    nan_pose: bool = False,
) -> str:
    """Write ``out_dir/videos/<file>.parquet`` and return ``out_dir``. ``nan_pose`` puts a
    NaN in every video's poses (to test that training stops)."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(1234).normal(size=(2 * POSE_FEATURES, EMBEDDING_DIM)) / 6.0
    rows = [
        make_video_row(f"video_{seed}_{i:03d}", num_pose_frames, rng, mixing, audio_kind)
        for i in range(num_videos)
    ]
    if nan_pose:
        for row in rows:
            row["pose"][5, 3] = np.nan
    videos = os.path.join(out_dir, "videos")
    os.makedirs(videos, exist_ok=True)
    pq.write_table(
        rows_to_table(rows, VIDEO_SCHEMA),
        os.path.join(videos, file_name or f"part-{seed}.parquet"),
    )
    return out_dir
