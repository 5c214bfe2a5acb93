"""Bounded load test on loopback: ramp concurrent clients against one replica of each
deployment until 503s appear.

    nice -n 10 python benchmarks/load.py                       # keypoint queries, defaults
    nice -n 10 python benchmarks/load.py --kinds keypoints video --clients 1 4 16 48

The whole service (``build_app``: MatchAPI ingress, PoseEstimation, MatchModel, one replica
each, Ray Serve on 127.0.0.1) with the paper-size DVAMN (random weights: the cost is the
same) and a synthetic catalog (``--tracks``). Each ramp level runs ``--level-s`` seconds of
closed-loop clients (each sends its next request when the last one is answered). Per level:
answers by status, which deployment answered each 503 (``503_by``: the ingress relays a
deployment's 503 naming it), sustained requests/s of the 200s, their p50 / p99 latency,
requests with no answer (client timeout), and each replica's peak resident memory so far
(Linux's VmHWM).
The knee is the last level without 503s; the ramp stops at the first level with 503s (or
at the last level given). The service must refuse (503 + Retry-After), never answer 500 or
time out: those are counted and make the command exit 1.

Prints a table and writes JSON (``--out``, default benchmarks/results/load.json).
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import write_json  # noqa: E402 - after the path
from benchmarks.serve import (  # noqa: E402
    QUERY_FPS,
    _standin_rtmo,
    paper_model,
    percentile_ms,
    synthetic_catalog,
    synthetic_keypoints,
    write_catalog,
)

APP = "dvamn-load"
DEPLOYMENTS = ("MatchAPI", "PoseEstimation", "MatchModel")


def replica_pids() -> Dict[str, int]:
    """Deployment name -> PID of its (single) live replica, from GCS's actor table."""
    from ray._private.state import actors

    pids = {}
    for actor in actors().values():
        name = actor.get("Name") or ""
        for deployment in DEPLOYMENTS:
            if actor["State"] == "ALIVE" and f"{APP}#{deployment}#" in name:
                pids[deployment] = actor["Pid"]
    return pids


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set so far (VmHWM): no sampler thread can miss a peak."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


DEPLOYMENTS = ("MatchAPI", "PoseEstimation", "MatchModel")


def refused_by(response) -> str:
    """The deployment that answered a 503: the ingress relays its deployments' 503s with
    a detail that starts with their name; Serve's proxy answers a full ingress itself."""
    try:
        detail = str(response.json().get("detail", ""))
    except ValueError:  # the proxy's plain-text 503
        return "MatchAPI"
    named = [d for d in DEPLOYMENTS if detail.startswith(d) or f"the {d} replica" in detail]
    return named[0] if named else "MatchAPI"


