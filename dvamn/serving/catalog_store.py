"""A built catalog loaded into memory for matching: track metadata and packed embeddings.

Embeddings of every track are concatenated into one float32 array ``(sum T_a, 128)`` with
``offsets`` (``N + 1``) marking where each track starts, so that 10,000 tracks are one
allocation, not 10,000 Python objects; ``track_embedding(i)`` is a view.
"""

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dvamn import storage
from dvamn.catalog_format import (
    CATALOG_FORMAT,
    CATALOG_SCHEMA,
    MANIFEST_FILE,
    TRACKS_DIR,
    catalog_version,
    embedding_sha256,
    resolve_catalog,
)
from dvamn.constants import AUDIO_HOP_S, EMBEDDING_DIM
from dvamn.parquet_parts import read_parts

log = logging.getLogger(__name__)


_DIGEST = re.compile(r"sha256:([0-9a-f]{8,64})")


def weights_version(provenance: Optional[str]) -> str:
    """The content version of weight files from their provenance string.

    Provenance strings (``"SOURCE sha256:HEX; pca SOURCE sha256:HEX"``, written where the
    weights are loaded) name where the files came from; answers carry only the files'
    SHA-256 prefixes, joined by ``+`` in the order the files are named. ``""`` when there
    are no weights (``logmel``, keypoint files); ``"unhashed"`` when the provenance names
    weights without a digest (never the name itself, which may be a private path).
    """
    if not provenance:
        return ""
    digests = _DIGEST.findall(provenance)
    return "+".join(digests) if digests else "unhashed"


class CatalogMismatchError(ValueError):
    """The catalog's audio embedding is not the one the model was trained to predict."""


class CatalogIntegrityError(ValueError):
    """A catalog version that is incomplete or whose content is not what its manifest says."""


