"""Retrieval quality in-family and on an unseen choreography family, beside the rhythm baseline.

    python benchmarks/quality.py --work /tmp/quality --out benchmarks/results/quality-logcosh.json
    python benchmarks/quality.py --work /tmp/quality --name contrastive -- --objective contrastive

One configuration, end to end, with the `dvamn` commands a user would type (issue 13),
run in this process on one local Ray (started once, with retries: on a busy machine a
starting Ray can time out):

1. ``dvamn synth`` the training families (default classic, swap, swing, halftime; 200
   videos of 24 s, seed 1) into WORK/synth-train and the unseen family (default melodic,
   100 videos, seed 2: other music too) into WORK/synth-unseen;
2. ``dvamn extract`` both with ``--pose keypoints --audio logmel``;
3. ``dvamn train`` on the training features with the README's small-network flags on 2
   Ray Train workers (``--epochs 10 --lr 1e-3 --stride 10 --widths 32,64,128 --gru-hidden
   128 --post-gru-widths 128,64 --fc-width 64``); anything after ``--`` is passed on to
   ``dvamn train`` (e.g. ``--objective contrastive``), so objectives can be swept;
4. ``dvamn evaluate`` in-family (the training features' own validation split, its fixed
   pool of 100 padded with training-split soundtracks) and on the unseen family
   (``--val-fraction 1.0``: every unseen video is a query; 100 unseen soundtracks make the
   pool of 100, padded from the training features if there are fewer);
5. prints a table of R@1/5/10 and median rank (all candidates and the fixed pool of 100)
   for the model under each of ``QUALITY_SCORINGS`` (plain, QB-Norm, and, for a model
   trained with ``--onset-head``, the rhythm term) and for the no-training rhythm matcher
   (``rhythm_baseline``), and writes JSON.

Synth and extraction outputs are reused when WORK already has them for the same sizes;
a finished run (WORK/runs/NAME/summary.json) is reused unless ``--retrain``. The default
sizes keep one configuration near 10 minutes on 2 idle cores (about 3 min synth, 1 min
extraction, the first time only; 4-5 min training; 1 min evaluation).
"""

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.report import write_json  # noqa: E402 - after the path

SMALL_NETWORK = [
    "--lr", "1e-3", "--stride", "10", "--widths", "32,64,128", "--gru-hidden", "128",
    "--post-gru-widths", "128,64", "--fc-width", "64",
]  # fmt: skip
# The scorings the table shows per evaluation (where evaluated): plain, hubness-corrected,
# and with the rhythm term (models with an onset head).
QUALITY_SCORINGS = ("cosine-w", "cosine-w+qb", "cosine-w+onset", "cosine-w+qb+onset")
FIGURES = ("r_at_1", "r_at_5", "r_at_10", "median_rank", "pool_size")
POOL_FIGURES = ("pool100_r_at_1", "pool100_r_at_5", "pool100_r_at_10", "pool100_median_rank")


def start_ray(attempts: int = 20) -> None:
    """One local Ray for every step (each ``dvamn`` command finds it initialised and uses
    it); retried, because on a busy machine a starting Ray can time out (its raylet must
    register within 30 s)."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            # address="local": a new instance of our own even where a `ray start` cluster
            # runs on this machine (a bare ray.init() would try to join it); as many
            # logical CPUs as `dvamn` gives a local Ray (dvamn.ray_setup.ensure_ray).
            ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception on timeout
            print(f"Ray did not start (attempt {attempt}/{attempts}): {exc}", flush=True)
            ray.shutdown()
            time.sleep(15)
    raise SystemExit(f"Ray did not start in {attempts} attempts")


def dvamn(args: Sequence[str], log_path: str) -> float:
    """Run ``dvamn ARGS`` in this process (on the Ray that ``start_ray`` started); seconds
    taken. A failing command stops the benchmark naming it; its messages are in this
    process's output, and the command line is appended to ``log_path``."""
    from dvamn.cli import main as dvamn_main

    with open(log_path, "a") as log:
        log.write(f"$ dvamn {' '.join(args)}\n")
    print(f"\n$ dvamn {' '.join(args)}", flush=True)
    start = time.perf_counter()
    code = dvamn_main(list(args))
    if code != 0:
        raise SystemExit(f"`dvamn {' '.join(args)}` failed with exit code {code}")
    return time.perf_counter() - start


