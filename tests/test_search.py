"""Two-stage search (dvamn.search): coarse FAISS segment index, then the exact scorer."""

import dataclasses

import numpy as np
import pytest
import torch

from dvamn.constants import EMBEDDING_DIM
from dvamn.scoring import best_offsets, prepare_tracks
from dvamn.search import IndexSettings, SegmentIndex, recall_against_exact, search
from dvamn.serving.catalog_store import Catalog
from dvamn.serving.matcher import Matcher

NUM_TRACKS, TRACK_FRAMES, QUERY_FRAMES = 80, 150, 60
SETTINGS = IndexSettings(dim=32, nprobe=8, candidates=20, train_segments=5_000)


def smooth_tracks(seed: int = 0) -> np.ndarray:
    """Random walks: neighbouring frames alike, as audio embeddings are."""
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((NUM_TRACKS, TRACK_FRAMES, EMBEDDING_DIM)).astype(np.float32)
    return np.cumsum(steps, axis=1) * 0.3 + rng.standard_normal((NUM_TRACKS, 1, EMBEDDING_DIM))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One math thread, as a 1-CPU replica has (several threads on a loaded 2-core
    machine spin against each other: the eigendecomposition took seconds instead of 0.2)."""
    import faiss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def tracks() -> np.ndarray:
    return smooth_tracks().astype(np.float32)


@pytest.fixture(scope="module")
def bank_and_index(tracks):
    bank = prepare_tracks(tracks, lengths=[TRACK_FRAMES] * NUM_TRACKS)
    bank.normalise_in_place()
    return bank, SegmentIndex.build(bank, SETTINGS)


def test_the_index_does_not_depend_on_the_thread_count_that_fits_it(bank_and_index):
    """The catalog fits its index in its driver and ``SegmentIndex.build`` in one process
    must give the same bytes, however many threads either has (threaded MKL rounds the
    projection's eigenvectors differently by thread count)."""
    import faiss

    bank, index = bank_and_index  # built on the module's one thread
    on_one = index.to_bytes()
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    try:
        on_two = SegmentIndex.build(bank, SETTINGS).to_bytes()
    finally:
        torch.set_num_threads(1)
        faiss.omp_set_num_threads(1)
    assert on_one == on_two


def noisy_window(tracks, track, offset, noise, seed):
    rng = np.random.default_rng(seed)
    window = tracks[track, offset : offset + QUERY_FRAMES]
    return window + noise * rng.standard_normal(window.shape).astype(np.float32)


def test_finds_the_true_track_at_its_offset_with_the_exact_score(tracks, bank_and_index):
    bank, index = bank_and_index
    for seed, (track, offset) in enumerate([(3, 0), (41, 37), (79, 90), (12, 61)]):
        query = noisy_window(tracks, track, offset, noise=1.0, seed=seed)
        exact = best_offsets(query, bank, top_k=5, distance="cosine")
        fast = search(query, bank, index, top_k=5, settings=SETTINGS)
        assert exact.indices[0] == track and fast.indices[0] == track
        assert fast.offsets[0] == exact.offsets[0] == offset
        # The re-ranker is the exact scorer: the same score, not an estimate.
        assert fast.scores[0] == pytest.approx(exact.scores[0], abs=1e-6)


def test_recall_against_exhaustive_on_noisy_queries(tracks, bank_and_index):
    bank, index = bank_and_index
    rng = np.random.default_rng(1)
    exact, fast = [], []
    for seed in range(12):
        track, offset = int(rng.integers(NUM_TRACKS)), int(rng.integers(TRACK_FRAMES - 60))
        query = noisy_window(tracks, track, offset, noise=3.0, seed=100 + seed)
        exact.append(best_offsets(query, bank, top_k=10, distance="cosine"))
        fast.append(search(query, bank, index, top_k=10, settings=SETTINGS))
    recall = recall_against_exact(exact, fast)
    assert recall["top1_same"] == 1.0
    # 20 of 80 tracks re-ranked: the rest of the top 10 comes from the coarse estimate.
    assert recall["recall_at_10"] >= 0.5, recall


def test_neighbours_are_those_of_the_faiss_search_over_the_probed_lists(tracks, bank_and_index):
    from dvamn.search import _nearest

    _, index = bank_and_index
    units = torch.from_numpy(tracks[7, 10 : 10 + QUERY_FRAMES])
    units = units / units.norm(dim=-1, keepdim=True)
    segments = index.projection.project(units, SETTINGS.segment_stride)
    index.index.nprobe = SETTINGS.nprobe
    total = int(index.index.ntotal)
    for k in (50, 400, total):  # fewer than the probed lists hold, and more (ids -1 then)
        want_sims, want_ids = index.index.search(segments, k)
        sims, ids = _nearest(index.index, segments, k)
        assert ids.shape == sims.shape == (len(segments), k)
        for row in range(len(segments)):
            assert set(ids[row][ids[row] >= 0]) == set(want_ids[row][want_ids[row] >= 0])
            got = np.sort(sims[row][ids[row] >= 0])
            assert np.allclose(got, np.sort(want_sims[row][want_ids[row] >= 0]), atol=1e-6)
        if k == total:  # nprobe lists of many: not every segment was scanned
            assert (ids == -1).any() and np.isnan(sims[ids == -1]).all()


class GpuIndexStandIn:
    """A CPU FAISS index behind the GPU index's interface as ``_nearest`` and
    ``candidates`` see it (a class name with "Gpu": searched with ``search``), refusing
    more neighbours than ``limit`` as FAISS's GPU k-selection does (its error)."""

    def __init__(self, index, limit: int):
        self.inner, self.limit, self.asked = index, limit, []

    @property
    def ntotal(self):
        return self.inner.ntotal

    @property
    def nprobe(self):
        return self.inner.nprobe

    @nprobe.setter
    def nprobe(self, value):
        self.inner.nprobe = value

    def search(self, queries, k):
        self.asked.append(k)
        if k > self.limit:
            raise RuntimeError(f"GPU index only supports min/max-K selection up to {self.limit}")
        return self.inner.search(queries, k)


def test_a_gpu_index_hands_more_neighbours_than_it_finds_to_its_cpu_copy(
    tracks, bank_and_index, monkeypatch
):
    import copy

    import dvamn.search as search_module

    bank, index = bank_and_index
    limit = 100
    monkeypatch.setattr(search_module, "GPU_MAX_NEIGHBOURS", limit)
    on_gpu = copy.copy(index)
    on_gpu.cpu_index = index.index
    on_gpu.index = GpuIndexStandIn(index.index, limit)
    units = torch.from_numpy(tracks[7, 10 : 10 + QUERY_FRAMES])
    units = units / units.norm(dim=-1, keepdim=True)
    lengths = bank.lengths.numpy()
    for neighbours in (limit, 4 * limit):  # within the GPU's limit, then past it
        settings = dataclasses.replace(SETTINGS, neighbours=neighbours)
        want = index.candidates(units, lengths, settings)
        got = on_gpu.candidates(units, lengths, settings)
        assert np.array_equal(got, want)
    # The GPU index answered the first query only; the second went to the CPU copy.
    assert on_gpu.index.asked == [limit]


def test_recall_names_why_each_exact_top_k_entry_was_lost():
    from dvamn.scoring import _rank

    exact_scores = np.array([0.10, 0.20, 0.30, 0.40, 0.50])
    exact = _rank(exact_scores, np.zeros(5, np.int64), top_k=3)  # top 3: tracks 0, 1, 2
    # Track 0 never proposed, track 1 re-ranked at a worse offset, track 2 kept; tracks 3
    # and 4 (outside the exact top 3) fill the approximate top 3.
    approx = _rank(np.array([np.inf, 0.45, 0.30, 0.40, 0.42]), np.zeros(5, np.int64), 3)
    r = recall_against_exact([exact], [approx], k=3)
    assert r["top1_same"] == 0.0 and r["recall_at_3"] == pytest.approx(1 / 3)
    assert r["missed_coarse"] == r["missed_offset"] == pytest.approx(1 / 3)
    assert r["missed_tie"] == 0.0
    # Re-ranked at its exact score (float sums in another order) and displaced by an
    # equal one: a tie, not a loss of the search.
    exact = _rank(np.array([0.1, 0.2, 0.3, 0.3 + 1e-7, 0.5]), np.zeros(5, np.int64), 3)
    approx = _rank(np.array([0.1, 0.2, 0.3 + 2e-7, 0.3 + 1e-7, 0.5]), np.zeros(5, np.int64), 3)
    r = recall_against_exact([exact], [approx], k=3)
    assert r["missed_tie"] == pytest.approx(1 / 3) and r["missed_coarse"] == 0.0


def test_every_returned_score_is_the_exact_one(tracks, bank_and_index):
    bank, index = bank_and_index
    query = noisy_window(tracks, 5, 20, noise=2.0, seed=7)
    exact = best_offsets(query, bank, top_k=None, distance="cosine")
    fast = search(query, bank, index, top_k=None, settings=SETTINGS)
    assert 0 < len(fast.indices) <= SETTINGS.candidates
    for i, score, offset in zip(fast.indices, fast.scores, fast.offsets):
        # Searched near the coarse offsets only: never better than the exact best offset,
        # and exactly the scorer's value at the offset it reports.
        assert score >= exact.all_scores[i] - 1e-6  # float32 sums in another order
        window = torch.as_tensor(bank.tracks[i, offset : offset + QUERY_FRAMES])
        q = bank.transform_query(torch.as_tensor(query))
        q = q / q.norm(dim=-1, keepdim=True)
        assert score == pytest.approx(float(1 - (q * window).sum(-1).mean()), abs=1e-5)


def test_index_survives_bytes_round_trip(tracks, bank_and_index):
    bank, index = bank_and_index
    again = SegmentIndex.from_bytes(index.to_bytes())
    query = noisy_window(tracks, 9, 44, noise=2.0, seed=3)
    a = search(query, bank, index, top_k=10, settings=SETTINGS)
    b = search(query, bank, again, top_k=10, settings=SETTINGS)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.offsets, b.offsets)
    assert index.nbytes() / NUM_TRACKS < TRACK_FRAMES * EMBEDDING_DIM * 4 / 4


