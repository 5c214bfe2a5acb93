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
ALL_SCORINGS = SCORINGS + HUBNESS_SCORINGS
