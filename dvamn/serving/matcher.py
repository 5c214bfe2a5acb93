"""Matching as plain Python: pose features -> DVAMN -> scorer over the catalog -> top-k.

``Matcher`` is what the Serve deployment wraps; it can be built and called without Ray
(tests, notebooks, ``benchmarks/serve.py``). Letters: T pose frames (10 fps), A = T // 2
audio frames (5 Hz), N tracks, D = 128.
"""

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from dvamn.constants import AUDIO_HOP_S, EMBEDDING_DIM, POSE_FEATURES
from dvamn.devices import resolve_torch_device
from dvamn.scoring import (
    TrackBank,
    best_offsets,
    default_scoring,
    scoring_parts,
    set_hubness,
    set_onsets,
    split_scoring,
    standardise,
    uses_onset,
)
from dvamn.search import (
    DEFAULT_SEARCH,
    SEARCH_MODES,
    IndexSettings,
    SegmentIndex,
    read_catalog_index,
    search,
    to_device,
    transform_digest,
    two_stage_hubness,
)
from dvamn.serving.catalog_store import (
    Catalog,
    check_compatible,
    load_catalog,
    weights_version,
)
from dvamn.serving.queries import DEFAULT_TOP_K

log = logging.getLogger(__name__)


@dataclass
class Match:
    track_id: str
    title: str
    score: float  # mean per-frame distance at the best offset (lower is better)
    offset_s: float  # where in the track the query fits best

    def to_dict(self) -> Dict[str, Any]:
        return {
            "track_id": self.track_id,
            "title": self.title,
            "score": round(self.score, 6),
            "offset_s": round(self.offset_s, 3),
        }


