"""The names of the scorings of ``dvamn.scoring``, importable without torch."""

DISTANCES = ("l2", "cosine", "logcosh")
DEFAULT_DISTANCE = "l2"

# How candidates are compared, by name: a distance on raw embeddings ("l2"), or, with
# "-std", on embeddings standardised by the model's target mean/std; "-w" also weighs each
# standardised dimension by how well training predicted it (DVAMN.target_weight). The
# comparison in docs/training.md made "cosine-w" the default of evaluation and service.
SCORINGS = tuple(d + suffix for suffix in ("-w", "-std", "") for d in DISTANCES)
DEFAULT_SCORING = "cosine-w"
# Hubness corrections (see dvamn.scoring's docstring), appended to a scoring name: "cosine-w+qb".
HUBNESS_METHODS = ("qb", "csls")
HUBNESS_SCORINGS = tuple(f"{s}+{h}" for h in HUBNESS_METHODS for s in SCORINGS)
# The rhythm term (see dvamn.scoring's docstring), appended last: "cosine-w+onset",
# "cosine-w+qb+onset". It needs a model with an onset head and tracks with ``audio_onset``.
ONSET_TERM = "onset"
ONSET_SCORINGS = tuple(f"{s}+{ONSET_TERM}" for s in SCORINGS + HUBNESS_SCORINGS)
ALL_SCORINGS = SCORINGS + HUBNESS_SCORINGS + ONSET_SCORINGS


def uses_onset(scoring: str) -> bool:
    """Whether a scoring name includes the rhythm term ("...+onset")."""
    return scoring.endswith("+" + ONSET_TERM)