def test_short_tracks_are_always_re_ranked(tracks):
    sequences = [t for t in tracks[:30]] + [tracks[30, :40]]  # one track shorter than a query
    bank = prepare_tracks(sequences)
    bank.normalise_in_place()
    index = SegmentIndex.build(bank, SETTINGS)
    query = np.concatenate([tracks[30, :40], tracks[30, :20]])
    fast = search(query, bank, index, top_k=None, settings=SETTINGS)
    exact = best_offsets(query, bank, top_k=None, distance="cosine")
    assert np.isfinite(fast.all_scores[30])
    assert fast.all_scores[30] == pytest.approx(exact.all_scores[30])


def test_bad_settings_and_distances_are_refused(bank_and_index):
    bank, index = bank_and_index
    with pytest.raises(ValueError, match="candidates must be a positive integer"):
        IndexSettings(candidates=0).check()
    with pytest.raises(ValueError, match="approximates the cosine distance"):
        search(np.zeros((QUERY_FRAMES, EMBEDDING_DIM)), bank, index, distance="l2")


class _Model(torch.nn.Module):
    """No network: these tests hand ``Matcher.rank`` predictions directly, and the plain
    "cosine" scoring needs no target statistics."""


def test_matcher_two_stage_refuses_non_cosine_scoring(tracks):
    catalog = Catalog.from_sequences(list(tracks[:10]))
    with pytest.raises(ValueError, match="not a cosine scoring"):
        Matcher(_Model(), {"audio_embedding_kind": "logmel"}, catalog, "cpu", "l2", "two-stage")
    with pytest.raises(ValueError, match="search must be one of"):
        Matcher(_Model(), {"audio_embedding_kind": "logmel"}, catalog, "cpu", "cosine", "fast")


