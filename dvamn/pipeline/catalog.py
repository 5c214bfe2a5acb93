"""The music catalog: one row per track with its audio-embedding sequence, built with Ray Data.

Sources (``music`` argument of :func:`build_catalog`):

- audio files (anything PyAV decodes: wav, mp3, flac, ogg, m4a ...) in a directory, glob,
  list file or ``s3://`` prefix: each file is decoded to 16 kHz mono and embedded with the
  chosen audio embedding (``vggish``, ``vggish-raw`` or ``logmel``) by a pool of Ray Data
  actors that load the embedder once;
- an extraction output (a directory holding ``videos/`` Parquet from ``dvamn extract``):
  every video's soundtrack becomes a track and its ``audio_embedding`` column is reused.

Layout of ``CATALOG``: ``dvamn.catalog_format``.

Every input ends up either in ``tracks/`` or in ``errors/``. A rebuild redoes everything
(embedding a track is cheap next to extracting a video) into a new version directory, which
becomes current only once complete; a failed build leaves the current version as it was.
"""

import dataclasses
import datetime as dt
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dvamn import storage
from dvamn.audio.onset import onset_strength
from dvamn.catalog_format import (
    CATALOG_ERROR_SCHEMA,
    CATALOG_FORMAT,
    CATALOG_SCHEMA,
    ERRORS_DIR,
    MANIFEST_FILE,
    TRACKS_DIR,
    catalog_version,
    embedding_sha256,
    list_versions,
    new_version_id,
    publish_version,
    version_uri,
)
from dvamn.constants import AUDIO_HOP_S, EMBEDDING_DIM, MAX_DURATION_S, SAMPLE_RATE_HZ
from dvamn.devices import wants_gpu
from dvamn.parquet_parts import part_files, read_footer, read_parts, write_part
from dvamn.pipeline.config import AUDIO_KINDS
from dvamn.ray_setup import limit_threads
from dvamn.schema import VIDEOS_DIR, column_sequences, rows_to_table, sequence_to_numpy
from dvamn.scoring_names import DEFAULT_SCORING

log = logging.getLogger(__name__)

# Rows leave the Ray Data stage in one table: a track's columns plus the error columns
# (null on success), so that one failing file never aborts the run.
_STAGE_SCHEMA = pa.schema(
    list(CATALOG_SCHEMA)
    + [
        ("error_stage", pa.string()),
        ("error_message", pa.string()),
        ("error_type", pa.string()),
        ("failed_at", pa.string()),
    ]
)


@dataclass
class CatalogConfig:
    """Everything ``dvamn catalog`` needs."""

    music: str  # audio files (dir, glob, list file, s3:// prefix) or an extraction output
    out: str
    audio: str = "vggish"  # one of AUDIO_KINDS; ignored for an extraction output
    vggish_weights: Optional[str] = None
    vggish_pca: Optional[str] = None
    device: str = "auto"  # auto | cpu | cuda
    max_actors: int = 2
    num_cpus_per_actor: float = 1.0
    tracks_per_batch: int = 2
    limit: Optional[int] = None  # only the first N inputs (smoke runs)
    max_duration_s: float = MAX_DURATION_S  # longer audio files become error rows
    keep_versions: int = 3  # complete versions kept after a build, the new current one included
    # Two-stage search's coarse index (dvamn.search), built into the version for this
    # checkpoint's scoring space; None builds none (the service then builds it at start).
    index_checkpoint: Optional[str] = None
    index_scoring: str = DEFAULT_SCORING

    def __post_init__(self) -> None:
        if self.audio not in AUDIO_KINDS:
            raise ValueError(f"--audio must be one of {', '.join(AUDIO_KINDS)}, not {self.audio!r}")
        if not self.max_duration_s > 0:
            raise ValueError(f"--max-duration must be > 0 seconds, not {self.max_duration_s}")
        if self.keep_versions < 1:
            raise ValueError(f"--keep-versions must be at least 1, not {self.keep_versions}")


