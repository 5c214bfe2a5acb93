"""Two-stage search: a coarse segment index proposes (track, offset) candidates, the exact
scorer (``dvamn.scoring.best_offsets``) re-ranks them.

The coarse stage approximates the cosine scorings' own distance, so that "recall against
exhaustive search" compares like with like. Letters as in ``dvamn.scoring``: T query frames,
D = 128, W frames a segment (``segment_frames``), d reduced dimensions, S indexed segments.

For unit frames u (the bank's: standardised, weighted, L2-normalised), the exact score of
track x at offset o is 1 - (1/T) sum_t u_q[t] . u_x[o + t]. Split the T frames into
segments of W: the sum is a sum of inner products of flattened (W·D) segment vectors. So:

- every track contributes one segment vector per W frames (start p = 0, W, 2W, ...),
  projected onto the top d principal axes of the catalog's segments (an uncentred PCA:
  it keeps inner products, which is what is summed) and stored in a FAISS inverted-file
  index with 8-bit scalar quantisation (``IndexIVFScalarQuantizer``, inner product);
- a query contributes a segment at every start t0 (stride 1), so that a hit on track
  segment p implies the exact offset o = p - t0, whatever o is;
- each query segment takes its ``neighbours`` nearest track segments; a (track, offset)
  pair collects the inner products of its hits, and for the aligned query segments that
  did not find it, the similarity of their k-th neighbour (an upper bound of what they
  missed). That optimistic mean similarity ranks the pairs; the best ``candidates`` pairs
  go to the exact scorer, each over offsets o ± ``refine_frames`` (coarse offsets are
  refined locally), and the top-k of that exact ranking is the answer.

Tracks shorter than the query have no full window to index; they are always re-ranked
(``dvamn.scoring``'s short-track rule). A hubness correction (``+qb``/``+csls``) is a
per-track constant: the re-ranker adds it as exhaustive scoring does, the coarse stage
does not see it. It is computed from the checkpoint's query bank by two-stage search
too (``two_stage_hubness``), so that a replica's start costs Qb fast searches, not Qb
exhaustive ones.

FAISS is the field's standard library for this (faiss-cpu; faiss-gpu on CUDA machines,
where ``device="cuda"`` moves the index to the GPU). Single queries run on the threads
FAISS is given (``faiss.omp_set_num_threads``), one in a 1-CPU replica.
"""

import io
import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

# torch, the scorer and FAISS are imported where they are used, so that the CLI can name
# the search settings without loading them.
if TYPE_CHECKING:
    import torch

    from dvamn.scoring import Ranking, TrackBank

log = logging.getLogger(__name__)

SEARCH_MODES = ("exact", "two-stage")
DEFAULT_SEARCH = "exact"
INDEX_FORMAT = 1


@dataclass
class IndexSettings:
    """How the coarse index is built and searched (``dvamn serve``/``evaluate`` flags)."""

    segment_frames: int = 5  # W: 1 s at 5 Hz
    dim: int = 64  # d: reduced dimensions of a segment vector
    neighbours: int = 64  # track segments each query segment fetches
    candidates: int = 100  # tracks the exact scorer re-ranks
    offsets_per_track: int = 3  # coarse offsets of each candidate track it re-ranks
    refine_frames: int = 3  # exact offsets searched each side of a coarse offset
    nprobe: int = 32  # inverted lists visited per query segment
    train_segments: int = 100_000  # segments sampled to fit the projection and the lists

    def check(self) -> "IndexSettings":
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < (0 if name == "refine_frames" else 1):
                raise ValueError(f"index setting {name} must be a positive integer, got {value!r}")
        return self


def _faiss():
    import faiss  # imported late: only two-stage search needs it

    return faiss


