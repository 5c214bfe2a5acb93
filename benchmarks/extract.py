"""Extraction throughput: the Ray Data job against the same per-video functions in a plain
single-process loop, on synthetic videos, in one run.

    python benchmarks/extract.py                      # keypoint path + stand-in rtmlib path
    python benchmarks/extract.py --videos 12 --seconds 20 --paths keypoints --out bench.json

Prints a table (videos/s, pose frames/s, ratio Ray/loop, peak memory per worker) and writes
JSON. The loop and the job run the same ``VideoPoseExtractor`` and ``finish_rows``; Ray is
started before timing (a cluster is up before a job is submitted), so the job's time
includes actor start-up, scheduling, serialisation and the Parquet writes.

The rtmlib path runs the tests' colour-matching stand-in RTMO network (no real weights
offline) through rtmlib's pre- and post-processing; it finds the synthetic dancer's
joints, so the tracking and features do real work. A real RTMO does more work per
frame, so the overhead share measured with the stand-in is an upper bound.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.support (stand-in models)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_loop(config, uris):
    from dvamn.audio import make_audio_embedder
    from dvamn.pipeline.video import VideoPoseExtractor, process_video

    started = time.perf_counter()
    extractor = VideoPoseExtractor(config)
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
        "--workers", type=int, default=os.cpu_count() or 2, help="actors in the pose stage"
    )
    parser.add_argument("--batch", type=int, default=4, help="videos per actor call (default 4)")
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
        synthesize(str(data), videos=args.videos, seconds=args.seconds, seed=1)
    uris = [(u, relative_id(u, str(data))) for u in list_inputs(str(data))]

    weights = {}
    if args.audio == "vggish":
        from tests.support.standin_vggish import save_vggish_standin

        weights["vggish_weights"], weights["vggish_pca"] = (
            str(p) for p in save_vggish_standin(work / "vggish")
        )
    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
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
        config = ExtractConfig(
            input=str(data),
            out=str(work / f"out-{path}-{time.time_ns()}"),
            audio=args.audio,
            device="cpu",
            # One actor per core in each stage, each keeping its threads to its CPU share;
            # several videos per call so that Ray's per-call cost is spread.
            pose_stage=StageResources(
                min_actors=args.workers,
                max_actors=args.workers,
                num_cpus=cpus_per_actor * 0.75,
                videos_per_batch=args.batch,
            ),
            audio_stage=StageResources(
                min_actors=args.workers,
                max_actors=args.workers,
                num_cpus=cpus_per_actor * 0.75,
                videos_per_batch=args.batch,
            ),
            **pose_kwargs,
            **weights,
        )
        loop = run_loop(config, uris)
        job = run_ray(config)
        ratio = loop["wall_s"] / job["wall_s"]
        results.append(
            {
                "path": path,
                "audio": args.audio,
                "videos": len(uris),
                "seconds_per_video": args.seconds,
                "loop": loop,
                "ray": job,
                "speedup_ray_over_loop": ratio,
                "loop_videos_per_s": loop["videos"] / loop["wall_s"],
                "ray_videos_per_s": job["videos"] / job["wall_s"],
                "loop_frames_per_s": loop["frames"] / loop["wall_s"],
                "ray_frames_per_s": job["frames"] / job["wall_s"],
                # Both runners use every core (ONNX Runtime threads in the loop, one
                # actor per core in the job), so extra wall time is Ray's overhead.
                "ray_overhead_fraction_vs_loop": max(0.0, job["wall_s"] / loop["wall_s"] - 1.0),
            }
        )
    ray.shutdown()

    header = f"{'path':<10} {'runner':<6} {'videos/s':>9} {'frames/s':>9} {'wall s':>8} {'peak MiB/worker':>16}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        for name in ("loop", "ray"):
            m = r[name]
            print(
                f"{r['path']:<10} {name:<6} {m['videos'] / m['wall_s']:>9.2f} {m['frames'] / m['wall_s']:>9.1f} "
                f"{m['wall_s']:>8.1f} {m['peak_rss_mb']:>16.0f}"
            )
        print(
            f"{r['path']:<10} ratio  Ray / loop = {r['speedup_ray_over_loop']:.2f}x "
            f"(Ray overhead {100 * r['ray_overhead_fraction_vs_loop']:.1f}% of the loop's time)"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu_count": os.cpu_count(), "results": results}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
