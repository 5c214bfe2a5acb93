"""Rank catalog tracks for a predicted embedding sequence, each at its best start offset.

Shared by evaluation and the service. Letters: T query frames, N tracks, L frames of a track
(L_max the longest), O = L - T + 1 start offsets, D embedding size. All frames are audio
frames (5 Hz, ``AUDIO_HOP_S`` apart).

Score of a track at offset o: the mean over the T query frames of a per-frame distance
between prediction frame t and track frame o + t. Lower is better. Distances:

- ``"l2"`` (``DEFAULT_DISTANCE`` of the functions here): squared Euclidean distance per frame. Vectorised as
  ||p||^2 - 2 p.x + ||x||^2: the cross term is one matmul per chunk of tracks,
  (N·L_max, D) @ (D, T), whose diagonals are summed with a strided view; the ||x||^2
  window sums come from cumulative sums. No loop over tracks or offsets.
- ``"cosine"``: 1 - cosine similarity per frame (frames L2-normalised first, then the
  same matmul). Insensitive to each frame's scale.
- ``"logcosh"``: the training loss per frame (mean over D of log cosh). Has no matmul
  form, so it is computed explicitly over every window (memory O(chunk·O·T·D)): fine for
  evaluation pools, too slow for a 10,000-track catalog.

Evaluation compares the three (docs/training.md gives the numbers). Evaluation and the
service score with ``DEFAULT_SCORING`` ("cosine-w": cosine on standardised, weighted
embeddings; see ``SCORINGS`` below), not with the bare l2.

Tracks shorter than the query (L < T): they are compared at offset 0 over the L frames
they have (the query's first L frames), the mean distance over those frames divided by the
coverage L / T. A short track can still rank well, but only if it matches clearly better
than full-length ones; a track with no frames is never returned (score +inf).
``short_tracks="exclude"`` gives them +inf instead.

Ties: tracks with equal scores are ordered by track index; within a track, the earliest
best offset wins.

Hubness correction (``"cosine-w+qb"``, ``"cosine-w+csls"``: any scoring name with a
``+qb`` or ``+csls`` suffix): some tracks sit close to most queries ("hubs") and win too
often. Both corrections compare each track with a bank of Qb training queries (the
model's predictions for training windows, stored with the checkpoint), once per catalog
(Qb scorer calls), and add a per-track constant to every query's score, so the best
offsets stay those of the plain scoring and a query costs no more:

- ``qb``: QB-Norm's inverted softmax (Bogolin et al. 2022) in distance form:
  d'(q, g) = d(q, g) + (1 / beta) * log sum_b exp(-beta * d(b, g)); a track that every
  bank query finds close is pushed back.
- ``csls``: cross-domain similarity local scaling (Conneau et al. 2018):
  d'(q, g) = d(q, g) - r(g) / 2 with r(g) the mean distance of g's k nearest bank queries.

Rhythm term (``"cosine-w+onset"``, ``"cosine-w+qb+onset"``: any scoring name ending in
``+onset``): the model also predicts an onset-strength sequence at the pose rate (its
onset head, ``DVAMN.predict(..., with_onset=True)``), and each track carries its
``audio_onset`` channel (spectral flux at 10 Hz, ``dvamn.audio.onset``, smoothed by
``onset_target``). At offset o the term is ``ONSET_WEIGHT * (1 - r)``, r the Pearson
correlation of the query's 2T predicted onsets with the track's onsets 2o .. 2o + 2T - 1,
added to the per-frame distance before the best offset is chosen: timing and sound must
agree at the same offset. Tracks shorter than the query get the neutral 1 - 0. The
hubness correction is computed on the embedding part only (bank queries carry no
onsets). The contrastive objective adds the same ``ONSET_WEIGHT * r`` to its similarity
(``onset_similarity``), so training and search compare alike.

Training similarity: ``aligned_similarity`` is the cosine scorings' similarity at one
aligned offset, differentiable, for the contrastive objective (1 - it is exactly the score
``best_offsets`` gives a window at that offset).
"""

import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