def segment_vectors(units: "torch.Tensor", segment_frames: int, stride: int) -> "torch.Tensor":
    """(L, D) unit frames -> (S, W·D) flattened segments starting every ``stride`` frames
    (only whole segments)."""
    length = units.shape[0]
    if length < segment_frames:
        return units.new_zeros((0, segment_frames * units.shape[1]))
    windows = units.unfold(0, segment_frames, stride)  # (S, D, W)
    return windows.transpose(1, 2).reshape(windows.shape[0], -1)  # (S, W·D)


class SegmentIndex:
    """The coarse stage over one bank's unit frames: projection + FAISS index + the map
    from segment id to (track, start frame). Build with ``build``; save/load as bytes."""

    def __init__(self, settings: IndexSettings, projection: np.ndarray, index, first_segment):
        self.settings = settings
        self.projection = np.ascontiguousarray(projection, np.float32)  # (W·D, d)
        self.index = index
        # (N + 1,) id of each track's first segment: segment id s is track
        # searchsorted(first_segment, s, "right") - 1 at frame W·(s - first_segment[track]).
        self.first_segment = np.asarray(first_segment, np.int64)

    @property
    def num_tracks(self) -> int:
        return len(self.first_segment) - 1

    def nbytes(self) -> int:
        """Memory the search structures hold: quantised codes, list ids, centroids,
        projection and the segment map."""
        faiss = _faiss()
        codes = int(self.index.ntotal) * (int(self.index.code_size) + 8)  # code + list id
        centroids = int(faiss.downcast_index(self.index.quantizer).ntotal) * self.settings.dim * 4
        return codes + centroids + self.projection.nbytes + self.first_segment.nbytes

    @classmethod
    def build(
        cls,
        bank: "TrackBank",
        settings: Optional[IndexSettings] = None,
        seed: int = 0,
        chunk_tracks: int = 256,
    ) -> "SegmentIndex":
        """Fit the projection and the inverted lists on a sample of the bank's segments,
        then add every segment (in chunks of tracks, so memory stays bounded)."""
        settings = (settings or IndexSettings()).check()
        units = bank.unit()
        w, n = settings.segment_frames, bank.num_tracks
        counts = np.maximum(bank.lengths.cpu().numpy() // w, 0)
        first = np.zeros(n + 1, np.int64)
        first[1:] = np.cumsum(counts)
        total = int(first[-1])
        if total == 0:
            raise ValueError(f"no track has {w} frames: nothing to index")
        rng = np.random.default_rng(seed)
        sample_ids = np.sort(rng.choice(total, min(total, settings.train_segments), replace=False))
        sample = _gather_segments(units, first, sample_ids, w)  # (m, W·D)
        projection = _uncentred_pca(sample, settings.dim)
        reduced = sample @ projection
        nlist = _num_lists(total, len(sample))
        index = _new_index(projection.shape[1], nlist)
        index.train(reduced)
        for start in range(0, n, chunk_tracks):
            stop = min(n, start + chunk_tracks)
            parts = [
                segment_vectors(units[i, : int(counts[i]) * w].float(), w, w).cpu().numpy()
                for i in range(start, stop)
            ]
            block = np.concatenate(parts) if parts else np.zeros((0, w * units.shape[2]))
            if len(block):
                index.add(np.ascontiguousarray(block @ projection, np.float32))
        log.info("coarse index: %d segments of %d tracks, %d lists", total, n, nlist)
        return cls(settings, projection, index, first)

    def to_bytes(self) -> bytes:
        faiss = _faiss()
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(INDEX_FORMAT),
            settings=np.frombuffer(json.dumps(asdict(self.settings)).encode(), np.uint8),
            projection=self.projection,
            first_segment=self.first_segment,
            index=faiss.serialize_index(self.index),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "SegmentIndex":
        faiss = _faiss()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if int(z["format"]) != INDEX_FORMAT:
                raise ValueError(f"index format {int(z['format'])}, expected {INDEX_FORMAT}")
            settings = IndexSettings(**json.loads(z["settings"].tobytes().decode()))
            index = faiss.deserialize_index(z["index"])
            return cls(settings, z["projection"], index, z["first_segment"])

    def candidates(
        self, query_units: "torch.Tensor", lengths: np.ndarray, settings: IndexSettings
    ) -> np.ndarray:
        """(C, 2) int64 rows of (track, offset), best coarse estimate first, for a
        query's unit frames (T, D)."""
        w = self.settings.segment_frames
        t = query_units.shape[0]
        if t < w:
            return np.zeros((0, 2), np.int64)
        segments = segment_vectors(query_units, w, 1).cpu().numpy()  # (T - W + 1, W·D)
        reduced = np.ascontiguousarray(segments @ self.projection, np.float32)
        self.index.nprobe = settings.nprobe
        k = min(settings.neighbours, int(self.index.ntotal))
        sims, ids = self.index.search(reduced, k)  # (Q, k) each, best first
        found = ids >= 0
        kth = np.where(found[:, -1], sims[:, -1], np.nanmin(np.where(found, sims, np.nan), 1))
        kth = np.nan_to_num(kth, nan=0.0)
        q_start = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)[found]
        sid, sim = ids[found], sims[found]
        track = np.searchsorted(self.first_segment, sid, side="right") - 1
        offset = w * (sid - self.first_segment[track]) - q_start
        valid = (offset >= 0) & (offset <= lengths[track] - t)
        track, offset, gain = track[valid], offset[valid], (sim - kth[q_start])[valid]
        if not len(track):
            return np.zeros((0, 2), np.int64)
        # Optimistic similarity sum of each (track, offset): the aligned query segments'
        # k-th similarities (by offset residue mod W) plus what each hit gained over them.
        residue_base = np.array([kth[(-r) % w :: w].sum() for r in range(w)])
        aligned = np.array([len(kth[(-r) % w :: w]) for r in range(w)])
        key = track * (int(lengths.max()) + 1) + offset
        unique, inverse = np.unique(key, return_inverse=True)
        gains = np.bincount(inverse, weights=gain)
        u_track = unique // (int(lengths.max()) + 1)
        u_offset = unique % (int(lengths.max()) + 1)
        estimate = (residue_base[u_offset % w] + gains) / aligned[u_offset % w]
        order = np.argsort(-estimate, kind="stable")
        # Diversity: the best ``candidates`` tracks, each with its best few offsets (one
        # track's neighbouring offsets would otherwise fill the whole list).
        tracks_in_order, first_seen = np.unique(u_track[order], return_index=True)
        kept = tracks_in_order[np.argsort(first_seen)][: settings.candidates]
        chosen = order[np.isin(u_track[order], kept)]
        rank_in_track = _rank_within_groups(u_track[chosen])
        chosen = chosen[rank_in_track < settings.offsets_per_track]
        return np.stack([u_track[chosen], u_offset[chosen]], axis=1)