@dataclass
class Catalog:
    """Tracks in catalog order. ``embeddings`` (sum T_a, 128) float32; ``offsets`` (N + 1,)
    int64, track ``i`` is ``embeddings[offsets[i]:offsets[i + 1]]``."""

    uri: str
    track_ids: List[str]
    titles: List[str]
    uris: List[str]
    durations_s: np.ndarray  # (N,) float64
    embeddings: np.ndarray
    offsets: np.ndarray
    audio_embedding_kind: str
    audio_weights: str
    version: str
    created_at: Optional[str] = None
    version_id: str = ""  # the version directory's ID (CATALOG/versions/ID); "" in memory
    version_uri: str = ""  # that directory: files stored with this version live there
    # (N,) bool: the catalog job found an audio stream at the track's uri (False: none
    # recorded, or an in-memory catalog)
    audio_playable: Optional[np.ndarray] = None
    # Per track, its ``audio_onset`` (2 T_a,) for the "+onset" scorings' rhythm term; None
    # for a catalog built before the column existed (those scorings refuse it).
    onsets: Optional[List[np.ndarray]] = None
    shard_start: int = 0  # a shard's first row in the whole catalog (load_catalog's shard)
    # load_catalog(..., embeddings=False): the embeddings stay in the version's parts below
    # this URI and ``iter_embeddings`` streams them, each checked against its hash ("": in
    # memory).
    embeddings_uri: str = ""
    embedding_sha256s: Optional[List[str]] = None

    def __post_init__(self) -> None:
        if self.audio_playable is None:
            self.audio_playable = np.zeros(len(self.track_ids), bool)

    def __len__(self) -> int:
        return len(self.track_ids)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) audio frames per track."""
        return np.diff(self.offsets)

    def track_embedding(self, i: int) -> np.ndarray:
        """(T_a, 128) view of track ``i``'s embedding sequence."""
        if self.embeddings_uri:
            raise ValueError(
                f"catalog {self.uri} was loaded without its embeddings (embeddings=False): "
                "read them with iter_embeddings, or load it with embeddings=True"
            )
        return self.embeddings[self.offsets[i] : self.offsets[i + 1]]

    def iter_embeddings(self, batch_tracks: int = 64) -> Iterator[Tuple[int, np.ndarray]]:
        """Every track's (row, (T_a, 128) embedding), each once. In memory: in catalog
        order. Loaded with ``embeddings=False``: in file order, read from the version's
        parts ``batch_tracks`` at a time (so memory holds one batch, not the catalog),
        each checked against the hash and length the load recorded."""
        if not self.embeddings_uri:
            for i in range(len(self)):
                yield i, self.track_embedding(i)
            return
        import pyarrow.parquet as pq

        from dvamn.parquet_parts import part_files

        row_of = {track_id: i for i, track_id in enumerate(self.track_ids)}
        seen = np.zeros(len(self), bool)
        lengths = self.lengths
        fs, _ = storage.filesystem(self.embeddings_uri)
        for path in part_files(self.embeddings_uri):
            with fs.open(path, "rb") as f:
                batches = pq.ParquetFile(f).iter_batches(
                    batch_size=batch_tracks, columns=["track_id", "embedding"]
                )
                for batch in batches:
                    ids = batch.column(0).to_pylist()
                    embeddings, offsets = _packed_embeddings(pa.chunked_array([batch.column(1)]))
                    for j, track_id in enumerate(ids):
                        i = row_of.get(track_id)
                        if i is None:  # another shard's track
                            continue
                        embedding = embeddings[offsets[j] : offsets[j + 1]]
                        self._check_streamed(i, embedding, int(lengths[i]), seen[i])
                        seen[i] = True
                        yield i, embedding
        if not seen.all():
            missing = [self.track_ids[i] for i in np.flatnonzero(~seen)[:3]]
            raise CatalogIntegrityError(
                f"catalog {self.embeddings_uri}: tracks {missing} were not found when "
                "their embeddings were read (files changed after the load); rebuild the catalog"
            )

    def _check_streamed(self, i: int, embedding: np.ndarray, length: int, seen: bool) -> None:
        problem = None
        if seen:
            problem = "appears twice"
        elif len(embedding) != length:
            problem = f"has {len(embedding)} frames where num_audio_frames says {length}"
        elif embedding_sha256(embedding) != self.embedding_sha256s[i]:
            problem = f"does not match its embedding_sha256 {self.embedding_sha256s[i]!r}"
        if problem:
            raise CatalogIntegrityError(
                f"catalog {self.embeddings_uri}: the embedding of track "
                f"{self.track_ids[i]!r} {problem} (the file changed after the build); "
                "rebuild the catalog"
            )

    @property
    def nbytes(self) -> int:
        """Memory held by the embeddings and offsets (the bulk of a catalog)."""
        return int(self.embeddings.nbytes + self.offsets.nbytes)

    def summary(self) -> Dict[str, Any]:
        """What ``GET /catalog`` answers: content versions, never locations (the catalog's
        URI and the embedding weights' sources stay in the service's log)."""
        return {
            "version": self.version,
            "version_id": self.version_id,
            "num_tracks": len(self),
            "total_duration_s": round(float(self.durations_s.sum()), 3),
            "audio_embedding_kind": self.audio_embedding_kind,
            "audio_weights_version": weights_version(self.audio_weights),
            "embedding_dim": EMBEDDING_DIM,
            "audio_hop_s": AUDIO_HOP_S,
            "memory_mb": round(self.nbytes / 2**20, 2),
            "num_playable": int(np.count_nonzero(self.audio_playable)),
            "created_at": self.created_at,
        }

    @classmethod
    def from_sequences(
        cls,
        embeddings: List[np.ndarray],
        track_ids: Optional[List[str]] = None,
        titles: Optional[List[str]] = None,
        audio_embedding_kind: str = "logmel",
        audio_weights: str = "",
        uri: str = "<memory>",
        onsets: Optional[List[np.ndarray]] = None,
    ) -> "Catalog":
        """An in-memory catalog (tests, benchmarks) from per-track (T_a, 128) arrays (and
        their ``audio_onset`` (2 T_a,), for the rhythm term)."""
        n = len(embeddings)
        track_ids = track_ids or [f"track-{i:05d}" for i in range(n)]
        lengths = np.array([len(e) for e in embeddings], dtype=np.int64)
        offsets = np.zeros(n + 1, np.int64)
        offsets[1:] = np.cumsum(lengths)
        packed = (
            np.concatenate(
                [np.asarray(e, np.float32).reshape(-1, EMBEDDING_DIM) for e in embeddings]
            )
            if n
            else np.zeros((0, EMBEDDING_DIM), np.float32)
        )
        shas = [embedding_sha256(e) for e in embeddings]
        return cls(
            uri=uri,
            track_ids=list(track_ids),
            titles=list(titles or track_ids),
            uris=[""] * n,
            durations_s=lengths * AUDIO_HOP_S,
            embeddings=packed,
            offsets=offsets,
            audio_embedding_kind=audio_embedding_kind,
            audio_weights=audio_weights,
            version=catalog_version(list(track_ids), shas, audio_embedding_kind, audio_weights),
            onsets=None if onsets is None else [np.asarray(o, np.float32) for o in onsets],
        )


