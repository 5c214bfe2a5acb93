"""Training throughput on Ray Train: samples/s with 1 and 2 CPU workers (and a GPU if present).

    python benchmarks/train.py --out benchmarks/results/train.json
    python benchmarks/train.py --model small --steps 20          # a quicker look
    python benchmarks/train.py --features OUT/videos              # on real extracted features

Each configuration is one TorchTrainer run of two epochs of ``--steps`` steps; the first
epoch pays for start-up (process spawn, Ray Data pipeline warm-up), so the figure is the
second epoch's training samples per second, summed over workers (rank 0's wall time).
Each worker gets one CPU (torch uses one thread per worker), so 2 workers vs 1 shows how
DDP scales across cores. Features default to random sequences of the real schema.
"""

import argparse
import logging
import os
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.report import write_json  # noqa: E402 - after the path
from dvamn.constants import EMBEDDING_DIM, POSE_FEATURES  # noqa: E402
from dvamn.model import DVAMN, DVAMNConfig  # noqa: E402

MODELS = {
    "paper": DVAMNConfig(),
    "small": DVAMNConfig(
        widths=(32, 64, 128), gru_hidden=128, post_gru_widths=(128, 64), fc_width=64
    ),
}


def write_random_features(root: str, num_videos: int, seconds: float, seed: int = 0) -> str:
    """Random sequences in the extraction schema (throughput does not depend on content)."""
    import pyarrow.parquet as pq

    from dvamn.schema import VIDEO_SCHEMA, rows_to_table

    rng = np.random.default_rng(seed)
    frames = int(seconds * 10)
    rows = []
    for i in range(num_videos):
        rows.append(
            {
                "video_id": f"bench_{i:04d}",
                "uri": f"memory://bench_{i:04d}.mp4",
                "duration_s": seconds,
                "width": 640,
                "height": 480,
                "pose_fps": 10.0,
                "num_pose_frames": frames,
                "pose": rng.normal(size=(frames, POSE_FEATURES)).astype(np.float32),
                "pose_confidence": np.ones(frames, np.float32),
                "missing_fraction": 0.0,
                "num_audio_frames": frames // 2,
                "audio_embedding": rng.uniform(0, 255, (frames // 2, EMBEDDING_DIM)).astype(
                    np.float32
                ),
                "pose_model": "keypoints",
                "pose_weights": "",
                "audio_embedding_kind": "logmel",
                "audio_weights": "",
                "extracted_at": "",
            }
        )
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    pq.write_table(rows_to_table(rows, VIDEO_SCHEMA), os.path.join(root, "videos", "part.parquet"))
    return root


def measure(features: str, run_dir: str, workers: int, gpu: bool, args) -> Dict[str, Any]:
    from dvamn.training.train import TrainConfig, train

    config = TrainConfig(
        features=features,
        out=run_dir,
        workers=workers,
        gpu=gpu,
        epochs=2,
        objective="logcosh",  # the paper's, as in the recorded figures
        batch_size=args.batch_size,
        model=MODELS[args.model],
        max_steps_per_epoch=args.steps,
        cpus_per_worker=1.0,
        max_retrieval_queries=8,
        num_to_keep=1,
    )
    started = time.time()
    result = train(config)
    last = result.history[-1]
    return {
        "workers": workers,
        "device": "cuda" if gpu else "cpu",
        "samples_per_s": last["samples_per_s"],
        "samples": last["train_samples"],
        "epoch_train_s": last["train_seconds"],
        "run_s": time.time() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="paper")
    parser.add_argument("--steps", type=int, default=6, help="steps per epoch per worker")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--features", help="extracted features (default: random, written to a temp dir)"
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray
    import torch

    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    results: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dvamn-bench-") as tmp:
        # Enough windows that every worker runs --steps full batches.
        features = args.features or write_random_features(
            os.path.join(tmp, "features"),
            num_videos=max(10, (2 * args.steps * args.batch_size) // 7 + 10),
            seconds=24.0,
        )
        runs = [(1, False), (2, False)]
        if torch.cuda.is_available():
            runs.append((1, True))
        for workers, gpu in runs:
            row = measure(features, os.path.join(tmp, f"run_{workers}_{gpu}"), workers, gpu, args)
            results.append(row)
            print(f"  {row['device']} x{workers}: {row['samples_per_s']:.1f} samples/s", flush=True)
    ray.shutdown()

    cpu1 = next(r for r in results if r["workers"] == 1 and r["device"] == "cpu")
    cpu2 = next(r for r in results if r["workers"] == 2 and r["device"] == "cpu")
    summary = {
        "model": args.model,
        "parameters": DVAMN(MODELS[args.model]).parameter_count(),
        "batch_size_per_worker": args.batch_size,
        "steps_per_epoch": args.steps,
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "runs": results,
        "speedup_2_vs_1_cpu_workers": cpu2["samples_per_s"] / cpu1["samples_per_s"],
    }
    print(
        f"\nDVAMN {args.model} ({summary['parameters']:,} parameters), batch {args.batch_size}/worker"
    )
    print(f"{'device':>6} {'workers':>7} {'samples/s':>10}")
    for r in results:
        print(f"{r['device']:>6} {r['workers']:>7} {r['samples_per_s']:>10.1f}")
    print(f"2 vs 1 CPU workers: x{summary['speedup_2_vs_1_cpu_workers']:.2f}")
    if args.out:
        write_json(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