def _rank_within_groups(groups: np.ndarray) -> np.ndarray:
    """For a sequence of group labels, each element's position among its group's
    elements so far (0 for the first)."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
    ranks = np.empty(len(groups), np.int64)
    ranks[order] = np.arange(len(groups)) - run_start
    return ranks


def _gather_segments(
    units: "torch.Tensor", first: np.ndarray, ids: np.ndarray, w: int
) -> np.ndarray:
    import torch

    track = np.searchsorted(first, ids, side="right") - 1
    start = w * (ids - first[track])
    frames = torch.as_tensor(start)[:, None] + torch.arange(w)[None, :]  # (m, W)
    rows = units[torch.as_tensor(track)[:, None], frames]  # (m, W, D)
    return rows.reshape(len(ids), -1).cpu().numpy().astype(np.float32)


def _uncentred_pca(sample: np.ndarray, dim: int) -> np.ndarray:
    """(W·D, d): the top eigenvectors of the segments' second-moment matrix (no centring:
    the projection must keep inner products, not variances around a mean)."""
    import torch

    x = torch.from_numpy(sample).double()
    gram = (x.T @ x) / max(1, len(sample))  # (W·D, W·D)
    # torch's eigh, not numpy's: numpy's BLAS threads ignore the replica's thread limit.
    values, vectors = torch.linalg.eigh(gram)
    top = torch.argsort(values, descending=True)[: min(dim, gram.shape[0])]
    return vectors[:, top].float().numpy()


def _num_lists(total: int, trainable: int) -> int:
    # FAISS's guidance: about 4·sqrt(S) lists, and at least 39 training points per list.
    return int(max(1, min(4 * int(np.sqrt(total)), trainable // 39, 65536)))


def _new_index(dim: int, nlist: int):
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(dim)
    return faiss.IndexIVFScalarQuantizer(
        quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )


def to_device(index: SegmentIndex, device: str) -> SegmentIndex:
    """Move the FAISS index to the GPU for ``device="cuda"`` (faiss-gpu), else leave it."""
    faiss = _faiss()
    if device != "cuda":
        return index
    if not hasattr(faiss, "StandardGpuResources"):
        log.warning("this FAISS build has no GPU support (install faiss-gpu); searching on CPU")
        return index
    index.index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index.index)
    return index


def two_stage_offsets(
    prediction,
    bank: "TrackBank",
    index: SegmentIndex,
    top_k: Optional[int] = 10,
    settings: Optional[IndexSettings] = None,
) -> "Ranking":
    """``best_offsets`` for the cosine distance, scored exactly on the coarse stage's
    candidates only. ``all_scores`` is +inf (and ``all_offsets`` 0) for every track that
    was not re-ranked. ``bank`` is the one the index was built from; its unit frames may
    be float16 and memory-mapped (``torch.from_numpy`` of an ``np.memmap``): only the
    candidates' slices are read."""
    import torch

    from dvamn.scoring import TrackBank, _rank, best_offsets

    settings = (settings or index.settings).check()
    if index.num_tracks != bank.num_tracks:
        raise ValueError(
            f"the coarse index holds {index.num_tracks} tracks but the bank {bank.num_tracks}: "
            "rebuild the index for this catalog"
        )
    query = torch.as_tensor(np.asarray(prediction), dtype=torch.float32)
    if query.dim() != 2 or query.shape[1] != bank.dim or query.shape[0] < 1:
        raise ValueError(f"prediction must be (T >= 1, {bank.dim}), got {tuple(query.shape)}")
    t = query.shape[0]
    units = bank.unit()
    query_units = bank.transform_query(query.to(units.device))
    query_units = query_units / query_units.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    lengths = bank.lengths.cpu().numpy()
    pairs = index.candidates(query_units, lengths, settings)
    # One exact-scoring row per candidate: offsets coarse offset +- refine_frames.
    r = settings.refine_frames
    rows = [(int(tr), max(0, int(o) - r), min(int(lengths[tr]) - t, int(o) + r)) for tr, o in pairs]
    # Short tracks: scored at offset 0 over the frames they have.
    rows += [(int(tr), 0, 0) for tr in np.nonzero((lengths < t) & (lengths > 0))[0]]
    all_scores = np.full(bank.num_tracks, np.inf)
    all_offsets = np.zeros(bank.num_tracks, np.int64)
    if rows:
        tracks, starts, last = (np.array(c, np.int64) for c in zip(*rows))
        ends = np.minimum(last + t, lengths[tracks])
        width = int((ends - starts).max())
        frames = torch.as_tensor(starts)[:, None] + torch.arange(width)[None, :]  # (C, Wc)
        inside = frames < torch.as_tensor(ends)[:, None]
        frames = frames.clamp_max(units.shape[1] - 1).to(units.device)
        slices = units[torch.as_tensor(tracks).to(units.device)[:, None], frames]
        # (C, Wc, D), zero past the end; float32 whatever the store holds (a float16
        # memory-mapped catalog reads only these slices).
        slices = slices.float() * inside.to(units.device)[:, :, None]
        # The exact scorer on the slices: the same definition as exhaustive search.
        sub = TrackBank(
            slices,
            torch.as_tensor(ends - starts).to(units.device),
            unit_tracks=slices,
            center=bank.center,
            scale=bank.scale,
            unit_only=True,
        )
        exact = best_offsets(prediction, sub, top_k=None, distance="cosine")
        # Each track's best row; rows in track order, earliest offset first on ties.
        row_offsets = exact.all_offsets + starts
        order = np.lexsort((row_offsets, exact.all_scores, tracks))
        best = order[np.r_[True, tracks[order][1:] != tracks[order][:-1]]]
        all_scores[tracks[best]] = exact.all_scores[best]
        all_offsets[tracks[best]] = row_offsets[best]
        if bank.track_penalty is not None:
            all_scores[tracks[best]] += bank.track_penalty.cpu().numpy()[tracks[best]]
    return _rank(all_scores, all_offsets, top_k)