def synth_and_extract(
    work: str, part: str, videos: int, seconds: float, seed: int, families: str, log: str
) -> Dict[str, Any]:
    """WORK/synth-PART and WORK/feat-PART, made unless a marker says they exist for these
    settings. Returns the settings and the seconds each step took (0 when reused)."""
    settings = {"videos": videos, "seconds": seconds, "seed": seed, "families": families}
    synth_dir, feat_dir = os.path.join(work, f"synth-{part}"), os.path.join(work, f"feat-{part}")
    took = {}
    for step, out in (("synth", synth_dir), ("extract", feat_dir)):
        marker = os.path.join(work, f"{part}.{step}.done.json")
        if os.path.exists(marker):
            with open(marker) as f:
                if json.load(f)["settings"] == settings:
                    took[step] = 0.0
                    continue
        shutil.rmtree(out, ignore_errors=True)
        if step == "synth":
            args = ["synth", synth_dir, "--videos", str(videos), "--seconds", str(seconds),
                    "--seed", str(seed), "--families", families, "--workers", "2"]  # fmt: skip
        else:
            args = ["extract", synth_dir, "--out", feat_dir, "--pose", "keypoints",
                    "--audio", "logmel"]  # fmt: skip
        took[step] = dvamn(args, log)
        with open(marker, "w") as f:
            json.dump({"settings": settings, "seconds_taken": took[step]}, f)
    return {
        "settings": settings,
        "synth_dir": synth_dir,
        "features": feat_dir,
        "synth_s": took["synth"],
        "extract_s": took["extract"],
    }


