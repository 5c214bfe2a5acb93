"""The catalog scorer: the vectorised search equals the plain loop, finds cut queries."""

import numpy as np
import pytest
import torch

from dvamn.scoring import (
    DISTANCES,
    ONSET_WEIGHT,
    aligned_similarity,
    best_offsets,
    best_offsets_reference,
    onset_similarity,
    onset_target,
    prepare_tracks,
    set_hubness,
    set_onsets,
    split_scoring,
    transform_frames,
    uses_onset,
)


def random_tracks(rng, n=25, dim=16, lengths=(4, 60)):
    return [
        rng.normal(size=(int(rng.integers(*lengths)), dim)).astype(np.float32) for _ in range(n)
    ]


@pytest.mark.parametrize("distance", DISTANCES)
def test_vectorised_scorer_gives_the_reference_ranking_and_offsets(distance):
    rng = np.random.default_rng(1)
    tracks = random_tracks(rng)
    query = rng.normal(size=(12, 16)).astype(np.float32)
    # A small chunk size forces several chunks, as on a large catalog.
    fast = best_offsets(
        query, prepare_tracks(tracks), top_k=None, distance=distance, max_chunk_elements=3000
    )
    slow = best_offsets_reference(query, tracks, top_k=None, distance=distance)
    np.testing.assert_array_equal(fast.indices, slow.indices)
    np.testing.assert_array_equal(fast.all_offsets, slow.all_offsets)
    np.testing.assert_allclose(fast.all_scores, slow.all_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("distance", DISTANCES)
def test_a_query_cut_from_a_track_finds_that_track_at_its_offset(distance):
    rng = np.random.default_rng(2)
    tracks = [
        rng.uniform(0, 255, size=(int(n), 128)).astype(np.float32)
        for n in rng.integers(95, 110, 20)
    ]
    true_track, true_offset = 17, 33
    query = tracks[true_track][true_offset : true_offset + 60] + rng.normal(0, 5, size=(60, 128))
    ranking = best_offsets(query, prepare_tracks(tracks), top_k=5, distance=distance)
    assert ranking.indices[0] == true_track
    assert ranking.offsets[0] == true_offset


def test_top_k_returns_the_k_best_in_order():
    rng = np.random.default_rng(3)
    tracks = random_tracks(rng, n=30, lengths=(20, 40))
    ranking = best_offsets(rng.normal(size=(10, 16)), prepare_tracks(tracks), top_k=7)
    assert len(ranking.indices) == 7
    assert np.all(np.diff(ranking.scores) >= 0)
    np.testing.assert_array_equal(
        ranking.indices, np.argsort(ranking.all_scores, kind="stable")[:7]
    )


def test_ties_are_broken_by_track_index_then_earliest_offset():
    track = np.tile(np.eye(4, dtype=np.float32), (3, 1))  # a period-4 track: offsets 0, 4, 8 tie
    tracks = [track.copy() for _ in range(5)]
    ranking = best_offsets(np.eye(4, dtype=np.float32), prepare_tracks(tracks), top_k=None)
    np.testing.assert_array_equal(ranking.indices, [0, 1, 2, 3, 4])
    assert ranking.offsets.tolist() == [0, 0, 0, 0, 0]


def test_short_tracks_are_compared_on_their_overlap_with_a_coverage_penalty():
    rng = np.random.default_rng(4)
    query = rng.normal(size=(20, 8)).astype(np.float32)
    perfect_but_short = query[:10].copy()  # half the query, exactly
    full_length_noisy = np.concatenate([query + rng.normal(0, 0.1, size=query.shape)] * 2)
    empty = np.zeros((0, 8), np.float32)
    tracks = [full_length_noisy, perfect_but_short, empty]
    ranking = best_offsets(query, prepare_tracks(tracks), top_k=None)
    reference = best_offsets_reference(query, tracks, top_k=None)
    np.testing.assert_allclose(ranking.all_scores, reference.all_scores, rtol=1e-4, atol=1e-5)
    assert ranking.all_scores[1] == pytest.approx(0.0, abs=1e-5)  # exact overlap scores 0
    assert 2 not in ranking.indices  # an empty track is never returned
    ranking = best_offsets(query, prepare_tracks(tracks), top_k=None, short_tracks="exclude")
    assert ranking.indices.tolist() == [0]


def test_short_track_with_partial_match_is_penalised_by_its_coverage():
    rng = np.random.default_rng(5)
    query = rng.normal(size=(20, 8))
    short = query[:5] + rng.normal(0, 1.0, size=(5, 8))
    per_frame = ((query[:5] - short) ** 2).sum(-1).mean()
    ranking = best_offsets(query, prepare_tracks([short]), top_k=None)
    assert ranking.all_scores[0] == pytest.approx(per_frame / (5 / 20), rel=1e-4)


def test_padded_array_input_equals_list_input():
    rng = np.random.default_rng(6)
    tracks = random_tracks(rng, n=6, lengths=(15, 30))
    padded = np.full((6, 30, 16), 7.0, np.float32)  # junk after each end must be ignored
    for i, t in enumerate(tracks):
        padded[i, : len(t)] = t
    query = rng.normal(size=(10, 16))
    a = best_offsets(query, prepare_tracks(tracks), top_k=None)
    b = best_offsets(query, prepare_tracks(padded, lengths=[len(t) for t in tracks]), top_k=None)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.all_offsets, b.all_offsets)