INDEX_DIR = "index"  # inside a catalog version: CATALOG/versions/ID/index/
INDEX_FILE = "coarse.npz"
INDEX_INFO_FILE = "index.json"


def transform_digest(center, scale) -> str:
    """What a coarse index depends on besides the catalog: the scoring's standardisation
    (a model's target statistics and weights; None for raw cosine), as a short hash."""
    import hashlib

    digest = hashlib.sha256()
    for part in (center, scale):
        if part is not None:
            digest.update(np.asarray(part, np.float32).tobytes())
    return digest.hexdigest()[:16]


def write_catalog_index(
    version_uri: str, index: SegmentIndex, scoring: str, digest: str, content_version: str
) -> str:
    """Store ``index`` in a catalog version (before its manifest is written) with what it
    was built for; returns the index directory's URI."""
    from dvamn import storage

    out = storage.join(version_uri, INDEX_DIR)
    info = {
        "format": INDEX_FORMAT,
        "scoring": scoring,
        "transform_digest": digest,
        "catalog_version": content_version,
        "num_tracks": index.num_tracks,
        "settings": asdict(index.settings),
        "bytes": index.nbytes(),
    }
    storage.write_bytes_atomic(storage.join(out, INDEX_FILE), index.to_bytes())
    storage.write_bytes_atomic(
        storage.join(out, INDEX_INFO_FILE), json.dumps(info, indent=2).encode()
    )
    return out


