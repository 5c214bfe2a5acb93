"""Matching latency and throughput against catalogs of 100, 1,000 and 10,000 tracks.

    python benchmarks/serve.py                                # defaults below, a few minutes
    python benchmarks/serve.py --sizes 100 1000 --queries 50 --out serve-bench.json

For each catalog size (synthetic 3-minute tracks: random embeddings, 900 frames of 128):

- keypoint queries in process, the code a MatchModel replica runs: 12 s of 30 fps keypoints
  -> pose features -> DVAMN (paper-size network, random weights: the cost is the same) ->
  scorer over the whole catalog -> top 10. p50 / p99 latency and sequential requests/s
  of one replica, with the model / score split.
- the vectorised scorer alone (``dvamn.scoring.best_offsets``) against the plain per-track
  loop (``best_offsets_reference``). The loop is timed on a 100-track slice and scaled
  linearly to the catalog (it is linear in tracks); the table says "scaled" where it is.
- catalog memory (the scorer's bank).

Then the whole service over HTTP (Ray Serve on loopback, FastAPI ingress, @serve.batch)
with a small catalog (``--http-tracks``), ``--http-requests`` keypoint queries from 8
threads: p50 / p99 latency and requests/s end to end, with the service's exhaustive search
or, ``--http-search two-stage``, its two-stage search (``--sizes`` with no sizes: HTTP only).

Prints a table and writes JSON (``--out``). The machine's load changes the numbers: the
JSON records the CPU count and torch threads.
"""

import argparse
import os
import shlex
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import write_json  # noqa: E402 - after the path

TRACK_S = 180.0
QUERY_S = 12.0
QUERY_FPS = 30.0
REFERENCE_TRACKS = 100


def percentile_ms(values: List[float], q: float) -> float:
    return round(1000 * float(np.percentile(values, q)), 2)


def synthetic_catalog(num_tracks: int, track_s: float, seed: int):
    """A Catalog of ``num_tracks`` random (track_s / 0.2, 128) sequences, one allocation."""
    from dvamn.constants import AUDIO_HOP_S, EMBEDDING_DIM, num_audio_frames
    from dvamn.serving.catalog_store import Catalog

    frames = num_audio_frames(track_s)
    rng = np.random.default_rng(seed)
    packed = rng.standard_normal((num_tracks * frames, EMBEDDING_DIM), dtype=np.float32)
    ids = [f"track-{i:05d}" for i in range(num_tracks)]
    return Catalog(
        uri=f"<synthetic {num_tracks}>",
        track_ids=ids,
        titles=ids,
        uris=[""] * num_tracks,
        durations_s=np.full(num_tracks, frames * AUDIO_HOP_S),
        embeddings=packed,
        offsets=np.arange(num_tracks + 1, dtype=np.int64) * frames,
        audio_embedding_kind="logmel",
        audio_weights="",
        version=f"synthetic-{num_tracks}",
    )


def synthetic_keypoints(seed: int, seconds: float = QUERY_S, fps: float = QUERY_FPS) -> np.ndarray:
    """A swaying standing figure, (T, 17, 2) pixels in a 640 x 360 frame."""
    rng = np.random.default_rng(seed)
    template = np.array(
        [(0.5, 0.08), (0.47, 0.06), (0.53, 0.06), (0.44, 0.08), (0.56, 0.08), (0.38, 0.22),
         (0.62, 0.22), (0.32, 0.38), (0.68, 0.38), (0.30, 0.52), (0.70, 0.52), (0.42, 0.52),
         (0.58, 0.52), (0.42, 0.74), (0.58, 0.74), (0.42, 0.95), (0.58, 0.95)]
    )  # fmt: skip
    t = np.arange(int(seconds * fps)) / fps
    sway = 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t)[:, None, None]
    points = template[None] + sway + rng.normal(0, 0.005, (len(t), 17, 2))
    return (points * [200, 300] + [220, 30]).astype(np.float32)


def paper_model():
    import torch

    from dvamn.model import DVAMN, DVAMNConfig

    torch.manual_seed(0)
    return DVAMN(DVAMNConfig()).eval()


