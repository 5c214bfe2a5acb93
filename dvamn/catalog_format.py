"""The catalog's layout on storage, shared by the job that builds it
(``dvamn.pipeline.catalog``) and the service that reads it (``dvamn.serving``)::

    CATALOG/tracks/*.parquet   CATALOG_SCHEMA, one row per track
    CATALOG/errors/*.parquet   CATALOG_ERROR_SCHEMA, one row per input that failed
    CATALOG/manifest.json      sizes, embedding provenance, content version
"""

import hashlib
from typing import List

import numpy as np
import pyarrow as pa

from dvamn.constants import EMBEDDING_DIM

CATALOG_FORMAT = "dvamn-catalog/1"
TRACKS_DIR = "tracks"
ERRORS_DIR = "errors"
MANIFEST_FILE = "manifest.json"

CATALOG_SCHEMA = pa.schema(
    [
        ("track_id", pa.string()),  # path below MUSIC without extension, or the video_id
        ("title", pa.string()),  # the file's title tag, else its file name
        ("uri", pa.string()),
        ("duration_s", pa.float64()),
        ("num_audio_frames", pa.int32()),
        ("embedding", pa.list_(pa.list_(pa.float32(), EMBEDDING_DIM))),  # [T_a][128]
        ("embedding_sha256", pa.string()),  # of the float32 bytes: the catalog version's input
        ("audio_embedding_kind", pa.string()),
        ("audio_weights", pa.string()),
        ("source", pa.string()),  # "audio-file" or "extraction"
        ("cataloged_at", pa.string()),
    ]
)

CATALOG_ERROR_SCHEMA = pa.schema(
    [
        ("track_id", pa.string()),
        ("uri", pa.string()),
        ("stage", pa.string()),  # "read", "decode", "embed", "input"
        ("message", pa.string()),
        ("error_type", pa.string()),
        ("failed_at", pa.string()),
    ]
)


def embedding_sha256(embedding: np.ndarray) -> str:
    """SHA-256 (first 16 hex digits) of a [T, 128] embedding as contiguous float32."""
    data = np.ascontiguousarray(embedding, dtype=np.float32).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def catalog_version(track_ids: List[str], shas: List[str], kind: str, weights: str) -> str:
    """Content version: changes when any track, its embedding or the provenance changes."""
    digest = hashlib.sha256(f"{CATALOG_FORMAT}\n{kind}\n{weights}\n".encode())
    for track_id, sha in sorted(zip(track_ids, shas, strict=True)):
        digest.update(f"{track_id}\t{sha}\n".encode())
    return digest.hexdigest()[:12]
