"""`dvamn demo --quick` end to end: every stage, the service's answers, the report."""

import json
import os
import subprocess
import sys

import numpy as np

from tests.support.contracts import EVALUATION_JSON_KEYS


def run_quick_demo(workdir) -> str:
    """`dvamn demo --quick` as a user runs it: its own process and its own local Ray."""
    command = [sys.executable, "-m", "dvamn.cli", "demo", "--quick", "--workdir", str(workdir)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_quick_demo_reports_what_the_service_answered_and_reuses_its_work(tmp_path):
    from dvamn.demo import DemoPlan

    plan = DemoPlan.quick(str(tmp_path / "demo"))
    out = run_quick_demo(plan.workdir)
    assert "Recall@1" in out and "report:" in out

    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    answers = json.loads((tmp_path / "demo" / "answers.json").read_text())
    assert set(EVALUATION_JSON_KEYS) <= set(report)

    # Recompute the retrieval numbers from the service's raw answers.
    ranks = []
    for item in answers:
        truth = os.path.splitext(os.path.basename(item["video"]["music"]["track_file"]))[0]
        ids = [m["track_id"] for m in item["answer"]["matches"]]
        assert len(ids) == report["pool_size"]  # every catalog track was ranked
        scores = [m["score"] for m in item["answer"]["matches"]]
        assert scores == sorted(scores)  # best (smallest distance) first
        ranks.append(ids.index(truth) + 1)
    ranks = np.asarray(ranks)
    assert report["queries"] == len(answers) == report["pool_size"]
    for k in (1, 5, 10):
        assert report[f"r_at_{k}"] == np.mean(ranks <= k)
    assert report["median_rank"] == np.median(ranks)
    assert report["chance_r_at_1"] == 1 / report["pool_size"]
    # The model learned something: for half the queries the true track is in the top
    # quarter of the catalog (chance: the top half), and it is first more often than chance.
    assert report["median_rank"] <= (report["pool_size"] + 1) / 4, report
    assert report["r_at_1"] > report["chance_r_at_1"], report

    for picture in ("training_curves.png", "query_by_candidate.png"):
        assert (tmp_path / "demo" / picture).stat().st_size > 1000
    markdown = (tmp_path / "demo" / "report.md").read_text()
    assert f"{report['r_at_1']:.3f}" in markdown

    # A second run reuses the videos, the features and the trained model.
    out = run_quick_demo(plan.workdir)
    assert f"reusing {plan.videos} videos" in out
    assert f"({plan.videos} already done, skipped)" in out
    assert "reusing the finished run" in out


def _session_processes(session_id: int) -> list[str]:
    """Processes still alive in a session (the demo and everything it started)."""
    listing = subprocess.run(["ps", "-eo", "sid=,pid=,stat=,args="], capture_output=True, text=True)
    alive = []
    for line in listing.stdout.splitlines():
        sid, pid, stat, args = (line.split(None, 3) + [""])[:4]
        if int(sid) == session_id and not stat.startswith("Z"):
            alive.append(f"{pid} {args}")
    return alive


def test_a_stopped_demo_stops_its_ray_and_leaves_no_process(tmp_path):
    """`kill PID` (SIGTERM) while Ray Data runs: the demo stops its Ray instance, says so
    and exits 130, and nothing it started is left running."""
    import signal
    import time

    command = [sys.executable, "-m", "dvamn.cli", "demo", "--quick", "--workdir", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Its own session, so that everything the demo starts can be found by session id.
    demo = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        seen = []
        for line in demo.stdout:  # wait until Ray is up and the extraction has started
            seen.append(line)
            if line.startswith("== 2/6"):
                break
        else:
            raise AssertionError("the demo ended before extraction:\n" + "".join(seen))
        assert len(_session_processes(demo.pid)) > 1  # Ray's processes are in the session
        demo.send_signal(signal.SIGTERM)
        stdout, stderr = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    assert demo.returncode == 130, stdout[-2000:] + stderr[-3000:]
    assert "interrupted: the Ray instance and the service are stopped" in stderr
    deadline = time.monotonic() + 30
    while _session_processes(demo.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _session_processes(demo.pid)
    if left:
        os.killpg(demo.pid, signal.SIGKILL)
    assert not left, left