def test_matcher_two_stage_ranks_like_exact(tracks):
    kwargs = dict(device="cpu", scoring="cosine", index_settings=SETTINGS)
    meta = {"audio_embedding_kind": "logmel"}
    exact = Matcher(_Model(), meta, Catalog.from_sequences(list(tracks)), **kwargs)
    fast = Matcher(
        _Model(), meta, Catalog.from_sequences(list(tracks)), search="two-stage", **kwargs
    )
    assert fast.catalog_info["search"] == "two-stage" and fast.catalog_info["index_memory_mb"] > 0
    query = noisy_window(tracks, 17, 33, noise=1.0, seed=11)
    a, b = exact.rank(query, top_k=3), fast.rank(query, top_k=3)
    assert a[0].track_id == b[0].track_id == "track-00017"
    # Two-stage re-ranks from float16 frames (memory-mapped): float16 keeps 11 bits of
    # each unit frame's components, so a mean over 60 frames moves by ~1e-5.
    assert a[0].offset_s == b[0].offset_s and a[0].score == pytest.approx(b[0].score, abs=1e-4)


@pytest.mark.parametrize("method", ["qb", "csls"])
def test_hubness_from_two_stage_search_follows_the_exact_correction(tracks, method):
    from dvamn.scoring import set_hubness
    from dvamn.search import two_stage_hubness

    bank = prepare_tracks(tracks, lengths=[TRACK_FRAMES] * NUM_TRACKS)
    bank.normalise_in_place()
    index = SegmentIndex.build(bank, SETTINGS)
    query_bank = np.stack([noisy_window(tracks, i, i % 90, 2.0, i) for i in range(0, 80, 4)])
    exact = set_hubness(bank, query_bank, method, "cosine").track_penalty.numpy().copy()
    fast = two_stage_hubness(bank, index, query_bank, method, SETTINGS).track_penalty.numpy()
    assert fast.shape == exact.shape and np.isfinite(fast).all()
    assert np.corrcoef(exact, fast)[0, 1] > 0.9


