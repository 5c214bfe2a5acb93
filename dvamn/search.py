"""Two-stage search: a coarse segment index proposes (track, offset) candidates, the exact
scorer (``dvamn.scoring.best_offsets``) re-ranks them.

The coarse stage approximates the cosine scorings' own distance, so that "recall against
exhaustive search" compares like with like. Letters as in ``dvamn.scoring``: T query frames,
D = 128, W frames a segment (``segment_frames``), d reduced dimensions, S indexed segments.

For unit frames u (the bank's: standardised, weighted, L2-normalised), the exact score of
track x at offset o is 1 - (1/T) sum_t u_q[t] . u_x[o + t]. Over W aligned frames that sum
is the inner product of two flattened (W·D) segment vectors. So:

- segments are long, at the query's own scale (W = 40 frames, 8 s of a 12 s query: most
  of what the exact score sums), and overlap: a track contributes one every
  ``segment_stride`` frames (1 s);
- each segment vector is reduced by an orthogonal projection, computed in factored form
  so that building is cheap: every frame onto the top ``frame_dim`` principal axes of the
  catalog's frames, ``pool_frames`` consecutive reduced frames summed (divided by
  sqrt(pool_frames): the pooling is orthonormal too), the W / pool_frames pooled blocks
  concatenated and projected onto the top ``dim`` principal axes of such vectors. All
  three are uncentred (they keep inner products, not variances around a mean), so the
  reduced inner product is the exact one restricted to a subspace: a W·D x W·D
  covariance (the 189 s build of a flat PCA) is never formed. The reduced vectors are
  then L2-normalised: their inner product is the cosine of the two projected segments,
  which estimates the exact mean frame similarity without favouring segments that happen
  to have more of their energy inside the kept subspace (the raw inner product does: on
  smooth sequences it peaked up to 15 frames away from the true alignment);
- the reduced segments sit in a FAISS inverted-file index with 8-bit scalar quantisation
  (``IndexIVFScalarQuantizer``, inner product);
- a query contributes a segment every ``segment_stride`` frames too, so that a hit of query
  segment t0 on the track segment starting at p implies the offset o = p - t0, a multiple
  of the stride, and every such offset is estimated from the same query segments (query
  segments differ in how well the model predicted them: mixing sets would bias offsets);
- each query segment takes its ``neighbours`` nearest track segments; a (track, offset)
  pair collects the inner products of its hits, and for the aligned query segments that
  did not find it, the similarity of their k-th neighbour (an upper bound of what they
  missed). That optimistic mean similarity ranks the pairs;
- the middle stage: the best ``rescore_tracks`` tracks, each at its best
  ``offsets_per_track`` coarse offsets, are scored on the reduced frames
  (``ReducedFrames``: every frame on the same ``frame_dim`` axes, int8, in memory), the
  exact score restricted to those axes over all T frames, at every offset within
  ``rescore_frames`` of a coarse one. The coarse estimate sees 8 s of the query in 64
  numbers a segment; this sees the whole query in 32 a frame, so it ranks many more
  candidates nearly as the exact scorer does, for little time. ``neighbours`` and
  ``rescore_tracks`` grow with the index's tracks (``IndexSettings.scaled``);
- the best ``candidates`` tracks by it go to the exact scorer, each over offsets o ±
  ``refine_frames`` around its best middle-stage offset, and the top-k of that exact
  ranking is the answer. (Without a middle stage, ``rescore_tracks`` 0, the coarse
  estimate's best ``candidates`` tracks go there, each at its ``offsets_per_track``
  best offsets in distinct regions: refine_frames >= stride / 2 reaches every offset
  between two coarse ones.)

Tracks shorter than the query have no full window to index; they are always re-ranked
(``dvamn.scoring``'s short-track rule). A query shorter than a segment is scored
exhaustively (the index has nothing of its scale). A hubness correction
(``+qb``/``+csls``) is a per-track constant: the re-ranker adds it as exhaustive scoring
does, the coarse stage does not see it. It is computed from the checkpoint's query bank
by two-stage search too (``two_stage_hubness``), so that a replica's start costs Qb fast
searches, not Qb exhaustive ones.

FAISS is the field's standard library for this (faiss-cpu; faiss-gpu on CUDA machines,
where ``device="cuda"`` moves the index to the GPU). Single queries run on the threads
FAISS is given (``faiss.omp_set_num_threads``), one in a 1-CPU replica.
"""

import contextlib
import functools
import io
import json
import logging
from dataclasses import asdict, dataclass, replace
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
INDEX_FORMAT = 2  # 2: overlapping 8 s segments, factored projection (1: 1 s segments)