@dataclass
class CatalogSummary:
    """What a build produced (also written to ``manifest.json``)."""

    out: str
    num_inputs: int
    num_tracks: int
    num_errors: int
    audio_embedding_kind: str
    audio_weights: str
    version: str  # content version: a hash of every track id and embedding
    total_duration_s: float
    version_id: str = ""  # the version directory: CATALOG/versions/ID
    num_playable: int = 0  # tracks whose audio GET /tracks/{id}/audio can play


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def is_extraction_output(music: str) -> bool:
    """True when ``music`` is a directory/prefix holding ``videos/`` Parquet files."""
    videos = storage.join(music, VIDEOS_DIR)
    try:
        return bool(part_files(videos))
    except (OSError, ValueError):
        return False


def _error_row(track_id: str, uri: str, stage: str, exc: BaseException) -> Dict[str, Any]:
    row: Dict[str, Any] = {f.name: None for f in _STAGE_SCHEMA}
    row.update(
        track_id=track_id,
        uri=uri,
        embedding=np.zeros((0, EMBEDDING_DIM), np.float32),
        error_stage=stage,
        error_message=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
        error_type=type(exc).__name__,
        failed_at=_now(),
    )
    return row


def _track_row(
    track_id: str,
    uri: str,
    title: str,
    duration_s: float,
    embedding: np.ndarray,
    kind: str,
    weights: str,
    source: str,
    audio_playable: bool,
    onset: Optional[np.ndarray] = None,
) -> Dict[str, Any]:
    embedding = np.asarray(embedding, np.float32).reshape(-1, EMBEDDING_DIM)
    row: Dict[str, Any] = {f.name: None for f in _STAGE_SCHEMA}
    row.update(
        track_id=track_id,
        title=title,
        uri=uri,
        duration_s=float(duration_s),
        num_audio_frames=int(len(embedding)),
        embedding=embedding,
        embedding_sha256=embedding_sha256(embedding),
        audio_embedding_kind=kind,
        audio_weights=weights,
        source=source,
        audio_playable=bool(audio_playable),
        cataloged_at=_now(),
        audio_onset=None if onset is None else np.asarray(onset, np.float32).reshape(-1),
    )
    return row


class TrackEmbedder:
    """Ray Data callable class: decodes audio files and embeds them, one embedder per actor.

    ``__call__`` takes a batch ``{"uri": [B], "track_id": [B]}`` and returns a pyarrow table
    of ``_STAGE_SCHEMA`` with one row per input, failed inputs included as error rows.
    """

    def __init__(
        self,
        audio: str,
        vggish_weights: Optional[str],
        vggish_pca: Optional[str],
        device: str,
        num_cpus: float = 1.0,
        max_duration_s: float = MAX_DURATION_S,
    ) -> None:

        from dvamn.audio import make_audio_embedder

        limit_threads(num_cpus, uses_torch=True)
        self.embedder = make_audio_embedder(audio, vggish_weights, vggish_pca, device)
        self.max_duration_s = max_duration_s

    def _decode(self, uri: str) -> tuple:
        """(waveform float32 [N] at 16 kHz, duration_s, title or None) of one file."""
        from dvamn.media import read_audio

        # One streaming pass (remote files too): the file is never held in memory whole.
        waveform, info = read_audio(uri, name=uri, max_duration_s=self.max_duration_s)
        # The decoded length, not the header's: it is what the embedding covers.
        return waveform, len(waveform) / SAMPLE_RATE_HZ, info.title or None

    def __call__(self, batch: Dict[str, np.ndarray]) -> pa.Table:
        rows: List[Dict[str, Any]] = []
        decoded = []
        for uri, track_id in zip(batch["uri"], batch["track_id"], strict=True):
            uri, track_id = str(uri), str(track_id)
            try:
                waveform, duration_s, title = self._decode(uri)
                if waveform.size == 0:
                    raise ValueError(f"{uri} has no audio samples (no audio stream?)")
                decoded.append((uri, track_id, waveform, duration_s, title))
            except Exception as exc:  # every input is accounted for: record, go on
                log.warning("catalog: cannot decode %s: %s", uri, exc)
                rows.append(_error_row(track_id, uri, "decode", exc))
        if decoded:
            try:
                embeddings = self.embedder.embed([d[2] for d in decoded])
            except Exception:
                # One bad waveform must not fail its neighbours: retry one by one.
                embeddings = []
                for d in decoded:
                    try:
                        embeddings.append(self.embedder.embed([d[2]])[0])
                    except Exception as exc:
                        embeddings.append(exc)
            for (uri, track_id, waveform, duration_s, title), emb in zip(
                decoded, embeddings, strict=True
            ):
                if isinstance(emb, Exception):
                    rows.append(_error_row(track_id, uri, "embed", emb))
                    continue
                # The rhythm term's channel, as extraction computes it: 2 per audio frame.
                onset = onset_strength(
                    waveform, 2 * len(np.asarray(emb).reshape(-1, EMBEDDING_DIM))
                )
                name = os.path.splitext(os.path.basename(uri.rstrip("/")))[0]
                rows.append(
                    _track_row(
                        track_id,
                        uri,
                        title or name,
                        duration_s,
                        emb,
                        self.embedder.kind,
                        self.embedder.weights,
                        "audio-file",
                        audio_playable=True,  # its audio just decoded from this uri
                        onset=onset,
                    )
                )
        return rows_to_table(rows, _STAGE_SCHEMA)