def test_catalog_index_is_read_back_only_for_what_it_was_built_for(tmp_path, bank_and_index):
    from dvamn.search import read_catalog_index, transform_digest, write_catalog_index

    _, index = bank_and_index
    digest = transform_digest(None, None)
    write_catalog_index(str(tmp_path), index, "cosine", digest, "content-1")
    loaded, why = read_catalog_index(str(tmp_path), "cosine", digest, "content-1", NUM_TRACKS)
    assert why is None and loaded.num_tracks == NUM_TRACKS
    _, why = read_catalog_index(str(tmp_path), "cosine", digest, "content-2", NUM_TRACKS)
    assert "catalog_version" in why and "--index-checkpoint" in why
    _, why = read_catalog_index(str(tmp_path), "cosine-w", "other", "content-1", NUM_TRACKS)
    assert "scoring" in why and "transform_digest" in why
    _, why = read_catalog_index(str(tmp_path / "old"), "cosine", digest, "content-1", NUM_TRACKS)
    assert "has no coarse index" in why and "dvamn catalog" in why


def test_matcher_uses_the_index_stored_with_the_catalog_version(
    tmp_path, tracks, caplog, monkeypatch
):
    from dvamn.search import transform_digest, write_catalog_index

    meta = {"audio_embedding_kind": "logmel"}
    catalog = Catalog.from_sequences(list(tracks))
    built = Matcher(_Model(), meta, catalog, "cpu", "cosine", "two-stage", index_settings=SETTINGS)
    assert "has no coarse index" in caplog.text and "--index-checkpoint" in caplog.text
    caplog.clear()
    write_catalog_index(
        str(tmp_path), built.index, "cosine", transform_digest(None, None), built.catalog.version
    )
    catalog = Catalog.from_sequences(list(tracks))
    catalog.version_uri = str(tmp_path)

    def no_build(*args, **kwargs):
        raise AssertionError("the stored index should have been loaded, not rebuilt")

    monkeypatch.setattr(SegmentIndex, "build", no_build)
    with caplog.at_level("WARNING", logger="dvamn.serving.matcher"):
        stored = Matcher(
            _Model(), meta, catalog, "cpu", "cosine", "two-stage", index_settings=SETTINGS
        )
    assert "no coarse index" not in caplog.text
    query = noisy_window(tracks, 23, 50, noise=1.0, seed=5)
    assert [m.track_id for m in stored.rank(query, 5)] == [m.track_id for m in built.rank(query, 5)]


