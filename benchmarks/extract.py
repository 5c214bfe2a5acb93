"""Extraction throughput: the Ray Data job against the same per-video functions in a plain
single-process loop, on synthetic videos, in one run.

    python benchmarks/extract.py                      # keypoint path + stand-in rtmlib path
    python benchmarks/extract.py --videos 12 --seconds 20 --paths keypoints --out bench.json
    python benchmarks/extract.py --videos 240 --seconds 30 --paths keypoints --batch 16   # README's

Prints a table (videos/s, pose frames/s, ratio Ray/loop, peak memory per worker) and writes
JSON. The loop and the job run the same ``VideoPoseExtractor`` and ``finish_rows``. Ray is
started before timing, and Ray Data's cluster-wide services (detached actors) too, as on
a cluster that is up and has run a job before; the job's time includes its actor
start-up, scheduling, serialisation and the Parquet writes (the loop writes nothing).
On a fresh cluster's first job, Ray Data's services start during the job: about 2 s
more on 2 cores.

A third runner gives a ceiling: the same loop split into one plain process per worker
(one math and ONNX Runtime thread each, as the job gives its actors), each timed inside
its process after its imports, so with no start-up, scheduling or output at all: what
the cores give this code with no coordination. ``Ray / ceiling`` says how much of that
the job gets.

The rtmlib path runs the tests' colour-matching stand-in RTMO network (no real weights
offline) through rtmlib's pre- and post-processing; it finds the synthetic dancer's
joints, so the tracking and features do real work. A real RTMO does more work per
frame, so the overhead share measured with the stand-in is an upper bound.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.support (stand-in models)
from benchmarks.report import write_json  # noqa: E402 - after the path


def run_loop(config, uris, threads=None):
    """``threads``: ONNX Runtime threads of the pose model (None: its default, all cores)."""
    from dvamn.audio import make_audio_embedder
    from dvamn.pipeline.extract import peak_rss_mb
    from dvamn.pipeline.video import VideoPoseExtractor, process_video

    started = time.perf_counter()
    extractor = VideoPoseExtractor(config, num_threads=threads)
    embedder = make_audio_embedder(
        config.audio, config.vggish_weights, config.vggish_pca, device="cpu"
    )
    frames = done = 0
    for uri, video_id in uris:
        row, _error = process_video(uri, video_id, extractor, embedder)
        if row is not None:
            done += 1
            frames += row["num_pose_frames"]
    return {
        "wall_s": time.perf_counter() - started,
        "videos": done,
        "frames": frames,
        "peak_rss_mb": peak_rss_mb(),
    }


def _ceiling_share(config, uris, queue):
    """One process of the ceiling runner: its share of the videos, one math thread."""
    if config.audio != "logmel":
        import torch  # imported before timing, as in the loop

        torch.set_num_threads(1)
    queue.put(run_loop(config, uris, threads=1))


def run_ceiling(config, uris, workers: int):
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fresh interpreters, no forked threads
    queue = context.Queue()
    shares = [uris[i::workers] for i in range(workers)]
    processes = [
        context.Process(target=_ceiling_share, args=(config, share, queue)) for share in shares
    ]
    # One BLAS thread per process, set before the children load numpy (as Ray does for
    # its workers): more threads than cores only contend.
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    os.environ.update({k: "1" for k in saved})
    try:
        for process in processes:
            process.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    results = [queue.get() for _ in processes]
    for process in processes:
        process.join()
    return {
        "wall_s": max(r["wall_s"] for r in results),  # the shares run at the same time
        "videos": sum(r["videos"] for r in results),
        "frames": sum(r["frames"] for r in results),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
    }


def run_ray(config):
    from dvamn.pipeline.extract import extract_dataset

    started = time.perf_counter()
    _dataset, summary = extract_dataset(config)
    return {
        "wall_s": time.perf_counter() - started,
        "videos": summary.done,
        "frames": summary.pose_frames,
        "peak_rss_mb": max(summary.pose_worker_peak_rss_mb, summary.audio_worker_peak_rss_mb),
        "pose_worker_peak_rss_mb": summary.pose_worker_peak_rss_mb,
        "audio_worker_peak_rss_mb": summary.audio_worker_peak_rss_mb,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--paths", default="keypoints,rtmo", help="comma-separated: keypoints, rtmo"
    )
    parser.add_argument("--audio", default="logmel", choices=("logmel", "vggish"))
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="actors per pool, and processes of the ceiling runner (default: cores)",
    )
    parser.add_argument("--batch", type=int, default=4, help="videos per actor call (default 4)")
    parser.add_argument(
        "--no-ceiling", action="store_true", help="skip the plain-processes ceiling runner"
    )
    parser.add_argument("--work-dir", help="keep data here (default: a temp dir)")
    parser.add_argument("--out", default="bench-out/extract.json", help="JSON results")
    args = parser.parse_args()

    import ray

    from dvamn.pipeline.config import ExtractConfig, StageResources
    from dvamn.storage import list_inputs, relative_id
    from dvamn.synth import synthesize

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dvamn-bench-"))
    data = work / "videos"
    if not data.exists():
        print(f"synthesising {args.videos} videos of {args.seconds:.0f} s into {data} ...")
        synthesize(
            str(data), videos=args.videos, seconds=args.seconds, seed=1, workers=os.cpu_count()
        )
    uris = [(u, relative_id(u, str(data))) for u in list_inputs(str(data))]

    weights = {}
    if args.audio == "vggish":
        from tests.support.standin_vggish import save_vggish_standin

        weights["vggish_weights"], weights["vggish_pca"] = (
            str(p) for p in save_vggish_standin(work / "vggish")
        )
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    # Ray Data starts its cluster-wide services (detached actors) on a cluster's first
    # dataset; a running cluster has them, so they start here, before any timing.
    import ray.data

    ray.data.range(1).materialize()
    results = []
    for path in args.paths.split(","):
        pose_kwargs = {"pose": "keypoints"}
        if path == "rtmo":
            from tests.support.standin_pose import export_rtmo_colour_standin

            model = work / "rtmo-colour-standin.onnx"
            if not model.exists():
                export_rtmo_colour_standin(model)
            pose_kwargs = {"pose": "rtmo", "pose_model": str(model)}
        cpus_per_actor = max(1.0, (os.cpu_count() or 2) / args.workers)
        # One actor per core in each pool, each keeping its threads to its CPU share;
        # several videos per call so that Ray's per-call cost is spread. With keypoint
        # files the pose step runs inside the audio actors (one pool, see build_dataset).
        pool = StageResources(
            min_actors=args.workers,
            max_actors=args.workers,
            num_cpus=cpus_per_actor * (0.75 if path == "rtmo" else 1.0),
            videos_per_batch=args.batch,
        )
        config = ExtractConfig(
            input=str(data),
            out=str(work / f"out-{path}-{time.time_ns()}"),
            audio=args.audio,
            device="cpu",
            pose_stage=pool,
            audio_stage=pool,
            **pose_kwargs,
            **weights,
        )
        runs = {"loop": run_loop(config, uris), "ray": run_ray(config)}
        if not args.no_ceiling:
            runs["ceiling"] = run_ceiling(config, uris, args.workers)
        loop = runs["loop"]
        result = {
            "path": path,
            "audio": args.audio,
            "videos": len(uris),
            "seconds_per_video": args.seconds,
            "workers": args.workers,
            "batch": args.batch,
            **runs,
            "speedup_ray_over_loop": loop["wall_s"] / runs["ray"]["wall_s"],
            # Both runners use every core (ONNX Runtime / torch threads in the loop, one
            # actor per core in the job): for the model paths, extra time is overhead.
            "ray_overhead_fraction_vs_loop": max(0.0, runs["ray"]["wall_s"] / loop["wall_s"] - 1),
        }
        for name, run in runs.items():
            result[f"{name}_videos_per_s"] = run["videos"] / run["wall_s"]
            result[f"{name}_frames_per_s"] = run["frames"] / run["wall_s"]
        if "ceiling" in runs:
            result["speedup_ceiling_over_loop"] = loop["wall_s"] / runs["ceiling"]["wall_s"]
            result["ray_fraction_of_ceiling"] = runs["ceiling"]["wall_s"] / runs["ray"]["wall_s"]
        results.append(result)
    ray.shutdown()

    header = f"{'path':<10} {'runner':<8} {'videos/s':>9} {'frames/s':>9} {'wall s':>8} {'x loop':>7} {'peak MiB/worker':>16}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        for name in ("loop", "ray", "ceiling"):
            if name not in r:
                continue
            m = r[name]
            print(
                f"{r['path']:<10} {name:<8} {m['videos'] / m['wall_s']:>9.2f} "
                f"{m['frames'] / m['wall_s']:>9.1f} {m['wall_s']:>8.1f} "
                f"{r['loop']['wall_s'] / m['wall_s']:>6.2f}x {m['peak_rss_mb']:>16.0f}"
            )
        line = f"{r['path']:<10} Ray / loop = {r['speedup_ray_over_loop']:.2f}x"
        if "ray_fraction_of_ceiling" in r:
            line += f", Ray / ceiling = {r['ray_fraction_of_ceiling']:.2f}"
        if r["ray_overhead_fraction_vs_loop"] > 0:
            line += f" (Ray's overhead: {100 * r['ray_overhead_fraction_vs_loop']:.1f}% of the loop's time)"
        print(line)
    write_json(args.out, {"cpu_count": os.cpu_count(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
