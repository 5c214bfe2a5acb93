"""The Parquet tables that connect the stages, defined once.

``OUT/videos/`` (one row per extracted video) is written by ``dvamn.pipeline`` and read by
training, evaluation and the catalog; ``OUT/errors/`` holds one row per input that failed.
Sequences are nested lists ([T][68], [T_a][128]) so that any Parquet reader (pyarrow,
pandas, Spark, DuckDB) gets them without Ray-specific extension types.
"""

from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pyarrow as pa

from dvamn.constants import EMBEDDING_DIM, POSE_FEATURES

# An extraction output's layout: OUT/videos/*.parquet (VIDEO_SCHEMA), OUT/errors/*.parquet
# (ERROR_SCHEMA), OUT/manifest.json (counts, options, versions); OUT/unreadable/ holds
# parts a rerun could not read, set aside (never deleted) while their videos are redone.
VIDEOS_DIR = "videos"
ERRORS_DIR = "errors"
MANIFEST_FILE = "manifest.json"
UNREADABLE_DIR = "unreadable"

VIDEO_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),  # unique within one extraction: path relative to INPUT
        ("uri", pa.string()),
        ("duration_s", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("pose_fps", pa.float32()),
        ("num_pose_frames", pa.int32()),
        ("pose", pa.list_(pa.list_(pa.float32(), POSE_FEATURES))),  # [T][68]
        ("pose_confidence", pa.list_(pa.float32())),  # [T] mean keypoint score, 0 where missing
        ("missing_fraction", pa.float32()),  # frames without the dancer before interpolation
        ("num_audio_frames", pa.int32()),
        ("audio_embedding", pa.list_(pa.list_(pa.float32(), EMBEDDING_DIM))),  # [T_a][128]
        # [T] onset strength at the pose rate (dvamn.audio.onset): the music's timing,
        # which the 0.96 s embeddings blur; for every embedding kind.
        ("audio_onset", pa.list_(pa.float32())),
        ("pose_model", pa.string()),  # e.g. "rtmo", "yolox+rtmpose", "keypoints"
        ("pose_weights", pa.string()),  # where the weights came from + sha256 prefix
        ("audio_embedding_kind", pa.string()),  # "vggish", "vggish-raw", "logmel"
        ("audio_weights", pa.string()),
        ("audio_onset_kind", pa.string()),  # how audio_onset was computed (ONSET_KIND)
        ("extracted_at", pa.string()),  # ISO-8601 UTC
    ]
)

ERROR_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("stage", pa.string()),  # "input", "decode", "pose", "audio", "write"
        ("message", pa.string()),
        ("error_type", pa.string()),
        ("failed_at", pa.string()),
    ]
)

# The columns that say which models made the features; training and the catalog refuse
# to mix rows that differ in these.
PROVENANCE_COLUMNS = ("pose_model", "audio_embedding_kind", "audio_weights")


def _column(name: str, values: list, field: pa.Field) -> pa.Array:
    if pa.types.is_list(field.type) and pa.types.is_fixed_size_list(field.type.value_type):
        width = field.type.value_type.list_size
        flat = [np.asarray(v, dtype=np.float32).reshape(-1, width) for v in values]
        offsets = np.zeros(len(flat) + 1, dtype=np.int32)
        offsets[1:] = np.cumsum([len(f) for f in flat])
        inner = pa.FixedSizeListArray.from_arrays(
            pa.array(np.concatenate(flat).reshape(-1) if flat else np.zeros(0, np.float32)),
            width,
        )
        return pa.ListArray.from_arrays(pa.array(offsets), inner)
    if pa.types.is_list(field.type):
        flat = [np.asarray(v, dtype=np.float32).reshape(-1) for v in values]
        offsets = np.zeros(len(flat) + 1, dtype=np.int32)
        offsets[1:] = np.cumsum([len(f) for f in flat])
        values_array = pa.array(np.concatenate(flat) if flat else np.zeros(0, np.float32))
        return pa.ListArray.from_arrays(pa.array(offsets), values_array)
    return pa.array(values, type=field.type)


def rows_to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table of ``schema`` from dict rows (numpy arrays allowed for sequences)."""
    rows = list(rows)
    columns = [_column(f.name, [r[f.name] for r in rows], f) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def sequence_to_numpy(column_value: Any, width: int) -> np.ndarray:
    """A nested-list cell ([T][width]) as a float32 array of shape (T, width)."""
    if isinstance(column_value, np.ndarray) and column_value.dtype != object:
        return column_value.astype(np.float32).reshape(-1, width)
    if isinstance(column_value, pa.Scalar):
        column_value = column_value.as_py()
    if len(column_value) == 0:
        return np.zeros((0, width), np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in column_value]).reshape(-1, width)


def column_sequences(table: pa.Table, name: str, width: Optional[int] = None) -> list[np.ndarray]:
    """Every cell of a list column as a float32 array: [T] or, with ``width``, [T, width].

    Works on the flat Arrow buffers (no per-element Python conversion).
    """
    column = table.column(name).combine_chunks()
    if isinstance(column, pa.ChunkedArray):  # an empty table
        column = pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], column.type)
    offsets = column.offsets.to_numpy()
    values = column.values
    if pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    step = width or 1
    out = []
    for start, stop in zip(offsets[:-1], offsets[1:]):
        cell = flat[start * step : stop * step]
        out.append(cell.reshape(-1, width) if width else cell)
    return out
