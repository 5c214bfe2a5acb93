"""The plain-Python core of the service (no Serve): query features, Matcher, catalog store."""

import numpy as np
import pytest

from dvamn.constants import AUDIO_HOP_S, EMBEDDING_DIM, POSE_FEATURES
from dvamn.scoring import best_offsets
from dvamn.serving.catalog_store import Catalog, CatalogMismatchError, load_catalog
from dvamn.serving.matcher import Matcher
from dvamn.serving.queries import (
    QueryError,
    QueryLimits,
    frame_size_from_keypoints,
    keypoint_features,
)

from .conftest import DANCE_S, NUM_DANCES, _keypoints

pytestmark = pytest.mark.ray  # the session fixture builds its catalog with Ray Data


@pytest.fixture(scope="module")
def matcher(serving_assets) -> Matcher:
    return Matcher.from_uris(serving_assets.checkpoint, serving_assets.catalog, device="cpu")


def dance_features(assets, entry) -> np.ndarray:
    k = _keypoints(assets.root, entry)
    features, _ = keypoint_features(
        k["keypoints"], float(k["fps"]), k["scores"], float(k["width"]), float(k["height"])
    )
    return features


def test_own_track_ranks_first_at_its_offset(serving_assets, matcher):
    hits, offset_errors = 0, []
    for entry in serving_assets.dances:
        answer = matcher.match(dance_features(serving_assets, entry), top_k=3)
        top = answer["matches"][0]
        hits += top["track_id"] == entry["id"]
        if top["track_id"] == entry["id"]:
            offset_errors.append(abs(top["offset_s"] - entry["music"]["offset_s"]))
    # Trained on these very dances: all 6 rank first in practice; "most" is the promise.
    assert hits >= NUM_DANCES - 1, f"own track first for {hits}/{NUM_DANCES}"
    assert np.median(offset_errors) <= 2 * AUDIO_HOP_S


def test_match_is_the_scorer_over_the_prediction(serving_assets, matcher):
    features = dance_features(serving_assets, serving_assets.dances[0])
    answer = matcher.match(features, top_k=NUM_DANCES)
    [prediction] = matcher.predict([features])
    ranking = best_offsets(prediction, matcher.bank, top_k=NUM_DANCES, distance=matcher.distance)
    assert [m["track_id"] for m in answer["matches"]] == [
        matcher.catalog.track_ids[i] for i in ranking.indices
    ]
    assert [m["offset_s"] for m in answer["matches"]] == pytest.approx(
        list(ranking.offsets * AUDIO_HOP_S)
    )
    scores = [m["score"] for m in answer["matches"]]
    assert scores == sorted(scores)  # best (lowest distance) first
    assert set(answer["timings_ms"]) == {"model", "score"}


def test_batched_prediction_equals_one_by_one(serving_assets, matcher):
    a = dance_features(serving_assets, serving_assets.dances[0])
    b = dance_features(serving_assets, serving_assets.dances[1])
    queries = [a, b, a[:71]]  # two of one length (one forward pass), one odd length
    together = matcher.predict(queries)
    assert [p.shape for p in together] == [(len(q) // 2, EMBEDDING_DIM) for q in queries]
    for query, batched in zip(queries, together, strict=True):
        np.testing.assert_allclose(batched, matcher.predict([query])[0], rtol=1e-4, atol=1e-4)


def test_model_and_catalog_versions_are_reported(matcher, serving_assets):
    # Versions, not locations (issue 10, item 9): the checkpoint's path is not reported.
    assert "checkpoint" not in matcher.model_info
    assert serving_assets.checkpoint not in str(matcher.model_info)
    assert len(matcher.model_info["version"]) == 12
    assert matcher.catalog_info["num_tracks"] == NUM_DANCES
    assert matcher.catalog_info["version"] == load_catalog(serving_assets.catalog).version


def test_catalog_of_another_embedding_is_refused(serving_assets):
    from dvamn.model import load_model

    model, metadata = load_model(serving_assets.checkpoint)
    catalog = Catalog.from_sequences(
        [np.zeros((100, EMBEDDING_DIM), np.float32)], audio_embedding_kind="vggish"
    )
    with pytest.raises(CatalogMismatchError, match="--audio logmel"):
        Matcher(model, metadata, catalog, device="cpu")


def test_keypoint_queries_are_checked():
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(100, 300, size=(50, 17, 2)).astype(np.float32)
    limits = QueryLimits(min_query_s=4.0, max_query_s=60.0)
    features, description = keypoint_features(keypoints, 10.0, limits=limits)
    assert features.shape == (50, POSE_FEATURES)
    assert description["frame_size"] == "derived from the keypoints' extent"

    with pytest.raises(QueryError, match="at least 4 s") as short:
        keypoint_features(keypoints[:30], 10.0, limits=limits)
    assert short.value.status == 422
    with pytest.raises(QueryError, match="at most 60 s") as long:
        keypoint_features(np.repeat(keypoints, 20, axis=0), 10.0, limits=limits)
    assert long.value.status == 413
    with pytest.raises(QueryError, match="no person") as nobody:
        keypoint_features(keypoints, 10.0, scores=np.zeros((50, 17)), limits=limits)
    assert nobody.value.status == 422
    with pytest.raises(QueryError, match=r"\[T\]\[17\]\[2\]"):
        keypoint_features(keypoints[:, :12], 10.0, limits=limits)
    # 30 fps keypoints are resampled to the model's 10 fps.
    fast, _ = keypoint_features(np.repeat(keypoints, 3, axis=0), 30.0, limits=limits)
    assert fast.shape == (50, POSE_FEATURES)


def test_frame_size_is_guessed_from_a_centred_dancer():
    keypoints = np.zeros((2, 17, 2), np.float32)
    keypoints[..., 0] = np.linspace(200, 440, 17)  # 200 px margins in a 640 px wide frame
    keypoints[..., 1] = np.linspace(40, 320, 17)  # 40 px margins in a 360 px high frame
    assert frame_size_from_keypoints(keypoints, np.ones((2, 17))) == (640.0, 360.0)


def test_catalog_memory_is_one_packed_array():
    tracks = [np.full((n, EMBEDDING_DIM), i, np.float32) for i, n in enumerate([5, 9, 1])]
    catalog = Catalog.from_sequences(tracks)
    assert catalog.embeddings.shape == (15, EMBEDDING_DIM)
    assert list(catalog.lengths) == [5, 9, 1]
    np.testing.assert_array_equal(catalog.track_embedding(1), tracks[1])
    assert catalog.durations_s[1] == pytest.approx(9 * AUDIO_HOP_S)
    assert DANCE_S > 12  # the fixtures' dances are long enough for the default minimum


@pytest.mark.gpu
def test_model_runs_on_the_gpu_with_the_same_ranking(serving_assets, matcher):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    on_gpu = Matcher.from_uris(serving_assets.checkpoint, serving_assets.catalog, device="cuda")
    assert on_gpu.model_info["device"] == "cuda"
    features = dance_features(serving_assets, serving_assets.dances[0])
    cpu_ids = [m["track_id"] for m in matcher.match(features, NUM_DANCES)["matches"]]
    gpu_ids = [m["track_id"] for m in on_gpu.match(features, NUM_DANCES)["matches"]]
    assert gpu_ids[0] == cpu_ids[0]