def read_catalog_index(
    version_uri: str, scoring: str, digest: str, content_version: str, num_tracks: int
) -> tuple:
    """``(SegmentIndex, None)`` when the catalog version holds an index built for this
    scoring, model transform and content; else ``(None, why)`` with what to do."""
    from dvamn import storage

    rebuild = (
        "rebuild the catalog with `dvamn catalog MUSIC --out CATALOG --index-checkpoint RUN "
        f"--index-scoring {scoring}` (the service builds one in memory meanwhile)"
    )
    where = storage.join(version_uri, INDEX_DIR) if version_uri else ""
    if not where or not storage.exists(storage.join(where, INDEX_INFO_FILE)):
        return None, f"this catalog version has no coarse index: {rebuild}"
    with storage.open_uri(storage.join(where, INDEX_INFO_FILE), "rb") as f:
        info = json.loads(f.read().decode())
    expected = {
        "format": INDEX_FORMAT,
        "scoring": scoring,
        "transform_digest": digest,
        "catalog_version": content_version,
        "num_tracks": num_tracks,
    }
    wrong = [k for k, v in expected.items() if info.get(k) != v]
    if wrong:
        return None, (
            f"the catalog's coarse index was built for another {', '.join(wrong)} "
            f"(it has {', '.join(f'{k}={info.get(k)!r}' for k in wrong)}): {rebuild}"
        )
    with storage.open_uri(storage.join(where, INDEX_FILE), "rb") as f:
        return SegmentIndex.from_bytes(f.read()), None