def bench_size(model, num_tracks: int, args) -> Dict[str, Any]:
    import torch

    from dvamn.scoring import best_offsets, best_offsets_reference
    from dvamn.serving.matcher import Matcher
    from dvamn.serving.queries import QueryLimits, keypoint_features

    started = time.perf_counter()
    catalog = synthetic_catalog(num_tracks, args.track_s, seed=num_tracks)
    matcher = Matcher(model, {"audio_embedding_kind": "logmel"}, catalog, device=args.device)
    build_s = time.perf_counter() - started
    limits = QueryLimits(min_query_s=1.0)

    warm_up = synthetic_keypoints(seed=-1 % 2**32, seconds=args.query_s)
    matcher.match(keypoint_features(warm_up, QUERY_FPS, width=640, height=360, limits=limits)[0])
    latencies, model_ms, score_ms = [], [], []
    budget_end = time.perf_counter() + args.budget_s
    for i in range(args.queries):
        if i >= 3 and time.perf_counter() > budget_end:
            break
        keypoints = synthetic_keypoints(seed=i, seconds=args.query_s)
        started = time.perf_counter()
        features, _ = keypoint_features(keypoints, QUERY_FPS, width=640, height=360, limits=limits)
        answer = matcher.match(features, top_k=10)
        latencies.append(time.perf_counter() - started)
        model_ms.append(answer["timings_ms"]["model"])
        score_ms.append(answer["timings_ms"]["score"])

    [prediction] = matcher.predict([features])
    scorer_s = []
    for _ in range(3 if num_tracks <= 1000 else 1):  # 10,000 tracks take seconds a run
        started = time.perf_counter()
        vectorised = best_offsets(prediction, matcher.bank, top_k=None, distance=matcher.distance)
        scorer_s.append(time.perf_counter() - started)
    reference_tracks = min(num_tracks, REFERENCE_TRACKS)
    # The bank holds the service's transformed frames: the loop gets the query transformed
    # the same way, and the service's distance.
    subset = [matcher.bank.tracks[i].numpy() for i in range(reference_tracks)]
    query = matcher.bank.transform_query(torch.as_tensor(prediction)).numpy()
    started = time.perf_counter()
    reference = best_offsets_reference(query, subset, top_k=10, distance=matcher.distance)
    reference_s = (time.perf_counter() - started) * num_tracks / reference_tracks
    # The same top 10 on the slice the loop saw (scores of the other tracks left out).
    vector_subset = vectorised.all_scores[:reference_tracks]
    agree = bool(np.array_equal(np.argsort(vector_subset, kind="stable")[:10], reference.indices))
    return {
        "tracks": num_tracks,
        "scoring": matcher.scoring,
        "track_s": args.track_s,
        "query_s": args.query_s,
        "queries": len(latencies),
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "requests_per_s": round(len(latencies) / sum(latencies), 2),
        "model_ms_p50": round(float(np.median(model_ms)), 2),
        "score_ms_p50": round(float(np.median(score_ms)), 2),
        "scorer_s": round(float(np.median(scorer_s)), 4),
        "reference_loop_s": round(reference_s, 3),
        "reference_scaled": reference_tracks < num_tracks,
        "speedup": round(reference_s / float(np.median(scorer_s)), 1),
        "rankings_agree": agree,
        "catalog_mb": round(matcher.bank.nbytes() / 2**20, 1),
        "catalog_build_s": round(build_s, 2),
    }


def write_catalog(catalog, out: str, **publish_options) -> None:
    """Write an in-memory catalog as a version of a `dvamn catalog` catalog
    (``publish_options``: of ``write_catalog_tables``, e.g. ``index_checkpoint``)."""
    from dvamn.catalog_format import CATALOG_SCHEMA, embedding_sha256
    from dvamn.pipeline.catalog import write_catalog_tables
    from dvamn.schema import rows_to_table

    rows = []
    for i, track_id in enumerate(catalog.track_ids):
        embedding = catalog.track_embedding(i)
        rows.append(
            {
                "track_id": track_id,
                "title": track_id,
                "uri": "",
                "duration_s": float(catalog.durations_s[i]),
                "num_audio_frames": len(embedding),
                "embedding": embedding,
                "embedding_sha256": embedding_sha256(embedding),
                "audio_embedding_kind": catalog.audio_embedding_kind,
                "audio_weights": "",
                "source": "synthetic",
                "audio_playable": False,
                "cataloged_at": "",
                "audio_onset": None,  # no rhythm term in this benchmark
            }
        )
    write_catalog_tables(out, rows_to_table(rows, CATALOG_SCHEMA), **publish_options)


