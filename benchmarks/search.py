"""Two-stage search against exhaustive search: recall on real model predictions, latency
and memory per track, at catalog sizes of 1,000 to 100,000 3-minute tracks.

    python benchmarks/search.py --synth SYNTH --work /tmp/search-bench \\
        --sizes 1000 10000 100000 --exact-queries 100 50 10 --out search.json
    python benchmarks/search.py ... --timing-only --exact-queries 10   # latency, quiet machine
    python benchmarks/search.py ... --query-set tuning --nprobe 192   # settings, other queries

SYNTH is a `dvamn synth` output (keypoint files beside the videos). The script:

1. Features and a quick model, in process (no Ray, so that it runs on a loaded machine):
   every video's pose features from its true keypoints and its logmel embedding (the
   extraction job's own ``process_video``), then a small DVAMN (the demo's widths) trained
   for ``--epochs`` on the training split with log-cosh, its target statistics and
   per-dimension weights set as ``dvamn train`` sets them. Cached in --work.
2. Queries: the model's predictions for 12 s windows of the validation videos (real model
   predictions, not random vectors).
3. Catalog of each size: the validation soundtracks, padded with distractor tracks of
   3 minutes built from real extracted soundtracks (every video's): each distractor is
   pieces of random real soundtracks, each cut at a random offset, laid end to end, and
   mixed in embedding space with a time-shifted second real soundtrack (weights 0.7 / 0.3).
   Frames are stored in the scoring space (cosine-w: standardised, weighted, unit), float16,
   in a memory-mapped file: exhaustive search reads it in chunks of 1,000 tracks, two-stage
   search re-ranks from it. One file for the largest size; each smaller catalog is its
   first rows (so each chunk's exhaustive scores serve every size, computed once).
4. For each size: exhaustive rankings (the exact reference: of every query, or of a sample
   of them, --exact-queries per size) and two-stage rankings of the same queries; top-1 agreement and recall@10 of two-stage against exhaustive; R@1 of
   the true track both ways; why the missed entries were lost (never proposed by the
   coarse stage, re-ranked away from the exact best offset, or a tie); p50 latency of each search on one thread (from the
   predicted sequence to the ranked top 10 with offsets); memory of the search structures
   per track; the model's forward pass (paper-size network, one 12 s query) beside it.

Prints a table and writes JSON (--out).
"""

import argparse
import json
import os
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import write_json  # noqa: E402 - after the path
from dvamn.search import IndexSettings  # noqa: E402  (torch-free: flag defaults)

TRACK_FRAMES = 900  # 3 minutes at 5 Hz
QUERY_POSE_FRAMES = 120  # 12 s at 10 fps
# --query-set: (first window's start in pose frames, sample seed, id of the first query in
# work's exhaustive cache)
QUERY_SETS = {"test": (0, 0, 0), "tuning": (15, 1, 1000)}
CHUNK_TRACKS = 1000


def extract_videos(synth: str, work: str):
    """(video ids, pose features list, audio embeddings list), cached in work."""
    cache = os.path.join(work, "features.npz")
    if os.path.exists(cache):
        with np.load(cache, allow_pickle=False) as z:
            ids = list(z["ids"])
            return ids, [z[f"pose_{i}"] for i in ids], [z[f"audio_{i}"] for i in ids]
    from dvamn.audio.select import make_audio_embedder
    from dvamn.pipeline.config import ExtractConfig
    from dvamn.pipeline.video import VideoPoseExtractor, process_video

    config = ExtractConfig(input=synth, out=work, pose="keypoints", audio="logmel", device="cpu")
    extractor = VideoPoseExtractor(config, num_threads=1)
    embedder = make_audio_embedder("logmel")
    ids, poses, audios = [], [], []
    videos = sorted(p for p in os.listdir(synth) if p.endswith(".mp4"))
    for n, name in enumerate(videos):
        row, error = process_video(os.path.join(synth, name), name[:-4], extractor, embedder)
        if error is not None:
            print(f"  {name}: {error['error_type']}: {error['message']}", flush=True)
            continue
        ids.append(row["video_id"])
        poses.append(np.asarray(row["pose"], np.float32).reshape(-1, 68))
        audios.append(np.asarray(row["audio_embedding"], np.float32).reshape(-1, 128))
        if (n + 1) % 20 == 0:
            print(f"  {n + 1}/{len(videos)} videos extracted", flush=True)
    np.savez(
        cache,
        ids=np.array(ids),
        **{f"pose_{i}": p for i, p in zip(ids, poses)},
        **{f"audio_{i}": a for i, a in zip(ids, audios)},
    )
    return ids, poses, audios