@dataclass
class IndexSettings:
    """How the coarse index is built and searched (``dvamn serve``/``evaluate`` flags).
    The first five and ``train_segments``/``max_lists`` (the fitting sample and the
    number of inverted lists) fix the index's content; the rest are read at search
    time."""

    segment_frames: int = 40  # W: 8 s at 5 Hz, the query's scale
    segment_stride: int = 5  # a track segment starts every this many frames (1 s)
    frame_dim: int = 32  # each frame's reduced dimensions before pooling
    pool_frames: int = 4  # reduced frames summed into one block
    dim: int = 64  # d: reduced dimensions of a segment vector
    # neighbours and rescore_tracks are for an index of up to scale_tracks tracks; past
    # that (``scaled``), neighbours grows in proportion to the tracks (each query segment
    # then fetches the same fraction of the index, so the k-th neighbour's similarity,
    # the coarse estimate's bound, stays where it was) and rescore_tracks with its
    # square root. Chosen on real predictions at 1,000 and 10,000 tracks, the last
    # changes on tuning queries: windows of the same videos as the benchmark's, shifted
    # 1.5 s (benchmarks/search.py --query-set tuning, docs/serving.md).
    neighbours: int = 1024  # track segments each query segment fetches
    # Tracks the middle stage scores on the reduced frames (0: no middle stage, the
    # coarse estimate picks the exact scorer's candidates itself)
    rescore_tracks: int = 1500
    scale_tracks: int = 1250  # 0: neighbours and rescore_tracks fixed at any size
    # offsets the middle stage scores each side of a coarse offset (stride // 2: all of
    # them between coarse offsets)
    rescore_frames: int = 2
    candidates: int = 100  # tracks the exact scorer re-ranks
    # > 0: of the candidates, only the best this many by the exact similarity at their
    # coarse offsets get the local search (0: every candidate does)
    refine_tracks: int = 0
    # coarse offsets of each track that the middle stage (without one: the exact
    # scorer) scores
    offsets_per_track: int = 4
    refine_frames: int = 3  # exact offsets searched each side of a coarse offset
    nprobe: int = 128  # inverted lists visited per query segment
    # Segments sampled to fit the projection and the lists. FAISS's rule (about 4·sqrt(S)
    # lists, at least 39 training segments a list) then gives 4,096 lists at 10,000
    # tracks, where 50,000 allowed 1,282: each list a third the size, so a probe scans a
    # third as much (p50 at 10,000 tracks about 40% lower, recall the same;
    # docs/serving.md). The catalog job holds the sampled tracks' frames while fitting:
    # about 530 MB for 1,160 3-minute tracks.
    train_segments: int = 200_000
    max_lists: int = 4096  # inverted lists at most (k-means and assignment cost grow with it)

    def check(self) -> "IndexSettings":
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < (
                0
                if name
                in (
                    "refine_frames",
                    "refine_tracks",
                    "rescore_tracks",
                    "rescore_frames",
                    "scale_tracks",
                )
                else 1
            ):
                raise ValueError(f"index setting {name} must be a positive integer, got {value!r}")
        if 2 * self.refine_frames < self.segment_stride - 1:
            raise ValueError(
                f"index setting refine_frames ({self.refine_frames}) must reach half way "
                f"between coarse offsets (segment_stride {self.segment_stride})"
            )
        if self.segment_frames % self.pool_frames:
            raise ValueError(
                f"index setting pool_frames ({self.pool_frames}) must divide segment_frames "
                f"({self.segment_frames})"
            )
        return self

    def scaled(self, num_tracks: int) -> "IndexSettings":
        """These settings for an index (a shard's) of ``num_tracks`` tracks: neighbours
        and rescore_tracks grown past ``scale_tracks`` (see above)."""
        if not self.scale_tracks or num_tracks <= self.scale_tracks:
            return self
        ratio = num_tracks / self.scale_tracks
        return replace(
            self,
            neighbours=int(round(self.neighbours * ratio)),
            rescore_tracks=int(round(self.rescore_tracks * ratio**0.5)),
        )


# FAISS's GPU indexes select at most this many neighbours a query (k and nprobe <= 2048,
# its warp-select limit; still so in faiss-gpu 1.8), where the CPU index has no limit.
GPU_MAX_NEIGHBOURS = 2048


@functools.lru_cache(maxsize=1)
def _int8_product_available() -> bool:
    """Whether this torch multiplies int8 matrices into int32 on CPU (``torch._int_mm``,
    private but what torch's own quantisation uses; checked once, exactly, on a tiny
    product). Without it the middle stage multiplies in float32."""
    try:
        import torch

        a = torch.tensor([[1, -2], [3, 4]], dtype=torch.int8)
        return bool((torch._int_mm(a, a) == a.int() @ a.int()).all())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _faiss():
    import faiss  # imported late: only two-stage search needs it

    return faiss


