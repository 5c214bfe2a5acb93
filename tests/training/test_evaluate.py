"""Retrieval metrics: a perfect predictor is always right, a random one is at chance."""

import numpy as np
import pytest
import torch

from dvamn.model import DVAMN, DVAMNConfig
from dvamn.training.data import Video
from dvamn.training.evaluate import (
    FIXED_POOL_SIZE,
    build_queries,
    evaluate_videos,
    fixed_pool_retrieval,
    fixed_pools,
    ranks_in_pools,
    regression_from_sums,
    regression_sums,
    retrieval_from_predictions,
)
from tests.support.contracts import EVALUATION_JSON_KEYS, FIXED_POOL_JSON_KEYS


def soundtracks(num_tracks=30, frames=100, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0, 255, size=(frames, 128)).astype(np.float32) for _ in range(num_tracks)]


def queries_cut_from(tracks, every=20, length=60):
    cut = [(i, o) for i in range(len(tracks)) for o in range(0, len(tracks[i]) - length + 1, every)]
    predictions = [tracks[i][o : o + length] for i, o in cut]
    return predictions, [i for i, _ in cut], [o for _, o in cut]


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_a_perfect_predictor_ranks_every_true_track_first_at_its_offset(distance):
    tracks = soundtracks()
    predictions, true_tracks, true_offsets = queries_cut_from(tracks)
    m = retrieval_from_predictions(predictions, true_tracks, true_offsets, tracks, distance)
    assert m["r_at_1"] == 1.0 and m["median_rank"] == 1.0
    assert m["offset_within_0_5s"] == 1.0
    assert m["pool_size"] == 30 and m["chance_r_at_1"] == pytest.approx(1 / 30)


def test_a_random_predictor_stays_near_chance():
    tracks = soundtracks(num_tracks=40, seed=1)
    _, true_tracks, true_offsets = queries_cut_from(tracks, every=5)
    rng = np.random.default_rng(2)
    predictions = [rng.uniform(0, 255, size=(60, 128)) for _ in true_tracks]
    m = retrieval_from_predictions(predictions, true_tracks, true_offsets, tracks)
    assert m["num_queries"] == 360
    assert m["r_at_1"] < 4 * m["chance_r_at_1"]
    assert m["r_at_10"] < 0.5
    assert 10 < m["median_rank"] < 30  # chance: (40 + 1) / 2


def test_regression_metrics_are_in_target_units():
    target = torch.zeros(2, 3, 4)
    prediction = torch.full((2, 3, 4), 10.0)
    m = regression_from_sums(regression_sums(prediction, target))
    assert m["rmse"] == pytest.approx(10.0) and m["mae"] == pytest.approx(10.0)
    assert m["loss"] == pytest.approx(10.0 - np.log(2), rel=1e-4)


def test_queries_are_every_stride_and_capped_evenly():
    videos = [
        Video(f"v{i}", np.zeros((240, 68), np.float32), np.zeros((120, 128), np.float32))
        for i in range(3)
    ]
    assert build_queries(videos, 60) == [(i, s) for i in range(3) for s in (0, 60, 120)]
    capped = build_queries(videos, 60, max_queries=3)
    assert capped == [(0, 0), (1, 60), (2, 120)]


def test_evaluate_videos_reports_every_scoring_and_the_keys_of_the_json():
    torch.manual_seed(0)
    model = DVAMN(DVAMNConfig(widths=(8, 8, 8), gru_hidden=8, post_gru_widths=(8, 8), fc_width=8))
    rng = np.random.default_rng(0)
    videos = [
        Video(
            f"v{i}",
            rng.normal(size=(140, 68)).astype(np.float32),
            rng.uniform(0, 9, (70, 128)).astype(np.float32),
        )
        for i in range(5)
    ]
    padding = [Video(f"p{i}", v.pose, v.audio[::-1].copy()) for i, v in enumerate(videos)]
    m = evaluate_videos(
        model,
        videos,
        scorings=("cosine-w", "cosine-std", "l2", "logcosh"),
        padding=padding,
        padding_source="reversed copies",
    )
    for key in (*EVALUATION_JSON_KEYS, *FIXED_POOL_JSON_KEYS):
        assert key in m
    for scoring in m["by_scoring"].values():
        assert set(FIXED_POOL_JSON_KEYS) <= set(scoring)
    assert m["pool_size"] == 5 and m["num_queries"] == 5
    assert m["pool100_size"] == 10 and m["pool100_padding_tracks"] == 5
    assert "5 validation soundtracks + 5 other tracks: reversed copies" in m["pool100_padding"]
    assert m["distance"] == "cosine-w"
    assert set(m["by_scoring"]) == {"cosine-w", "cosine-std", "l2", "logcosh"}