# The scoring names live in a module without torch, so that CLIs and config dataclasses
# can name them without importing torch; re-exported here, their usual home.
from dvamn.scoring_names import (  # noqa: F401
    ALL_SCORINGS,
    DEFAULT_DISTANCE,
    DEFAULT_SCORING,
    DISTANCES,
    HUBNESS_METHODS,
    HUBNESS_SCORINGS,
    ONSET_SCORINGS,
    ONSET_TERM,
    SCORINGS,
    default_scoring,
    uses_onset,
)

log = logging.getLogger(__name__)

QB_BETA = 20.0  # QB-Norm's inverse temperature on similarities in [-1, 1] (its paper's value)
CSLS_K = 10  # CSLS's neighbourhood size
# Weight of the rhythm term (1 - correlation, in [0, 2]) beside the per-frame distance (a
# cosine distance is in [0, 2] too); the contrastive objective uses the same weight.
ONSET_WEIGHT = 1.0


def split_scoring(scoring: str) -> tuple:
    """``(base scoring, hubness method or None)``: "cosine-w+qb" -> ("cosine-w", "qb")."""
    if scoring not in ALL_SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(ALL_SCORINGS)}, got {scoring!r}")
    if uses_onset(scoring):
        scoring = scoring[: -len(ONSET_TERM) - 1]
    base, _, hubness = scoring.partition("+")
    return base, hubness or None


def scoring_parts(scoring: str, model=None) -> tuple:
    """``(distance, center, scale)`` for a scoring name (``ALL_SCORINGS``; a hubness suffix
    does not change them): center/scale (128,) from ``model.scoring_transform`` for
    "-std"/"-w", None for raw embeddings."""
    scoring, _ = split_scoring(scoring)
    distance, _, kind = scoring.partition("-")
    if not kind:
        return distance, None, None
    if model is None:
        raise ValueError(f"scoring {scoring!r} needs the model's target statistics")
    center, scale = model.scoring_transform(weighted=kind == "w")
    return distance, center, scale


SHORT_TRACK_POLICIES = ("overlap", "exclude")
# Bounds the (chunk, L_max, T) cross-term tensor: ~256 MB of float32 at this many elements.
DEFAULT_MAX_CHUNK_ELEMENTS = 64_000_000


