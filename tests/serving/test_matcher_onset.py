"""The service's rhythm term ("+onset" scorings): the Matcher ranks as dvamn.scoring does
with the model's onset head and the catalog's audio_onset, and refuses what it lacks."""

import numpy as np
import pytest
import torch

from dvamn.constants import EMBEDDING_DIM, POSE_FEATURES
from dvamn.model import DVAMN, DVAMNConfig
from dvamn.scoring import best_offsets
from dvamn.serving.catalog_store import Catalog
from dvamn.serving.matcher import Matcher

SMALL = dict(widths=(8, 8, 8), gru_hidden=8, post_gru_widths=(8, 8), fc_width=8)
METADATA = {"audio_embedding_kind": "logmel"}


def catalog(rng, with_onsets=True, num_tracks=5):
    embeddings = [
        rng.normal(size=(int(n), EMBEDDING_DIM)).astype(np.float32)
        for n in rng.integers(40, 70, num_tracks)
    ]
    onsets = [rng.random(2 * len(e)).astype(np.float32) for e in embeddings]
    return Catalog.from_sequences(embeddings, onsets=onsets if with_onsets else None)


def test_the_matcher_ranks_with_the_onset_heads_prediction():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = DVAMN(DVAMNConfig(**SMALL, onset_head=True)).eval()
    matcher = Matcher(model, METADATA, catalog(rng), device="cpu", scoring="cosine-w+onset")
    pose = rng.normal(size=(61, POSE_FEATURES)).astype(np.float32)  # odd: 30 audio frames
    answer = matcher.match(pose, top_k=5)
    embedding, onset = model.predict(torch.from_numpy(pose), with_onset=True)
    ranking = best_offsets(
        embedding.numpy(), matcher.bank, top_k=5, distance="cosine", query_onset=onset[:60].numpy()
    )
    assert [m["track_id"] for m in answer["matches"]] == [
        matcher.catalog.track_ids[i] for i in ranking.indices
    ]
    assert [m["score"] for m in answer["matches"]] == pytest.approx(list(ranking.scores))
    # Named no scoring, a model with an onset head over a catalog with onsets gets the
    # rhythm term (default_scoring; this model has no query bank, so no QB-Norm).
    default = Matcher(model, METADATA, catalog(np.random.default_rng(0)), device="cpu")
    assert default.scoring == "cosine-w+onset"
    assert default.match(pose, top_k=5)["matches"] == answer["matches"]
    plain = Matcher(
        model, METADATA, catalog(np.random.default_rng(0)), device="cpu", scoring="cosine-w"
    )
    plain_scores = [m["score"] for m in plain.match(pose, top_k=5)["matches"]]
    assert plain_scores != pytest.approx([m["score"] for m in answer["matches"]])


def test_the_rhythm_term_is_refused_without_a_head_or_catalog_onsets():
    rng = np.random.default_rng(1)
    headless = DVAMN(DVAMNConfig(**SMALL))
    with pytest.raises(ValueError, match="onset head"):
        Matcher(headless, METADATA, catalog(rng), device="cpu", scoring="cosine-w+onset")
    model = DVAMN(DVAMNConfig(**SMALL, onset_head=True))
    with pytest.raises(ValueError, match="audio_onset.*build it again"):
        Matcher(
            model, METADATA, catalog(rng, with_onsets=False), device="cpu", scoring="cosine-w+onset"
        )
    with pytest.raises(ValueError, match="--search exact"):
        Matcher(
            model,
            METADATA,
            catalog(rng),
            device="cpu",
            scoring="cosine-w+onset",
            search="two-stage",
        )