def bench_http(model, args) -> Dict[str, Any]:
    import httpx
    import ray
    from ray import serve

    from dvamn.model import save_checkpoint
    from dvamn.serving.app import build_app

    tmp = tempfile.mkdtemp(prefix="dvamn-serve-bench-")
    write_catalog(synthetic_catalog(args.http_tracks, args.track_s, seed=7), f"{tmp}/catalog")
    save_checkpoint(f"{tmp}/checkpoint", model, {"audio_embedding_kind": "logmel"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(
            {
                "checkpoint": f"{tmp}/checkpoint",
                "catalog": f"{tmp}/catalog",
                "device": args.device,
                "min_query_s": 1.0,
                "num_cpus": args.replica_cpus,
                "pose_num_gpus": 0,
                "search": args.http_search,
                # No pose model is needed for keypoint queries, but the deployment loads
                # one: point it at the tests' stand-in so that nothing is downloaded.
                "pose_model": _standin_rtmo(tmp),
            }
        )
        serve.run(app, name="bench", route_prefix="/")
        body = lambda i: {  # noqa: E731
            "keypoints": synthetic_keypoints(i, args.query_s).tolist(),
            "fps": QUERY_FPS,
            "width": 640,
            "height": 360,
            "top_k": 10,
        }
        bodies = [body(i) for i in range(args.http_requests)]
        url = f"http://127.0.0.1:{port}/match/keypoints"
        httpx.post(url, json=bodies[0], timeout=120).raise_for_status()  # warm-up

        def send(b):
            started = time.perf_counter()
            response = httpx.post(url, json=b, timeout=300)
            response.raise_for_status()
            return time.perf_counter() - started, response.json()["batch_size"]

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(send, bodies))
        wall_s = time.perf_counter() - started
        latencies = [r[0] for r in results]
        return {
            "tracks": args.http_tracks,
            "search": args.http_search,
            "requests": len(results),
            "threads": 8,
            "p50_ms": percentile_ms(latencies, 50),
            "p99_ms": percentile_ms(latencies, 99),
            "requests_per_s": round(len(results) / wall_s, 2),
            "mean_batch_size": round(float(np.mean([r[1] for r in results])), 2),
        }
    finally:
        serve.shutdown()
        ray.shutdown()


def _standin_rtmo(tmp: str) -> str:
    import warnings

    from tests.support.standin_pose import export_rtmo_standin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_rtmo_standin(os.path.join(tmp, "rtmo-standin.onnx"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[100, 1000, 10000], help="none: HTTP only"
    )
    parser.add_argument("--track-s", type=float, default=TRACK_S)
    parser.add_argument("--query-s", type=float, default=QUERY_S)
    parser.add_argument("--queries", type=int, default=30, help="per size (at most)")
    parser.add_argument("--budget-s", type=float, default=40.0, help="time per size (>= 3 queries)")
    parser.add_argument("--http-tracks", type=int, default=100, help="0 skips the HTTP part")
    parser.add_argument("--http-requests", type=int, default=100)
    parser.add_argument(
        "--http-search",
        choices=["exact", "two-stage"],
        default="exact",
        help="the service's search for the HTTP part (two-stage: the replica builds the "
        "coarse index at start, default IndexSettings)",
    )
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in process (a 1-CPU replica's)"
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    model = paper_model()
    results: Dict[str, Any] = {
        "command": " ".join(["python"] + [shlex.quote(a) for a in sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "model_parameters": model.parameter_count(),
        },
        "in_process": [],
    }
    header = (
        f"{'tracks':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'model ms':>9} "
        f"{'score ms':>9} {'loop s':>8} {'speedup':>8} {'memory MB':>10}"
    )
    print(header)
    for size in args.sizes:
        row = bench_size(model, size, args)
        results["in_process"].append(row)
        scaled = "*" if row["reference_scaled"] else " "
        print(
            f"{row['tracks']:>7} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
            f"{row['requests_per_s']:>7.2f} {row['model_ms_p50']:>9.1f} {row['score_ms_p50']:>9.1f} "
            f"{row['reference_loop_s']:>7.2f}{scaled} {row['speedup']:>7.0f}x {row['catalog_mb']:>10.1f}",
            flush=True,
        )
    print(f"(* loop timed on {REFERENCE_TRACKS} tracks and scaled linearly)")
    if args.http_tracks:
        http = bench_http(model, args)
        results["http"] = http
        print(
            f"HTTP, {http['tracks']} tracks ({http['search']} search), {http['requests']} requests over {http['threads']} "
            f"threads: p50 {http['p50_ms']:.1f} ms, p99 {http['p99_ms']:.1f} ms, "
            f"{http['requests_per_s']:.2f} req/s, mean batch {http['mean_batch_size']}"
        )
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