def test_catalog_build_stores_the_index_the_service_loads(tmp_path, tracks, monkeypatch):
    from benchmarks.serve import write_catalog
    from dvamn.model import DVAMN, DVAMNConfig, save_checkpoint
    from dvamn.serving.catalog_store import load_catalog

    torch.manual_seed(0)
    model = DVAMN(
        DVAMNConfig(widths=(8, 8, 16), gru_hidden=8, post_gru_widths=(16, 8), fc_width=8)
    ).eval()
    save_checkpoint(str(tmp_path / "ckpt"), model, {"audio_embedding_kind": "logmel"})
    write_catalog(
        Catalog.from_sequences(list(tracks)),
        str(tmp_path / "catalog"),
        index_checkpoint=str(tmp_path / "ckpt"),
    )
    catalog = load_catalog(str(tmp_path / "catalog"))
    # The catalog job fits on a sample and encodes part by part (Ray Data's workers in
    # `dvamn catalog`): the same index, byte for byte, as one build over the whole bank.
    assert stored_index(str(tmp_path / "catalog")) == index_built_in_one_go(catalog, model)
    monkeypatch.setattr(SegmentIndex, "build", None)  # a rebuild would fail: it must load
    matcher = Matcher.from_uris(
        str(tmp_path / "ckpt"), str(tmp_path / "catalog"), device="cpu", search="two-stage"
    )
    assert matcher.index.num_tracks == len(catalog) == NUM_TRACKS
    assert matcher.scoring == "cosine-w"


def stored_index(catalog_uri: str) -> bytes:
    """The coarse index file of a catalog's current version."""
    from dvamn.catalog_format import resolve_catalog
    from dvamn.search import INDEX_DIR, INDEX_FILE

    _, _, version = resolve_catalog(catalog_uri)
    with open(f"{version}/{INDEX_DIR}/{INDEX_FILE}", "rb") as f:
        return f.read()


def index_built_in_one_go(catalog, model) -> bytes:
    """``SegmentIndex.build`` (default settings, as the catalog's) over the whole catalog's
    frames in the default scoring's space."""
    from dvamn.scoring import scoring_parts

    _, center, scale = scoring_parts("cosine-w", model)
    sequences = [catalog.track_embedding(i) for i in range(len(catalog))]
    bank = prepare_tracks(sequences, center=center, scale=scale)
    bank.normalise_in_place()
    return SegmentIndex.build(bank).to_bytes()


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_merged_return_exactly_the_ranking_of_one_bank(tracks, num_shards):
    from dvamn.search import merge_rankings, shard_bounds

    bank = prepare_tracks(tracks, lengths=[TRACK_FRAMES] * NUM_TRACKS)
    bank.normalise_in_place()
    bounds = shard_bounds(NUM_TRACKS, num_shards)
    assert bounds[0][0] == 0 and bounds[-1][1] == NUM_TRACKS
    shards = []
    for start, stop in bounds:
        shard = prepare_tracks(tracks[start:stop], lengths=[TRACK_FRAMES] * (stop - start))
        shard.normalise_in_place()
        shards.append(shard)
    for seed in range(3):
        query = noisy_window(tracks, 10 + 20 * seed, 15 * seed, noise=2.0, seed=seed)
        whole = best_offsets(query, bank, top_k=10, distance="cosine")
        parts = [best_offsets(query, s, top_k=10, distance="cosine") for s in shards]
        indices, scores, offsets = merge_rankings(parts, [a for a, _ in bounds], 10)
        assert np.array_equal(indices, whole.indices)
        assert np.array_equal(offsets, whole.offsets)
        assert np.allclose(scores, whole.scores, atol=1e-9)


