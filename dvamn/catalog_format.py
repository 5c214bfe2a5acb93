"""The catalog's layout on storage, shared by the job that builds it
(``dvamn.pipeline.catalog``) and the service that reads it (``dvamn.serving``)::

    CATALOG/CURRENT                           the current version's ID (one line)
    CATALOG/versions/ID/tracks/*.parquet      CATALOG_SCHEMA, one row per track
    CATALOG/versions/ID/errors/*.parquet      CATALOG_ERROR_SCHEMA, one row per failed input
    CATALOG/versions/ID/manifest.json         counts, embedding provenance, content version

Every build writes a new version directory and never touches the others. Its manifest is
written last: a version without one is incomplete (a build that failed or is still
running) and is never loaded. Only then is ``CURRENT`` replaced, in one atomic write, so
that a reader sees the old version or the new one, never a part; the old version stays
readable until the new one is current (and after, until the build's retention removes
it). IDs sort by build time (``20261201T213500123456Z-1a2b3c``).
"""

import datetime as dt
import hashlib
import re
import secrets
from typing import List, Optional, Tuple

import numpy as np
import pyarrow as pa

from dvamn import storage
from dvamn.constants import EMBEDDING_DIM

CATALOG_FORMAT = "dvamn-catalog/1"
TRACKS_DIR = "tracks"
ERRORS_DIR = "errors"
MANIFEST_FILE = "manifest.json"
VERSIONS_DIR = "versions"
CURRENT_FILE = "CURRENT"
_VERSION_ID = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{6}")

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
        # Whether `uri` held a decodable audio stream when the track was cataloged: what
        # GET /tracks/{id}/audio plays (dvamn.serving.audio_segments).
        ("audio_playable", pa.bool_()),
        ("cataloged_at", pa.string()),
        # [2 T_a] onset strength at the pose rate (dvamn.audio.onset), for the "+onset"
        # scorings' rhythm term; null in catalogs built before it existed.
        ("audio_onset", pa.list_(pa.float32())),
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


def new_version_id() -> str:
    """A fresh version ID: the UTC build time (so IDs sort by age) and 6 random hex digits."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{now}-{secrets.token_hex(3)}"


def is_version_id(text: str) -> bool:
    return bool(_VERSION_ID.fullmatch(text))


def version_uri(root: str, version_id: str) -> str:
    """``CATALOG/versions/ID``: where version ``version_id`` of the catalog at ``root`` lives."""
    if not is_version_id(version_id):
        raise ValueError(f"{version_id!r} is not a catalog version ID")
    return storage.join(root, VERSIONS_DIR, version_id)


def read_current(root: str) -> Optional[str]:
    """The ID that ``CATALOG/CURRENT`` names, or None when the catalog has none yet.

    Raises ``ValueError`` when the pointer holds something other than a version ID (the
    pointer is data read from storage: it is checked before it becomes part of a path).
    """
    pointer = storage.join(root, CURRENT_FILE)
    try:
        with storage.open_uri(pointer, "rb") as f:
            text = f.read(256).decode("ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    if not is_version_id(text):
        raise ValueError(f"{pointer} does not name a catalog version (it holds {text[:40]!r})")
    return text


def publish_version(root: str, version_id: str) -> None:
    """Make ``version_id`` the current version of the catalog at ``root`` (one atomic write)."""
    version_uri(root, version_id)  # checks the ID
    storage.write_bytes_atomic(storage.join(root, CURRENT_FILE), f"{version_id}\n".encode())


def list_versions(root: str) -> List[str]:
    """IDs of the version directories below ``root``, oldest first (complete or not)."""
    fs, path = storage.filesystem(storage.join(root, VERSIONS_DIR))
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if is_version_id(n))


def resolve_catalog(uri: str) -> Tuple[str, str, str]:
    """(root, version ID, version directory) of a catalog URI.

    ``uri`` is a catalog root (its ``CURRENT`` version is taken) or one version directory
    (``CATALOG/versions/ID``: serves that version whatever is current). Raises
    ``FileNotFoundError`` naming the URI and the command that builds a catalog when there
    is none, or when the catalog was written in the layout of an older dvamn.
    """
    trimmed = uri.rstrip("/")
    parent, _, name = trimmed.rpartition("/")
    if is_version_id(name) and parent.rpartition("/")[2] == VERSIONS_DIR:
        return parent.rpartition("/")[0], name, trimmed
    current = read_current(trimmed)
    if current is not None:
        return trimmed, current, version_uri(trimmed, current)
    if storage.exists(storage.join(trimmed, TRACKS_DIR)):
        raise FileNotFoundError(
            f"{uri} is a catalog in the layout of an older dvamn (tracks/ without versions/ "
            f"and {CURRENT_FILE}); rebuild it with `dvamn catalog MUSIC --out {uri}`"
        )
    raise FileNotFoundError(
        f"{uri} is not a catalog: it has no {CURRENT_FILE} version; build one with "
        "`dvamn catalog MUSIC --out CATALOG`"
    )