def extraction_to_tracks(batch: pa.Table) -> pa.Table:
    """Ray Data function: rows of an extraction's VIDEO_SCHEMA -> ``_STAGE_SCHEMA`` rows.

    A video without audio embedding frames becomes an error row (stage "audio").
    """
    rows = []
    columns = [
        "video_id",
        "uri",
        "duration_s",
        "audio_embedding",
        "audio_embedding_kind",
        "audio_weights",
    ]
    # Extraction outputs made before the onset channel lack it: their tracks get none.
    columns += ["audio_onset"] if "audio_onset" in batch.column_names else []
    for rec in batch.select(columns).to_pylist():
        emb = sequence_to_numpy(rec["audio_embedding"] or [], EMBEDDING_DIM)
        if len(emb) == 0:
            exc = ValueError("the extraction holds no audio embedding for this video")
            rows.append(_error_row(rec["video_id"], rec["uri"], "audio", exc))
            continue
        rows.append(
            _track_row(
                rec["video_id"],
                rec["uri"],
                rec["video_id"],
                rec["duration_s"] or len(emb) * AUDIO_HOP_S,
                emb,
                rec["audio_embedding_kind"],
                rec["audio_weights"],
                "extraction",
                audio_playable=has_audio_stream(rec["uri"]),
                onset=None if rec.get("audio_onset") is None else np.asarray(rec["audio_onset"]),
            )
        )
    return rows_to_table(rows, _STAGE_SCHEMA)


def has_audio_stream(uri: str) -> bool:
    """Whether ``uri`` opens as media with an audio stream (a keypoint file or an
    unreachable video does not): the catalog's record of a playable track."""
    from dvamn.media import MediaError, read_info

    try:
        return read_info(uri, name=uri).has_audio
    except (MediaError, OSError) as exc:
        log.warning("catalog: the audio of %s will not be playable: %s", uri, exc)
        return False


def _only_tracks(batch: pa.Table) -> pa.Table:
    ok = batch.filter(pc.is_null(batch["error_stage"]))
    return ok.select(CATALOG_SCHEMA.names).cast(CATALOG_SCHEMA)


def _only_errors(batch: pa.Table) -> pa.Table:
    bad = batch.filter(pc.is_valid(batch["error_stage"]))
    columns = {
        "track_id": bad["track_id"],
        "uri": bad["uri"],
        "stage": bad["error_stage"],
        "message": bad["error_message"],
        "error_type": bad["error_type"],
        "failed_at": bad["failed_at"],
    }
    return pa.table(columns).cast(CATALOG_ERROR_SCHEMA)