def test_two_stage_matcher_keeps_float16_frames_memory_mapped(tracks):
    meta = {"audio_embedding_kind": "logmel"}
    catalog = Catalog.from_sequences(list(tracks))
    matcher = Matcher(
        _Model(), meta, catalog, "cpu", "cosine", "two-stage", index_settings=SETTINGS
    )
    frames = matcher.bank.tracks
    assert frames.dtype == torch.float16
    # The frames' memory is a mapping of the (unlinked) frames file, not anonymous memory.
    address = frames.data_ptr()
    with open("/proc/self/maps") as maps:
        mapped = [line for line in maps if "dvamn-frames-" in line]
    ranges = [[int(x, 16) for x in line.split()[0].split("-")] for line in mapped]
    assert any(low <= address < high for low, high in ranges), mapped
    info = matcher.catalog_info
    assert info["memory_mb"] == info["index_memory_mb"] < info["frames_on_disk_mb"]


def test_query_shorter_than_a_segment_is_scored_exhaustively(tracks, bank_and_index):
    bank, index = bank_and_index
    half = prepare_tracks(tracks, lengths=[TRACK_FRAMES] * NUM_TRACKS)
    half.normalise_in_place()
    half.tracks = half.unit_tracks = half.tracks.half()  # a float16 bank, as a replica's
    query = noisy_window(tracks, 8, 30, noise=1.0, seed=2)[: SETTINGS.segment_frames - 5]
    exact = best_offsets(query, bank, top_k=10, distance="cosine")
    fast = search(query, half, index, top_k=10, settings=SETTINGS)
    assert np.array_equal(fast.indices, exact.indices)
    assert np.array_equal(fast.offsets, exact.offsets)


def test_probing_the_coarse_offsets_refines_only_the_best_tracks(tracks, bank_and_index):
    from dataclasses import replace

    bank, index = bank_and_index
    probed = replace(SETTINGS, candidates=40, refine_tracks=5)
    for seed, (track, offset) in enumerate([(3, 0), (41, 37), (79, 90)]):
        query = noisy_window(tracks, track, offset, noise=1.0, seed=seed)
        exact = best_offsets(query, bank, top_k=None, distance="cosine")
        fast = search(query, bank, index, top_k=None, settings=probed)
        assert len(fast.indices) == 5  # 40 candidates probed, 5 searched around
        assert fast.indices[0] == track and fast.offsets[0] == offset
        # Exact scores, searched near the coarse offsets: never better than the best.
        assert (fast.scores >= exact.all_scores[fast.indices] - 1e-6).all()
        assert fast.scores[0] == pytest.approx(exact.scores[0], abs=1e-6)


@pytest.fixture(params=["int8", "float32"])
def middle_stage_product(request, monkeypatch):
    """Both ways of the middle stage's product: int8 codes times the int8 query into
    int32 where torch can, float32 where it cannot."""
    import dvamn.search

    if request.param == "float32":
        monkeypatch.setattr(dvamn.search, "_int8_product_available", lambda: False)
    elif not dvamn.search._int8_product_available():
        pytest.skip("this torch has no int8 matrix product on CPU")
    return request.param