def test_wrong_query_width_is_refused():
    bank = prepare_tracks([np.zeros((10, 16), np.float32)])
    with pytest.raises(ValueError, match=r"\(T >= 1, 16\)"):
        best_offsets(np.zeros((5, 8)), bank)
    with pytest.raises(ValueError, match="distance"):
        best_offsets(np.zeros((5, 16)), bank, distance="manhattan")


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_standardised_bank_equals_the_reference_on_standardised_frames(distance):
    rng = np.random.default_rng(7)
    tracks = [rng.normal(5.0, 3.0, size=(int(n), 16)) for n in rng.integers(8, 40, 12)]
    center, scale = rng.normal(5.0, 1.0, 16), rng.uniform(0.5, 4.0, 16)
    query = rng.normal(5.0, 3.0, size=(10, 16))
    bank = prepare_tracks(tracks, center=center, scale=scale)
    fast = best_offsets(query, bank, top_k=None, distance=distance)
    slow = best_offsets_reference(query, tracks, None, distance, center=center, scale=scale)
    np.testing.assert_array_equal(fast.indices, slow.indices)
    np.testing.assert_array_equal(fast.all_offsets, slow.all_offsets)
    np.testing.assert_allclose(fast.all_scores, slow.all_scores, rtol=1e-4, atol=1e-4)


def test_a_bank_normalised_in_place_ranks_as_before_in_half_the_memory():
    rng = np.random.default_rng(11)
    tracks = [rng.normal(5.0, 3.0, size=(int(n), 16)) for n in rng.integers(8, 40, 12)]
    center, scale = rng.normal(5.0, 1.0, 16), rng.uniform(0.5, 4.0, 16)
    query = rng.normal(5.0, 3.0, size=(10, 16))
    two_copies = prepare_tracks(tracks, center=center, scale=scale)
    before = best_offsets(query, two_copies, top_k=None, distance="cosine")
    one_copy = prepare_tracks(tracks, center=center, scale=scale)
    one_copy.normalise_in_place()
    after = best_offsets(query, one_copy, top_k=None, distance="cosine")
    np.testing.assert_array_equal(after.indices, before.indices)
    np.testing.assert_array_equal(after.all_offsets, before.all_offsets)
    np.testing.assert_allclose(after.all_scores, before.all_scores, rtol=1e-5, atol=1e-5)
    assert one_copy.nbytes() * 2 == two_copies.nbytes()  # tracks + unit_tracks vs one
    with pytest.raises(ValueError, match="normalised for the cosine distance"):
        best_offsets(query, one_copy, distance="l2")