def _remove(uri: str) -> None:
    fs, path = storage.filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _write_dataset(ds: Any, uri: str) -> None:
    """``ds.write_parquet`` through our fsspec filesystem, so that remote outputs use the
    same credentials and endpoint settings as every other read and write."""
    if not storage.is_remote(uri):
        ds.write_parquet(uri)
        return
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(uri)
    ds.write_parquet(path, filesystem=PyFileSystem(FSSpecHandler(fs)))


def _stage_dataset(config: CatalogConfig) -> tuple:
    """(dataset of _STAGE_SCHEMA rows, number of inputs, the source kind)."""
    import ray

    if is_extraction_output(config.music):
        videos = storage.join(config.music, VIDEOS_DIR)
        ds = ray.data.read_parquet(videos)
        num_inputs = _parquet_rows(videos)
        if config.limit is not None:
            ds, num_inputs = ds.limit(config.limit), min(num_inputs, config.limit)
        ds = ds.map_batches(extraction_to_tracks, batch_format="pyarrow", batch_size=16)
        return ds, num_inputs, "extraction"

    uris = storage.list_inputs(config.music, storage.AUDIO_EXTENSIONS)
    if config.limit is not None:
        uris = uris[: config.limit]
    items = [{"uri": u, "track_id": storage.relative_id(u, config.music)} for u in uris]
    duplicates = [k for k, n in Counter(i["track_id"] for i in items).items() if n > 1]
    if duplicates:
        raise ValueError(
            f"{config.music}: several files share the track id(s) {sorted(duplicates)[:5]} "
            "(same path without extension); rename them or catalog them separately"
        )
    ds = ray.data.from_items(
        items, override_num_blocks=max(1, len(items) // config.tracks_per_batch)
    )
    ds = ds.map_batches(
        TrackEmbedder,
        fn_constructor_kwargs=dict(
            audio=config.audio,
            vggish_weights=config.vggish_weights,
            vggish_pca=config.vggish_pca,
            device=config.device,
            num_cpus=config.num_cpus_per_actor,
            max_duration_s=config.max_duration_s,
        ),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, config.max_actors)),
        batch_size=config.tracks_per_batch,
        batch_format="numpy",
        num_cpus=config.num_cpus_per_actor,
        num_gpus=1 if wants_gpu(config.device) else 0,
    )
    return ds, len(items), "audio-file"


def _parquet_rows(uri: str) -> int:
    """Rows in the Parquet files below ``uri``, from their footers (no data read)."""
    fs, _ = storage.filesystem(uri)
    return sum(read_footer(fs, file).num_rows for file in part_files(uri))


def build_catalog(config: CatalogConfig) -> CatalogSummary:
    """Build the catalog described by ``config`` (Ray is initialised if it is not yet).

    Raises ``FileNotFoundError`` when ``config.music`` names nothing, and ``ValueError``
    when the tracks were embedded with more than one audio embedding (an extraction output
    that mixes runs); the catalog's current version is then left as it was. Returns the
    summary also written to the new version's ``manifest.json``.
    """
    from dvamn.ray_setup import ensure_ray

    ensure_ray()
    ds, num_inputs, source = _stage_dataset(config)
    from dvamn import console

    # Both outputs below read it: embed each track only once.
    ds = console.materialize(ds, num_inputs, "   tracks", "track")

    tracks = ds.map_batches(_only_tracks, batch_format="pyarrow")
    meta_table = _meta_table(tracks)
    error_table = _error_table(ds)
    return _publish(
        config,
        meta_table,
        error_table,
        lambda uri: _write_dataset(tracks, uri),
        num_inputs,
        source,
        on_ray=True,
    )


_EMBEDDING_PROVENANCE = ["audio_embedding_kind", "audio_weights"]
_META_COLUMNS = [
    "track_id",
    "embedding_sha256",
    *_EMBEDDING_PROVENANCE,
    "duration_s",
    "audio_playable",
]


def _meta_table(tracks: Any) -> pa.Table:
    """The tracks' _META_COLUMNS, collected on the driver (no embeddings)."""
    meta = [b for b in tracks.select_columns(_META_COLUMNS).iter_batches(batch_format="pyarrow")]
    if not meta:
        return pa.schema([CATALOG_SCHEMA.field(c) for c in _META_COLUMNS]).empty_table()
    return pa.concat_tables(meta)