def test_middle_stage_scores_the_reduced_frames_inner_products(
    tracks, bank_and_index, middle_stage_product
):
    bank, index = bank_and_index
    frames = index.attach_frames(bank)
    k = index.projection.frames.shape[1]
    assert frames.codes.shape == (NUM_TRACKS * TRACK_FRAMES, k)
    assert frames.codes.dtype == torch.int8
    axes = torch.from_numpy(index.projection.frames)
    units = bank.unit()
    query = units[5, 20 : 20 + QUERY_FRAMES] @ axes  # (T, k) reduced query frames
    # The last pair reads past the last track's end (its last 2 offsets are not valid
    # offsets, masked by the caller; the first 3 are checked).
    last = TRACK_FRAMES - QUERY_FRAMES
    pairs = [(5, 18), (5, 0), (77, last - 4), (NUM_TRACKS - 1, last - 2)]
    sims = frames.similarities(
        query, np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]), 5
    )
    for row, (track, start) in enumerate(pairs):
        for shift in range(min(5, last - start + 1)):
            window = units[track, start + shift : start + shift + QUERY_FRAMES] @ axes
            expected = float((query * window).sum(-1).mean())
            # int8 codes, one scale an axis: within a few thousandths of the exact value.
            assert float(sims[row, shift]) == pytest.approx(expected, abs=5e-3)
    assert frames.nbytes >= NUM_TRACKS * TRACK_FRAMES * k


def test_middle_stage_finds_the_true_track_at_its_offset_with_the_exact_score(
    tracks, bank_and_index
):
    from dataclasses import replace

    bank, index = bank_and_index
    middle = replace(SETTINGS, rescore_tracks=NUM_TRACKS, offsets_per_track=4, candidates=5)
    for seed, (track, offset) in enumerate([(3, 0), (41, 37), (79, 90), (12, 61)]):
        query = noisy_window(tracks, track, offset, noise=1.0, seed=seed)
        exact = best_offsets(query, bank, top_k=None, distance="cosine")
        fast = search(query, bank, index, top_k=None, settings=middle)
        assert len(fast.indices) == 5  # the exact scorer re-ranked the middle stage's best 5
        assert fast.indices[0] == track and fast.offsets[0] == exact.offsets[0] == offset
        assert fast.scores[0] == pytest.approx(exact.scores[0], abs=1e-6)
        assert (fast.scores >= exact.all_scores[fast.indices] - 1e-6).all()


def test_middle_stage_frames_are_counted_and_not_stored(tracks, bank_and_index):
    bank, index = bank_and_index
    again = SegmentIndex.from_bytes(index.to_bytes())
    assert again.frames is None  # derived from the bank a replica holds, not stored
    coarse = again.nbytes()
    frames = again.attach_frames(bank)
    assert again.nbytes() == coarse + frames.nbytes
    # Frames of a float16 bank, as a replica's, are the same codes.
    half = prepare_tracks(tracks, lengths=[TRACK_FRAMES] * NUM_TRACKS)
    half.normalise_in_place()
    half.tracks = half.unit_tracks = half.tracks.half()
    from dvamn.search import ReducedFrames

    codes = ReducedFrames.from_bank(half, again.projection).codes
    assert (codes.int() - frames.codes.int()).abs().max() <= 1


def test_settings_grow_with_the_index_past_scale_tracks():
    from dataclasses import replace

    base = IndexSettings()
    assert base.scaled(1000) == base and base.scaled(base.scale_tracks) == base
    big = base.scaled(8 * base.scale_tracks)
    # neighbours in proportion (the same fraction of the index), middle stage with the root
    assert big.neighbours == 8 * base.neighbours
    assert big.rescore_tracks == round(base.rescore_tracks * 8**0.5)
    assert (big.candidates, big.nprobe) == (base.candidates, base.nprobe)
    fixed = replace(base, scale_tracks=0)
    assert fixed.check().scaled(10**6) == fixed
