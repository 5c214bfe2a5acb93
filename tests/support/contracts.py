"""What the issues promise, written once for the tests that check it."""

# `dvamn evaluate --json` and the demo's report.json (issue 3 and issue 6).
EVALUATION_JSON_KEYS = (
    "loss",
    "rmse",
    "mae",
    "r_at_1",
    "r_at_5",
    "r_at_10",
    "median_rank",
    "pool_size",
    "chance_r_at_1",
)

# `dvamn evaluate --json` only (issue 13): the same queries against a fixed pool of 100
# candidates (and what pads it), top-level and in every `by_scoring` entry.
FIXED_POOL_JSON_KEYS = (
    "pool100_r_at_1",
    "pool100_r_at_5",
    "pool100_r_at_10",
    "pool100_median_rank",
    "pool100_size",
    "pool100_chance_r_at_1",
)
# ... and the no-training rhythm matcher, under `rhythm_baseline` (with logmel features).
RHYTHM_BASELINE_JSON_KEYS = (
    "available",
    "r_at_1",
    "r_at_5",
    "r_at_10",
    "median_rank",
    "pool_size",
    *FIXED_POOL_JSON_KEYS,
)