def _read_tracks(
    version: str, keep: Optional[pa.Array] = None, embeddings: bool = True
) -> pa.Table:
    """The version's tracks; with ``keep`` (track ids), only those rows, read part by part
    so that the other rows' embeddings are never held together (a catalog shard); without
    ``embeddings``, every column but that one."""
    from dvamn.parquet_parts import part_files, read_part

    schema = CATALOG_SCHEMA
    if not embeddings:
        schema = pa.schema([f for f in CATALOG_SCHEMA if f.name != "embedding"])
    uri = storage.join(version, TRACKS_DIR)
    fs, _ = storage.filesystem(uri)
    tables = []
    for path in part_files(uri):
        part = read_part(fs, path, None if embeddings else _present(fs, path, schema))
        table = _with_all_columns(part, schema)
        if keep is not None:
            table = table.filter(pc.is_in(table["track_id"], value_set=keep))
        tables.append(table)
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def _present(fs, path: str, schema: pa.Schema) -> List[str]:
    """The columns of ``schema`` that the part holds (older parts lack audio_onset)."""
    from dvamn.parquet_parts import read_footer

    names = set(read_footer(fs, path).schema.to_arrow_schema().names)
    return [name for name in schema.names if name in names]


def _with_all_columns(table: pa.Table, schema: pa.Schema = CATALOG_SCHEMA) -> pa.Table:
    """A tracks part as ``schema``, the columns later versions added (audio_onset) filled
    with nulls in parts written before them."""
    if "audio_onset" in schema.names and "audio_onset" not in table.column_names:
        field = schema.field("audio_onset")
        table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


def _read_track_ids(version: str) -> pa.Table:
    """Every track's id and embedding hash, without the embeddings."""
    columns = ["track_id", "embedding_sha256"]
    tables = read_parts(storage.join(version, TRACKS_DIR), columns)
    schema = pa.schema([CATALOG_SCHEMA.field(c) for c in columns])
    if not tables:
        return schema.empty_table()
    return pa.concat_tables([t.select(columns).cast(schema) for t in tables])