class SegmentProjection:
    """The factored orthogonal projection of flattened (W·D) unit-frame segments to d
    dimensions (see the module docstring): ``frames`` (D, k), then pooling, then
    ``segments`` (W / pool · k, d)."""

    def __init__(self, settings: IndexSettings, frames: np.ndarray, segments: np.ndarray):
        self.settings = settings
        self.frames = np.ascontiguousarray(frames, np.float32)
        self.segments = np.ascontiguousarray(segments, np.float32)

    @property
    def nbytes(self) -> int:
        return self.frames.nbytes + self.segments.nbytes

    def pooled(self, units: "torch.Tensor", stride: int) -> np.ndarray:
        """(L, D) unit frames -> (S, W / pool · k) pooled reduced segments starting every
        ``stride`` frames (whole segments only)."""
        import torch

        w, p = self.settings.segment_frames, self.settings.pool_frames
        reduced = units.float() @ torch.from_numpy(self.frames)  # (L, k)
        if reduced.shape[0] < w:
            return np.zeros((0, (w // p) * self.frames.shape[1]), np.float32)
        cum = torch.nn.functional.pad(reduced.double().cumsum(0), (0, 0, 1, 0))
        blocks = ((cum[p:] - cum[:-p]) / np.sqrt(p)).float()  # (L - p + 1, k): block at s
        starts = torch.arange(0, reduced.shape[0] - w + 1, stride)
        parts = starts[:, None] + p * torch.arange(w // p)[None, :]  # (S, W / p)
        return blocks[parts].reshape(len(starts), -1).numpy()

    def project(self, units: "torch.Tensor", stride: int) -> np.ndarray:
        """(L, D) unit frames -> (S, d) reduced segments starting every ``stride`` frames,
        L2-normalised (see the module docstring)."""
        reduced = self.pooled(units, stride) @ self.segments
        reduced /= np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(reduced, np.float32)


class ReducedFrames:
    """The middle stage's frames: every track's unit frames projected onto the coarse
    index's frame axes (``SegmentProjection.frames``: the exact per-frame inner product
    restricted to the catalog's top principal axes), int8 with one scale per axis (the
    largest coefficient of the first tracks' frames; beyond it, clipped), the tracks end to
    end (``starts`` (N + 1,): each track's first frame). Built from the bank a replica
    holds, not stored with the catalog: 1 byte a frame and axis, 29 KB a 3-minute track
    at 32 axes."""

    def __init__(self, codes: "torch.Tensor", starts: np.ndarray, scale: np.ndarray):
        self.codes = codes  # (F, k) int8
        self.starts = np.asarray(starts, np.int64)
        self.scale = np.asarray(scale, np.float32)  # (k,)

    @property
    def nbytes(self) -> int:
        return int(self.codes.nelement()) + self.starts.nbytes + self.scale.nbytes

    @classmethod
    def from_bank(
        cls, bank: "TrackBank", projection: SegmentProjection, chunk_tracks: int = 256
    ) -> "ReducedFrames":
        """Project and quantise the bank's unit frames, ``chunk_tracks`` at a time (a
        float16 memory-mapped bank is read once, chunk by chunk)."""
        import torch

        units = bank.unit()
        lengths = bank.lengths.cpu().numpy().astype(np.int64)
        axes = torch.from_numpy(projection.frames)
        starts = np.zeros(len(lengths) + 1, np.int64)
        starts[1:] = np.cumsum(lengths)
        codes = torch.zeros((int(starts[-1]), axes.shape[1]), dtype=torch.int8)
        scale = None
        for first in range(0, len(lengths), chunk_tracks):
            last = min(len(lengths), first + chunk_tracks)
            width = int(lengths[first:last].max(initial=0))
            reduced = units[first:last, :width].float().cpu() @ axes  # (n, width, k)
            if scale is None:
                largest = reduced.abs().amax(dim=(0, 1)).numpy()
                scale = np.maximum(largest, 1e-6).astype(np.float32) / 127.0
            quantised = (reduced / torch.from_numpy(scale)).round_().clamp_(-127, 127)
            quantised = quantised.to(torch.int8)
            for row in range(first, last):
                n = int(lengths[row])
                codes[starts[row] : starts[row] + n] = quantised[row - first, :n]
        if scale is None:
            scale = np.ones(axes.shape[1], np.float32)
        return cls(codes, starts, scale)

    def similarities(
        self, query: "torch.Tensor", tracks: np.ndarray, starts: np.ndarray, shifts: int
    ) -> "torch.Tensor":
        """(C, shifts) mean reduced similarity of ``query`` ((T, k) reduced unit frames)
        with track ``tracks[c]`` at offsets ``starts[c]`` .. ``starts[c] + shifts - 1``
        (frames past a track's end read as whatever follows: the caller masks those
        offsets)."""
        import torch

        t, k = query.shape
        width = t + shifts - 1
        # One (width·k, shifts) matrix holds the query at every shift (dequantised: the
        # codes' scales folded in), so a block of pairs is one matrix product. The query
        # is quantised to int8 too (one scale), so that the product is int8 x int8 ->
        # int32 (``torch._int_mm``, torch's int8 matrix kernel on CPU): converting the
        # gathered codes to float32 first cost 3x the product itself at 10,000 tracks.
        # int32 sums of t·k products of up to 127·127 each: past that (a query of over
        # 4,000 frames at 32 axes) float32 instead.
        int8 = _int8_product_available() and t * k * 127 * 127 < 2**31
        folded = (query * torch.from_numpy(self.scale)).reshape(-1) / t
        columns = -(-shifts // 8) * 8 if int8 else shifts  # int8 kernels: n % 8
        weights = torch.zeros((width * k, columns))
        for shift in range(shifts):
            weights[shift * k : shift * k + t * k, shift] = folded
        if int8:
            weight_scale = float(folded.abs().max().clamp_min(1e-30)) / 127.0
            weights = (weights / weight_scale).round_().to(torch.int8)

        def product(rows: "torch.Tensor") -> "torch.Tensor":  # (n, width·k) int8 codes
            if int8:
                return torch._int_mm(rows, weights)[:, :shifts].float() * weight_scale
            return rows.float() @ weights

        base = torch.as_tensor(self.starts[tracks] + starts)
        total = self.codes.shape[0]
        out = torch.empty((len(base), shifts))
        inside = base + width <= total  # all but pairs at the very end of the last track
        if bool(inside.any()):
            # Every pair's frames are contiguous: (F - width + 1, width·k) windows of the
            # flat codes (a view), one row gathered a pair.
            windows = self.codes.view(-1).unfold(0, width * k, k)
            where = torch.nonzero(inside).flatten()
            step = 256  # pairs a block
            for first in range(0, len(where), step):
                rows = where[first : first + step]
                out[rows] = product(windows.index_select(0, base[rows]))
        if not bool(inside.all()):
            rows = torch.nonzero(~inside).flatten()
            frames = (base[rows, None] + torch.arange(width)[None, :]).clamp_max(total - 1)
            block = self.codes.index_select(0, frames.reshape(-1))
            out[rows] = product(block.view(len(rows), width * k))
        return out


def segment_counts(lengths: np.ndarray, settings: IndexSettings) -> np.ndarray:
    """Indexed segments of each track: one every ``segment_stride`` frames that fits."""
    w, stride = settings.segment_frames, settings.segment_stride
    return np.where(lengths >= w, (lengths - w) // stride + 1, 0).astype(np.int64)


class SegmentIndex:
    """The coarse stage over one bank's unit frames: projection + FAISS index + the map
    from segment id to (track, start frame). Build with ``build``; save/load as bytes."""

    def __init__(
        self, settings: IndexSettings, projection: SegmentProjection, index, first_segment
    ):
        self.settings = settings
        self.projection = projection
        self.index = index
        # (N + 1,) id of each track's first segment: segment id s is track
        # searchsorted(first_segment, s, "right") - 1, starting at frame
        # segment_stride · (s - first_segment[track]).
        self.first_segment = np.asarray(first_segment, np.int64)
        # The middle stage's reduced frames of the bank searched (``attach_frames``): not
        # part of the stored index, derived from the bank when a search first needs them.
        self.frames: Optional[ReducedFrames] = None
        self._segment_tracks: Optional[np.ndarray] = None
        # The CPU index a GPU copy was made from (``to_device``): searched instead where
        # a query asks for more neighbours than FAISS's GPU k-selection allows.
        self.cpu_index = None
        self._warned_gpu_k = False

    @property
    def num_tracks(self) -> int:
        return len(self.first_segment) - 1

    def nbytes(self) -> int:
        """Memory the search structures hold: quantised codes, list ids, centroids,
        projection and the segment map."""
        faiss = _faiss()
        index = self.index
        if not hasattr(index, "code_size"):  # a GPU copy: count the CPU layout
            index = faiss.index_gpu_to_cpu(index)
        codes = int(index.ntotal) * (int(index.code_size) + 8)  # code + list id
        centroids = int(faiss.downcast_index(index.quantizer).ntotal) * int(index.d) * 4
        frames = self.frames.nbytes if self.frames is not None else 0
        lookup = 4 * int(self.first_segment[-1])  # segment_tracks, made at the first search
        fixed = centroids + self.projection.nbytes + self.first_segment.nbytes
        return codes + fixed + frames + lookup

    def segment_tracks(self) -> np.ndarray:
        """(S,) int32: the track of every segment id, made on first use (at 8,192
        neighbours, a binary search of ``first_segment`` per hit took a tenth of a
        query's time; this lookup, 4 bytes a segment, a hundredth)."""
        if self._segment_tracks is None:
            counts = np.diff(self.first_segment)
            self._segment_tracks = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        return self._segment_tracks

    def attach_frames(self, bank: "TrackBank") -> ReducedFrames:
        """The middle stage's reduced frames of ``bank`` (the one this index was built
        from), built on first use and kept."""
        if self.frames is None or len(self.frames.starts) != bank.num_tracks + 1:
            self.frames = ReducedFrames.from_bank(bank, self.projection)
        return self.frames

    @classmethod
    def build(
        cls,
        bank: "TrackBank",
        settings: Optional[IndexSettings] = None,
        seed: int = 0,
        chunk_tracks: int = 256,
    ) -> "SegmentIndex":
        """Fit the projection and the inverted lists on a sample of the bank's segments,
        then add every segment (in chunks of tracks, so memory stays bounded; a
        memory-mapped float16 bank is read chunk by chunk). In one process: ``fit``,
        ``encode`` and ``add_codes`` as ``dvamn catalog`` runs them on Ray Data."""
        settings = (settings or IndexSettings()).check()
        units = bank.unit()
        lengths = bank.lengths.cpu().numpy()
        track = [units[i, : int(n)] for i, n in enumerate(lengths)]
        index = cls.fit(
            [track[i] for i in cls.sample_rows(lengths, settings, seed)], lengths, settings, seed
        )
        for start in range(0, len(lengths), chunk_tracks):
            rows = np.arange(start, min(len(lengths), start + chunk_tracks))
            index.add_codes(rows, index.encode([track[i] for i in rows]))
        return index.check_complete()

    @staticmethod
    def sample_rows(
        lengths: np.ndarray, settings: Optional[IndexSettings] = None, seed: int = 0
    ) -> np.ndarray:
        """The rows (tracks, in catalog order) whose unit frames ``fit`` is given."""
        settings = (settings or IndexSettings()).check()
        counts = segment_counts(np.asarray(lengths), settings)
        return _sample_tracks(counts, settings.train_segments, seed)

    @classmethod
    def fit(
        cls,
        sample_units: Sequence["torch.Tensor"],
        lengths: np.ndarray,
        settings: Optional[IndexSettings] = None,
        seed: int = 0,
    ) -> "SegmentIndex":
        """An index of tracks of these ``lengths`` (catalog order) with its projection and
        inverted lists fitted on ``sample_units``, the (L, D) unit frames of the tracks
        ``sample_rows`` names, and no segment yet: ``encode`` each track's frames (any
        process can: the fitted index is small), then ``add_codes`` them, in any order."""
        settings = (settings or IndexSettings()).check()
        counts = segment_counts(np.asarray(lengths), settings)
        first = np.zeros(len(counts) + 1, np.int64)
        first[1:] = np.cumsum(counts)
        if first[-1] == 0:
            raise ValueError(f"no track has {settings.segment_frames} frames: nothing to index")
        with _one_torch_thread():
            projection = _fit_projection(sample_units, settings)
            train = np.concatenate(
                [projection.project(u, settings.segment_stride) for u in sample_units]
            )
        rng = np.random.default_rng(seed + 1)
        if len(train) > settings.train_segments:
            train = train[rng.choice(len(train), settings.train_segments, replace=False)]
        nlist = _num_lists(int(first[-1]), len(train), settings.max_lists)
        index = _new_index(projection.segments.shape[1], nlist)
        index.train(np.ascontiguousarray(train))
        return cls(settings, projection, index, first)

    def encode(self, tracks: Sequence["torch.Tensor"]) -> list:
        """Each track's (L, D) unit frames -> its segments' FAISS codes (S, code size),
        uint8: the projected segments, assigned to their lists and quantised."""
        with _one_torch_thread():
            segments = [self.projection.project(t, self.settings.segment_stride) for t in tracks]
        counts = [len(s) for s in segments]
        if not sum(counts):
            return [np.zeros((0, self.index.sa_code_size()), np.uint8) for _ in tracks]
        codes = self.index.sa_encode(np.ascontiguousarray(np.concatenate(segments)))
        return np.split(codes, np.cumsum(counts)[:-1])

    def add_codes(self, rows: Sequence[int], codes: Sequence[np.ndarray]) -> None:
        """Add the ``encode``d segments of the tracks at these catalog ``rows``."""
        ids = []
        for row, code in zip(rows, codes, strict=True):
            begin, end = int(self.first_segment[row]), int(self.first_segment[row + 1])
            if len(code) != end - begin:
                raise ValueError(
                    f"track {row}: {len(code)} segment codes, but its length gives {end - begin}"
                )
            ids.append(np.arange(begin, end, dtype=np.int64))
        if ids and sum(len(i) for i in ids):
            self.index.add_sa_codes(np.concatenate(codes), np.concatenate(ids))

    def check_complete(self) -> "SegmentIndex":
        """Raise unless every track's segments were added once."""
        expected = int(self.first_segment[-1])
        if int(self.index.ntotal) != expected:
            raise ValueError(
                f"the coarse index holds {self.index.ntotal} segments of the {expected} its "
                "tracks have: some tracks were not added, or were added twice"
            )
        log.info(
            "coarse index: %d segments of %d tracks, %d lists",
            expected,
            self.num_tracks,
            int(self.index.nlist),
        )
        return self

    def to_bytes(self) -> bytes:
        faiss = _faiss()
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(INDEX_FORMAT),
            settings=np.frombuffer(json.dumps(asdict(self.settings)).encode(), np.uint8),
            frame_projection=self.projection.frames,
            segment_projection=self.projection.segments,
            first_segment=self.first_segment,
            index=faiss.serialize_index(self.index),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "SegmentIndex":
        faiss = _faiss()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if int(z["format"]) != INDEX_FORMAT:
                raise ValueError(
                    f"index format {int(z['format'])}, expected {INDEX_FORMAT}: rebuild the index"
                )
            settings = IndexSettings(**json.loads(z["settings"].tobytes().decode()))
            projection = SegmentProjection(settings, z["frame_projection"], z["segment_projection"])
            index = faiss.deserialize_index(z["index"])
            return cls(settings, projection, index, z["first_segment"])

    def candidates(
        self,
        query_units: "torch.Tensor",
        lengths: np.ndarray,
        settings: IndexSettings,
        tracks: Optional[int] = None,
    ) -> np.ndarray:
        """(C, 2) int64 rows of (track, offset) for a query's unit frames (T, D) (T >=
        segment_frames): of the best ``candidates`` tracks, each at its best
        ``offsets_per_track`` offsets in distinct regions, best coarse estimate first;
        with ``tracks`` (the middle stage's), of the best ``tracks`` tracks, each at its
        best ``offsets_per_track`` coarse offsets, in no order."""
        stride = self.settings.segment_stride
        t = query_units.shape[0]
        # Query segments on the tracks' grid: a hit gives an offset that is a multiple of
        # the stride, and every such offset is estimated from the same query segments.
        reduced = self.projection.project(query_units, stride)  # (Q, d)
        if not len(reduced):
            return np.zeros((0, 2), np.int64)
        k = min(settings.neighbours, int(self.index.ntotal))
        searched = self.index
        if self.cpu_index is not None and k > GPU_MAX_NEIGHBOURS:
            searched = self.cpu_index
            if not self._warned_gpu_k:
                log.warning(
                    "%d neighbours a query segment (IndexSettings.neighbours, grown with the "
                    "index's %d tracks) exceed the %d FAISS finds on a GPU: searching the "
                    "index on CPU (smaller shards, or fewer neighbours, keep it on the GPU)",
                    k,
                    self.num_tracks,
                    GPU_MAX_NEIGHBOURS,
                )
                self._warned_gpu_k = True
        if hasattr(searched, "nprobe"):
            searched.nprobe = settings.nprobe
        sims, ids = _nearest(searched, reduced, k)  # (Q, k) each, in no order
        found = ids >= 0
        # The k-th neighbour's similarity (with fewer found, the last found's).
        kth = np.nan_to_num(np.nanmin(np.where(found, sims, np.nan), 1), nan=0.0)
        q_start = np.broadcast_to(stride * np.arange(len(ids))[:, None], ids.shape)[found]
        q_row = q_start // stride
        sid, sim = ids[found], sims[found]
        track = self.segment_tracks()[sid]
        offset = stride * (sid - self.first_segment[track]) - q_start
        valid = (offset >= 0) & (offset <= lengths[track] - t)
        track, offset, gain = track[valid], offset[valid], (sim - kth[q_row])[valid]
        if not len(track):
            return np.zeros((0, 2), np.int64)
        # Optimistic mean similarity of each (track, offset): every query segment's k-th
        # similarity (a bound on what it did not find) plus what each hit gained over it.
        span = int(lengths.max()) + 1
        key = track * span + offset
        unique, inverse = np.unique(key, return_inverse=True)
        gains = np.bincount(inverse, weights=gain)
        u_track, u_offset = unique // span, unique % span
        estimate = (kth.sum() + gains) / len(kth)
        if tracks is not None:
            return _best_offsets_of_best_tracks(u_track, u_offset, estimate, tracks, settings)
        order = np.argsort(-estimate, kind="stable")
        # Diversity: the best ``candidates`` tracks, each with its best few offsets (one
        # track's neighbouring offsets would otherwise fill the whole list).
        kept = _unique_in_order(u_track[order])[: settings.candidates]
        chosen = order[np.isin(u_track[order], kept)]
        # Distinct regions: the best offset of each bin of 2·refine_frames + 1 offsets
        # (its neighbours are re-ranked around it anyway), then a track's best bins.
        width = 2 * settings.refine_frames + 1
        regions = u_track[chosen] * (span // width + 1) + u_offset[chosen] // width
        chosen = chosen[_rank_within_groups(regions) == 0]
        rank_in_track = _rank_within_groups(u_track[chosen])
        chosen = chosen[rank_in_track < settings.offsets_per_track]
        return np.stack([u_track[chosen], u_offset[chosen]], axis=1)


def _nearest(index, queries: np.ndarray, k: int) -> tuple:
    """(sims, ids), each (Q, k), of the k nearest indexed segments of each query segment
    among those in its ``nprobe`` nearest lists, in no order (ids -1 where fewer). On CPU
    this is FAISS's range search with no radius (every segment of the probed lists) and
    a partial sort: the same neighbours as ``index.search(queries, k)``, but at thousands
    of neighbours the search's top-k heap made it 2 to 3 times as slow (10,000 tracks,
    8,192 neighbours, 4,096 lists, 128 probed: 20 ms against 11 ms a query). A GPU index has no
    range search: it searches."""
    if not hasattr(index, "range_search") or "Gpu" in type(index).__name__:
        return index.search(queries, k)
    limits, all_sims, all_ids = index.range_search(queries, -np.finfo(np.float32).max)
    sims = np.full((len(queries), k), np.nan, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    for row in range(len(queries)):
        found_sims = all_sims[limits[row] : limits[row + 1]]
        found_ids = all_ids[limits[row] : limits[row + 1]]
        if len(found_sims) > k:
            # Of segments tied at the k-th similarity, which are kept follows the scan's
            # order (the heap's choice may differ); the k-th similarity is the same.
            best = np.argpartition(-found_sims, k - 1)[:k]
            found_sims, found_ids = found_sims[best], found_ids[best]
        sims[row, : len(found_sims)] = found_sims
        ids[row, : len(found_ids)] = found_ids
    return sims, ids


def _best_offsets_of_best_tracks(
    u_track: np.ndarray, u_offset: np.ndarray, estimate: np.ndarray, tracks: int, settings
) -> np.ndarray:
    """(track, offset) rows of the best ``tracks`` tracks by their best estimate (ties:
    lower track), each at its best ``offsets_per_track`` offsets (ties: earlier): one
    sort of the pairs (this runs on every hit of a large ``neighbours``)."""
    # By track, then best first (estimates are mean cosines, in [-1, 1]: one float key;
    # stable, so equal estimates keep the earlier offset first).
    order = np.argsort(u_track * 4.0 - estimate, kind="stable")
    sorted_tracks = u_track[order]
    first = np.r_[True, sorted_tracks[1:] != sorted_tracks[:-1]]
    run = np.cumsum(first) - 1  # each sorted pair's track, numbered
    starts = np.flatnonzero(first)
    rank = np.arange(len(order)) - starts[run]
    best = estimate[order[first]]  # each track's best estimate, tracks ascending
    kept = np.zeros(len(starts), bool)
    kept[np.argsort(-best, kind="stable")[:tracks]] = True
    chosen = order[kept[run] & (rank < settings.offsets_per_track)]
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


def _sample_tracks(counts: np.ndarray, segments: int, seed: int) -> np.ndarray:
    """Tracks (sorted) whose segments make at least ``segments`` training segments, or
    every indexable track."""
    rng = np.random.default_rng(seed)
    indexable = np.flatnonzero(counts > 0)
    order = rng.permutation(indexable)
    enough = np.searchsorted(np.cumsum(counts[order]), segments) + 1
    return np.sort(order[:enough])


def _fit_projection(
    sample_units: Sequence["torch.Tensor"], settings: IndexSettings
) -> SegmentProjection:
    """Fit the frame axes on the sampled tracks' unit frames, then the segment axes on
    their pooled segments."""
    import torch

    frames = torch.cat([u.float() for u in sample_units])
    frame_axes = _uncentred_pca(frames, settings.frame_dim)
    partial = SegmentProjection(settings, frame_axes, np.zeros((0, 0), np.float32))
    pooled = np.concatenate([partial.pooled(u, settings.segment_stride) for u in sample_units])
    segment_axes = _uncentred_pca(torch.from_numpy(pooled), settings.dim)
    return SegmentProjection(settings, frame_axes, segment_axes)


@contextlib.contextmanager
def _one_torch_thread():
    """torch on one thread for a while: for fitting (see ``_uncentred_pca``) and encoding.
    These alternate torch and FAISS calls, and the two libraries' OpenMP runtimes (each
    ships its own) spin against each other: on 2 cores, 300 tracks took 3.4 s to fit and
    3.4 s to encode with torch on 2 threads, 0.8 s and 0.15 s with it on one."""
    import torch

    threads = torch.get_num_threads()
    if threads == 1:  # set_num_threads also drops oneDNN's cached kernels: not for nothing
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _uncentred_pca(sample: "torch.Tensor", dim: int) -> np.ndarray:
    """(F, d): the top eigenvectors of the rows' second-moment matrix (no centring: the
    projection must keep inner products, not variances around a mean)."""
    import torch

    # torch's eigh, not numpy's: numpy's BLAS threads ignore the replica's thread limit.
    # On one thread (``fit``'s ``_one_torch_thread``): threaded MKL rounds the
    # eigenvectors differently with the thread count, and the catalog's index (fitted in
    # its driver) must be the one any process on the same kind of machine would fit.
    x = sample.double()
    gram = (x.T @ x) / max(1, len(x))  # (F, F)
    values, vectors = torch.linalg.eigh(gram)
    top = torch.argsort(values, descending=True)[: min(dim, gram.shape[0])]
    return vectors[:, top].float().numpy()


def _num_lists(total: int, trainable: int, max_lists: int) -> int:
    # FAISS's guidance: about 4·sqrt(S) lists, and at least 39 training points per list.
    return int(max(1, min(4 * int(np.sqrt(total)), trainable // 39, max_lists)))


def _new_index(dim: int, nlist: int):
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(dim)
    return faiss.IndexIVFScalarQuantizer(
        quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )


def to_device(index: SegmentIndex, device: str) -> SegmentIndex:
    """Copy the FAISS index to the GPU for ``device="cuda"`` (faiss-gpu), else leave it.
    The CPU index is kept for queries that ask for more neighbours than the GPU finds."""
    faiss = _faiss()
    if device != "cuda":
        return index
    if not hasattr(faiss, "StandardGpuResources"):
        log.warning("this FAISS build has no GPU support (install faiss-gpu); searching on CPU")
        return index
    index.cpu_index = index.index
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

    settings = (settings or index.settings).check().scaled(index.num_tracks)
    if index.num_tracks != bank.num_tracks:
        raise ValueError(
            f"the coarse index holds {index.num_tracks} tracks but the bank {bank.num_tracks}: "
            "rebuild the index for this catalog"
        )
    query = torch.as_tensor(np.asarray(prediction), dtype=torch.float32)
    if query.dim() != 2 or query.shape[1] != bank.dim or query.shape[0] < 1:
        raise ValueError(f"prediction must be (T >= 1, {bank.dim}), got {tuple(query.shape)}")
    t = query.shape[0]
    if t < index.settings.segment_frames:
        # Nothing in the index has this query's scale: the exact reference instead.
        return exact_in_chunks(prediction, bank, top_k)
    units = bank.unit()
    query_units = bank.transform_query(query.to(units.device))
    query_units = query_units / query_units.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    lengths = bank.lengths.cpu().numpy()
    if settings.rescore_tracks:
        pairs = index.candidates(query_units, lengths, settings, settings.rescore_tracks)
        pairs = _rescore(
            pairs, query_units, index.attach_frames(bank), index.projection, lengths, settings
        )
    else:
        pairs = index.candidates(query_units, lengths, settings)
    if settings.refine_tracks and len(pairs):
        pairs = _probe(pairs, query_units, units, settings.refine_tracks)
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
        # (C, Wc, D), zero past the end; float32 whatever the store holds (a float16
        # memory-mapped catalog reads only these slices).
        slices = _windows(units, tracks, starts, width, ends)
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


def exact_in_chunks(prediction, bank: "TrackBank", top_k: Optional[int], chunk_tracks: int = 512):
    """Exhaustive cosine ``best_offsets`` over a bank of unit frames in any precision (a
    float16 memory-mapped one included): chunks of tracks are read as float32 and scored,
    the rankings merged (catalog order, so ties break as one bank breaks them)."""
    import torch

    from dvamn.scoring import TrackBank, _rank, best_offsets

    if bank.unit().dtype == torch.float32:
        return best_offsets(prediction, bank, top_k=top_k, distance="cosine")
    scores = np.full(bank.num_tracks, np.inf)
    offsets = np.zeros(bank.num_tracks, np.int64)
    for start in range(0, bank.num_tracks, chunk_tracks):
        stop = min(bank.num_tracks, start + chunk_tracks)
        frames = bank.unit()[start:stop].float()
        chunk = TrackBank(
            frames,
            bank.lengths[start:stop],
            unit_tracks=frames,
            center=bank.center,
            scale=bank.scale,
            unit_only=True,
        )
        if bank.track_penalty is not None:
            chunk.track_penalty = bank.track_penalty[start:stop]
        ranking = best_offsets(prediction, chunk, top_k=None, distance="cosine")
        scores[start:stop], offsets[start:stop] = ranking.all_scores, ranking.all_offsets
    return _rank(scores, offsets, top_k)


def _windows(units, tracks, starts, width: int, ends=None) -> "torch.Tensor":
    """(C, width, D) float32: frames starts[c] .. starts[c] + width - 1 of track tracks[c]
    (zero from ends[c] on, when given). Rows of a contiguous bank are picked from its
    flat (N·L, D) view by ``index_select``: half the time of 2-D advanced indexing on a
    float16 memory-mapped bank, the re-ranking's largest cost after the scoring itself."""
    import torch

    n, length, dim = units.shape
    frames = torch.as_tensor(starts)[:, None] + torch.arange(width)[None, :]  # (C, width)
    inside = None if ends is None else frames < torch.as_tensor(ends)[:, None]
    rows = torch.as_tensor(tracks)[:, None] * length + frames.clamp_max(length - 1)
    rows = rows.to(units.device)
    if units.is_contiguous():
        picked = units.view(n * length, dim).index_select(0, rows.reshape(-1))
        picked = picked.view(len(rows), width, dim).float()
    else:
        picked = units[rows // length, rows % length].float()
    if inside is not None:
        picked[~inside.to(units.device)] = 0.0  # in place: a pass over C·width·D costs ms
    return picked


def _probe(pairs: np.ndarray, query_units, units, keep_tracks: int) -> np.ndarray:
    """The exact similarity at each candidate's coarse offset alone (T frames, one window:
    cheap), and the pairs of the best ``keep_tracks`` tracks by it, which the local search
    around their offsets then scores (the coarse offset is within half a stride of the
    best one, and neighbouring offsets of smooth embeddings score alike)."""
    import torch

    t = query_units.shape[0]
    windows = _windows(units, pairs[:, 0], pairs[:, 1], t)  # (C, T, D)
    sims = torch.einsum("ctd,td->c", windows, query_units.float()).cpu().numpy()
    order = np.argsort(-sims, kind="stable")
    kept_tracks = _unique_in_order(pairs[order, 0])[:keep_tracks]
    return pairs[np.isin(pairs[:, 0], kept_tracks)]


def _rescore(
    pairs: np.ndarray,
    query_units: "torch.Tensor",
    frames: ReducedFrames,
    projection: SegmentProjection,
    lengths: np.ndarray,
    settings: IndexSettings,
) -> np.ndarray:
    """The middle stage: each coarse pair (track, o) scored on the reduced frames at
    offsets o - rescore_frames .. o + rescore_frames (at stride // 2, the coarse
    offsets' regions cover every offset), and each of the best ``candidates`` tracks by
    that score at its best offset, as (track, offset) rows, best first."""
    import torch

    if not len(pairs):
        return pairs
    t = query_units.shape[0]
    half = settings.rescore_frames
    shifts = 2 * half + 1
    tracks, coarse = pairs[:, 0], pairs[:, 1]
    last_offset = lengths[tracks] - t  # >= 0: candidates hold whole windows
    starts = np.clip(coarse - half, 0, np.maximum(0, last_offset - 2 * half))
    query = query_units.float().cpu() @ torch.from_numpy(projection.frames)
    sims = frames.similarities(query, tracks, starts, shifts).numpy()  # (C, shifts)
    offsets = starts[:, None] + np.arange(shifts)[None, :]
    sims[offsets > last_offset[:, None]] = -np.inf
    best = sims.argmax(axis=1)
    score = sims[np.arange(len(best)), best]
    offset = offsets[np.arange(len(best)), best]
    # Each track's best pair (scores are mean cosines in [-1, 1], or -inf: one float key),
    # then the best tracks by it, ties by track.
    by_track = np.argsort(tracks * 4.0 - score, kind="stable")
    sorted_tracks = tracks[by_track]
    best = by_track[np.r_[True, sorted_tracks[1:] != sorted_tracks[:-1]]]
    chosen = best[np.argsort(-score[best], kind="stable")[: settings.candidates]]
    return np.stack([tracks[chosen], offset[chosen]], axis=1)


def _unique_in_order(values: np.ndarray) -> np.ndarray:
    """The distinct values in order of first appearance."""
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


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
    exact: Sequence["Ranking"], approx: Sequence["Ranking"], k: int = 10, tie: float = 1e-6
) -> dict:
    """Top-1 agreement and recall@k of approximate rankings against exact ones, and why
    the exact top-k entries the approximate top-k lacks were lost, as fractions of all
    exact top-k entries: ``missed_coarse`` (the coarse stage never proposed the track: its
    approximate score is +inf), ``missed_offset`` (re-ranked, but the exact best offset
    was outside the searched windows: a worse score than the exact one by more than
    ``tie``), ``missed_tie`` (re-ranked at its exact score, displaced by an equal one)."""
    same_top1 = [len(a.indices) > 0 and a.indices[0] == e.indices[0] for e, a in zip(exact, approx)]
    recall = [
        len(set(e.indices[:k]) & set(a.indices[:k])) / max(1, min(k, len(e.indices)))
        for e, a in zip(exact, approx)
    ]
    causes = {"missed_coarse": 0, "missed_offset": 0, "missed_tie": 0}
    for e, a in zip(exact, approx):
        kept = set(a.indices[:k])
        for track in e.indices[:k]:
            if track in kept:
                continue
            score = a.all_scores[track]
            if not np.isfinite(score):
                causes["missed_coarse"] += 1
            elif score > e.all_scores[track] + tie:
                causes["missed_offset"] += 1
            else:
                causes["missed_tie"] += 1
    entries = sum(min(k, len(e.indices)) for e in exact)
    return {
        "top1_same": float(np.mean(same_top1)) if same_top1 else float("nan"),
        f"recall_at_{k}": float(np.mean(recall)) if recall else float("nan"),
        **{name: count / max(1, entries) for name, count in causes.items()},
        "queries": len(recall),
    }