def _error_table(staged: Any) -> pa.Table:
    """The staged rows that failed, as CATALOG_ERROR_SCHEMA rows."""
    errors = list(
        staged.map_batches(_only_errors, batch_format="pyarrow").iter_batches(
            batch_format="pyarrow"
        )
    )
    return pa.concat_tables(errors) if errors else CATALOG_ERROR_SCHEMA.empty_table()


def write_catalog_tables(
    out: str,
    tracks: pa.Table,
    errors: Optional[pa.Table] = None,
    keep_versions: int = 3,
    index_checkpoint: Optional[str] = None,
    index_scoring: str = DEFAULT_SCORING,
) -> CatalogSummary:
    """Publish tracks already embedded (a ``CATALOG_SCHEMA`` table: benchmarks, tests,
    other tools) as a new current version of the catalog at ``out``, as ``build_catalog``
    does (with the coarse index for ``index_checkpoint`` when given)."""
    tracks = tracks.select(CATALOG_SCHEMA.names).cast(CATALOG_SCHEMA)
    errors = CATALOG_ERROR_SCHEMA.empty_table() if errors is None else errors
    kinds = sorted(set(tracks["audio_embedding_kind"].to_pylist()))
    config = CatalogConfig(
        music="<tables>",
        out=out,
        audio=kinds[0] if len(kinds) == 1 and kinds[0] in AUDIO_KINDS else "logmel",
        keep_versions=keep_versions,
        index_checkpoint=index_checkpoint,
        index_scoring=index_scoring,
    )
    return _publish(
        config,
        tracks.select(_META_COLUMNS),
        errors,
        # Row groups of 64 tracks: a two-stage replica streams the embeddings a row group
        # at a time (Catalog.iter_embeddings), so one row group is what it holds at once.
        lambda uri: write_part(tracks, storage.join(uri, "tracks.parquet"), row_group_size=64),
        tracks.num_rows + errors.num_rows,
        "tables",
        on_ray=False,
    )


def _publish(
    config: CatalogConfig,
    meta_table: pa.Table,
    error_table: pa.Table,
    write_tracks: Callable[[str], None],
    num_inputs: int,
    source: str,
    on_ray: bool,
) -> CatalogSummary:
    """Write a new version directory, then make it current; a failure leaves the catalog's
    current version as it was (the new one is removed: nobody has read it). ``on_ray``:
    the coarse index's tracks are encoded on Ray Data (the catalog job), else here."""
    root = config.out.rstrip("/")
    version_id = new_version_id()
    out = version_uri(root, version_id)
    try:
        summary = _write_version(
            config, meta_table, error_table, write_tracks, num_inputs, source, version_id, on_ray
        )
    except BaseException:
        log.warning("catalog: the build of %s failed; removing its version %s", root, version_id)
        _remove(out)
        raise
    publish_version(root, version_id)
    _prune_versions(root, version_id, config.keep_versions)
    log.info(
        "catalog %s: version %s is current: %d tracks, %d errors, embedding %s, content %s",
        root,
        version_id,
        summary.num_tracks,
        summary.num_errors,
        summary.audio_embedding_kind,
        summary.version,
    )
    return summary


