"""Nothing lost when the training driver dies: ``kill -9`` of a running ``dvamn train``
after its first complete checkpoint, then ``dvamn train --resume`` on the same run
directory continues from the last complete checkpoint (epochs and history go on).

One test, over the suite's 30 s (about 60 s on a quiet 2-core machine, 200 s while it is
shared): two Ray Train start-ups, the killed run's and the resumed one's, are its cost;
the network, the data and the epochs are as few as show the resumption."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dvamn.cli import main as dvamn_main
from dvamn.model import checkpoint_metadata, list_checkpoints
from tests.training.features import write_features

pytestmark = pytest.mark.ray

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 3
TRAIN_ACTORS = ("TrainController", "RayTrainWorker")


def _train_argv(features: str, run: str) -> list:
    """`dvamn train` with the tiny network of test_train.py, on one worker."""
    return [
        "train", features, "--out", run, "--epochs", str(EPOCHS), "--workers", "1",
        "--batch-size", "16", "--lr", "3e-3", "--cpus-per-worker", "0.5", "--dropout", "0",
        "--widths", "16,16,32", "--gru-hidden", "16", "--post-gru-widths", "32,16",
        "--fc-width", "16",
    ]  # fmt: skip


def _wait_for_dead_train_actors(timeout_s: float = 180.0) -> None:
    """Ray ends a dead driver's actors (its Train controller and workers; Ray Data's
    helpers are detached and stay): wait for that, so that none of them writes a
    checkpoint while the resumed run runs. This process trains nothing meanwhile. GCS's
    actor table: ray.util.state needs the dashboard, which the tests' Ray runs without.
    Seconds on a quiet machine; over 60 s at load 30 on 2 cores, hence the timeout."""
    from ray._private.state import actors

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [
            a["ActorClassName"]
            for a in actors().values()
            if a["State"] == "ALIVE" and a["ActorClassName"] in TRAIN_ACTORS
        ]
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"the killed driver's actors are alive after {timeout_s} s: {alive}")


def _ray_snapshot_epochs(run: str) -> list:
    """The checkpoints Ray Train's own snapshot of the run names (what it restores)."""
    path = os.path.join(run, "checkpoint_manager_snapshot.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        results = json.load(f)["checkpoint_results"]
    return sorted(r["checkpoint_dir_name"] for r in results)


def test_a_killed_driver_resumes_from_its_last_complete_checkpoint(ray_local, tmp_path):
    import ray

    features = write_features(str(tmp_path / "features"), num_videos=8, num_pose_frames=160)
    run = str(tmp_path / "run")
    argv = _train_argv(features, run)
    address = ray.get_runtime_context().gcs_address
    log_path = tmp_path / "killed-run.log"
    with open(log_path, "wb") as log:
        job = subprocess.Popen(
            [sys.executable, "-m", "dvamn.cli", *argv, "--address", address],
            env={**os.environ, "PYTHONPATH": REPO},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # Killed the moment a worker has written a complete checkpoint: the window in
        # which Ray Train's controller may not have recorded it yet.
        deadline = time.monotonic() + 180
        while not list_checkpoints(run):
            assert job.poll() is None, f"the run ended first: {log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint in 180 s"
            time.sleep(0.02)
        assert job.poll() is None, "the run finished before it could be killed"
    finally:
        if job.poll() is None:
            os.kill(job.pid, signal.SIGKILL)
        job.wait()
    _wait_for_dead_train_actors()
    complete = list_checkpoints(run)  # everything the dead run left complete
    before = checkpoint_metadata(complete[-1])
    assert before["epoch"] < EPOCHS - 1, "the kill must interrupt the run"
    print(
        f"killed after {os.path.basename(complete[-1])}; Ray Train's snapshot named "
        f"{_ray_snapshot_epochs(run)}"
    )

    assert dvamn_main([*argv, "--resume"]) == 0
    with open(os.path.join(run, "summary.json")) as f:
        history = json.load(f)["history"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    resumed_at = before["epoch"] + 1
    assert history[:resumed_at] == before["history"], "epochs before the kill were lost"
    assert history[resumed_at]["step"] > history[resumed_at - 1]["step"]
    names = [os.path.basename(c) for c in list_checkpoints(run)]
    assert names[-1] == f"checkpoint_epoch_{EPOCHS:04d}"