def pick(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """The figures of one evaluation that the table and the JSON keep."""
    keep = {k: metrics.get(k) for k in (*FIGURES, *POOL_FIGURES, "pool100_size")}
    keep.update(
        chance_r_at_1=metrics.get("chance_r_at_1"),
        num_queries=metrics.get("num_queries"),
        pool100_padding=metrics.get("pool100_padding"),
        loss=metrics.get("loss"),
        epoch=metrics.get("epoch"),
        offset_within_0_5s=metrics.get("offset_within_0_5s"),
    )
    # Every scoring's figures (hubness corrections, the rhythm term), beside the first's.
    keep["by_scoring"] = {
        name: {k: m.get(k) for k in (*FIGURES, *POOL_FIGURES, "pool100_size")}
        for name, m in (metrics.get("by_scoring") or {}).items()
    }
    rhythm = metrics.get("rhythm_baseline") or {}
    keep["rhythm_baseline"] = (
        {k: rhythm.get(k) for k in (*FIGURES, *POOL_FIGURES, "pool100_size")}
        if rhythm.get("available")
        else {"available": False, "reason": rhythm.get("reason")}
    )
    return keep


def table(results: Dict[str, Dict[str, Any]]) -> str:
    head = (
        f"{'evaluation':<28} {'pool':>4} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'med':>5}   "
        f"{'pool':>4} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'med':>5}"
    )
    lines = [head, "-" * len(head)]

    def row(label: str, m: Dict[str, Any]) -> str:
        return (
            f"{label:<28} {m['pool_size']:>4} {m['r_at_1']:6.3f} {m['r_at_5']:6.3f} "
            f"{m['r_at_10']:6.3f} {m['median_rank']:5.1f}   {m['pool100_size']:>4} "
            f"{m['pool100_r_at_1']:6.3f} {m['pool100_r_at_5']:6.3f} {m['pool100_r_at_10']:6.3f} "
            f"{m['pool100_median_rank']:5.1f}"
        )

    for name, m in results.items():
        lines.append(row(f"{name}: model", m))
        for scoring, figures in m.get("by_scoring", {}).items():
            if scoring in QUALITY_SCORINGS and figures.get("r_at_1") is not None:
                lines.append(row(f"  {scoring}", figures))
        if m["rhythm_baseline"].get("available", True):
            lines.append(row(f"{name}: rhythm baseline", m["rhythm_baseline"]))
    lines.append("(left: all candidates of the evaluation; right: the fixed pool of 100)")
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    extra: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to `dvamn train` unchanged.",
    )
    p.add_argument("--work", required=True, help="working folder (synth, features, runs, logs)")
    p.add_argument("--name", default="default", help="run name under WORK/runs (default: default)")
    p.add_argument("--train-families", default="classic,swap,swing,halftime")
    p.add_argument("--unseen-family", default="melodic")
    p.add_argument("--train-videos", type=int, default=200)
    p.add_argument("--unseen-videos", type=int, default=100)
    p.add_argument("--seconds", type=float, default=24.0, help="training videos' length")
    p.add_argument(
        "--unseen-seconds", type=float, default=None, help="unseen videos' (default --seconds)"
    )
    p.add_argument("--seed", type=int, default=1, help="training set seed; unseen: seed + 1")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    p.add_argument("--layer", choices=("mfc", "fc"), default="mfc")
    p.add_argument("--retrain", action="store_true", help="train again even if the run exists")
    p.add_argument("--out", help="write the results as JSON here (e.g. benchmarks/results/...)")
    args = p.parse_args(argv)
    # `random` draws every video's rules from its seed, so its videos of seed + 1 have rules
    # no training video has: the nearest this benchmark gets to a new user's own clips.
    if args.unseen_family != "random" and args.unseen_family in args.train_families.split(","):
        p.error(f"--unseen-family {args.unseen_family} is one of --train-families")

    os.makedirs(os.path.join(args.work, "runs"), exist_ok=True)
    log = os.path.join(args.work, f"{args.name}.commands.txt")
    start = time.perf_counter()
    start_ray()
    train_data = synth_and_extract(
        args.work, "train", args.train_videos, args.seconds, args.seed, args.train_families, log
    )
    unseen_data = synth_and_extract(
        args.work, "unseen", args.unseen_videos, args.unseen_seconds or args.seconds, args.seed + 1,
        args.unseen_family, log,
    )  # fmt: skip
    run = os.path.join(args.work, "runs", args.name)
    train_args = [
        "train", train_data["features"], "--out", run, "--workers", str(args.workers),
        "--epochs", str(args.epochs), "--layer", args.layer, *SMALL_NETWORK, *extra,
    ]  # fmt: skip
    from dvamn.cli import build_parser

    # Whether the model has an onset head, read from the flags as `dvamn train` reads them.
    onset_head = build_parser().parse_args(train_args).onset_head
    train_s = 0.0
    if args.retrain or not os.path.exists(os.path.join(run, "summary.json")):
        shutil.rmtree(run, ignore_errors=True)
        train_s = dvamn(train_args, log)
    results, eval_s = {}, {}
    for label, features, flags in (
        ("in-family", train_data["features"], []),
        (
            f"unseen ({args.unseen_family})",
            unseen_data["features"],
            ["--val-fraction", "1.0", "--pad-features", train_data["features"]],
        ),
    ):
        path = os.path.join(run, f"eval-{label.split()[0]}.json")
        scoring = [
            "--scoring",
            ",".join(s for s in QUALITY_SCORINGS if onset_head or "onset" not in s),
        ]
        eval_s[label] = dvamn(["evaluate", run, features, "--json", path, *scoring, *flags], log)
        with open(path) as f:
            results[label] = pick(json.load(f))
    print(table(results))
    report = {
        "benchmark": "quality",
        "name": args.name,
        "train_families": args.train_families.split(","),
        "unseen_family": args.unseen_family,
        "sizes": {
            "train_videos": args.train_videos,
            "unseen_videos": args.unseen_videos,
            "seconds": args.seconds,
            "unseen_seconds": args.unseen_seconds or args.seconds,
            "epochs": args.epochs,
            "workers": args.workers,
            "layer": args.layer,
        },
        "train_command": "dvamn " + " ".join(train_args),
        "extra_train_flags": extra,
        "results": results,
        "timings_s": {
            "synth_train": round(train_data["synth_s"], 1),
            "extract_train": round(train_data["extract_s"], 1),
            "synth_unseen": round(unseen_data["synth_s"], 1),
            "extract_unseen": round(unseen_data["extract_s"], 1),
            "train": round(train_s, 1),
            **{f"evaluate {k}": round(v, 1) for k, v in eval_s.items()},
            "total": round(time.perf_counter() - start, 1),
        },
        "cpu_count": os.cpu_count(),
        "commands": log,
    }
    print(f"times (s): {report['timings_s']}; commands in {log}")
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