def _write_version(
    config: CatalogConfig,
    meta_table: pa.Table,
    error_table: pa.Table,
    write_tracks: Callable[[str], None],
    num_inputs: int,
    source: str,
    version_id: str,
    on_ray: bool,
) -> CatalogSummary:
    """Write one complete version directory; its manifest last."""
    root = config.out.rstrip("/")
    out = version_uri(root, version_id)
    tracks_uri = storage.join(out, TRACKS_DIR)
    write_part(error_table, storage.join(out, ERRORS_DIR, "errors.parquet"))
    kinds = sorted(set(meta_table["audio_embedding_kind"].to_pylist()))
    weights = sorted(set(meta_table["audio_weights"].to_pylist()))
    if len(kinds) > 1 or len(weights) > 1:
        raise ValueError(
            f"{config.music} mixes audio embeddings ({kinds}, weights {weights}); a catalog "
            "must use one: extract again with one --audio setting"
        )
    if meta_table.num_rows:
        write_tracks(tracks_uri)
    else:
        write_part(CATALOG_SCHEMA.empty_table(), storage.join(tracks_uri, "empty.parquet"))

    if config.index_checkpoint and meta_table.num_rows:
        _write_index(config, out, on_ray)

    # With no track at all, the manifest still says what was asked for.
    kind = kinds[0] if kinds else (config.audio if source == "audio-file" else "unknown")
    weight = weights[0] if weights else ""
    summary = CatalogSummary(
        out=root,
        version_id=version_id,
        num_inputs=num_inputs,
        num_tracks=meta_table.num_rows,
        num_errors=error_table.num_rows,
        audio_embedding_kind=kind,
        audio_weights=weight,
        version=catalog_version(
            meta_table["track_id"].to_pylist(),
            meta_table["embedding_sha256"].to_pylist(),
            kind,
            weight,
        ),
        total_duration_s=float(sum(meta_table["duration_s"].to_pylist())),
        num_playable=int(sum(meta_table["audio_playable"].to_pylist())),
    )
    if summary.num_tracks + summary.num_errors != num_inputs:
        log.error(
            "catalog: %d inputs but %d tracks + %d errors",
            num_inputs,
            summary.num_tracks,
            summary.num_errors,
        )
    manifest = {
        "format": CATALOG_FORMAT,
        **dataclasses.asdict(summary),
        "source": source,
        "music": config.music,
        "config": dataclasses.asdict(config),
        "created_at": _now(),
    }
    # Last: a version directory with a manifest is complete (see dvamn.catalog_format).
    storage.write_bytes_atomic(
        storage.join(out, MANIFEST_FILE), json.dumps(manifest, indent=2).encode()
    )
    return summary


def _write_index(config: CatalogConfig, out: str, on_ray: bool) -> None:
    """The coarse index (``dvamn.search``) of the version's tracks, in the scoring space of
    ``config.index_checkpoint``'s model, in catalog order (by track id, as the service
    loads them). The projection and inverted lists are fitted here on a sample of tracks;
    every track's segments are then encoded where its part is read (``on_ray``: by Ray
    Data's workers, as the catalog job embeds) and only their small codes come back, so
    this process never holds the catalog's frames."""
    from dvamn.model import load_model
    from dvamn.scoring import scoring_parts
    from dvamn.search import SegmentIndex, transform_digest, write_catalog_index

    started = time.perf_counter()
    model, _ = load_model(config.index_checkpoint, map_location="cpu")
    distance, center, scale = scoring_parts(config.index_scoring, model)
    if distance != "cosine":
        raise ValueError(
            f"--index-scoring {config.index_scoring!r}: two-stage search needs a cosine scoring"
        )
    tracks_uri = storage.join(out, TRACKS_DIR)
    columns = ["track_id", "num_audio_frames", "embedding_sha256", *_EMBEDDING_PROVENANCE]
    meta = pa.concat_tables(read_parts(tracks_uri, columns)).sort_by("track_id")
    track_ids = meta["track_id"].to_pylist()
    row_of = {track_id: row for row, track_id in enumerate(track_ids)}
    lengths = meta["num_audio_frames"].to_numpy().astype(np.int64)

    def map_parts(fn: Callable[..., pa.Table], **kwargs: Any):
        """``fn`` over every part's (track_id, embedding) batches, on Ray Data or here."""
        if on_ray:
            import ray

            ds = ray.data.read_parquet(tracks_uri, columns=["track_id", "embedding"])
            ds = ds.map_batches(fn, fn_kwargs=kwargs, batch_format="pyarrow", batch_size=64)
            return ds.iter_batches(batch_format="pyarrow", batch_size=None)
        parts = read_parts(tracks_uri, ["track_id", "embedding"])
        return (fn(part, **kwargs) for part in parts)

    sample = SegmentIndex.sample_rows(lengths)
    chosen = sorted(
        (row_of[t], u)
        for batch in map_parts(_index_sample, track_ids=[track_ids[i] for i in sample])
        for t, u in zip(batch["track_id"].to_pylist(), _unit_frames(batch, center, scale))
    )
    index = SegmentIndex.fit([u for _, u in chosen], lengths)
    fitted = index.to_bytes()
    width = index.index.sa_code_size()
    for batch in map_parts(_index_codes, fitted=fitted, center=center, scale=scale):
        rows = [row_of[t] for t in batch["track_id"].to_pylist()]
        for row, frames in zip(rows, batch["num_frames"].to_pylist(), strict=True):
            if frames != lengths[row]:
                raise ValueError(
                    f"catalog track {track_ids[row]!r}: its embedding has {frames} frames but "
                    f"num_audio_frames says {lengths[row]}; rebuild the catalog"
                )
        codes = [np.frombuffer(c, np.uint8).reshape(-1, width) for c in batch["codes"].to_pylist()]
        index.add_codes(rows, codes)
    index.check_complete()
    content = catalog_version(
        track_ids,
        meta["embedding_sha256"].to_pylist(),
        meta["audio_embedding_kind"][0].as_py(),
        meta["audio_weights"][0].as_py() or "",
    )
    where = write_catalog_index(
        out, index, config.index_scoring, transform_digest(center, scale), content
    )
    log.info(
        "catalog: coarse index of %d tracks (%.1f KB a track) in %s, %.1f s (encoded %s)",
        index.num_tracks,
        index.nbytes() / max(1, index.num_tracks) / 1024,
        where,
        time.perf_counter() - started,
        "on Ray Data" if on_ray else "in this process",
    )