def _read_manifest(version: str) -> Dict[str, Any]:
    manifest_uri = storage.join(version, MANIFEST_FILE)
    try:
        with storage.open_uri(manifest_uri, "rb") as f:
            manifest = json.loads(f.read().decode())
    except FileNotFoundError:
        raise CatalogIntegrityError(
            f"catalog version {version} is incomplete: it has no {MANIFEST_FILE} (a build "
            "that failed or is still running); serve the catalog's root to take its current "
            "version"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CatalogIntegrityError(f"{manifest_uri} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CATALOG_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CatalogIntegrityError(
            f"{manifest_uri} has format {found!r}, not {CATALOG_FORMAT!r}; rebuild the catalog "
            "with `dvamn catalog`"
        )
    return manifest


def _packed_embeddings(column: pa.ChunkedArray) -> tuple:
    """(embeddings (sum T_a, 128) float32, offsets (N + 1,)) without per-row Python lists."""
    column = column.combine_chunks()  # ListArray of FixedSizeList<float32, 128>
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.flatten().to_numpy(zero_copy_only=False)
    values = values.astype(np.float32, copy=False).reshape(-1, EMBEDDING_DIM)
    start = offsets[0]
    return np.ascontiguousarray(values[start : offsets[-1]]), offsets - start


def _onsets(table: pa.Table) -> Optional[List[np.ndarray]]:
    """Every track's ``audio_onset`` as float32, or None where any track lacks it."""
    if "audio_onset" not in table.column_names or table["audio_onset"].null_count:
        return None
    column = table["audio_onset"].combine_chunks()  # list<float32>: no per-value objects
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def load_catalog(uri: str, shard: Optional[tuple] = None, embeddings: bool = True) -> Catalog:
    """Load a catalog's current version (``uri`` is its root) or one version
    (``CATALOG/versions/ID``), local or any fsspec URI; layout in ``dvamn.catalog_format``.

    The version must be complete and intact: its manifest must exist, its track count must
    be the manifest's, every track's embedding must hash to the ``embedding_sha256`` stored
    beside it, and the content version computed from them must be the manifest's.
    Tracks are sorted by track id, so that ranks and ties do not depend on file order.
    Raises ``FileNotFoundError`` for a URI that holds no catalog, ``CatalogIntegrityError``
    for an incomplete or altered version and ``ValueError`` for an empty one or one that
    mixes embeddings.

    ``shard=(i, S)``: only the i-th of S contiguous parts of the sorted tracks
    (``dvamn.search.shard_bounds``; a shard replica's). The version is checked as a
    whole (count, content version from every track's hash); only the shard's embeddings
    are read into memory, and checked. The catalog's ``shard_start`` is the shard's first
    row in the whole catalog.

    ``embeddings=False``: everything but the embeddings, which stay in the version's files
    (two-stage search streams them into its frames file, ``Catalog.iter_embeddings``, each
    checked against its hash as it is read): memory then holds no track's frames.
    """
    _, version_id, version = resolve_catalog(uri)
    manifest = _read_manifest(version)
    expected = manifest.get("num_tracks")
    start = 0
    if shard is None:
        table = _read_tracks(version, embeddings=embeddings)
    else:
        from dvamn.search import shard_bounds

        every = _read_track_ids(version).sort_by("track_id")
        if every.num_rows != expected:
            raise CatalogIntegrityError(
                f"catalog version {version} holds {every.num_rows} tracks but its manifest "
                f"says {expected}: files were added or lost after the build; rebuild the catalog"
            )
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard must be in [0, {count}), got {index}")
        start, stop = shard_bounds(every.num_rows, count)[index]
        keep = every["track_id"][start:stop].combine_chunks()
        table = _read_tracks(version, keep=keep, embeddings=embeddings)
        expected = stop - start
    if table.num_rows != expected:
        raise CatalogIntegrityError(
            f"catalog version {version} holds {table.num_rows} tracks but its manifest says "
            f"{expected}: files were added or lost after the build; rebuild the catalog"
        )
    if table.num_rows == 0:
        raise ValueError(f"catalog {uri} has no tracks; look at {version}/errors/ for why")
    table = table.sort_by("track_id")
    kinds = sorted(set(table["audio_embedding_kind"].to_pylist()))
    weights = sorted(set(table["audio_weights"].to_pylist()))
    if len(kinds) != 1 or len(weights) != 1:
        raise ValueError(
            f"catalog {uri} mixes audio embeddings {kinds} / weights {weights}; rebuild it"
        )
    track_ids = table["track_id"].to_pylist()
    shas = table["embedding_sha256"].to_pylist()
    if embeddings:
        packed, offsets = _packed_embeddings(table["embedding"])
        for i, sha in enumerate(shas):
            if embedding_sha256(packed[offsets[i] : offsets[i + 1]]) != sha:
                raise CatalogIntegrityError(
                    f"catalog version {version}: the embedding of track {track_ids[i]!r} does "
                    f"not match its embedding_sha256 {sha!r} (the file changed after the "
                    "build); rebuild the catalog"
                )
    else:  # checked against the frames iter_embeddings reads
        packed = np.zeros((0, EMBEDDING_DIM), np.float32)
        offsets = np.zeros(table.num_rows + 1, np.int64)
        offsets[1:] = np.cumsum(table["num_audio_frames"].to_numpy().astype(np.int64))
    if shard is None:
        version_hash = catalog_version(track_ids, shas, kinds[0], weights[0])
    else:  # the content version is the whole catalog's
        version_hash = catalog_version(
            every["track_id"].to_pylist(),
            every["embedding_sha256"].to_pylist(),
            kinds[0],
            weights[0],
        )
    if version_hash != manifest.get("version"):
        raise CatalogIntegrityError(
            f"catalog version {version} has content version {version_hash} but its manifest "
            f"says {manifest.get('version')!r}: tracks were replaced after the build; rebuild "
            "the catalog"
        )
    catalog = Catalog(
        uri=uri,
        track_ids=track_ids,
        titles=table["title"].to_pylist(),
        uris=table["uri"].to_pylist(),
        durations_s=table["duration_s"].to_numpy().astype(np.float64),
        embeddings=packed,
        offsets=offsets,
        audio_embedding_kind=kinds[0],
        audio_weights=weights[0] or "",
        version=version_hash,
        created_at=manifest.get("created_at"),
        version_id=version_id,
        version_uri=version,
        audio_playable=table["audio_playable"].fill_null(False).to_numpy(zero_copy_only=False),
        onsets=_onsets(table),
        shard_start=start,
        embeddings_uri="" if embeddings else storage.join(version, TRACKS_DIR),
        embedding_sha256s=shas,
    )
    log.info(
        "loaded catalog %s version %s: %d tracks, %s, content %s, %.1f MB",
        uri,
        version_id,
        len(catalog),
        catalog.audio_embedding_kind,
        version_hash,
        catalog.nbytes / 2**20,
    )
    return catalog


def check_compatible(catalog: Catalog, model_metadata: Dict[str, Any]) -> None:
    """Refuse a catalog whose audio embedding differs from the model's training targets.

    The kind must match exactly ("vggish" vs "logmel" are different spaces); weights are
    compared when both sides record them (different VGGish weights or PCA give different
    spaces too). Raises ``CatalogMismatchError`` naming both sides and the fix.
    """
    model_kind = model_metadata.get("audio_embedding_kind")
    checkpoint = model_metadata.get("checkpoint_uri", "the checkpoint")
    if not model_kind:
        log.warning("%s records no audio_embedding_kind; cannot check the catalog", checkpoint)
        return
    if model_kind != catalog.audio_embedding_kind:
        raise CatalogMismatchError(
            f"catalog {catalog.uri} holds '{catalog.audio_embedding_kind}' embeddings but model "
            f"{checkpoint} predicts '{model_kind}' ones; rebuild the catalog with "
            f"`dvamn catalog MUSIC --out CATALOG --audio {model_kind}` (or serve a model "
            f"trained on '{catalog.audio_embedding_kind}' features)"
        )
    model_weights = model_metadata.get("audio_weights") or ""
    if model_weights and catalog.audio_weights and model_weights != catalog.audio_weights:
        raise CatalogMismatchError(
            f"catalog {catalog.uri} was embedded with {model_kind} weights "
            f"'{catalog.audio_weights}' but model {checkpoint} was trained on "
            f"'{model_weights}'; rebuild the catalog with the same --vggish-weights/--vggish-pca"
        )