@pytest.mark.gpu
def test_a_bank_on_the_gpu_gives_the_cpu_ranking():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rng = np.random.default_rng(8)
    tracks = random_tracks(rng, n=40, lengths=(20, 80))
    query = rng.normal(size=(15, 16)).astype(np.float32)
    cpu_bank = prepare_tracks(tracks, center=np.zeros(16), scale=np.ones(16))
    gpu_bank = prepare_tracks(tracks)
    gpu_bank.tracks, gpu_bank.lengths = gpu_bank.tracks.cuda(), gpu_bank.lengths.cuda()
    from dvamn.scoring import standardise

    gpu_bank = standardise(gpu_bank, np.zeros(16), np.ones(16))
    for distance in ("l2", "cosine"):
        a = best_offsets(query, cpu_bank, top_k=None, distance=distance)
        b = best_offsets(torch.from_numpy(query).cuda(), gpu_bank, top_k=None, distance=distance)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.all_offsets, b.all_offsets)


def test_training_similarity_is_the_cosine_scorings_score_at_the_aligned_offset():
    rng = np.random.default_rng(7)
    tracks = [rng.normal(2.0, 3.0, size=(int(n), 128)).astype(np.float32) for n in (70, 80, 90)]
    center = rng.normal(size=128).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, size=128).astype(np.float32)
    query = rng.normal(2.0, 3.0, size=(60, 128)).astype(np.float32)
    ranking = best_offsets(
        query, prepare_tracks(tracks, center=center, scale=scale), top_k=None, distance="cosine"
    )
    c, s = torch.from_numpy(center), torch.from_numpy(scale)
    q = transform_frames(torch.from_numpy(query), c, s)[None]  # (1, 60, 128)
    for i, track in enumerate(tracks):
        o = int(ranking.all_offsets[i])
        window = transform_frames(torch.from_numpy(track[o : o + 60]), c, s)[None]
        similarity = aligned_similarity(q, window)[0, 0].item()
        assert 1.0 - similarity == pytest.approx(ranking.all_scores[i], abs=1e-5)


def hub_case(rng, num_tracks=12, length=80, t=20, dim=32):
    """Tracks of random frames and one hub: a constant frame that every query leans to."""
    hub_direction = rng.normal(size=dim)
    hub_direction /= np.linalg.norm(hub_direction)
    tracks = [rng.normal(size=(length, dim)) / np.sqrt(dim) for _ in range(num_tracks)]
    tracks.append(np.tile(hub_direction, (length, 1)))  # the hub, index num_tracks

    def queries(count):
        out, truth = [], []
        for _ in range(count):
            i, o = int(rng.integers(num_tracks)), int(rng.integers(length - t))
            q = tracks[i][o : o + t] * 0.8 + hub_direction + rng.normal(0, 0.05, (t, dim))
            out.append(q.astype(np.float32))
            truth.append(i)
        return out, truth

    return [x.astype(np.float32) for x in tracks], queries


@pytest.mark.parametrize("method", ["qb", "csls"])
def test_hubness_correction_stops_a_hub_from_winning_every_query(method):
    rng = np.random.default_rng(11)
    tracks, make_queries = hub_case(rng)
    hub = len(tracks) - 1
    queries, truth = make_queries(30)
    bank_queries, _ = make_queries(40)  # other windows: the training predictions' stand-in
    plain = prepare_tracks(tracks)
    winners = [best_offsets(q, plain, top_k=1, distance="cosine").indices[0] for q in queries]
    assert all(w == hub for w in winners)  # the hub wins every query under plain scoring
    corrected = set_hubness(prepare_tracks(tracks), np.stack(bank_queries), method, "cosine")
    assert corrected.track_penalty.shape == (len(tracks),)
    rankings = [best_offsets(q, corrected, top_k=None, distance="cosine") for q in queries]
    winners = [r.indices[0] for r in rankings]
    assert sum(w == hub for w in winners) == 0
    assert np.mean([w == i for w, i in zip(winners, truth)]) > 0.9
    # The correction is one constant per track: best offsets are those of plain scoring.
    plain_offsets = best_offsets(queries[0], plain, top_k=None, distance="cosine").all_offsets
    np.testing.assert_array_equal(rankings[0].all_offsets, plain_offsets)