def _unit_frames(batch: pa.Table, center, scale) -> list:
    """The tracks' frames as the cosine scorings' bank holds them: standardised by the
    model's statistics, then unit length (``dvamn.scoring``), one (L, D) tensor each."""
    from dvamn.scoring import prepare_tracks

    sequences = column_sequences(batch, "embedding", EMBEDDING_DIM)
    bank = prepare_tracks(sequences, center=center, scale=scale)
    bank.normalise_in_place()
    return [bank.tracks[i, : len(seq)] for i, seq in enumerate(sequences)]


def _index_sample(batch: pa.Table, track_ids: List[str]) -> pa.Table:
    """The batch's tracks that fit the coarse index's projection and lists."""
    return batch.filter(pc.is_in(batch["track_id"], value_set=pa.array(track_ids, pa.string())))


def _index_codes(batch: pa.Table, fitted: bytes, center, scale) -> pa.Table:
    """Each track's segments encoded by the fitted (empty) coarse index: its FAISS codes,
    about 13 KB for a 3-minute track instead of its 440 KB of frames."""
    from dvamn.search import SegmentIndex

    index = SegmentIndex.from_bytes(fitted)
    units = _unit_frames(batch, center, scale)
    codes = index.encode(units)
    return pa.table(
        {
            "track_id": batch["track_id"],
            "num_frames": pa.array([len(u) for u in units], pa.int64()),
            "codes": pa.array([c.tobytes() for c in codes], pa.binary()),
        }
    )


def _prune_versions(root: str, current: str, keep: int) -> None:
    """Remove complete versions beyond the ``keep`` newest (the current one always stays),
    and incomplete ones (failed or killed builds) older than the oldest version kept."""
    versions = list_versions(root)
    complete = [
        v for v in versions if storage.exists(storage.join(version_uri(root, v), MANIFEST_FILE))
    ]
    older = [v for v in complete if v < current]
    kept = {current, *(older[-(keep - 1) :] if keep > 1 else [])}
    oldest_kept = min(kept)
    for version in versions:
        if version in kept or version > current:
            continue  # newer ones may be builds still running
        if version in complete or version < oldest_kept:
            what = "old" if version in complete else "incomplete"
            log.info("catalog %s: removing %s version %s", root, what, version)
            _remove(version_uri(root, version))