def test_fewer_own_tracks_are_padded_to_the_fixed_pool_with_the_first_padding_tracks():
    pools, used = fixed_pools([0, 3, 29], num_own=30, num_padding=200)
    assert used == FIXED_POOL_SIZE == 100
    for pool in pools:
        np.testing.assert_array_equal(pool, np.arange(100))  # 30 own + padding 30..99


def test_too_few_tracks_in_total_give_a_smaller_pool_and_say_so():
    pools, used = fixed_pools([1, 2], num_own=30, num_padding=20)
    assert used == 50 and all(len(p) == 50 for p in pools)
    from dvamn.training.evaluate import describe_padding

    text = describe_padding(30, 50, "training soundtracks")
    assert "+ 20 other tracks: training soundtracks" in text and "pool is 50, not 100" in text


def test_more_own_tracks_give_each_query_its_true_track_and_99_others_drawn_per_query():
    true_tracks = [0, 5, 149, 5]
    pools, used = fixed_pools(true_tracks, num_own=150, num_padding=40)
    assert used == 100
    for track, pool in zip(true_tracks, pools):
        assert len(pool) == 100 and len(set(pool.tolist())) == 100
        assert track in pool and pool.max() < 150  # padding is not needed
    assert not np.array_equal(pools[1], pools[3])  # drawn per query
    again, _ = fixed_pools(true_tracks, num_own=150, num_padding=40)
    assert all(np.array_equal(a, b) for a, b in zip(pools, again))  # but deterministic


def test_ranks_in_pools_count_only_the_pool_and_break_ties_by_index():
    scores = np.array([[0.5, 0.1, 0.5, 0.2, 0.9]])
    assert ranks_in_pools(scores, [2], [np.arange(5)])[0] == 4  # 0.1, 0.2, then the tie 0
    assert ranks_in_pools(scores, [2], [np.array([2, 3, 4])])[0] == 2
    assert ranks_in_pools(scores, [0], [np.arange(5)])[0] == 3  # wins the tie with 2
    assert ranks_in_pools(np.array([[np.inf, 1.0]]), [0], [np.arange(2)])[0] == 3


def test_padding_makes_a_perfect_predictor_stay_first_and_a_random_one_fall_to_chance():
    tracks = soundtracks(num_tracks=30, seed=3)
    padding = soundtracks(num_tracks=80, seed=4)
    predictions, true_tracks, _ = queries_cut_from(tracks, every=40)
    m = fixed_pool_retrieval(predictions, true_tracks, tracks, padding, "cosine")
    assert m["pool100_size"] == 100 and m["pool100_padding_tracks"] == 70
    assert m["pool100_r_at_1"] == 1.0 and m["pool100_median_rank"] == 1.0
    rng = np.random.default_rng(5)
    noise = [rng.uniform(0, 255, size=(60, 128)) for _ in range(300)]
    m = fixed_pool_retrieval(noise, [i % 30 for i in range(300)], tracks, padding, "cosine")
    assert m["pool100_chance_r_at_1"] == pytest.approx(0.01)
    assert m["pool100_r_at_1"] < 0.05 and 30 < m["pool100_median_rank"] < 70


def test_a_padding_track_that_matches_better_pushes_the_true_track_down():
    tracks = soundtracks(num_tracks=10, seed=6)
    query = tracks[2][10:70].copy()
    padding = [np.concatenate([tracks[7][:5], query, tracks[7][:20]])]  # holds the query
    tracks[2][10:70] += np.random.default_rng(7).normal(0, 20, size=(60, 128)).astype(np.float32)
    m = fixed_pool_retrieval([query], [2], tracks, padding, "l2")
    assert m["pool100_size"] == 11 and m["pool100_r_at_1"] == 0.0
    assert m["pool100_median_rank"] == 2.0


def test_two_stage_search_is_reported_beside_exhaustive():
    from dvamn.search import IndexSettings

    tracks = soundtracks(num_tracks=20, frames=120, seed=3)
    predictions, true_tracks, true_offsets = queries_cut_from(tracks, every=60)
    rng = np.random.default_rng(4)
    predictions = [p + rng.normal(0, 20, p.shape) for p in predictions]
    settings = IndexSettings(dim=32, nprobe=8, candidates=10, train_segments=2_000)
    m = retrieval_from_predictions(
        predictions, true_tracks, true_offsets, tracks, "cosine", search="two-stage",
        index_settings=settings,
    )  # fmt: skip
    two = m["two_stage"]
    assert two["available"] and two["candidates"] == 10 and two["queries"] == m["num_queries"]
    assert m["r_at_1"] == 1.0 and two["r_at_1"] == 1.0 and two["top1_same"] == 1.0
    assert 0.0 < two["recall_at_10"] <= 1.0 and "rankings" not in two
    l2 = retrieval_from_predictions(
        predictions[:2], true_tracks[:2], true_offsets[:2], tracks, "l2", search="two-stage"
    )
    assert not l2["two_stage"]["available"] and "cosine" in l2["two_stage"]["reason"]
