"""Evaluation: the paper's regression metrics and retrieval measured the way the service works.

Regression (the paper's Table 1): mean log-cosh loss, RMSE and MAE over every validation
window, in the targets' own units (quantised VGGish 0..255 for ``--audio vggish``).

Retrieval: each validation window's poses (12 s) are a query; the model predicts its audio
embeddings; the candidates are the whole soundtracks of all validation videos, each
searched over every start offset by ``dvamn.scoring.best_offsets``; the true track's rank
gives Recall@1/5/10 and the median rank, reported beside the pool size and chance level.
``offset_within_0_5s`` is the fraction of queries whose true track's best offset lies
within 0.5 s of where the query was cut.

    dvamn evaluate RUN_OR_CHECKPOINT FEATURES [--json PATH] [--plots DIR]
"""

import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from dvamn import console
from dvamn.constants import AUDIO_HOP_S, POSE_FRAMES_PER_AUDIO_FRAME, WINDOW_POSE_FRAMES
from dvamn.devices import resolve_torch_device
from dvamn.model import DVAMN, log_cosh
from dvamn.rhythm import (
    RhythmBank,
    motion_accents,
    onset_dims,
    pose_accents,
    smooth_series,
    track_onsets,
)
from dvamn.scoring import (
    DEFAULT_DISTANCE,
    DEFAULT_SCORING,
    best_offsets,
    default_scoring,
    prepare_tracks,
    scoring_parts,
    set_hubness,
    set_onsets,
    split_scoring,
    uses_onset,
)
from dvamn.search import DEFAULT_SEARCH, IndexSettings
from dvamn.training.data import (
    DEFAULT_VAL_FRACTION,
    QUERY_STRIDE_POSE_FRAMES,
    Video,
    window_starts,
)
from dvamn.training.metrics import OFFSET_TOLERANCE_S, RECALL_KS, pool_metrics, rank_figures

log = logging.getLogger(__name__)

# What `dvamn evaluate` reports unless asked: log-cosh, having no matmul form, is slow.
REPORTED_SCORINGS = ("cosine-w", "l2-w", "cosine-std", "l2-std", "cosine", "l2")
# Also reported, by default, for a model with an onset head (the rhythm term).
REPORTED_ONSET_SCORINGS = ("cosine-w+onset", "cosine-w+qb+onset")
# Runs with different numbers of validation videos compare at one fixed pool size: the
# ``pool100_*`` figures rank each query's true track among this many candidates.
FIXED_POOL_SIZE = 100


# ---------------------------------------------------------------------------------------------
# Pure metrics on arrays