def two_stage_hubness(
    bank: "TrackBank",
    index: SegmentIndex,
    query_bank: Optional[np.ndarray],
    method: Optional[str],
    settings: Optional[IndexSettings] = None,
) -> "TrackBank":
    """``dvamn.scoring.set_hubness`` with each bank query scored by two-stage search
    instead of exhaustively (Qb two-stage calls: seconds, where exhaustive scoring of a
    10,000-track catalog took minutes). A track that a bank query's search did not
    re-rank is given that query's worst re-ranked distance (it was farther than the
    candidates, as far as the coarse stage could tell): an approximation of the exact
    correction (``dvamn evaluate`` applies the exact one to both of its searches)."""
    import torch

    from dvamn.scoring import hubness_penalty, set_hubness

    set_hubness(bank, query_bank, None, "cosine")  # clears any previous correction
    if method is None:
        return bank
    if query_bank is None or len(query_bank) == 0:
        set_hubness(bank, query_bank, method, "cosine")  # raises the "no query bank" error
    rows = []
    for query in query_bank:
        scores = two_stage_offsets(query, bank, index, top_k=None, settings=settings).all_scores
        finite = np.isfinite(scores)
        rows.append(np.where(finite, scores, scores[finite].max() if finite.any() else 2.0))
    penalty = hubness_penalty(np.stack(rows), method)
    bank.track_penalty = torch.as_tensor(penalty, dtype=torch.float64)
    return bank


def search(
    prediction,
    bank: "TrackBank",
    index: Optional[SegmentIndex],
    top_k: Optional[int] = 10,
    distance: str = "cosine",
    settings: Optional[IndexSettings] = None,
) -> "Ranking":
    """Exhaustive (``index`` None) or two-stage search, one entry point for both."""
    from dvamn.scoring import best_offsets

    if index is None:
        return best_offsets(prediction, bank, top_k=top_k, distance=distance)
    if distance != "cosine":
        raise ValueError(f"two-stage search approximates the cosine distance, not {distance!r}")
    return two_stage_offsets(prediction, bank, index, top_k=top_k, settings=settings)


def shard_bounds(num_tracks: int, num_shards: int) -> list:
    """Contiguous catalog-order ranges ``[(start, stop), ...]`` of ``num_shards`` shards
    of near-equal size (a catalog larger than one replica's memory is split this way)."""
    if num_shards < 1 or num_shards > max(1, num_tracks):
        raise ValueError(f"shards must be between 1 and {max(1, num_tracks)}, got {num_shards}")
    edges = np.linspace(0, num_tracks, num_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def merge_rankings(rankings: Sequence["Ranking"], starts: Sequence[int], top_k: int) -> tuple:
    """Each shard's top-k (indices local to the shard that starts at ``starts[i]``) ->
    ``(indices, scores, offsets)`` of the catalog's top-k, ordered as one bank orders
    them: by score, then by catalog index (``dvamn.scoring``'s tie rule)."""
    indices = np.concatenate([r.indices + s for r, s in zip(rankings, starts)])
    scores = np.concatenate([r.scores for r in rankings])
    offsets = np.concatenate([r.offsets for r in rankings])
    order = np.lexsort((indices, scores))[:top_k]
    return indices[order], scores[order], offsets[order]


def recall_against_exact(
    exact: Sequence["Ranking"], approx: Sequence["Ranking"], k: int = 10
) -> dict:
    """Top-1 agreement and recall@k of approximate rankings against exact ones."""
    same_top1 = [len(a.indices) > 0 and a.indices[0] == e.indices[0] for e, a in zip(exact, approx)]
    recall = [
        len(set(e.indices[:k]) & set(a.indices[:k])) / max(1, min(k, len(e.indices)))
        for e, a in zip(exact, approx)
    ]
    return {
        "top1_same": float(np.mean(same_top1)) if same_top1 else float("nan"),
        f"recall_at_{k}": float(np.mean(recall)) if recall else float("nan"),
        "queries": len(recall),
    }
