"""Retrieval metrics: a perfect predictor is always right, a random one is at chance."""

import numpy as np
import pytest
import torch

from dvamn.model import DVAMN, DVAMNConfig
from dvamn.training.data import Video
from dvamn.training.evaluate import (
    build_queries,
    evaluate_videos,
    regression_from_sums,
    regression_sums,
    retrieval_from_predictions,
)
from tests.support.contracts import EVALUATION_JSON_KEYS


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
    m = evaluate_videos(model, videos, scorings=("cosine-w", "cosine-std", "l2", "logcosh"))
    for key in EVALUATION_JSON_KEYS:
        assert key in m
    assert m["pool_size"] == 5 and m["num_queries"] == 5
    assert m["distance"] == "cosine-w"
    assert set(m["by_distance"]) == {"cosine-w", "cosine-std", "l2", "logcosh"}