def regression_sums(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sums for the paper's metrics over a batch, both (B, A, 128) in target units:
    tensor [sum log-cosh, sum squared error, sum absolute error, element count]
    (sums, so that batches and workers can be added before dividing)."""
    diff = prediction - target
    n = float(diff.numel())
    return torch.stack(
        [
            log_cosh(prediction, target) * n,
            (diff * diff).sum(),
            diff.abs().sum(),
            torch.tensor(n, dtype=diff.dtype, device=diff.device),
        ]
    ).double()


def regression_from_sums(sums: torch.Tensor, prefix: str = "") -> Dict[str, float]:
    """loss (mean log-cosh), rmse, mae from ``regression_sums`` totals."""
    total = float(sums[3]) or 1.0
    return {
        f"{prefix}loss": float(sums[0]) / total,
        f"{prefix}rmse": float(np.sqrt(float(sums[1]) / total)),
        f"{prefix}mae": float(sums[2]) / total,
    }


def retrieval_from_predictions(
    predictions: Sequence[np.ndarray],
    true_tracks: Sequence[int],
    true_offsets: Sequence[int],
    tracks: Sequence[np.ndarray],
    distance: str = DEFAULT_DISTANCE,
    keep_scores: bool = False,
    center: Optional[np.ndarray] = None,
    scale: Optional[np.ndarray] = None,
    hubness: Optional[str] = None,
    query_bank: Optional[np.ndarray] = None,
    search: str = DEFAULT_SEARCH,
    index_settings: Optional[IndexSettings] = None,
    query_onsets: Optional[Sequence[np.ndarray]] = None,
    track_onsets: Optional[Sequence[np.ndarray]] = None,
) -> Dict[str, Any]:
    """Rank every candidate track for each prediction (A, 128) and score the true ones
    (frames standardised with ``center``/``scale`` (128,) when given; hubness-corrected
    with ``query_bank`` when ``hubness`` names a method, ``dvamn.scoring.set_hubness``;
    with the rhythm term when ``query_onsets`` (each (2A,)) and ``track_onsets`` are given).

    ``true_tracks[q]``: index into ``tracks`` of query q's own soundtrack;
    ``true_offsets[q]``: the audio frame where the query was cut. Returns r_at_1/5/10,
    median_rank, mean_rank, pool_size, chance_r_at_k, chance_median_rank,
    offset_within_0_5s, num_queries, distance, ``ranks`` and ``true_tracks`` (per query);
    with ``keep_scores`` also ``scores`` (Q, N), the distance of every query to every track.
    ``search="two-stage"`` also ranks every query by two-stage search (``dvamn.search``)
    and reports it under ``two_stage``: the same figures, and its agreement with the
    exhaustive ranking (top-1 the same, recall@10).
    """
    bank = prepare_tracks(list(tracks), center=center, scale=scale)
    set_hubness(bank, query_bank, hubness, distance)
    onsets = _query_onsets(bank, predictions, query_onsets, track_onsets)
    pool = bank.num_tracks
    two_stage = None
    if search == "two-stage" and query_onsets is not None:
        two_stage = {"available": False, "reason": "two-stage search has no rhythm term"}
    elif search == "two-stage":
        two_stage = _two_stage_retrieval(
            predictions, true_tracks, true_offsets, bank, distance, index_settings
        )
    ranks, offset_hits, all_scores = [], [], []
    exact_rankings = []
    queries = console.progress(
        zip(predictions, onsets, true_tracks, true_offsets),
        total=len(predictions),
        desc=f"   queries ({distance})",
        unit="query",
    )
    for prediction, onset, track, offset in queries:
        ranking = best_offsets(prediction, bank, top_k=None, distance=distance, query_onset=onset)
        exact_rankings.append(ranking)
        where = np.nonzero(ranking.indices == track)[0]
        ranks.append(int(where[0]) + 1 if len(where) else pool + 1)
        error_s = abs(int(ranking.all_offsets[track]) - int(offset)) * AUDIO_HOP_S
        offset_hits.append(error_s <= OFFSET_TOLERANCE_S + 1e-9)
        if keep_scores:
            all_scores.append(ranking.all_scores)
    out: Dict[str, Any] = {"distance": distance, "pool_size": pool, "num_queries": len(ranks)}
    out.update(rank_figures(ranks, offset_hits, pool))
    if two_stage is not None:
        if two_stage.get("available", True) and "rankings" in two_stage:
            from dvamn.search import recall_against_exact

            two_stage.update(recall_against_exact(exact_rankings, two_stage.pop("rankings")))
        out["two_stage"] = two_stage
    out["ranks"] = ranks
    out["true_tracks"] = [int(t) for t in true_tracks]
    if keep_scores:
        out["scores"] = np.stack(all_scores) if all_scores else np.zeros((0, pool))
    return out


def _query_onsets(bank, predictions, query_onsets, track_onsets) -> list:
    """Sets the bank's track onsets for the rhythm term and returns each query's onsets
    (None per query without the term)."""
    if query_onsets is None:
        return [None] * len(predictions)
    if track_onsets is None or any(o is None for o in track_onsets):
        raise ValueError(
            "the rhythm term (+onset scorings) needs every candidate's audio_onset channel; "
            "these features lack it (extracted before it existed): extract them again"
        )
    set_onsets(bank, track_onsets)
    return list(query_onsets)


def _two_stage_retrieval(predictions, true_tracks, true_offsets, bank, distance, settings):
    """Two-stage search's ranks of the true tracks (a track the coarse stage did not
    propose ranks last, pool + 1), with its rankings for the comparison with exhaustive."""
    from dvamn.search import SegmentIndex, two_stage_offsets

    if distance != "cosine":
        return {
            "available": False,
            "reason": f"two-stage search approximates the cosine distance, not {distance}",
        }
    index = SegmentIndex.build(bank, settings)
    pool = bank.num_tracks
    ranks, offset_hits, rankings = [], [], []
    for prediction, track, offset in zip(predictions, true_tracks, true_offsets):
        ranking = two_stage_offsets(prediction, bank, index, top_k=None, settings=settings)
        rankings.append(ranking)
        where = np.nonzero(ranking.indices == track)[0]
        ranks.append(int(where[0]) + 1 if len(where) else pool + 1)
        error_s = abs(int(ranking.all_offsets[track]) - int(offset)) * AUDIO_HOP_S
        offset_hits.append(bool(len(where)) and error_s <= OFFSET_TOLERANCE_S + 1e-9)
    out = rank_figures(ranks, offset_hits, pool)
    out.update(available=True, candidates=index.settings.candidates, rankings=rankings)
    return out


def ranks_in_pools(
    scores: np.ndarray, true_tracks: Sequence[int], pools: Sequence[np.ndarray]
) -> np.ndarray:
    """The rank (1 = best) of each query's true track among the candidates of its pool.

    ``scores`` (Q, N): distances of every query to every candidate (lower is better, +inf
    never ranks); ``pools[q]``: candidate indices of query q (including its true track).
    Ties go to the lower candidate index, as ``dvamn.scoring`` orders them."""
    ranks = []
    for q, (track, pool) in enumerate(zip(true_tracks, pools)):
        row = scores[q, pool]
        own = scores[q, track]
        if not np.isfinite(own):
            ranks.append(len(pool) + 1)
            continue
        better = np.sum(row < own) + np.sum((row == own) & (pool < track))
        ranks.append(int(better) + 1)
    return np.asarray(ranks, np.int64)


def fixed_pools(
    true_tracks: Sequence[int],
    num_own: int,
    num_padding: int,
    pool_size: int = FIXED_POOL_SIZE,
    seed: int = 0,
) -> Tuple[List[np.ndarray], int]:
    """Candidate pools of ``pool_size`` for queries whose true tracks index the ``num_own``
    evaluated soundtracks; candidates ``num_own ..`` are ``num_padding`` other tracks.

    - At least ``pool_size`` own soundtracks: each query gets its true track and
      ``pool_size - 1`` of the others, drawn per query from (seed, query index).
    - Fewer: every query gets all own soundtracks, padded with the first
      ``pool_size - num_own`` padding tracks; with too few of those, the pool is smaller.

    Returns (pools, the pool size actually used)."""
    if num_own >= pool_size:
        pools = []
        for q, track in enumerate(true_tracks):
            others = np.delete(np.arange(num_own), track)
            rng = np.random.default_rng([seed, q])
            pick = rng.choice(others, size=pool_size - 1, replace=False)
            pools.append(np.sort(np.concatenate([[track], pick])))
        return pools, pool_size
    used = num_own + min(num_padding, pool_size - num_own)
    pool = np.arange(used)
    return [pool for _ in true_tracks], used


def fixed_pool_retrieval(
    predictions: Sequence[np.ndarray],
    true_tracks: Sequence[int],
    tracks: Sequence[np.ndarray],
    padding_tracks: Sequence[np.ndarray] = (),
    distance: str = DEFAULT_DISTANCE,
    center: Optional[np.ndarray] = None,
    scale: Optional[np.ndarray] = None,
    pool_size: int = FIXED_POOL_SIZE,
    hubness: Optional[str] = None,
    query_bank: Optional[np.ndarray] = None,
    query_onsets: Optional[Sequence[np.ndarray]] = None,
    track_onsets: Optional[Sequence[np.ndarray]] = None,
    padding_onsets: Optional[Sequence[np.ndarray]] = None,
) -> Dict[str, Any]:
    """Recall@k and median rank among a fixed pool of ``pool_size`` candidates (see
    ``fixed_pools``): ``pool100_r_at_1/5/10``, ``pool100_median_rank``,
    ``pool100_mean_rank``, ``pool100_chance_r_at_1``, ``pool100_size`` (the pool actually
    used), ``pool100_padding_tracks`` (how many padding tracks it holds). The rhythm term
    as in ``retrieval_from_predictions`` (``padding_onsets``: the padding tracks')."""
    needed = max(0, pool_size - len(tracks))
    candidates = list(tracks) + list(padding_tracks[:needed])
    pools, used = fixed_pools(true_tracks, len(tracks), len(candidates) - len(tracks), pool_size)
    bank = prepare_tracks(candidates, center=center, scale=scale)
    set_hubness(bank, query_bank, hubness, distance)
    candidate_onsets = None
    if query_onsets is not None:
        candidate_onsets = list(track_onsets or []) + list((padding_onsets or [])[:needed])
    onsets = _query_onsets(bank, predictions, query_onsets, candidate_onsets)
    scores = (
        np.stack(
            [
                best_offsets(p, bank, top_k=None, distance=distance, query_onset=o).all_scores
                for p, o in zip(predictions, onsets)
            ]
        )
        if len(predictions)
        else np.zeros((0, len(candidates)))
    )
    return pool_metrics(ranks_in_pools(scores, true_tracks, pools), used, used - len(tracks))


# ---------------------------------------------------------------------------------------------
# Model on videos


def build_queries(
    videos: Sequence[Video],
    query_stride: int = QUERY_STRIDE_POSE_FRAMES,
    max_queries: Optional[int] = None,
) -> List[Tuple[int, int]]:
    """(video index, pose start frame) of every query window; at most ``max_queries``,
    evenly spread over the list (deterministic)."""
    queries = [
        (i, start)
        for i, v in enumerate(videos)
        for start in window_starts(len(v.pose), len(v.audio), WINDOW_POSE_FRAMES, query_stride)
    ]
    if max_queries is not None and len(queries) > max_queries:
        keep = np.linspace(0, len(queries) - 1, max_queries).round().astype(int)
        queries = [queries[i] for i in keep]
    return queries


@torch.no_grad()
def predict_windows(
    model: DVAMN,
    poses: np.ndarray,
    batch_size: int = 64,
    device: str = "cpu",
    with_onset: bool = False,
):
    """poses (Q, T, 68) -> predicted embeddings in target units (Q, T // 2, 128); with
    ``with_onset``, (embeddings, onsets (Q, T)) from the model's onset head."""
    outputs, onsets = [], []
    for start in range(0, len(poses), batch_size):
        batch = torch.as_tensor(poses[start : start + batch_size], device=device)
        out = model.predict(batch, with_onset=with_onset)
        embeddings, onset = out if with_onset else (out, None)
        outputs.append(embeddings.float().cpu().numpy())
        if with_onset:
            onsets.append(onset.float().cpu().numpy())
    embeddings = np.concatenate(outputs) if outputs else np.zeros((0, 0, 0), np.float32)
    if not with_onset:
        return embeddings
    return embeddings, (np.concatenate(onsets) if onsets else np.zeros((0, 0), np.float32))


def evaluate_videos(
    model: DVAMN,
    videos: Sequence[Video],
    query_stride: int = QUERY_STRIDE_POSE_FRAMES,
    max_queries: Optional[int] = None,
    scorings: Sequence[str] = (DEFAULT_SCORING,),
    batch_size: int = 64,
    device: str = "cpu",
    keep_scores: bool = False,
    max_logcosh_queries: int = 100,
    padding: Sequence[Video] = (),
    padding_source: str = "",
    audio_embedding_kind: Optional[str] = None,
    search: str = DEFAULT_SEARCH,
    index_settings: Optional[IndexSettings] = None,
) -> Dict[str, Any]:
    """Regression and retrieval metrics of ``model`` on validation ``videos``.

    The first of ``scorings`` (``SCORINGS``) gives the top-level retrieval numbers; every
    one is also under ``by_scoring`` (for comparing L2, cosine and log-cosh, raw and
    standardised; log-cosh, being slow, on at most ``max_logcosh_queries`` evenly spread
    queries). Each also has the ``pool100_*`` figures (``fixed_pool_retrieval``): the
    validation soundtracks padded with the soundtracks of ``padding`` (videos that are
    not queried; ``padding_source`` says what they are) up to ``FIXED_POOL_SIZE``.
    With ``audio_embedding_kind``, ``rhythm_baseline`` holds the no-training matcher's
    figures on the same queries and pools (``rhythm_baseline``). ``search="two-stage"``
    adds, per scoring, two-stage search's figures beside the exhaustive ones
    (``two_stage``, see ``retrieval_from_predictions``)."""
    if not videos:
        raise ValueError("no validation videos to evaluate on")
    queries = build_queries(videos, query_stride, max_queries)
    if not queries:
        raise ValueError(
            f"no validation video is long enough for one {WINDOW_POSE_FRAMES}-frame window"
        )
    half = WINDOW_POSE_FRAMES // POSE_FRAMES_PER_AUDIO_FRAME
    poses = np.stack([videos[i].pose[s : s + WINDOW_POSE_FRAMES] for i, s in queries])
    targets = np.stack(
        [videos[i].audio[s // 2 : s // 2 + half] for i, s in queries]
    )  # (Q, 60, 128)
    onset_scorings = [s for s in scorings if uses_onset(s)]
    if onset_scorings and not model.has_onset_head:
        raise ValueError(
            f"scoring {onset_scorings[0]!r} needs a model with an onset head (dvamn train "
            "--onset-head); this one has none"
        )
    query_onsets = None
    if model.has_onset_head:
        predictions, query_onsets = predict_windows(model, poses, batch_size, device, True)
    else:
        predictions = predict_windows(model, poses, batch_size, device)
    sums = regression_sums(torch.from_numpy(predictions), torch.from_numpy(targets))
    out: Dict[str, Any] = regression_from_sums(sums)
    by_scoring = {}
    for scoring in scorings:
        distance, center, scale = scoring_parts(scoring, model)
        hubness = {"hubness": split_scoring(scoring)[1], "query_bank": model.query_bank}
        chosen = np.arange(len(queries))
        if distance == "logcosh" and len(queries) > max_logcosh_queries:
            # log-cosh has no matmul form (see dvamn.scoring): compare on a spread subset.
            chosen = np.linspace(0, len(queries) - 1, max_logcosh_queries).round().astype(int)
        onset_args: Dict[str, Any] = {}
        if uses_onset(scoring):
            onset_args = {
                "query_onsets": [query_onsets[q] for q in chosen],
                "track_onsets": [v.onset for v in videos],
            }
        by_scoring[scoring] = retrieval_from_predictions(
            [predictions[q] for q in chosen],
            [queries[q][0] for q in chosen],
            [queries[q][1] // POSE_FRAMES_PER_AUDIO_FRAME for q in chosen],
            [v.audio for v in videos],
            distance,
            keep_scores=keep_scores and scoring == scorings[0],
            center=center,
            scale=scale,
            search=search,
            index_settings=index_settings,
            **hubness,
            **onset_args,
        )
        by_scoring[scoring]["distance"] = scoring
        by_scoring[scoring].update(
            fixed_pool_retrieval(
                [predictions[q] for q in chosen],
                [queries[q][0] for q in chosen],
                [v.audio for v in videos],
                [v.audio for v in padding],
                distance,
                center=center,
                scale=scale,
                **hubness,
                **onset_args,
                **({"padding_onsets": [v.onset for v in padding]} if onset_args else {}),
            )
        )
    main = by_scoring[scorings[0]]
    out.update({k: v for k, v in main.items() if k not in ("ranks", "true_tracks")})
    out["scoring"] = scorings[0]
    out["by_scoring"] = {
        d: {k: v for k, v in m.items() if k not in ("ranks", "scores", "true_tracks")}
        for d, m in by_scoring.items()
    }
    out["query_stride_frames"] = query_stride
    out["query_true_tracks"] = main["true_tracks"]
    out["pool100_padding"] = describe_padding(len(videos), main["pool100_size"], padding_source)
    if audio_embedding_kind is not None:
        out["rhythm_baseline"] = rhythm_baseline(videos, queries, padding, audio_embedding_kind)
    return out


def rhythm_baseline(
    videos: Sequence[Video],
    queries: Sequence[Tuple[int, int]],
    padding: Sequence[Video],
    audio_embedding_kind: str,
) -> Dict[str, Any]:
    """The no-training rhythm matcher (``dvamn.rhythm``) on the same queries (video index,
    pose start) and candidates as the model: all validation soundtracks (``r_at_k``,
    ``median_rank``, ...) and the fixed pool (``pool100_*``).

    ``channel`` says what the tracks' timing came from: the ``audio_onset`` channel at the
    pose rate where every candidate has it (features extracted since issue 13, any
    embedding kind), else the ``logmel`` onset-rate dimensions at the audio rate.
    ``available`` is False, with the reason, where neither exists (old VGGish features)."""
    needed = max(0, FIXED_POOL_SIZE - len(videos))
    candidate_videos = list(videos) + list(padding[:needed])
    dims = onset_dims(audio_embedding_kind)
    if all(v.onset is not None for v in candidate_videos):
        channel = "audio_onset"
        bank = RhythmBank([smooth_series(v.onset) for v in candidate_videos])
        accents_of, frames_per_offset = pose_accents, 1
        method = (
            "Pearson correlation, at every offset, of the query's motion accents (rectified "
            "rise of summed joint speed per pose frame, 10 Hz) with each track's audio_onset "
            "channel (spectral flux at 10 Hz), both smoothed by a 3-frame Hann window; no "
            "training"
        )
    elif dims is not None:
        channel = "logmel onset-rate dims"
        bank = RhythmBank([track_onsets(v.audio, dims) for v in candidate_videos])
        accents_of, frames_per_offset = motion_accents, POSE_FRAMES_PER_AUDIO_FRAME
        method = (
            "Pearson correlation, at every offset, of the query's motion accents (rectified "
            "rise of summed joint speed, averaged over 0.96 s at 5 Hz) with each track's "
            "summed logmel onset rates (dims 64-79); no training"
        )
    else:
        return {
            "available": False,
            "reason": (
                f"these {audio_embedding_kind!r} features have no audio_onset column (made "
                "before it existed) and the embedding has no onset-rate dimensions: extract "
                "them again, or with --audio logmel"
            ),
        }
    scores, offsets = [], []
    for i, start in queries:
        query = videos[i].pose[start : start + WINDOW_POSE_FRAMES]
        distance, offset = bank.score(accents_of(query))
        scores.append(distance)
        # In audio frames, as the model's offsets.
        offsets.append(offset * frames_per_offset // POSE_FRAMES_PER_AUDIO_FRAME)
    scores_arr = np.stack(scores) if scores else np.zeros((0, len(candidate_videos)))
    true_tracks = [i for i, _ in queries]
    own = np.arange(len(videos))
    ranks = ranks_in_pools(scores_arr, true_tracks, [own] * len(queries))
    out: Dict[str, Any] = {
        "available": True,
        "channel": channel,
        "method": method,
        "num_queries": len(queries),
    }
    hits = [
        abs(int(offsets[q][i]) - start // POSE_FRAMES_PER_AUDIO_FRAME) * AUDIO_HOP_S
        <= OFFSET_TOLERANCE_S + 1e-9
        for q, (i, start) in enumerate(queries)
    ]
    out.update(rank_figures(ranks, hits, len(videos)))
    out["pool_size"] = len(videos)
    pools, used = fixed_pools(true_tracks, len(videos), len(candidate_videos) - len(videos))
    out.update(
        pool_metrics(ranks_in_pools(scores_arr, true_tracks, pools), used, used - len(videos))
    )
    return out


def _same_track(a: Video, b: Video) -> bool:
    return a.audio.shape == b.audio.shape and bool(np.array_equal(a.audio, b.audio))


def describe_padding(num_own: int, pool_used: int, padding_source: str) -> str:
    """What the fixed pool of ``FIXED_POOL_SIZE`` holds, in words (for the JSON and the
    printed summary)."""
    if num_own >= FIXED_POOL_SIZE:
        return (
            f"{num_own} validation soundtracks, at least {FIXED_POOL_SIZE}: each query's true "
            f"track and {FIXED_POOL_SIZE - 1} other validation soundtracks drawn per query "
            "(seeded), no padding"
        )
    text = f"{num_own} validation soundtracks"
    if pool_used > num_own:
        text += f" + {pool_used - num_own} other tracks: {padding_source}"
    if pool_used < FIXED_POOL_SIZE:
        text += (
            f"; only {pool_used} tracks in total, so the pool is {pool_used}, not {FIXED_POOL_SIZE}"
        )
    return text


# ---------------------------------------------------------------------------------------------
# Plots


def write_plots(
    plots_dir: str, history: List[Dict[str, Any]], metrics: Dict[str, Any], max_rows: int = 60
) -> List[str]:
    """Training curves (loss/RMSE/MAE and Recall@k per epoch) and a query-by-candidate
    distance picture. Returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plots_dir, exist_ok=True)
    written = []
    if history:
        epochs = [h["epoch"] + 1 for h in history]  # 1-based, as the progress lines
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for key, style in (
            ("train_loss", "-"),
            ("val_loss", "-"),
            ("val_rmse", "--"),
            ("val_mae", ":"),
        ):
            if all(key in h for h in history):
                axes[0].plot(epochs, [h[key] for h in history], style, label=key)
        axes[0].set_xlabel("epoch")
        axes[0].set_ylabel("target units")
        axes[0].set_title("regression (validation unless marked)")
        axes[0].legend()
        for k in RECALL_KS:
            key = f"val_r_at_{k}"
            if all(key in h for h in history):
                axes[1].plot(epochs, [h[key] for h in history], label=f"R@{k}")
        if history and "val_chance_r_at_1" in history[-1]:
            axes[1].axhline(
                history[-1]["val_chance_r_at_1"], color="grey", ls=":", label="chance R@1"
            )
        axes[1].set_xlabel("epoch")
        axes[1].set_ylim(0, 1)
        axes[1].set_title("retrieval on validation")
        axes[1].legend()
        fig.tight_layout()
        path = os.path.join(plots_dir, "training_curves.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    scores = metrics.get("scores")
    if scores is not None and len(scores):
        truth = np.asarray(metrics["query_true_tracks"])
        rows = np.linspace(0, len(scores) - 1, min(max_rows, len(scores))).round().astype(int)
        fig, ax = plt.subplots(figsize=(8, 6))
        image = ax.imshow(scores[rows], aspect="auto", cmap="viridis_r", interpolation="nearest")
        ax.scatter(
            truth[rows], np.arange(len(rows)), marker="x", color="red", s=12, label="true track"
        )
        ax.set_xlabel("candidate track (validation soundtracks)")
        ax.set_ylabel("query window")
        ax.set_title(f"best-offset score ({metrics['scoring']}); lower is closer")
        fig.colorbar(image, ax=ax)
        ax.legend(loc="upper right")
        fig.tight_layout()
        path = os.path.join(plots_dir, "query_by_candidate.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# The public entry point


def evaluate(
    checkpoint: str,
    features: Any,
    val_fraction: Optional[float] = None,
    query_stride: int = QUERY_STRIDE_POSE_FRAMES,
    max_queries: Optional[int] = None,
    scorings: Sequence[str] = REPORTED_SCORINGS,
    json_path: Optional[str] = None,
    plots_dir: Optional[str] = None,
    batch_size: int = 64,
    device: Optional[str] = None,
    pad_features: Optional[Any] = None,
    search: str = DEFAULT_SEARCH,
    index_settings: Optional[IndexSettings] = None,
) -> Dict[str, Any]:
    """Evaluate a run's best checkpoint (or one checkpoint) on the validation videos of
    ``features`` (URI or Dataset; the split stored in the checkpoint unless
    ``val_fraction`` is given). Refuses features made by other models than the
    checkpoint's. Returns the metrics dict (the ``--json`` content).

    The fixed pool of ``FIXED_POOL_SIZE`` is padded with the soundtracks of
    ``pad_features`` (another extraction output, e.g. the training features when
    ``features`` is an unseen set) when given, else with the soundtracks of the
    training-split videos of ``features``; in video id order."""
    from dvamn import storage
    from dvamn.model import load_model
    from dvamn.ray_setup import ensure_ray
    from dvamn.training.data import collect_features, is_validation, read_features

    ensure_ray()
    device = resolve_torch_device(device or "auto")
    model, metadata = load_model(checkpoint, map_location=device)
    model.to(device)
    if tuple(scorings) == REPORTED_SCORINGS:
        # The service's default first (its figures are the headline), then the rest.
        onset = REPORTED_ONSET_SCORINGS if model.has_onset_head else ()
        served = default_scoring(model.query_bank is not None, rhythm=bool(onset))
        scorings = tuple(dict.fromkeys((served, *REPORTED_SCORINGS, *onset)))
    # One pass over the features (validation needs whole soundtracks in memory anyway).
    all_videos, provenance = collect_features(read_features(features))
    trained_on = metadata.get("provenance")
    if trained_on and trained_on != provenance:
        raise ValueError(
            f"features {features!r} were made with {provenance} but the model was trained on "
            f"{trained_on}: evaluate on features extracted the same way"
        )
    if val_fraction is None:
        val_fraction = float(
            metadata.get("train_config", {}).get("val_fraction", DEFAULT_VAL_FRACTION)
        )
    videos = [v for v in all_videos if is_validation(v.video_id, val_fraction)]
    if pad_features is not None:
        pad_videos, pad_provenance = collect_features(read_features(pad_features))
        if pad_provenance != provenance:
            raise ValueError(
                f"padding features {pad_features!r} were made with {pad_provenance}, the "
                f"evaluated ones with {provenance}: pad with features extracted the same way"
            )
        # Ids may repeat across extraction outputs (dance_0000 in each synth folder), so
        # only a soundtrack identical to an evaluated one is left out of the padding.
        padding = [v for v in pad_videos if not any(_same_track(v, o) for o in videos)]
        padding_source = (
            f"soundtracks of {pad_features} (video id order; if the model was trained on "
            "them, it saw them as targets)"
        )
    else:
        padding = [v for v in all_videos if not is_validation(v.video_id, val_fraction)]
        padding_source = (
            "soundtracks of the training-split videos of the same features (video id order; "
            "the model saw them as targets in training)"
        )
    log.info("evaluating %s on %d validation videos", metadata["checkpoint_uri"], len(videos))
    metrics = evaluate_videos(
        model,
        videos,
        query_stride,
        max_queries,
        scorings,
        batch_size,
        device,
        keep_scores=plots_dir is not None,
        padding=padding,
        padding_source=padding_source,
        audio_embedding_kind=provenance.get("audio_embedding_kind"),
        search=search,
        index_settings=index_settings,
    )
    metrics["checkpoint"] = metadata["checkpoint_uri"]
    metrics["layer"] = model.config.layer
    metrics["epoch"] = metadata.get("epoch")
    metrics["provenance"] = provenance
    metrics["val_fraction"] = val_fraction
    if plots_dir:
        metrics["plots"] = write_plots(plots_dir, metadata.get("history", []), metrics)
    metrics.pop("scores", None)
    if json_path:
        if not storage.is_remote(json_path) and os.path.dirname(json_path):
            os.makedirs(os.path.dirname(json_path), exist_ok=True)
        with storage.open_uri(json_path, "wb") as f:
            f.write(json.dumps(metrics, indent=2).encode())
    return metrics