@dataclass
class TrackBank:
    """A catalog's embedding sequences prepared once for scoring.

    ``tracks``: (N, L_max, D) float tensor, zero-padded after each track's end;
    ``lengths``: (N,) int64 frames per track; ``unit_tracks``: the same with every frame
    L2-normalised (for the cosine distance) and ``squared_norm_cumsum``: cumulative
    squared frame norms (for l2), both built on first use. A bank made with
    ``center``/``scale`` (see ``standardise``) compares standardised frames.
    """

    tracks: torch.Tensor
    lengths: torch.Tensor
    unit_tracks: Optional[torch.Tensor] = None
    squared_norm_cumsum: Optional[torch.Tensor] = None  # (N, L_max + 1) float64
    # When set, tracks hold (x - center) / scale and queries are transformed the same way.
    center: Optional[torch.Tensor] = None  # (D,)
    scale: Optional[torch.Tensor] = None  # (D,)
    # Set by ``normalise_in_place``: ``tracks`` are unit frames, for the cosine distance only.
    unit_only: bool = False
    # Hubness correction (``set_hubness``): a distance added to every query's score of
    # each track, (N,) float64.
    track_penalty: Optional[torch.Tensor] = None
    # The rhythm term (``set_onsets``): each track's ``onset_target`` at the pose rate,
    # zero-padded to 2 * L_max, (N, 2 * L_max) float64, and its cumulative sums.
    onsets: Optional[torch.Tensor] = None
    onset_cumsums: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def transform_query(self, query: torch.Tensor) -> torch.Tensor:
        if self.center is None:
            return query
        return transform_frames(query, self.center, self.scale)

    def window_squared_norms(self, idx: torch.Tensor, width: int) -> torch.Tensor:
        """(len(idx), L_max - width + 1): sum of ||x||^2 over every ``width`` frames, from
        cumulative sums computed once per bank (float64: the differences stay exact)."""
        if self.squared_norm_cumsum is None:
            norms = (self.tracks.double() ** 2).sum(-1)  # (N, L_max)
            self.squared_norm_cumsum = torch.nn.functional.pad(norms.cumsum(dim=1), (1, 0))
        cum = self.squared_norm_cumsum[idx]  # (n, L_max + 1)
        return cum[:, width:] - cum[:, :-width]

    @property
    def num_tracks(self) -> int:
        return int(self.tracks.shape[0])

    @property
    def dim(self) -> int:
        return int(self.tracks.shape[2])

    def nbytes(self) -> int:
        total = self.tracks.element_size() * self.tracks.nelement()
        for extra in (self.unit_tracks, self.squared_norm_cumsum):
            if extra is not None and extra is not self.tracks:
                total += extra.element_size() * extra.nelement()
        return total

    def unit(self) -> torch.Tensor:
        if self.unit_tracks is None:
            self.unit_tracks = _unit_frames(self.tracks)
        return self.unit_tracks

    def normalise_in_place(self) -> None:
        """Make every frame unit length in place, for a bank that is only ever scored with
        the cosine distance (a service's): it then holds one copy of the catalog instead
        of two (``tracks`` and ``unit_tracks``). The other distances refuse it after."""
        self.tracks.div_(self.tracks.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        self.unit_tracks = self.tracks
        self.squared_norm_cumsum = None
        self.unit_only = True


@dataclass
class Ranking:
    """The result of ``best_offsets``.

    ``indices`` (k,): track indices, best first; ``scores`` (k,): their distances;
    ``offsets`` (k,): their best start offsets in audio frames. ``all_scores`` and
    ``all_offsets`` (N,): the same for every track in catalog order (for evaluation).
    """

    indices: np.ndarray
    scores: np.ndarray
    offsets: np.ndarray
    all_scores: np.ndarray
    all_offsets: np.ndarray


def _unit_frames(x: torch.Tensor) -> torch.Tensor:
    # Zero (padding) frames stay zero instead of becoming NaN.
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def transform_frames(x: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(…, D) frames -> (x - center) / scale, the standardised (and weighted) frames that
    "-std"/"-w" scorings compare; scale is floored as ``standardise`` floors it."""
    return (x - center) / scale.clamp_min(1e-6)


def aligned_similarity(queries: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Mean per-frame cosine similarity of every query with every window, aligned frame by
    frame: queries (B, T, D), windows (M, T, D) -> (B, M). Differentiable (the contrastive
    objective's similarity); ``1 - aligned_similarity`` is the cosine distance that
    ``best_offsets`` gives the window at that offset. Inputs are frames as the scoring
    compares them (``transform_frames``)."""
    if queries.dim() != 3 or windows.dim() != 3 or queries.shape[1:] != windows.shape[1:]:
        raise ValueError(
            f"queries (B, T, D) and windows (M, T, D) must agree in T and D, got "
            f"{tuple(queries.shape)} and {tuple(windows.shape)}"
        )
    q = _unit_frames(queries)  # (B, T, D)
    x = _unit_frames(windows)  # (M, T, D)
    # (B, T·D) @ (T·D, M): the sum over frames of per-frame dot products, one matmul.
    return (q.flatten(1) @ x.flatten(1).T) / queries.shape[1]  # (B, M)


def onset_similarity(queries: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every query's onsets with every window's, (B, T_p) and
    (M, T_p) -> (B, M); differentiable (the contrastive objective's rhythm part:
    ``ONSET_WEIGHT`` times it is what the rhythm term subtracts from a distance)."""
    if queries.dim() != 2 or windows.dim() != 2 or queries.shape[1] != windows.shape[1]:
        raise ValueError(
            f"onsets (B, T_p) and (M, T_p) must agree in T_p, got {tuple(queries.shape)} "
            f"and {tuple(windows.shape)}"
        )

    def unit(x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        return centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-6)

    return unit(queries) @ unit(windows).T


def hubness_penalty(bank_scores: np.ndarray, method: str) -> np.ndarray:
    """Per-track correction from the distances of Qb bank queries to N tracks,
    ``bank_scores`` (Qb, N) (each track at its best offset; +inf where never comparable)
    -> (N,) float64 to add to every query's distance (see the module docstring)."""
    scores = np.asarray(bank_scores, np.float64)
    if scores.ndim != 2 or scores.shape[0] < 1:
        raise ValueError(f"bank scores must be (Qb >= 1, N), got {scores.shape}")
    finite = np.isfinite(scores)
    if method == "qb":
        x = np.where(finite, -QB_BETA * scores, -np.inf)
        top = np.max(x, axis=0)
        safe_top = np.where(np.isfinite(top), top, 0.0)
        lse = safe_top + np.log(np.sum(np.exp(x - safe_top), axis=0))
        return np.where(np.isfinite(top), lse / QB_BETA, 0.0)
    if method == "csls":
        k = min(CSLS_K, scores.shape[0])
        nearest = np.sort(np.where(finite, scores, np.inf), axis=0)[:k]  # (k, N)
        mean = np.where(np.isfinite(nearest).all(axis=0), nearest.mean(axis=0), 0.0)
        return -0.5 * mean
    raise ValueError(f"hubness method must be one of {HUBNESS_METHODS}, got {method!r}")


def onset_target(onset: np.ndarray) -> np.ndarray:
    """A track's ``audio_onset`` (T_p,) as the rhythm term compares it: smoothed by the
    rhythm baseline's 3-frame Hann window (``dvamn.rhythm.smooth_series``), float64. The
    onset head is trained against the same."""
    from dvamn.rhythm import smooth_series

    return smooth_series(np.asarray(onset, np.float64).reshape(-1))


def set_onsets(bank: TrackBank, onsets: Optional[Sequence[np.ndarray]]) -> TrackBank:
    """Store every track's ``audio_onset`` (T_p,) (at the pose rate, 2 per audio frame)
    for the rhythm term; None clears it. A track's series is cut or zero-padded to twice
    its audio frames."""
    bank.onsets, bank.onset_cumsums = None, None
    if onsets is None:
        return bank
    if len(onsets) != bank.num_tracks:
        raise ValueError(f"{len(onsets)} onset series for {bank.num_tracks} tracks")
    device = bank.tracks.device
    width = 2 * int(bank.tracks.shape[1])
    padded = np.zeros((bank.num_tracks, width), np.float64)
    for i, (onset, length) in enumerate(zip(onsets, bank.lengths.tolist())):
        series = onset_target(onset)[: 2 * length]
        padded[i, : len(series)] = series
    x = torch.as_tensor(padded, device=device)
    bank.onsets = x
    pad = torch.nn.functional.pad
    bank.onset_cumsums = (pad(x.cumsum(1), (1, 0)), pad((x * x).cumsum(1), (1, 0)))
    return bank


def onset_correlations(
    query_onset: torch.Tensor, bank: TrackBank, idx: torch.Tensor
) -> torch.Tensor:
    """Pearson correlation of a query's predicted onsets (T_p = 2T,) with tracks ``idx``'s
    onsets at every audio offset o (pose frames 2o .. 2o + T_p - 1) -> (n, L_max - T + 1)
    float64; 0 where either series is constant. One strided conv1d and cumulative sums."""
    q = query_onset.double().reshape(-1)
    t_p = len(q)
    centred = q - q.mean()
    norm = centred.norm()
    if float(norm) < 1e-12:
        return torch.zeros(
            len(idx), bank.tracks.shape[1] - t_p // 2 + 1, dtype=torch.float64, device=q.device
        )
    unit = centred / norm
    x = bank.onsets[idx]  # (n, 2 L_max)
    cross = torch.nn.functional.conv1d(x[:, None, :], unit[None, None, :], stride=2)[:, 0]  # (n, O)
    num = cross.shape[1]
    starts = 2 * torch.arange(num, device=x.device)
    total, total_sq = (c[idx] for c in bank.onset_cumsums)
    s = total[:, starts + t_p] - total[:, starts]
    ss = total_sq[:, starts + t_p] - total_sq[:, starts]
    spread = torch.sqrt((ss - s * s / t_p).clamp_min(0.0))  # norm of the centred window
    return torch.where(spread > 1e-9, cross / spread.clamp_min(1e-12), torch.zeros_like(cross))


def set_hubness(
    bank: TrackBank, query_bank: Optional[np.ndarray], method: Optional[str], distance: str
) -> TrackBank:
    """Score every bank query (Qb, T, D) (in the queries' own units, as a model predicts
    them) against ``bank`` and store the per-track correction of ``method`` in
    ``bank.track_penalty``; ``method`` None clears it. Costs Qb scorer calls."""
    bank.track_penalty = None
    if method is None:
        return bank
    if query_bank is None or len(query_bank) == 0:
        raise ValueError(
            f"hubness correction {method!r} needs a query bank of training predictions; "
            "this checkpoint has none (it was written before query banks existed): use a "
            "scoring without '+qb'/'+csls' or retrain"
        )
    scores = np.stack(
        [best_offsets(q, bank, top_k=None, distance=distance).all_scores for q in query_bank]
    )  # (Qb, N)
    bank.track_penalty = torch.as_tensor(hubness_penalty(scores, method), dtype=torch.float64)
    return bank


def standardise(
    bank: TrackBank,
    center: Union[np.ndarray, torch.Tensor],
    scale: Union[np.ndarray, torch.Tensor],
) -> TrackBank:
    """A bank comparing standardised frames, (x - center) / scale per dimension, e.g. with
    the model's ``target_mean`` / ``target_std``: every dimension then weighs the same and
    tracks that sit near the average embedding stop being close to every query (see
    docs/training.md for the comparison). Replaces the tracks in place of a copy where it
    can; padding stays zero."""
    center_t = torch.as_tensor(np.asarray(center), dtype=bank.tracks.dtype)
    scale_t = torch.as_tensor(np.asarray(scale), dtype=bank.tracks.dtype).clamp_min(1e-6)
    device = bank.tracks.device
    center_t, scale_t = center_t.to(device), scale_t.to(device)
    mask = torch.arange(bank.tracks.shape[1], device=device)[None, :] < bank.lengths[:, None]
    tracks = bank.tracks.sub_(center_t).div_(scale_t).mul_(mask[:, :, None])
    return TrackBank(tracks, bank.lengths, center=center_t, scale=scale_t)


def prepare_tracks(
    embeddings: Union[Sequence[np.ndarray], np.ndarray],
    lengths: Optional[Sequence[int]] = None,
    dtype: torch.dtype = torch.float32,
    center: Optional[np.ndarray] = None,
    scale: Optional[np.ndarray] = None,
) -> TrackBank:
    """Pad per-track sequences into one bank (standardised when ``center`` and ``scale``
    (D,) are given).

    ``embeddings``: a list of (L_i, D) arrays, or an already padded (N, L_max, D) array
    with ``lengths`` (N,).
    """
    bank = _pad_tracks(embeddings, lengths, dtype)
    if center is not None or scale is not None:
        if center is None or scale is None:
            raise ValueError("standardising a bank needs both center and scale")
        bank = standardise(bank, center, scale)
    return bank


def _pad_tracks(
    embeddings: Union[Sequence[np.ndarray], np.ndarray],
    lengths: Optional[Sequence[int]],
    dtype: torch.dtype,
) -> TrackBank:
    if isinstance(embeddings, np.ndarray) and embeddings.ndim == 3:
        if lengths is None:
            raise ValueError("a padded (N, L_max, D) track array needs lengths (N,)")
        tracks = torch.tensor(embeddings, dtype=dtype)  # a copy: standardise works in place
        lens = torch.as_tensor(np.asarray(lengths), dtype=torch.int64)
        mask = torch.arange(tracks.shape[1])[None, :] < lens[:, None]
        tracks = tracks * mask[:, :, None]  # padding must be zero for the window sums
        return TrackBank(tracks, lens)
    seqs = [np.asarray(e, dtype=np.float32) for e in embeddings]
    if not seqs:
        raise ValueError("cannot score against an empty catalog")
    dims = {s.shape[1] for s in seqs if s.ndim == 2}
    if len(dims) != 1 or any(s.ndim != 2 for s in seqs):
        raise ValueError(f"track embeddings must all be (L, D) with one D, got dims {dims}")
    lens = torch.as_tensor([len(s) for s in seqs], dtype=torch.int64)
    tracks = torch.zeros(len(seqs), max(1, int(lens.max())), dims.pop(), dtype=dtype)
    for i, s in enumerate(seqs):
        tracks[i, : len(s)] = torch.from_numpy(s)
    return TrackBank(tracks, lens)


def _diagonal_sums(cross: torch.Tensor, num_offsets: int) -> torch.Tensor:
    """cross (N, L, T) with cross[n, l, t] = p_t . x_{n,l} -> (N, O): sum_t cross[n, o+t, t]."""
    n, length, t = cross.shape
    cross = cross.contiguous()
    diagonals = cross.as_strided((n, num_offsets, t), (length * t, t, t + 1))  # (N, O, T)
    return diagonals.sum(dim=-1)


def _matmul_window_distances(
    query: torch.Tensor, tracks: torch.Tensor, track_sq: Optional[torch.Tensor]
) -> torch.Tensor:
    """Sum over t of ||q_t - x_{o+t}||^2 for every offset. query (T, D), tracks (N, L, D),
    L >= T, track_sq (N, O) window sums of ||x||^2, or None for unit frames (every norm taken
    as 1; offsets reaching into the padding are masked by the caller) -> (N, O) float64."""
    t = query.shape[0]
    num_offsets = tracks.shape[1] - t + 1
    cross = torch.matmul(tracks, query.T)  # (N, L, T)
    cross_sums = _diagonal_sums(cross, num_offsets).double()  # (N, O)
    if track_sq is None:
        # Unit frames: 0.5 * (1 - 2 q.x + 1) = 1 - cos exactly, zero frames included.
        return float(t) - 2.0 * cross_sums + float(t)
    query_sq = (query.double() ** 2).sum()
    return query_sq - 2.0 * cross_sums + track_sq


def _logcosh_window_distances(query: torch.Tensor, tracks: torch.Tensor) -> torch.Tensor:
    """Sum over t of mean_D log cosh(q_t - x_{o+t}). query (T, D), tracks (N, L, D) -> (N, O)."""
    t = query.shape[0]
    windows = tracks.unfold(1, t, 1)  # (N, O, D, T)
    diff = (windows - query.T[None, None]).abs()  # (N, O, D, T)
    per = diff + torch.log1p(torch.exp(-2.0 * diff)) - math.log(2.0)
    return per.mean(dim=2).sum(dim=-1)


def _per_frame_distance(query: torch.Tensor, frames: torch.Tensor, distance: str) -> torch.Tensor:
    """Distances between aligned frames: query (n, T', D), frames (n, T', D) -> (n, T')."""
    if distance == "l2":
        return ((query - frames) ** 2).sum(-1)
    if distance == "cosine":
        return 1.0 - (_unit_frames(query) * _unit_frames(frames)).sum(-1)
    diff = (query - frames).abs()
    return (diff + torch.log1p(torch.exp(-2.0 * diff)) - math.log(2.0)).mean(-1)


def _check(prediction: np.ndarray, dim: int, distance: str, short_tracks: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if short_tracks not in SHORT_TRACK_POLICIES:
        raise ValueError(
            f"short_tracks must be one of {SHORT_TRACK_POLICIES}, got {short_tracks!r}"
        )
    if prediction.ndim != 2 or prediction.shape[1] != dim or prediction.shape[0] < 1:
        raise ValueError(
            f"prediction must be (T >= 1, {dim}) to match the catalog, got {prediction.shape}"
        )


def _rank(all_scores: np.ndarray, all_offsets: np.ndarray, top_k: Optional[int]) -> Ranking:
    # Stable sort over catalog order: equal scores keep ascending track index.
    order = np.argsort(all_scores, kind="stable")
    order = order[np.isfinite(all_scores[order])]
    if top_k is not None:
        order = order[:top_k]
    return Ranking(order, all_scores[order], all_offsets[order], all_scores, all_offsets)


def best_offsets(
    prediction: Union[np.ndarray, torch.Tensor],
    bank: TrackBank,
    top_k: Optional[int] = 10,
    distance: str = DEFAULT_DISTANCE,
    short_tracks: str = "overlap",
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
    query_onset: Optional[Union[np.ndarray, torch.Tensor]] = None,
) -> Ranking:
    """Each track's best start offset for ``prediction`` (T, D), and the top-k tracks.

    Vectorised over the catalog: tracks are processed in chunks sized so that the
    (chunk, L_max, T) intermediate stays under ``max_chunk_elements``. ``top_k=None``
    ranks every track with a finite score. ``query_onset`` (2T,): the query's predicted
    onsets; adds the rhythm term (module docstring), for a bank with ``set_onsets``.
    """
    # The bank may live on a GPU; the query follows it and the results come back to CPU.
    device = bank.tracks.device
    if isinstance(prediction, torch.Tensor):
        query = prediction.detach().to("cpu", bank.tracks.dtype)
    else:
        query = torch.as_tensor(np.asarray(prediction), dtype=bank.tracks.dtype)
    _check(query.numpy(), bank.dim, distance, short_tracks)
    if bank.unit_only and distance != "cosine":
        raise ValueError(
            f"this bank was normalised for the cosine distance; it cannot be scored with {distance!r}"
        )
    query = query.to(device)
    query = bank.transform_query(query)
    t = query.shape[0]
    onset_query = None
    if query_onset is not None:
        if bank.onsets is None:
            raise ValueError(
                "the rhythm term (+onset) needs the tracks' audio_onset channel; this catalog "
                "or feature set has none (extract or catalog it again)"
            )
        onset_query = torch.as_tensor(np.asarray(query_onset), dtype=torch.float64).to(device)
        if onset_query.shape != (2 * t,):
            raise ValueError(
                f"query onsets must be ({2 * t},) for a {t}-frame prediction, got "
                f"{tuple(onset_query.shape)}"
            )
    n, l_max, _ = bank.tracks.shape
    lengths = bank.lengths
    tracks = bank.unit() if distance == "cosine" else bank.tracks
    q = _unit_frames(query) if distance == "cosine" else query

    all_scores = torch.full((n,), math.inf, dtype=torch.float64, device=device)
    all_offsets = torch.zeros(n, dtype=torch.int64, device=device)

    full = torch.nonzero(lengths >= t).flatten()
    if len(full) and l_max >= t:
        per_track = l_max * t * (bank.dim if distance == "logcosh" else 1)
        chunk = max(1, max_chunk_elements // max(1, per_track))
        for start in range(0, len(full), chunk):
            idx = full[start : start + chunk]
            # (n, L_max, D); the bank itself when the chunk is all of it (a re-ranking
            # bank of candidate slices: copying it cost as much as scoring it).
            x = tracks if len(idx) == n else tracks[idx]
            if distance == "logcosh":
                window = _logcosh_window_distances(q, x)  # (n, O_max)
            else:
                track_sq = None if distance == "cosine" else bank.window_squared_norms(idx, t)
                window = _matmul_window_distances(q, x, track_sq)
                if distance == "cosine":
                    # ||a - b||^2 = 2 - 2 cos for unit frames, so 1 - cos = half of it.
                    window = 0.5 * window
            if onset_query is not None:
                corr = onset_correlations(onset_query, bank, idx)  # (n, O_max)
                window = window.double() + (ONSET_WEIGHT * t) * (1.0 - corr)
            offsets = torch.arange(window.shape[1], device=device)[None, :]
            valid = offsets <= (lengths[idx] - t)[:, None]  # offsets that stay inside the track
            window = window.masked_fill(~valid, math.inf)
            best, where = window.min(dim=1)  # first minimal offset on ties
            all_scores[idx] = best.double() / t
            all_offsets[idx] = where

    short = torch.nonzero((lengths < t) & (lengths > 0)).flatten()
    if len(short) and short_tracks == "overlap":
        length = int(lengths[short].max())
        x = tracks[short, :length]  # (s, L', D)
        per_frame = _per_frame_distance(q[None, :length].expand(len(short), -1, -1), x, distance)
        mask = torch.arange(length, device=device)[None, :] < lengths[short][:, None]  # (s, L')
        mean = (per_frame * mask).sum(1).double() / lengths[short].double()
        coverage = lengths[short].double() / t
        all_scores[short] = mean / coverage
        if onset_query is not None:
            all_scores[short] += ONSET_WEIGHT  # no correlation over a part: neutral

    if bank.track_penalty is not None:
        all_scores = all_scores + bank.track_penalty.to(device)
    return _rank(all_scores.cpu().numpy(), all_offsets.cpu().numpy(), top_k)


def best_offsets_reference(
    prediction: np.ndarray,
    tracks: Sequence[np.ndarray],
    top_k: Optional[int] = 10,
    distance: str = DEFAULT_DISTANCE,
    short_tracks: str = "overlap",
    center: Optional[np.ndarray] = None,
    scale: Optional[np.ndarray] = None,
    query_onset: Optional[np.ndarray] = None,
    track_onsets: Optional[Sequence[np.ndarray]] = None,
) -> Ranking:
    """The same ranking as ``best_offsets`` by plain loops over tracks and offsets, in
    float64 numpy: the definition the vectorised scorer is tested against. ``center`` and
    ``scale`` standardise queries and tracks as a standardised bank does; ``query_onset``
    (2T,) with ``track_onsets`` adds the rhythm term."""
    prediction = np.asarray(prediction, dtype=np.float64)
    if center is not None:
        scale = np.maximum(np.asarray(scale, np.float64), 1e-6)
        prediction = (prediction - center) / scale
        tracks = [(np.asarray(t, np.float64) - center) / scale for t in tracks]
    dim = tracks[0].shape[1] if len(tracks) else prediction.shape[-1]
    _check(prediction, dim, distance, short_tracks)
    t = len(prediction)

    def frame_distances(p: np.ndarray, x: np.ndarray) -> np.ndarray:
        if distance == "l2":
            return ((p - x) ** 2).sum(-1)
        if distance == "cosine":
            pu = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)
            xu = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
            return 1.0 - (pu * xu).sum(-1)
        d = np.abs(p - x)
        return (d + np.log1p(np.exp(-2.0 * d)) - math.log(2.0)).mean(-1)

    scores = np.full(len(tracks), math.inf)
    offsets = np.zeros(len(tracks), dtype=np.int64)
    if query_onset is not None:
        onsets = [
            np.pad(onset_target(o)[: 2 * len(x)], (0, max(0, 2 * len(x) - len(o))))
            for o, x in zip(track_onsets, tracks)
        ]
    for i, track in enumerate(tracks):
        track = np.asarray(track, dtype=np.float64)
        length = len(track)
        if length >= t:
            for o in range(length - t + 1):
                score = frame_distances(prediction, track[o : o + t]).mean()
                if query_onset is not None:
                    score += ONSET_WEIGHT * (1.0 - _pearson(query_onset, onsets[i], 2 * o))
                if score < scores[i]:
                    scores[i], offsets[i] = score, o
        elif length > 0 and short_tracks == "overlap":
            scores[i] = frame_distances(prediction[:length], track).mean() / (length / t)
            if query_onset is not None:
                scores[i] += ONSET_WEIGHT
    return _rank(scores, offsets, top_k)


def _pearson(query: np.ndarray, series: np.ndarray, start: int) -> float:
    """Pearson correlation of ``query`` with ``series[start : start + len(query)]``
    (0 where either is constant): the rhythm term's definition, for the reference."""
    a = np.asarray(query, np.float64)
    b = np.asarray(series[start : start + len(a)], np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator > 1e-12 else 0.0
