"""Nothing lost on a crash: ``kill -9`` of a running extraction job, a part truncated on
disk, then a rerun that accounts for every input exactly once; one Ray Data actor killed
mid-job, and the job still accounts for every input exactly once."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from dvamn.pipeline.config import StageResources
from dvamn.pipeline.extract import extract_dataset, read_table
from dvamn.schema import ERRORS_DIR, UNREADABLE_DIR, VIDEOS_DIR
from tests.pipeline.test_extract import small_config

pytestmark = pytest.mark.ray

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parts(out, subdir):
    path = os.path.join(out, subdir)
    return (
        sorted(f for f in os.listdir(path) if f.endswith(".parquet")) if os.path.isdir(path) else []
    )


def _num_parts(out) -> int:
    return len(_parts(out, VIDEOS_DIR)) + len(_parts(out, ERRORS_DIR))


def _stage_actors() -> dict:
    """The extraction stages' actors in GCS's actor table (ray.util.state needs the
    dashboard, which the tests' Ray runs without), by actor id."""
    from ray._private.state import actors

    return {
        actor_id: a
        for actor_id, a in actors().items()
        if any(stage in a["ActorClassName"] for stage in ("AudioStage", "PoseStage"))
    }


def _process_gone(pid: int) -> bool:
    """No such process, or only its zombie (it can write nothing more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait_for_dead_job_actors(before: set, timeout_s: float = 30.0) -> None:
    """The killed driver's Ray Data actors die with it (Ray ends a dead driver's actors);
    wait for that, so that none of them writes while the rerun runs. Their processes
    too: GCS marks an actor DEAD before its process has exited, and a part that process
    was writing could still appear (a rerun then extracts its videos a second time).
    ``before``: the actor ids that existed before the job (other tests' actors)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = [a for i, a in _stage_actors().items() if i not in before]
        running = [a for a in job if a["State"] == "ALIVE" or not _process_gone(a["Pid"])]
        if not running:
            return
        time.sleep(0.2)
    raise AssertionError(f"the killed job's actors still run after {timeout_s} s: {running}")


def test_a_job_killed_mid_write_and_a_truncated_part_are_redone_exactly_once(
    ray_local, synth_dir, tmp_path
):
    import ray

    data, result = synth_dir
    out = tmp_path / "features"
    inputs = set(result.videos) | {uri for uri, _ in result.broken}
    total = len(result.videos) + len(result.broken)

    # The job as an operator runs it, on the same Ray: one video per part, so that parts
    # are being written when the driver is killed.
    command = [
        sys.executable, "-m", "dvamn.cli", "extract", str(data), "--out", str(out),
        "--pose", "keypoints", "--audio", "logmel", "--device", "cpu",
        "--audio-actors", "1", "--audio-cpus", "0.5", "--audio-batch", "1",
        "--address", ray.get_runtime_context().gcs_address,
    ]  # fmt: skip
    before = set(_stage_actors())
    job = subprocess.Popen(
        command,
        env={**os.environ, "PYTHONPATH": REPO},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (_parts(out, VIDEOS_DIR) and _num_parts(out) >= 3) and job.poll() is None:
            assert time.monotonic() < deadline, "the job wrote no parts in 120 s"
            time.sleep(0.02)
    finally:
        os.kill(job.pid, signal.SIGKILL)
        job.wait()
    _wait_for_dead_job_actors(before)
    assert _num_parts(out) < total, "the kill must interrupt the job"
    written = _parts(out, VIDEOS_DIR)

    # A part damaged after it was written (as a crash of an older version left them).
    damaged = os.path.join(out, VIDEOS_DIR, written[0])
    with open(damaged, "r+b") as f:
        f.truncate(os.path.getsize(damaged) // 2)

    _, summary = extract_dataset(small_config(data, out))
    assert summary.inputs == total

    # The damaged part is set aside, never deleted, and its video is extracted again.
    assert os.listdir(os.path.join(out, UNREADABLE_DIR, VIDEOS_DIR)) == [written[0]]
    videos = read_table(str(out), VIDEOS_DIR, columns=["uri"]).column("uri").to_pylist()
    errors = read_table(str(out), ERRORS_DIR, columns=["uri"]).column("uri").to_pylist()
    counts = Counter(videos + errors)
    assert {os.path.basename(u) for u in counts} == {os.path.basename(u) for u in inputs}
    assert set(counts.values()) == {1}, "every input in exactly one table, exactly once"
    assert len(videos) == len(result.videos) and len(errors) == len(result.broken)
    leftovers = [f for f in os.listdir(os.path.join(out, VIDEOS_DIR)) if f.endswith(".tmp")]
    assert all(f.startswith(".part-") for f in leftovers)  # hidden, never read as parts


def _alive_stage_actors() -> dict:
    """ActorID -> (PID, restarts) of the extraction's live Ray Data actors (GCS's actor
    table, Ray's state API without the dashboard)."""
    from ray._private.state import actors

    return {
        a["ActorID"]: (a["Pid"], a["NumRestarts"])
        for a in actors().values()
        if a["State"] == "ALIVE"
        and any(stage in a["ActorClassName"] for stage in ("AudioStage", "PoseStage"))
    }


def test_a_ray_data_actor_killed_mid_job_costs_no_input(ray_local, synth_dir, tmp_path):
    """One actor of the job's pool, SIGKILLed while it works: Ray Data restarts it and
    retries its batch (``max_restarts`` and ``max_task_retries`` -1, Ray Data's defaults
    for an actor pool); a retried batch rewrites its own part (named by its contents), so
    the job completes with every input in exactly one table, exactly once."""
    data, result = synth_dir
    out = tmp_path / "features"
    total = len(result.videos) + len(result.broken)
    killed, failures, job_done = {}, [], threading.Event()

    def kill_one_actor_mid_job() -> None:
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not job_done.is_set():
                actors = _alive_stage_actors()
                if actors and _num_parts(out) >= 1:
                    actor_id, (pid, _) = next(iter(actors.items()))
                    killed.update(actor=actor_id, pid=pid, parts=_num_parts(out))
                    os.kill(pid, signal.SIGKILL)  # an actor of this test's own Ray
                    killed_at = time.monotonic()
                    while not job_done.is_set():  # for the report: when it was restarted
                        pid_now, restarts = _alive_stage_actors().get(actor_id, (pid, 0))
                        if restarts > 0 and pid_now != pid:
                            killed["restarted_after_s"] = round(time.monotonic() - killed_at, 1)
                            break
                        time.sleep(0.1)
                    return
                time.sleep(0.02)
            failures.append("the job ended, or 120 s passed, before an actor could be killed")
        except Exception as error:  # noqa: BLE001 - reported by the test below
            failures.append(repr(error))

    killer = threading.Thread(target=kill_one_actor_mid_job)
    killer.start()
    try:
        # One video per batch and one actor: parts are written one by one, so the kill
        # lands between (or during) writes, with most of the job still to do.
        one_at_a_time = StageResources(min_actors=1, max_actors=1, num_cpus=0.5)
        _, summary = extract_dataset(small_config(data, out, audio_stage=one_at_a_time))
    finally:
        job_done.set()
        killer.join()
    assert not failures, failures
    assert killed["parts"] < total, "the kill must land mid-job"
    print(f"actor kill: {killed}, job: {summary.done} done, {summary.failed} failed")

    assert summary.done + summary.failed == total
    videos = read_table(str(out), VIDEOS_DIR, columns=["uri"]).column("uri").to_pylist()
    errors = read_table(str(out), ERRORS_DIR, columns=["uri"]).column("uri").to_pylist()
    counts = Counter(videos + errors)
    inputs = set(result.videos) | {uri for uri, _ in result.broken}
    assert {os.path.basename(u) for u in counts} == {os.path.basename(u) for u in inputs}
    assert set(counts.values()) == {1}, "every input in exactly one table, exactly once"
    assert len(videos) == len(result.videos) and len(errors) == len(result.broken)