def state_dict_version(model: torch.nn.Module) -> str:
    """A short content hash of the weights: the model "version" reported to clients."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def bank_from_catalog(catalog: Catalog, device: str = "cpu") -> TrackBank:
    """The scorer's zero-padded (N, L_max, D) bank, built in one allocation (none at all
    when every track has the same length: the packed array is then already the bank)."""
    lengths = catalog.lengths
    if len(catalog) and (lengths == lengths[0]).all() and lengths[0] > 0:
        packed = catalog.embeddings
        packed = packed if packed.flags.writeable else packed.copy()  # Arrow memory: read-only
        tracks = torch.from_numpy(packed).view(len(catalog), int(lengths[0]), -1)
        return TrackBank(tracks.to(device), torch.as_tensor(lengths, dtype=torch.int64).to(device))
    padded = torch.zeros(len(catalog), max(1, int(lengths.max(initial=0))), EMBEDDING_DIM)
    for i in range(len(catalog)):
        padded[i, : lengths[i]] = torch.from_numpy(catalog.track_embedding(i))
    return TrackBank(padded.to(device), torch.as_tensor(lengths, dtype=torch.int64).to(device))


def _check_onset_term(scoring: str, model, catalog: Catalog, search: str) -> None:
    """The rhythm term needs an onset head, a catalog with audio_onset and exhaustive
    search; ValueError naming what is missing."""
    if not getattr(model, "has_onset_head", False):
        raise ValueError(
            f"scoring {scoring!r} needs a model with an onset head (dvamn train --onset-head)"
        )
    if catalog.onsets is None:
        raise ValueError(
            f"scoring {scoring!r} needs the catalog's audio_onset channel, and catalog "
            f"{catalog.uri} has none (built before it existed): build it again with "
            "`dvamn catalog`, or serve with a scoring without '+onset'"
        )
    if search != "exact":
        raise ValueError(f"scoring {scoring!r} is scored exhaustively: use --search exact")


def unit_bank_on_disk(catalog: Catalog, center, scale, chunk_tracks: int = 32) -> TrackBank:
    """The cosine scorings' bank for two-stage search: every frame standardised (when
    ``center``/``scale`` are given), made unit length and stored as float16 in a
    memory-mapped temporary file, written chunk by chunk of tracks. Re-ranking reads only
    its candidates' slices, so the replica's memory holds the coarse index and the pages
    of recently read candidates, not the catalog's frames (440 KB per 3-minute track as
    float32 in memory; 230 KB on disk here). A catalog loaded with ``embeddings=False``
    is streamed from its files into this one (``Catalog.iter_embeddings``), so loading
    never holds the catalog's frames either. The file is unlinked at once: it lives as
    long as the mapping, no longer than the process."""
    import os
    import tempfile

    from dvamn.scoring import transform_frames

    lengths = catalog.lengths
    shape = (len(catalog), max(1, int(lengths.max(initial=0))), EMBEDDING_DIM)
    handle, path = tempfile.mkstemp(prefix="dvamn-frames-", suffix=".f16")
    os.close(handle)
    try:
        frames = np.memmap(path, np.float16, "w+", shape=shape)
    finally:
        os.unlink(path)
    center_t = None if center is None else torch.as_tensor(np.asarray(center), dtype=torch.float32)
    scale_t = None if scale is None else torch.as_tensor(np.asarray(scale), dtype=torch.float32)

    def write(rows: List[int], embeddings: List[np.ndarray]) -> None:
        chunk = torch.zeros(len(rows), shape[1], EMBEDDING_DIM)
        for j, embedding in enumerate(embeddings):
            track = torch.from_numpy(np.array(embedding, np.float32))
            if center_t is not None:
                track = transform_frames(track, center_t, scale_t)
            chunk[j, : len(track)] = track
        chunk /= chunk.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # padding stays zero
        frames[rows] = chunk.numpy().astype(np.float16)

    rows, embeddings = [], []
    for row, embedding in catalog.iter_embeddings():
        rows.append(row)
        embeddings.append(embedding)
        if len(rows) == chunk_tracks:
            write(rows, embeddings)
            rows, embeddings = [], []
    if rows:
        write(rows, embeddings)
    tracks = torch.from_numpy(frames)
    return TrackBank(
        tracks,
        torch.as_tensor(lengths, dtype=torch.int64),
        unit_tracks=tracks,
        center=center_t,
        scale=scale_t,
        unit_only=True,
    )


class Matcher:
    """A loaded model and catalog; ``match`` ranks the catalog for pose feature sequences.

    Args:
        model: a DVAMN (``dvamn.model``) with ``predict(pose (B, T, 68)) -> (B, A, 128)``.
        model_metadata: the checkpoint's metadata (feature provenance, ``checkpoint_uri``;
            logged, never answered).
        catalog: the loaded catalog; its packed embeddings are released once the scorer's
            bank is built (the bank holds them), keeping one copy in memory.
        device: "auto", "cpu" or "cuda" for the model and the scorer.
        scoring: how candidates are compared (``dvamn.scoring.ALL_SCORINGS``); None:
            ``default_scoring``, cosine on embeddings standardised by the model's target
            statistics (which keeps "average-sounding" tracks from coming out close to
            every query), with QB-Norm from the checkpoint's query bank where it has one,
            and the rhythm term where it can be scored (an onset head, a catalog with
            ``audio_onset``, exact search).
        search: "exact" scores every track at every offset; "two-stage" asks a coarse
            segment index (``dvamn.search``) for candidates and scores only those exactly.
            Two-stage needs a cosine scoring.
        index: a prebuilt ``SegmentIndex`` for this catalog and scoring; None builds one
            at start (two-stage only).
        index_settings: how the index is built and searched (``IndexSettings``).

    Raises ``CatalogMismatchError`` when the catalog's audio embedding is not the model's.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        model_metadata: Dict[str, Any],
        catalog: Catalog,
        device: str = "auto",
        scoring: Optional[str] = None,
        search: str = DEFAULT_SEARCH,
        index: Optional[SegmentIndex] = None,
        index_settings: Optional[IndexSettings] = None,
    ):
        if search not in SEARCH_MODES:
            raise ValueError(f"search must be one of {', '.join(SEARCH_MODES)}, got {search!r}")
        check_compatible(catalog, model_metadata)
        self.device = resolve_torch_device(device)
        self.model = ready_for_inference(model, self.device)
        self.metadata = model_metadata
        self.catalog = catalog
        if scoring is None:
            scoring = default_scoring(
                getattr(model, "query_bank", None) is not None,
                rhythm=getattr(model, "has_onset_head", False)
                and catalog.onsets is not None
                and search == "exact",
            )
        self.scoring = scoring
        self.distance, center, scale = scoring_parts(scoring, self.model)
        if search == "two-stage" and self.distance != "cosine":
            raise ValueError(
                f"two-stage search approximates the cosine distance; scoring {scoring!r} "
                "is not a cosine scoring: use --search exact or a cosine scoring"
            )
        if search == "two-stage":
            # float16 unit frames memory-mapped on disk: read per candidate.
            self.bank = unit_bank_on_disk(catalog, center, scale)
        else:
            self.bank = bank_from_catalog(catalog, "cpu")
            if center is not None:
                self.bank = standardise(self.bank, center, scale)  # in place: one copy
            if self.distance == "cosine":
                self.bank.normalise_in_place()  # and still one copy, instead of two
        # The rhythm term ("+onset"): the model's onset head against the catalog's
        # audio_onset, scored exhaustively (dvamn.scoring), as evaluation scores it.
        self.onset_term = uses_onset(scoring)
        if self.onset_term:
            _check_onset_term(scoring, model, catalog, search)
            set_onsets(self.bank, catalog.onsets)
        self.search = search
        self.index_settings = (index_settings or IndexSettings()).check()
        self.index: Optional[SegmentIndex] = None
        if search == "two-stage":
            if index is None:
                index, why = read_catalog_index(
                    catalog.version_uri,
                    split_scoring(scoring)[0],  # hubness and rhythm are applied after it
                    transform_digest(center, scale),
                    catalog.version,
                    len(catalog),
                )
                if index is None:
                    log.warning("%s: %s", catalog.uri, why)
                    started = time.perf_counter()
                    index = SegmentIndex.build(self.bank, self.index_settings)
                    log.info("built the coarse index in %.1f s", time.perf_counter() - started)
            self.index = to_device(index, self.device)
            if self.index_settings.rescore_tracks:
                # The middle stage's reduced frames (in memory, counted below), made
                # from the bank at load rather than by the first query.
                started = time.perf_counter()
                self.index.attach_frames(self.bank)
                log.info("middle-stage frames in %.1f s", time.perf_counter() - started)
        # Hubness correction ("+qb"/"+csls"): the checkpoint's query bank scored against
        # the catalog once, as evaluation does (exhaustively: Qb scorer calls; two-stage:
        # Qb two-stage searches); queries then cost the same.
        hubness = split_scoring(scoring)[1]
        if hubness is not None:
            started = time.perf_counter()
            query_bank = getattr(model, "query_bank", None)
            if self.index is None:
                set_hubness(self.bank, query_bank, hubness, self.distance)
            else:
                two_stage_hubness(self.bank, self.index, query_bank, hubness, self.index_settings)
            log.info(
                "hubness correction %s from %d bank queries in %.1f s",
                hubness,
                len(model.query_bank),
                time.perf_counter() - started,
            )
        self.catalog_info = catalog.summary()
        self.catalog_info["search"] = search
        self.catalog_info["scoring"] = scoring
        if self.index is None:
            self.catalog_info["memory_mb"] = round(self.bank.nbytes() / 2**20, 2)
        else:
            # In memory: the coarse index and the middle stage's reduced frames; the
            # full frames are a memory-mapped file.
            self.catalog_info["index_memory_mb"] = round(self.index.nbytes() / 2**20, 2)
            self.catalog_info["memory_mb"] = self.catalog_info["index_memory_mb"]
            self.catalog_info["frames_on_disk_mb"] = round(self.bank.nbytes() / 2**20, 2)
        catalog.embeddings = np.zeros((0, EMBEDDING_DIM), np.float32)  # the bank has them
        config = getattr(model, "config", None)
        # Answers carry content versions, never locations: the checkpoint's path or URI and
        # the weights' sources are logged here, once, for the operator to look up.
        self.model_info = {
            "version": state_dict_version(self.model),
            "layer": getattr(config, "layer", None),
            "audio_embedding_kind": model_metadata.get("audio_embedding_kind"),
            "audio_weights_version": weights_version(model_metadata.get("audio_weights")),
            "pose_model": model_metadata.get("pose_model"),
            "epoch": model_metadata.get("epoch"),
            "device": self.device,
        }
        log.info(
            "model version %s is %s; catalog version %s is %s",
            self.model_info["version"],
            model_metadata.get("checkpoint_uri", "an in-memory model"),
            self.catalog_info["version"],
            catalog.uri,
        )

    @classmethod
    def from_uris(
        cls,
        checkpoint: str,
        catalog: str,
        device: str = "auto",
        scoring: Optional[str] = None,
        search: str = DEFAULT_SEARCH,
        index_settings: Optional[IndexSettings] = None,
    ) -> "Matcher":
        """Load a checkpoint (or a training run's best) and a catalog, local or ``s3://``."""
        from dvamn.model import load_model

        model, metadata = load_model(checkpoint)
        return cls(
            model,
            metadata,
            load_catalog(catalog, embeddings=holds_embeddings(search)),
            device=device,
            scoring=scoring,
            search=search,
            index_settings=index_settings,
        )

    def with_catalog(self, catalog: Catalog) -> "Matcher":
        """A matcher of the same model and scoring over another catalog (a new version),
        built beside this one, which keeps answering meanwhile."""
        return Matcher(
            self.model,
            self.metadata,
            catalog,
            device=self.device,
            scoring=self.scoring,
            search=self.search,
            index_settings=self.index_settings,
        )

    def predict(self, poses: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Pose features, each (T_i, 68) -> predicted embeddings, each (T_i // 2, 128)."""
        return self._predict(poses)[0]

    def _predict(self, poses: Sequence[np.ndarray]) -> tuple:
        """(embeddings, onsets): ``predict_poses`` with this matcher's model."""
        return predict_poses(self.model, self.device, poses, with_onset=self.onset_term)

    def ranking(
        self, predicted: np.ndarray, top_k: int = DEFAULT_TOP_K, onset: Optional[np.ndarray] = None
    ):
        """The scorer's ``Ranking`` (catalog indices, scores, offsets in frames) for one
        predicted sequence (A, 128); ``onset`` (2A,): its predicted onsets, for a matcher
        with the rhythm term. What ``rank`` names, and what a catalog shard returns."""
        if self.onset_term:
            if onset is None:
                raise ValueError(f"scoring {self.scoring!r} ranks with the query's onsets")
            return best_offsets(
                predicted, self.bank, top_k=top_k, distance=self.distance, query_onset=onset
            )
        return search(
            predicted,
            self.bank,
            self.index,
            top_k=top_k,
            distance=self.distance,
            settings=self.index_settings,
        )

    def rank(
        self, predicted: np.ndarray, top_k: int = DEFAULT_TOP_K, onset: Optional[np.ndarray] = None
    ) -> List[Match]:
        """Best tracks for one predicted sequence (A, 128), best first (see ``ranking``)."""
        ranking = self.ranking(predicted, top_k, onset)
        return [
            Match(
                track_id=self.catalog.track_ids[i],
                title=self.catalog.titles[i],
                score=float(score),
                offset_s=float(offset) * AUDIO_HOP_S,
            )
            for i, score, offset in zip(
                ranking.indices, ranking.scores, ranking.offsets, strict=True
            )
        ]

    def match_many(
        self, poses: Sequence[np.ndarray], top_ks: Sequence[int]
    ) -> List[Dict[str, Any]]:
        """Several queries at once (what ``@serve.batch`` hands over): one response body
        part per query with ``matches``, the ``catalog`` version they were scored against
        and ``timings_ms`` (model, score)."""
        started = time.perf_counter()
        predicted, onsets = self._predict(poses)
        model_ms = 1000 * (time.perf_counter() - started) / max(1, len(poses))
        results = []
        catalog = {k: self.catalog_info[k] for k in ("version", "version_id", "num_tracks")}
        for prediction, onset, top_k in zip(predicted, onsets, top_ks, strict=True):
            started = time.perf_counter()
            matches = self.rank(prediction, top_k, onset)
            results.append(
                {
                    "matches": [m.to_dict() for m in matches],
                    "catalog": catalog,  # the version these matches were scored against
                    "timings_ms": {
                        "model": round(model_ms, 2),
                        "score": round(1000 * (time.perf_counter() - started), 2),
                    },
                    "batch_size": len(poses),
                }
            )
        return results

    def match(self, pose: np.ndarray, top_k: int = DEFAULT_TOP_K) -> Dict[str, Any]:
        """One query: pose features (T, 68) at POSE_FPS -> response part (see match_many)."""
        return self.match_many([pose], [top_k])[0]


def holds_embeddings(search: str) -> bool:
    """Whether a matcher of this search mode needs the catalog's embeddings in memory:
    two-stage search streams them into its frames file (``load_catalog(...,
    embeddings=False)``)."""
    return search != "two-stage"


def ready_for_inference(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """``model`` on ``device`` in eval mode, touched only if it is not so already.

    A matcher for a new catalog version is built from the model the old one is still
    answering with, in another thread; ``Module.to`` on a GRU empties and rebuilds its
    flat-weight references, and a forward pass running meanwhile fails on them
    ("zip() argument 2 is longer than argument 1"). A ready model is left alone."""
    target = torch.device(device).type
    elsewhere = any(p.device.type != target for p in model.parameters())
    if elsewhere or any(m.training for m in model.modules()):
        model = model.to(device).eval()
    return model


def predict_poses(
    model: torch.nn.Module, device: str, poses: Sequence[np.ndarray], with_onset: bool = False
) -> tuple:
    """Pose features, each (T_i, 68) -> (embeddings, each (T_i // 2, 128); with
    ``with_onset`` (the rhythm term), each query's predicted onsets (T_i - T_i % 2,), else
    a None per query).

    Queries of equal length go through the model as one batch; others one by one
    (padding would change what the bidirectional GRUs see at the end).
    """
    out: List[Optional[np.ndarray]] = [None] * len(poses)
    onsets: List[Optional[np.ndarray]] = [None] * len(poses)
    by_length: Dict[int, List[int]] = {}
    for i, pose in enumerate(poses):
        if pose.ndim != 2 or pose.shape[1] != POSE_FEATURES:
            raise ValueError(f"pose {i} has shape {pose.shape}, expected (T, {POSE_FEATURES})")
        by_length.setdefault(len(pose), []).append(i)
    with torch.inference_mode():
        for indices in by_length.values():
            batch = torch.as_tensor(np.stack([poses[i] for i in indices]), dtype=torch.float32)
            batch = batch.to(device)
            if with_onset:
                predicted, onset = model.predict(batch, with_onset=True)  # (B, T)
                onset = onset[:, : 2 * predicted.shape[1]].float().cpu().numpy()
            else:
                predicted, onset = model.predict(batch), None  # (B, A, 128)
            predicted = predicted.float().cpu().numpy()
            for j, i in enumerate(indices):
                out[i] = predicted[j]
                onsets[i] = None if onset is None else onset[j]
    return out, onsets
