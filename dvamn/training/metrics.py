"""Retrieval metrics, defined once: how ranks become figures, and which figures are shown.

Evaluation (``dvamn evaluate``), the per-epoch validation of training, the CLI's tables,
the plots and the demo's report all compute and name them here. Plain numpy.
"""

from typing import Any, Dict, Sequence

import numpy as np

OFFSET_TOLERANCE_S = 0.5  # a best offset this close to the truth counts as found
RECALL_KS = (1, 5, 10)
# The figures every table shows, in order: (key, column title, format).
RETRIEVAL_FIGURES = (
    *((f"r_at_{k}", f"R@{k}", "{:.3f}") for k in RECALL_KS),
    ("median_rank", "med.rank", "{:.1f}"),
)
# What training records of each epoch's validation retrieval (as ``val_<key>``).
EPOCH_RETRIEVAL_KEYS = (
    *(key for key, _, _ in RETRIEVAL_FIGURES),
    "pool_size",
    "chance_r_at_1",
    "offset_within_0_5s",
    "num_queries",
)


def rank_figures(ranks: Sequence[int], offset_hits: Sequence[bool], pool: int) -> Dict[str, Any]:
    """R@k, chance R@k, median/mean rank of per-query true ranks (1 = first) in a pool of
    ``pool`` tracks, and ``offset_within_0_5s``: the fraction of ``offset_hits`` (one bool
    per query whose best offset was judged) that are True."""
    ranks_arr = np.asarray(ranks)
    out: Dict[str, Any] = {}
    for k in RECALL_KS:
        out[f"r_at_{k}"] = float(np.mean(ranks_arr <= k)) if len(ranks) else float("nan")
        out[f"chance_r_at_{k}"] = min(1.0, k / pool) if pool else float("nan")
    out["median_rank"] = float(np.median(ranks_arr)) if len(ranks) else float("nan")
    out["mean_rank"] = float(np.mean(ranks_arr)) if len(ranks) else float("nan")
    out["chance_median_rank"] = (pool + 1) / 2.0
    out["offset_within_0_5s"] = float(np.mean(offset_hits)) if len(offset_hits) else float("nan")
    return out


def pool_metrics(ranks: np.ndarray, pool_used: int, padding: int, prefix: str = "pool100_"):
    """R@k, median and mean rank of ``ranks`` in a pool of ``pool_used``, keys ``prefix*``."""
    out: Dict[str, Any] = {}
    for k in RECALL_KS:
        out[f"{prefix}r_at_{k}"] = float(np.mean(ranks <= k)) if len(ranks) else float("nan")
    out[f"{prefix}median_rank"] = float(np.median(ranks)) if len(ranks) else float("nan")
    out[f"{prefix}mean_rank"] = float(np.mean(ranks)) if len(ranks) else float("nan")
    out[f"{prefix}chance_r_at_1"] = 1.0 / pool_used if pool_used else float("nan")
    out[f"{prefix}size"] = int(pool_used)
    out[f"{prefix}padding_tracks"] = int(padding)
    return out
