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
