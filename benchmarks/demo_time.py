"""The default `dvamn demo`'s time against an earlier revision's, on this machine, interleaved.

    python benchmarks/demo_time.py --baseline 32a13a7 --out benchmarks/results/demo-time.json

Issue 13 asks that the demo keep its time (within 10% of the revision it was filed
against, 32a13a7) while its quality rose. Times on a shared or drifting machine move by
more than that between minutes, so this benchmark never compares against a recorded
figure: it runs both demos here, alternating which goes first in each round (round 1:
baseline then working tree; round 2: working tree then baseline; ...), and reports the
ratio of their means, per stage too.

The baseline is a ``git worktree`` of ``--baseline`` (made under WORK, removed after) run
with this environment's packages by putting its folder first on PYTHONPATH; the working
tree is this checkout. Each demo runs in a subprocess with its own work dir (nothing
reused between runs), and its stage times are read from its report.json. Prints a table
and writes JSON (``--out``).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import write_json  # noqa: E402 - after the path


def git(*args: str) -> str:
    return subprocess.check_output(["git", "-C", str(ROOT), *args], text=True).strip()


def run_demo(source: str, workdir: str, log_path: str) -> Dict[str, Any]:
    """One default demo with the package at ``source`` (a folder holding ``dvamn/``);
    its wall time and the stage times of its report."""
    env = dict(os.environ, PYTHONPATH=source)
    env.pop("RAY_ADDRESS", None)  # a local Ray each time: a cluster's workers run their own dvamn
    # Refuses to time the wrong code: `python -c` puts its working directory first on
    # sys.path, so it runs in the (empty) work dir, and the import is checked.
    program = (
        "import os, sys, dvamn; from dvamn.cli import main\n"
        "expected = os.path.join(os.path.abspath(sys.argv[1]), 'dvamn')\n"
        "if os.path.dirname(os.path.abspath(dvamn.__file__)) != expected:\n"
        "    sys.exit(f'dvamn came from {dvamn.__file__}, not {expected}')\n"
        "sys.exit(main(sys.argv[2:]))"
    )
    command = [sys.executable, "-c", program, source, "demo", "--workdir", workdir]
    os.makedirs(workdir)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(command, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"the demo of {source} failed (exit {code}); its output: {log_path}")
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    return {"wall_s": round(wall, 1), "stages_s": report["timings_s"], "r_at_1": report["r_at_1"]}


def summarise(runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    """Means per side; stages matched by position (their names changed between revisions),
    so both sides must have as many."""
    if len({len(x["stages_s"]) for results in runs.values() for x in results}) != 1:
        names = {name: [list(x["stages_s"]) for x in results] for name, results in runs.items()}
        raise SystemExit(f"the demos' stages differ, so they cannot be compared: {names}")
    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "wall_s": round(mean(x["wall_s"] for x in results), 1),
            "r_at_1": round(mean(x["r_at_1"] for x in results), 3),
            "stages_s": [
                round(mean(list(x["stages_s"].values())[i] for x in results), 1)
                for i in range(len(results[0]["stages_s"]))
            ],
        }
    return summary


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default="32a13a7", help="git revision to compare against")
    p.add_argument("--rounds", type=int, default=2, help="rounds of one demo each (default 2)")
    p.add_argument("--work", help="work folder (default: a temporary one, removed after)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    try:
        revision = git("rev-parse", "--verify", "--short", f"{args.baseline}^{{commit}}")
    except subprocess.CalledProcessError:
        p.error(f"--baseline {args.baseline!r} is not a commit of {ROOT}")
    head = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--untracked-files=no"):
        head += "+changes"  # the working tree is what runs, not HEAD itself

    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="dvamn-demo-time-"))
    os.makedirs(work, exist_ok=True)
    baseline_tree = os.path.join(work, "baseline-tree")
    git("worktree", "prune")  # a tree left by a killed run would block the add
    shutil.rmtree(baseline_tree, ignore_errors=True)
    git("worktree", "add", "--detach", "-f", baseline_tree, revision)
    sources = {"baseline": baseline_tree, "current": str(ROOT)}
    runs: Dict[str, List[Dict[str, Any]]] = {"baseline": [], "current": []}
    try:
        for r in range(1, args.rounds + 1):
            order = ("baseline", "current") if r % 2 else ("current", "baseline")
            for name in order:
                print(f"round {r}/{args.rounds}: {name} demo ...", flush=True)
                workdir = os.path.join(work, f"{name}{r}")
                shutil.rmtree(workdir, ignore_errors=True)
                result = run_demo(sources[name], workdir, os.path.join(work, f"{name}{r}.log"))
                runs[name].append(result)
                print(f"  {result['wall_s']:.0f} s, R@1 {result['r_at_1']:.2f}", flush=True)
    finally:
        if subprocess.call(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", baseline_tree]
        ):
            print(f"could not remove the worktree {baseline_tree}; `git worktree prune` after")

    stages = list(runs["current"][0]["stages_s"])
    summary = summarise(runs)
    ratio = summary["current"]["wall_s"] / summary["baseline"]["wall_s"]
    report = {
        "benchmark": "demo_time",
        "command": " ".join(["python", "benchmarks/demo_time.py", *argv]),
        "baseline_revision": revision,
        "current_revision": head,
        "rounds": args.rounds,
        "stages": stages,
        "runs": runs,
        "summary": summary,
        "ratio_current_to_baseline": round(ratio, 3),
        "cpu_count": os.cpu_count(),
    }
    if args.out:
        write_json(args.out, report)

    width = max(len(s) for s in [*stages, "whole demo (wall, mean of N)"]) + 2
    print(f"\n{'':<{width}} {'baseline ' + revision:>18} {'current ' + head:>24} {'ratio':>6}")
    for i, stage in enumerate(stages):
        b, c = summary["baseline"]["stages_s"][i], summary["current"]["stages_s"][i]
        print(f"{stage:<{width}} {b:>16.1f} s {c:>22.1f} s {c / b if b else float('nan'):>6.2f}")
    b, c = summary["baseline"]["wall_s"], summary["current"]["wall_s"]
    print(
        f"{'whole demo (wall, mean of ' + str(args.rounds) + ')':<{width}} {b:>16.1f} s "
        f"{c:>22.1f} s {ratio:>6.2f}"
    )
    rb, rc = summary["baseline"]["r_at_1"], summary["current"]["r_at_1"]
    print(f"{'demo R@1':<{width}} {rb:>18.2f} {rc:>24.2f}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