def test_hubness_names_and_a_missing_bank_are_explained():
    assert split_scoring("cosine-w+qb") == ("cosine-w", "qb")
    assert split_scoring("cosine-w") == ("cosine-w", None)
    with pytest.raises(ValueError, match="scoring must be one of"):
        split_scoring("cosine-w+magic")
    bank = prepare_tracks([np.ones((30, 4), np.float32)])
    with pytest.raises(ValueError, match="query bank"):
        set_hubness(bank, None, "qb", "cosine")


@pytest.mark.parametrize("distance", ["cosine", "l2"])
def test_the_rhythm_term_gives_the_reference_ranking_and_offsets(distance):
    rng = np.random.default_rng(12)
    tracks = random_tracks(rng, n=20, lengths=(6, 50))
    # audio_onset has about two values per audio frame, sometimes one more or less.
    onsets = [rng.random(2 * len(t) + int(rng.integers(-1, 2))) for t in tracks]
    query = rng.normal(size=(12, 16)).astype(np.float32)
    query_onset = rng.random(24)
    bank = set_onsets(prepare_tracks(tracks), onsets)
    fast = best_offsets(
        query, bank, top_k=None, distance=distance, query_onset=query_onset,
        max_chunk_elements=3000,
    )  # fmt: skip
    slow = best_offsets_reference(
        query, tracks, top_k=None, distance=distance, query_onset=query_onset,
        track_onsets=onsets,
    )  # fmt: skip
    np.testing.assert_array_equal(fast.all_offsets, slow.all_offsets)
    np.testing.assert_allclose(fast.all_scores, slow.all_scores, rtol=1e-5, atol=1e-5)
    plain = best_offsets(query, prepare_tracks(tracks), top_k=None, distance=distance)
    assert not np.allclose(fast.all_scores, plain.all_scores)  # the term changes scores


def test_the_rhythm_term_finds_the_track_whose_onsets_the_query_follows():
    # Embeddings say nothing (the same frames everywhere); only the timing tells tracks apart.
    rng = np.random.default_rng(13)
    tracks = [np.ones((80, 8), np.float32) for _ in range(15)]
    onsets = [rng.random(160) for _ in tracks]
    true_track, true_offset = 9, 21
    query_onset = onsets[true_track][2 * true_offset : 2 * true_offset + 60]
    query_onset = query_onset + rng.normal(0, 0.1, 60)  # an imperfect prediction
    bank = set_onsets(prepare_tracks(tracks), onsets)
    ranking = best_offsets(
        np.ones((30, 8)), bank, top_k=3, distance="cosine", query_onset=query_onset
    )
    assert ranking.indices[0] == true_track and ranking.offsets[0] == true_offset
    # A score is the distance plus ONSET_WEIGHT * (1 - correlation with the smoothed onsets).
    target = onset_target(onsets[true_track])[2 * true_offset : 2 * true_offset + 60]
    r = np.corrcoef(query_onset, target)[0, 1]
    assert ranking.scores[0] == pytest.approx(ONSET_WEIGHT * (1 - r), abs=1e-6)


def test_the_rhythm_term_is_refused_without_track_onsets_and_named_in_scorings():
    assert uses_onset("cosine-w+qb+onset") and not uses_onset("cosine-w+qb")
    assert split_scoring("cosine-w+qb+onset") == ("cosine-w", "qb")
    assert split_scoring("cosine-w+onset") == ("cosine-w", None)
    bank = prepare_tracks([np.ones((30, 4), np.float32)])
    with pytest.raises(ValueError, match="audio_onset"):
        best_offsets(np.ones((10, 4)), bank, query_onset=np.ones(20))
    set_onsets(bank, [np.ones(60)])
    with pytest.raises(ValueError, match=r"query onsets must be \(20,\)"):
        best_offsets(np.ones((10, 4)), bank, query_onset=np.ones(19))


def test_training_onset_similarity_is_the_rhythm_terms_correlation():
    rng = np.random.default_rng(14)
    queries, windows = rng.random((3, 40)), rng.random((5, 40))
    similarity = onset_similarity(torch.from_numpy(queries), torch.from_numpy(windows)).numpy()
    expected = np.corrcoef(queries, windows)[:3, 3:]
    np.testing.assert_allclose(similarity, expected, atol=1e-6)