def run_level(send, clients: int, seconds: float) -> Dict[str, Any]:
    statuses: Counter = Counter()
    refusals: Counter = Counter()
    latencies: List[float] = []
    no_answer, missing_retry_after = [0], [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        import httpx

        with httpx.Client(timeout=120) as http:
            i = 0
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    response = send(http, index * 100_000 + i)
                except httpx.TimeoutException:
                    with lock:
                        no_answer[0] += 1
                    continue
                elapsed = time.perf_counter() - started
                i += 1
                with lock:
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    elif response.status_code == 503:
                        refusals[refused_by(response)] += 1
                        if not response.headers.get("retry-after"):
                            missing_retry_after[0] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - started  # includes the last requests' tails
    return {
        "clients": clients,
        "wall_s": round(wall_s, 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "503_by": dict(sorted(refusals.items())),
        "ok_per_s": round(statuses[200] / wall_s, 2),
        "p50_ms": percentile_ms(latencies, 50) if latencies else None,
        "p99_ms": percentile_ms(latencies, 99) if latencies else None,
        "no_answer": no_answer[0],
        "503_without_retry_after": missing_retry_after[0],
    }


def make_sender(kind: str, base: str, args, tmp: str):
    if kind == "keypoints":
        bodies = [
            {
                "keypoints": synthetic_keypoints(i, args.query_s).tolist(),
                "fps": QUERY_FPS,
                "width": 640,
                "height": 360,
                "top_k": 10,
            }
            for i in range(16)
        ]
        return lambda http, i: http.post(f"{base}/match/keypoints", json=bodies[i % len(bodies)])
    from dvamn.synth.clip import VideoSpec, make_video

    entry = make_video(VideoSpec("load", seed=5, seconds=args.query_s, track_seconds=5.0), tmp)
    video = Path(tmp, entry["video"]).read_bytes()
    return lambda http, i: http.post(
        f"{base}/match", files={"video": ("dance.mp4", video, "video/mp4")}
    )


def ramp(kind: str, base: str, args, tmp: str) -> Dict[str, Any]:
    send = make_sender(kind, base, args, tmp)
    import httpx

    with httpx.Client(timeout=300) as http:  # warm-up: first batch, JIT, ONNX session
        warm = send(http, -1)
        if warm.status_code != 200:
            raise SystemExit(f"{kind} warm-up answered {warm.status_code}: {warm.text[:300]}")
    pids = replica_pids()
    levels = []
    for clients in args.clients:
        level = run_level(send, clients, args.level_s)
        level["peak_rss_mb"] = {name: peak_rss_mb(pid) for name, pid in pids.items()}
        levels.append(level)
        print_level(kind, level)
        if level["statuses"].get("503"):
            break
    calm = [lv for lv in levels if not lv["statuses"].get("503")]
    return {
        "kind": kind,
        "levels": levels,
        "knee": calm[-1] if calm else None,
        "first_503_level": levels[-1]["clients"] if levels[-1]["statuses"].get("503") else None,
    }


def print_level(kind: str, lv: Dict[str, Any]) -> None:
    memory = " ".join(f"{n}={mb:.0f}" for n, mb in sorted(lv["peak_rss_mb"].items()))
    p50 = f"{lv['p50_ms']:.0f}" if lv["p50_ms"] is not None else "-"
    p99 = f"{lv['p99_ms']:.0f}" if lv["p99_ms"] is not None else "-"
    print(
        f"{kind:>9} {lv['clients']:>7} {lv['ok_per_s']:>7.2f} {p50:>7} {p99:>7} "
        f"{json.dumps(lv['statuses']):>24} {lv['no_answer']:>6}  {memory}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["keypoints"], choices=["keypoints", "video"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32, 48, 64, 96])
    parser.add_argument("--level-s", type=float, default=10.0, help="seconds per ramp level")
    parser.add_argument("--tracks", type=int, default=100, help="synthetic catalog size")
    parser.add_argument("--track-s", type=float, default=180.0)
    parser.add_argument("--query-s", type=float, default=12.0)
    parser.add_argument(
        "--max-queued-requests", type=int, default=None, help="the service's (default: its own)"
    )
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load.json"))
    args = parser.parse_args()

    import ray
    from ray import serve

    from dvamn.model import save_checkpoint
    from dvamn.serving.app import ServeSettings, build_app

    tmp = tempfile.mkdtemp(prefix="dvamn-load-bench-")
    write_catalog(synthetic_catalog(args.tracks, args.track_s, seed=7), f"{tmp}/catalog")
    model = paper_model()
    save_checkpoint(f"{tmp}/checkpoint", model, {"audio_embedding_kind": "logmel"})
    app_args = {
        "checkpoint": f"{tmp}/checkpoint",
        "catalog": f"{tmp}/catalog",
        "device": "cpu",
        "min_query_s": 1.0,
        "num_cpus": args.replica_cpus,
        "pose_num_gpus": 0,
        "replicas": 1,
        "pose_replicas": 1,
        "pose_model": _standin_rtmo(tmp),  # stand-in RTMO: nothing is downloaded
    }
    if args.max_queued_requests is not None:
        app_args["max_queued_requests"] = args.max_queued_requests
    settings = ServeSettings.from_args(app_args)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    results: Dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        "tracks": args.tracks,
        "query_s": args.query_s,
        "level_s": args.level_s,
        "max_queued_requests": settings.max_queued_requests,
        "ramps": [],
    }
    print(
        f"{'kind':>9} {'clients':>7} {'ok/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'statuses':>24} {'no ans':>6}  peak RSS MB per replica"
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(app_args), name=APP, route_prefix="/")
        for kind in args.kinds:
            results["ramps"].append(ramp(kind, f"http://127.0.0.1:{port}", args, tmp))
    finally:
        serve.shutdown()
        ray.shutdown()
    failures = 0
    print("\nknee (last level without 503):")
    for r in results["ramps"]:
        knee = r["knee"]
        for lv in r["levels"]:
            bad = {k: v for k, v in lv["statuses"].items() if k not in ("200", "503")}
            failures += sum(bad.values()) + lv["no_answer"] + lv["503_without_retry_after"]
        if knee:
            print(
                f"  {r['kind']}: {knee['clients']} clients, {knee['ok_per_s']} req/s, "
                f"p50 {knee['p50_ms']} ms, p99 {knee['p99_ms']} ms, peak RSS {knee['peak_rss_mb']} MB;"
                f" first 503s at {r['first_503_level']} clients, from {r['levels'][-1]['503_by']}"
            )
    results["failures"] = failures
    print(f"answers other than 200/503(+Retry-After), or none: {failures}")
    write_json(args.out, results)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
