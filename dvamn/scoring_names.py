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
# Where no scoring is named, evaluation and the service add QB-Norm to DEFAULT_SCORING for a
# checkpoint with a query bank (every run trained since the bank existed): in issue 13 it
# lifted R@1 in and out of family in nearly every comparison, and the default demo's R@1
# from 0.346 to 0.457 on the same checkpoint (README, "Quality on synthetic data").
DEFAULT_HUBNESS = "qb"
ONSET_SCORINGS = tuple(f"{s}+{ONSET_TERM}" for s in SCORINGS + HUBNESS_SCORINGS)
ALL_SCORINGS = SCORINGS + HUBNESS_SCORINGS + ONSET_SCORINGS


def uses_onset(scoring: str) -> bool:
    """Whether a scoring name includes the rhythm term ("...+onset")."""
    return scoring.endswith("+" + ONSET_TERM)


def default_scoring(has_query_bank: bool, rhythm: bool = False) -> str:
    """The scoring used where none is named: ``DEFAULT_SCORING``, with ``DEFAULT_HUBNESS``
    for a checkpoint that holds a query bank, and with the rhythm term where it can be
    scored (``rhythm``: a model with an onset head, tracks with ``audio_onset``, exhaustive
    search)."""
    name = f"{DEFAULT_SCORING}+{DEFAULT_HUBNESS}" if has_query_bank else DEFAULT_SCORING
    return f"{name}+{ONSET_TERM}" if rhythm else name