def quick_model(ids, poses, audios, work: str, epochs: int):
    """A small DVAMN trained in process on the training split (log-cosh)."""
    import torch

    from dvamn.model import DVAMN, DVAMNConfig, load_model, log_cosh, save_checkpoint
    from dvamn.training.data import DEFAULT_VAL_FRACTION, is_validation

    path = os.path.join(work, "model")
    if os.path.exists(os.path.join(path, "metadata.json")):
        return load_model(path)[0]
    torch.manual_seed(0)
    config = DVAMNConfig(
        widths=(32, 64, 128), gru_hidden=128, post_gru_widths=(128, 64), fc_width=64
    )
    model = DVAMN(config)
    train = [i for i, v in enumerate(ids) if not is_validation(v, DEFAULT_VAL_FRACTION)]
    windows_p, windows_a = [], []
    for i in train:
        for s in range(0, len(poses[i]) - QUERY_POSE_FRAMES + 1, 10):
            windows_p.append(poses[i][s : s + QUERY_POSE_FRAMES])
            windows_a.append(audios[i][s // 2 : s // 2 + QUERY_POSE_FRAMES // 2])
    x, y = torch.as_tensor(np.stack(windows_p)), torch.as_tensor(np.stack(windows_a))
    model.set_scaling(
        x.reshape(-1, 68).mean(0).numpy(),
        x.reshape(-1, 68).std(0).numpy(),
        y.reshape(-1, 128).mean(0).numpy(),
        y.reshape(-1, 128).std(0).numpy(),
    )
    optimiser = torch.optim.NAdam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        total = 0.0
        for start in range(0, len(x), 32):
            batch = order[start : start + 32]
            loss = log_cosh(model(x[batch]), model.standardise_targets(y[batch]))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}", flush=True)
    # Per-dimension weights as `dvamn train` sets them: the Pearson correlation of
    # prediction and target on the training windows, clipped to [0, 1].
    with torch.no_grad():
        predicted = model.predict(x).reshape(-1, 128)
    target = y.reshape(-1, 128)
    pc, tc = predicted - predicted.mean(0), target - target.mean(0)
    corr = (pc * tc).mean(0) / (pc.std(0) * tc.std(0)).clamp_min(1e-12)
    model.target_weight.copy_(corr.clamp(0.0, 1.0))
    save_checkpoint(path, model, {"audio_embedding_kind": "logmel", "epoch": epochs})
    return model


def distractor(rng, audios: List[np.ndarray]) -> np.ndarray:
    """(TRACK_FRAMES, 128) from real soundtracks: cut pieces end to end, mixed 0.7 / 0.3
    with a time-shifted second real soundtrack (see the module docstring)."""

    def pieces():
        out, filled = [], 0
        while filled < TRACK_FRAMES:
            a = audios[rng.integers(len(audios))]
            start = int(rng.integers(0, max(1, len(a) - 20)))
            piece = a[start : start + int(rng.integers(20, len(a) - start + 1))]
            out.append(piece)
            filled += len(piece)
        return np.concatenate(out)[:TRACK_FRAMES]

    return 0.7 * pieces() + 0.3 * pieces()


def scoring_frames(model, frames: np.ndarray) -> np.ndarray:
    """Raw embeddings (…, 128) -> cosine-w unit frames (the service's scoring space)."""
    center, scale = model.scoring_transform(weighted=True)
    x = (frames - center) / np.maximum(scale, 1e-6)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def build_store(model, size, true_tracks, audios, work, seed=0):
    """Memory-mapped (size, TRACK_FRAMES, 128) float16 unit frames and lengths: the
    validation soundtracks first (zero-padded), then distractors. Built once for the
    largest size: every smaller catalog is its first rows."""
    path = os.path.join(work, f"catalog-{size}.f16")
    lengths = np.full(size, TRACK_FRAMES, np.int64)
    lengths[: len(true_tracks)] = [len(t) for t in true_tracks]
    if not os.path.exists(path):
        store = np.lib.format.open_memmap(
            path + ".tmp", "w+", np.float16, (size, TRACK_FRAMES, 128)
        )
        for i, t in enumerate(true_tracks):
            store[i, : len(t)] = scoring_frames(model, t)
        rng = np.random.default_rng(seed)
        for start in range(len(true_tracks), size, CHUNK_TRACKS):
            stop = min(size, start + CHUNK_TRACKS)
            block = np.stack([distractor(rng, audios) for _ in range(start, stop)])
            store[start:stop] = scoring_frames(model, block)
        store.flush()
        del store
        os.replace(path + ".tmp", path)
    return np.load(path, mmap_mode="r"), lengths


def unit_bank(frames, lengths):
    """A cosine TrackBank over unit frames already in the scoring space."""
    import torch

    from dvamn.scoring import TrackBank

    tracks = torch.from_numpy(np.asarray(frames))  # read-only memory map: never written
    return TrackBank(tracks, torch.as_tensor(lengths), unit_tracks=tracks, unit_only=True)


def exhaustive(store, lengths, queries, query_ids, work, top_k=10):
    """Exact rankings of every query over the whole store, chunk by chunk, merged. A
    chunk's scores for a query are kept in ``work`` (a file per chunk, keyed by query id;
    the store, model and queries are work's too): the smaller catalogs are the first rows
    of the larger ones, so each chunk and query is scored once, and a rerun (the
    exclusive latency run after a shared recall run) scores none again."""
    from dvamn.scoring import _rank, best_offsets

    scores = np.full((len(queries), len(lengths)), np.inf)
    offsets = np.zeros((len(queries), len(lengths)), np.int64)
    for start in range(0, len(lengths), CHUNK_TRACKS):
        stop = min(len(lengths), start + CHUNK_TRACKS)
        path = os.path.join(work, f"exact-{start}-{stop}.npz")
        cached = {}
        if os.path.exists(path):
            with np.load(path) as z:
                cached = {k: z[k] for k in z.files}
        bank = None
        for q, (query, qid) in enumerate(zip(queries, query_ids)):
            if f"s{qid}" not in cached:
                if bank is None:
                    bank = unit_bank(np.asarray(store[start:stop], np.float32), lengths[start:stop])
                ranking = best_offsets(query, bank, top_k=None, distance="cosine")
                cached[f"s{qid}"], cached[f"o{qid}"] = ranking.all_scores, ranking.all_offsets
            scores[q, start:stop], offsets[q, start:stop] = cached[f"s{qid}"], cached[f"o{qid}"]
        if bank is not None:
            np.savez(path + ".tmp.npz", **cached)
            os.replace(path + ".tmp.npz", path)
    return [_rank(scores[q], offsets[q], top_k) for q in range(len(queries))]


def exhaustive_seconds_per_track(store, lengths, queries) -> float:
    """Median seconds of one exhaustive query per track, timed on the store's first
    chunk (scaled to each catalog by the caller)."""
    from dvamn.scoring import best_offsets

    stop = min(len(lengths), CHUNK_TRACKS)
    bank = unit_bank(np.asarray(store[:stop], np.float32), lengths[:stop])
    times = []
    for query in queries:
        began = time.perf_counter()
        best_offsets(query, bank, top_k=None, distance="cosine")
        times.append(time.perf_counter() - began)
    return float(np.median(times)) / stop


def true_rank(ranking, track) -> int:
    where = np.nonzero(ranking.indices == track)[0]
    return int(where[0]) + 1 if len(where) else 10**9


def model_forward_ms(queries_pose) -> float:
    import torch

    from dvamn.model import DVAMN, DVAMNConfig

    torch.manual_seed(0)
    paper = DVAMN(DVAMNConfig()).eval()
    pose = torch.as_tensor(queries_pose[0])
    paper.predict(pose)
    times = []
    for p in queries_pose[:10]:
        began = time.perf_counter()
        paper.predict(torch.as_tensor(p))
        times.append(time.perf_counter() - began)
    return round(1000 * float(np.median(times)), 1)


# The settings that fix an index's content (the rest are read at search time).
BUILD_SETTINGS = (
    "segment_frames",
    "segment_stride",
    "frame_dim",
    "pool_frames",
    "dim",
    "train_segments",
    "max_lists",
)


def cached_index(bank, settings, size: int, work: str):
    """(SegmentIndex, build seconds, whether it was read from work): built once per catalog size and build settings and
    kept in work, so that a --timing-only run (under an exclusive lock) does not rebuild
    it. The store and the model are cached in work too, so the key is size and settings."""
    import hashlib

    from dvamn.search import SegmentIndex

    build = {k: getattr(settings, k) for k in BUILD_SETTINGS}
    key = hashlib.sha256(json.dumps(build, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(work, f"index-{size}-{key}")
    if os.path.exists(path + ".json"):
        with open(path + ".bin", "rb") as f:
            index = SegmentIndex.from_bytes(f.read())
        with open(path + ".json") as f:
            return index, json.load(f)["build_s"], True
    began = time.perf_counter()
    index = SegmentIndex.build(bank, settings)
    build_s = time.perf_counter() - began
    with open(path + ".bin", "wb") as f:
        f.write(index.to_bytes())
    with open(path + ".json", "w") as f:
        json.dump({"build_s": build_s, "settings": build}, f)
    return index, build_s, False


def bench_size(model, size, queries, query_tracks, true_tracks, audios, args) -> Dict[str, Any]:
    import faiss

    from dvamn.search import IndexSettings, recall_against_exact, two_stage_offsets

    full_store, full_lengths = build_store(model, max(args.sizes), true_tracks, audios, args.work)
    store, lengths = full_store[:size], full_lengths[:size]
    bank = unit_bank(store, lengths)  # memory-mapped float16: read per candidate
    settings = IndexSettings(
        candidates=args.candidates,
        neighbours=args.neighbours,
        nprobe=args.nprobe,
        offsets_per_track=args.offsets_per_track,
        dim=args.dim,
        refine_tracks=args.refine_tracks,
        rescore_tracks=args.rescore_tracks,
        train_segments=args.train_segments,
    )
    index, build_s, index_cached = cached_index(bank, settings, size, args.work)
    began = time.perf_counter()
    if settings.rescore_tracks:  # the middle stage's reduced frames, as a replica's load makes them
        index.attach_frames(bank)
    attach_s = time.perf_counter() - began
    # The exact reference on every query up to --exact-queries, a sample beyond (its
    # cost is catalog size x queries: hours at 100,000 tracks for all of them).
    wanted = args.exact_queries[min(args.sizes.index(size), len(args.exact_queries) - 1)]
    sampled = len(queries) > wanted
    step = len(queries) / wanted if sampled else 1
    picked = sorted({int(i * step) for i in range(min(len(queries), wanted))})
    faiss.omp_set_num_threads(1)
    # settings passed, not read from the index: a cached index keeps the search-time
    # settings of the run that built it.
    two_stage_offsets(queries[0], bank, index, top_k=10, settings=settings)  # warm-up
    fast, latencies = [], []  # every query timed; recall on the picked ones
    for query in queries:
        began = time.perf_counter()
        fast.append(two_stage_offsets(query, bank, index, top_k=10, settings=settings))
        latencies.append(time.perf_counter() - began)
    timed = len(queries)
    fast = [fast[i] for i in picked]
    query_tracks = [query_tracks[i] for i in picked]
    # The exhaustive search timed on the first chunk, scaled; its rankings from work's
    # cache where an earlier run scored them.
    exact_s_per_track = exhaustive_seconds_per_track(store, lengths, queries[: args.exact_timed])
    began = time.perf_counter()
    if not args.timing_only:
        first_id = QUERY_SETS[args.query_set][2]
        exact = exhaustive(
            store, lengths, [queries[i] for i in picked], [first_id + i for i in picked], args.work
        )
    exact_wall = time.perf_counter() - began
    middle_bytes = index.frames.nbytes if index.frames is not None else 0
    row = {
        "tracks": size,
        "queries_timed": timed,
        "queries_recall": len(picked),
        "two_stage_p50_ms": round(1000 * float(np.median(latencies)), 2),
        "two_stage_p99_ms": round(1000 * float(np.percentile(latencies, 99)), 2),
        "exhaustive_p50_ms_scaled": round(1000 * exact_s_per_track * size, 1),
        "exhaustive_scaled_from": f"the first {min(size, CHUNK_TRACKS)} tracks, "
        f"{min(len(queries), args.exact_timed)} queries, x {size / min(size, CHUNK_TRACKS):g}",
        "exhaustive_wall_s": round(exact_wall, 1),  # 0 where work's cache had the scores
        "index_bytes_per_track": round(index.nbytes() / size),
        "index_build_s": round(build_s, 1),
        "index_from_cache": index_cached,  # build_s then is that of the run that built it
        "index_bytes_per_track_coarse": round((index.nbytes() - middle_bytes) / size),
        "index_bytes_per_track_middle_frames": round(middle_bytes / size),
        "middle_frames_build_s": round(attach_s, 1),
        "index_settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        # what two-stage search ran with at this size (IndexSettings.scaled)
        "index_settings_scaled": {
            k: getattr(settings.scaled(size), k) for k in ("neighbours", "rescore_tracks")
        },
        "recall_queries": f"a sample of {len(picked)}" if sampled else f"all {len(picked)}",
        "reranking_frames": "float16 memory-mapped file (read per candidate)",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if args.timing_only:
        return row
    agreement = recall_against_exact(exact, fast)
    exact_ranks = [true_rank(r, t) for r, t in zip(exact, query_tracks)]
    fast_ranks = [true_rank(r, t) for r, t in zip(fast, query_tracks)]
    return {
        **row,
        "top1_same": agreement["top1_same"],
        "recall_at_10": agreement["recall_at_10"],
        # Why the exhaustive top-10 entries that two-stage lacks were lost (fractions of
        # all exhaustive top-10 entries; see recall_against_exact).
        **{k: v for k, v in agreement.items() if k.startswith("missed_")},
        "exhaustive_true_r_at_1": float(np.mean(np.array(exact_ranks) == 1)),
        "two_stage_true_r_at_1": float(np.mean(np.array(fast_ranks) == 1)),
        "exhaustive_true_r_at_10": float(np.mean(np.array(exact_ranks) <= 10)),
        "two_stage_true_r_at_10": float(np.mean(np.array(fast_ranks) <= 10)),
    }


def cell(row: Dict[str, Any], key: str, width: int) -> str:
    """A table cell: the figure, or "-" where the run did not measure it."""
    return f"{row[key]:>{width}.3f}" if key in row else f"{'-':>{width}}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synth", required=True, help="a `dvamn synth` output folder")
    parser.add_argument("--work", required=True, help="cache folder (features, model, stores)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--queries", type=int, default=100, help="at most, per size")
    parser.add_argument("--candidates", type=int, default=IndexSettings.candidates)
    parser.add_argument("--neighbours", type=int, default=IndexSettings.neighbours)
    parser.add_argument("--nprobe", type=int, default=IndexSettings.nprobe)
    parser.add_argument("--offsets-per-track", type=int, default=IndexSettings.offsets_per_track)
    parser.add_argument("--dim", type=int, default=IndexSettings.dim)
    parser.add_argument("--refine-tracks", type=int, default=IndexSettings.refine_tracks)
    parser.add_argument("--rescore-tracks", type=int, default=IndexSettings.rescore_tracks)
    parser.add_argument("--train-segments", type=int, default=IndexSettings.train_segments)
    parser.add_argument(
        "--query-set",
        choices=QUERY_SETS,
        default="test",
        help="test: the reported queries; tuning: another sample of windows of the same "
        "validation videos, starting 1.5 s later (each overlaps a test window by up to 10.5 "
        "of its 12 s: other queries, not other data), for choosing settings",
    )
    parser.add_argument(
        "--exact-timed",
        type=int,
        default=10,
        help="queries the exhaustive search is timed on (the first chunk, scaled)",
    )
    parser.add_argument(
        "--exact-queries",
        type=int,
        nargs="+",
        default=[100],
        help="queries the exhaustive reference scores, one count per size (the last "
        "repeats); a sample of the queries where fewer than --queries",
    )
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="latency and memory only: the exhaustive search timed on the first "
        f"{CHUNK_TRACKS}-track chunk and scaled, no recall (a short run on a quiet machine)",
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    args.sizes = sorted(args.sizes)
    if not 1 <= args.queries <= 1000:  # work's cache ids: test queries 0-999, tuning 1000-1999
        parser.error(f"--queries must be between 1 and 1000, got {args.queries}")

    import torch

    torch.set_num_threads(1)
    os.makedirs(args.work, exist_ok=True)
    from dvamn.training.data import DEFAULT_VAL_FRACTION, is_validation

    ids, poses, audios = extract_videos(args.synth, args.work)
    model = quick_model(ids, poses, audios, args.work, args.epochs).eval()
    val = [i for i, v in enumerate(ids) if is_validation(v, DEFAULT_VAL_FRACTION)]
    first, seed, _ = QUERY_SETS[args.query_set]
    cut = [(k, s) for k, i in enumerate(val) for s in range(first, len(poses[i]) - 119, 30)]
    rng = np.random.default_rng(seed)
    cut = [cut[j] for j in sorted(rng.permutation(len(cut))[: args.queries])]
    query_pose = np.stack([poses[val[k]][s : s + QUERY_POSE_FRAMES] for k, s in cut])
    with torch.no_grad():
        predicted = model.predict(torch.as_tensor(query_pose)).numpy()
    # Into the scoring space the store holds (the bank's transform_query does this in the
    # service; these banks hold frames already transformed).
    queries = scoring_frames(model, predicted).astype(np.float32)
    results: Dict[str, Any] = {
        "command": " ".join(["python"] + [shlex.quote(a) for a in sys.argv]),
        "machine": {"cpus": os.cpu_count(), "threads": 1},
        "query_set": args.query_set,
        "model": f"quick DVAMN, {args.epochs} epochs in process on {len(ids) - len(val)} videos",
        "validation_tracks": len(val),
        "model_forward_ms_paper_size": model_forward_ms(query_pose),
        "sizes": [],
    }
    print(
        f"{'tracks':>7} {'2-stage p50 ms':>14} {'exact p50 ms*':>13} {'bytes/track':>11} "
        f"{'top-1 same':>10} {'recall@10':>9} {'R@1 exact':>9} {'R@1 2-st':>8}"
    )
    for size in args.sizes:
        row = bench_size(
            model,
            size,
            list(queries),
            [k for k, _ in cut],
            [audios[i] for i in val],
            audios,
            args,
        )
        results["sizes"].append(row)

        print(
            f"{row['tracks']:>7} {row['two_stage_p50_ms']:>14.1f} "
            f"{row['exhaustive_p50_ms_scaled']:>13.0f} {row['index_bytes_per_track']:>11} "
            f"{cell(row, 'top1_same', 10)} {cell(row, 'recall_at_10', 9)} "
            f"{cell(row, 'exhaustive_true_r_at_1', 9)} {cell(row, 'two_stage_true_r_at_1', 8)}",
            flush=True,
        )
    print(f"(* exhaustive timed per {CHUNK_TRACKS}-track chunk and scaled linearly)")
    print(
        f"model forward pass (paper size, one 12 s query): {results['model_forward_ms_paper_size']} ms"
    )
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
