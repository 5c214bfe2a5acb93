"""A real two-node Ray cluster on this machine runs extraction and training across nodes.

Two `ray start` processes make two Ray nodes (the head with resource ``head_node``, the
other with ``second_node``), with token authentication on, as on a real cluster. The jobs
go in exactly as the README's cluster runbook sends them: ``ray job submit -- dvamn ...``.
Afterwards Ray's state API tells which node ran which actor and task, and the test
requires both nodes in extraction and in training. Sizes make that certain rather than
likely: each node has 3 CPUs, and the pose and audio actors (2 CPUs each) or the two
training workers (2 CPUs each) cannot share one node.

Here a local folder stands in for S3: both "nodes" share this machine's disk. On a real
cluster, inputs and outputs must be URIs every node can reach (``s3://``).

The cluster is our own (own ports, own temp dir) and never the session's ``ray_local``;
everything Ray runs in subprocesses. Cleanup stops exactly the processes this test
started (by process group), never other Ray instances on the machine, so it does not use
``ray stop`` (which stops every Ray process of the user). Run it alone with
``pytest tests/cluster/test_two_node.py``; it takes 2.5-3 minutes on 2 idle cores.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
TOKEN = "dvamn-two-node-test-token-3f9c2a7e51b84d06"
NODE_CPUS = 3  # per node: one 2-CPU training worker fits, two do not; 1 CPU left for data
TRAIN_WORKERS = 2
CPUS_PER_TRAIN_WORKER = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> List[str]:
    """Explicit free ports for every per-node service: two nodes share one machine."""
    args = []
    for flag in (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    ):
        args += [flag, str(_free_port())]
    return args


@dataclass
class TwoNodeCluster:
    root: Path  # short temp dir: Ray's socket paths must stay under ~100 characters
    gcs_address: str
    dashboard_url: str
    env: Dict[str, str]  # what a client needs: RAY_AUTH_MODE=token + the token file
    logs: Dict[str, Path]

    def run(self, argv: List[str], timeout_s: float, env: Optional[dict] = None):
        return subprocess.run(
            argv,
            env=env or self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def submit(self, submission_id: str, entrypoint: List[str], timeout_s: float):
        """``ray job submit`` and wait; fails the test with the job's output if it fails."""
        done = self.run(
            ["ray", "job", "submit", "--address", self.dashboard_url,
             "--submission-id", submission_id, "--", *entrypoint],
            timeout_s,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"job {submission_id} failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
        )
        return done.stdout


def _dvamn_on_path(root: Path) -> Path:
    """A folder with a ``dvamn`` command: the installed one, else a shim that runs this
    checkout's CLI (a cluster node has the project pip-installed; a checkout may not)."""
    installed = shutil.which("dvamn", path=str(Path(sys.executable).parent))
    if installed:
        return Path(installed).parent
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "dvamn"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dvamn.cli "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def _cluster_env(root: Path, token_file: Path) -> Dict[str, str]:
    """Environment of every Ray node and client here: token auth on, this checkout
    importable (Ray workers inherit it from their node), no outside Ray address."""
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_DASHBOARD_ADDRESS"):
        env.pop(name, None)
    path = [str(_dvamn_on_path(root)), str(Path(sys.executable).parent), env.get("PATH", "")]
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_DEDUP_LOGS="0",
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
        DVAMN_CACHE=str(root / "cache"),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        PATH=os.pathsep.join(path),
    )
    return env


def _wait_for_nodes(env: Dict[str, str], gcs_address: str, want: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = subprocess.run(
            ["ray", "status", "--address", gcs_address],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if status.returncode == 0 and want in status.stdout:
            return
        time.sleep(1.0)
    raise AssertionError(f"cluster did not show {want!r} in time:\n{status and status.stdout}")


def _stop(process: subprocess.Popen) -> None:
    """Stop one node: SIGTERM its process group (the `ray start --block` and the Ray
    processes it started), then SIGKILL whatever is left of the group."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass


def _leftover_pids(root: Path) -> List[int]:
    """Processes of this cluster that left its process groups: they name its temp dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="dvamn2n-", dir="/tmp"))
    token_file = root / "auth_token"
    token_file.write_text(TOKEN)
    env = _cluster_env(root, token_file)
    gcs_port, dashboard_port = _free_port(), _free_port()
    gcs_address = f"127.0.0.1:{gcs_port}"
    logs = {"head": root / "head.log", "second": root / "second.log"}
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(NODE_CPUS),
              "--object-store-memory", str(400 * 1024**2), "--disable-usage-stats"]  # fmt: skip
    processes = []
    try:
        processes.append(
            subprocess.Popen(
                ["ray", "start", "--head", "--port", str(gcs_port),
                 "--dashboard-port", str(dashboard_port), "--include-dashboard", "true",
                 "--ray-client-server-port", str(_free_port()), "--temp-dir", str(root / "ray"),
                 "--resources", '{"head_node": 1}', *common, *_node_ports()],
                env=env, cwd=root, start_new_session=True,
                stdout=logs["head"].open("w"), stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        # The second node retries the head's address until it answers: no need to wait.
        processes.append(
            subprocess.Popen(
                ["ray", "start", "--address", gcs_address,
                 "--resources", '{"second_node": 1}', *common, *_node_ports()],
                env=env, cwd=root, start_new_session=True,
                stdout=logs["second"].open("w"), stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        try:
            _wait_for_nodes(env, gcs_address, "second_node", timeout_s=90)
        except AssertionError as error:
            tails = {name: path.read_text()[-2000:] for name, path in logs.items()}
            raise AssertionError(f"{error}\nnode logs: {json.dumps(tails, indent=1)}") from None
        yield TwoNodeCluster(root, gcs_address, f"http://127.0.0.1:{dashboard_port}", env, logs)
    finally:
        for process in reversed(processes):
            _stop(process)
        for pid in _leftover_pids(root):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(root, ignore_errors=True)


def test_jobs_need_the_cluster_token(cluster):
    """Without the token a client is refused (Ray's 401), with a wrong one too (403)."""
    no_token = dict(cluster.env)
    no_token.pop("RAY_AUTH_TOKEN_PATH")
    no_token["HOME"] = str(cluster.root / "empty-home")  # no ~/.ray/auth_token either
    refused = cluster.run(["ray", "job", "list", "--address", cluster.dashboard_url], 60, no_token)
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()

    no_mode = dict(no_token)
    no_mode.pop("RAY_AUTH_MODE")  # a client that does not know about tokens sends none
    refused = cluster.run(["ray", "job", "list", "--address", cluster.dashboard_url], 60, no_mode)
    assert refused.returncode != 0
    assert "401" in refused.stdout + refused.stderr or "authentication" in refused.stderr.lower()

    wrong_token = dict(no_token, RAY_AUTH_TOKEN="not-the-cluster-token")
    refused = cluster.run(
        ["ray", "job", "list", "--address", cluster.dashboard_url], 60, wrong_token
    )
    assert refused.returncode != 0
    assert "403" in refused.stdout + refused.stderr or "invalid" in refused.stderr.lower()

    allowed = cluster.run(["ray", "job", "list", "--address", cluster.dashboard_url], 60)
    assert allowed.returncode == 0, allowed.stderr


PLACEMENT_SCRIPT = textwrap.dedent(
    """
    # Which node ran what, per job: actors and tasks from Ray's state API, as JSON.
    import json, sys
    from ray.util.state import list_actors, list_jobs, list_nodes, list_tasks

    address = sys.argv[1]
    nodes = {n.node_id: ("head" if n.resources_total.get("head_node") else "second")
             for n in list_nodes(address=address, detail=True)}
    jobs = {j.submission_id: j.job_id
            for j in list_jobs(address=address, detail=True) if j.submission_id}
    out = {"nodes": nodes, "jobs": {}}
    for submission_id in sys.argv[2:]:
        job_id = jobs[submission_id]
        work = [
            {"kind": "actor", "name": a.class_name, "repr": a.repr_name or "",
             "node": nodes.get(a.node_id, a.node_id)}
            for a in list_actors(address=address, filters=[("job_id", "=", job_id)],
                                 detail=True, limit=10000)
        ] + [
            {"kind": "task", "name": t.name, "repr": "", "node": nodes.get(t.node_id, t.node_id)}
            for t in list_tasks(address=address, filters=[("job_id", "=", job_id)],
                                detail=True, limit=10000)
            if t.node_id and t.type == "NORMAL_TASK"
        ]
        out["jobs"][submission_id] = work
    print("PLACEMENT " + json.dumps(out))
    """
)


def _placement(cluster: TwoNodeCluster, submission_ids: List[str]) -> dict:
    script = cluster.root / "placement.py"
    script.write_text(PLACEMENT_SCRIPT)
    done = cluster.run(
        [sys.executable, str(script), cluster.gcs_address, *submission_ids], timeout_s=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("PLACEMENT "))
    return json.loads(line[len("PLACEMENT ") :])


def _by_node(work: List[dict]) -> Dict[str, List[str]]:
    table: Dict[str, List[str]] = defaultdict(list)
    for item in work:
        if item["node"] is None:  # an actor that was never placed
            continue
        table[item["node"]].append(f"{item['kind']} {item['repr'] or item['name']}")
    return dict(table)


VIDEOS = 4  # with --val-fraction 0.5: dance_0001/3 train, dance_0000/2 validate
VIDEO_SECONDS = 13.0
TINY_MODEL = ["--widths", "16,16,16", "--gru-hidden", "16", "--post-gru-widths", "16,16",
              "--fc-width", "16"]  # fmt: skip


def test_extraction_and_training_use_both_nodes(cluster):
    from dvamn.synth import synthesize
    from tests.support.standin_pose import export_rtmo_colour_standin

    videos = cluster.root / "shared" / "videos"
    features = cluster.root / "shared" / "features"
    run = cluster.root / "shared" / "runs" / "r1"
    took = {}
    started = time.perf_counter()
    synthesize(str(videos), videos=VIDEOS, seconds=VIDEO_SECONDS, seed=3)
    took["synth"] = time.perf_counter() - started

    # One pose and one audio actor of 2 CPUs each: no node can hold both (3 CPUs a node),
    # so the two stages run on different nodes, whichever Ray picks for which. A pose
    # model is what gives the pose stage actors of its own (keypoint files run inside the
    # audio actors): the tests' colour RTMO stand-in, which finds the synthetic dancer.
    pose_model = export_rtmo_colour_standin(str(cluster.root / "shared" / "rtmo-colour.onnx"))
    took["stand-in"] = time.perf_counter() - started - sum(took.values())
    cluster.submit(
        "extract-2n",
        ["dvamn", "extract", str(videos), "--out", str(features), "--pose", "rtmo",
         "--pose-model", pose_model, "--device", "cpu", "--audio", "logmel",
         "--pose-actors", "1", "--pose-cpus", "2", "--audio-actors", "1", "--audio-cpus", "2"],
        timeout_s=240,
    )  # fmt: skip
    took["extract job"] = time.perf_counter() - started - sum(took.values())
    manifest = json.loads((features / "manifest.json").read_text())
    assert manifest["counts"]["videos"] == VIDEOS, manifest["counts"]

    output = cluster.submit(
        "train-2n",
        ["dvamn", "train", str(features / "videos"), "--out", str(run),
         "--workers", str(TRAIN_WORKERS), "--cpus-per-worker", str(CPUS_PER_TRAIN_WORKER),
         "--epochs", "1", "--max-steps-per-epoch", "1",
         "--batch-size", "2", "--stride", "2", "--val-fraction", "0.5", *TINY_MODEL],
        timeout_s=300,
    )  # fmt: skip
    took["train job"] = time.perf_counter() - started - sum(took.values())
    assert list(run.glob("checkpoint_epoch_*")), f"no checkpoint in {run}:\n{output[-3000:]}"

    placement = _placement(cluster, ["extract-2n", "train-2n"])
    assert sorted(set(placement["nodes"].values())) == ["head", "second"]
    extraction = _by_node(placement["jobs"]["extract-2n"])
    training = _by_node(placement["jobs"]["train-2n"])
    took["state query"] = time.perf_counter() - started - sum(took.values())
    report = json.dumps({"extraction": extraction, "training": training, "seconds": took}, indent=1)
    print(report)  # which node did what (pytest -s shows it)
    stage_nodes = {
        stage: {i["node"] for i in placement["jobs"]["extract-2n"] if stage in i["repr"]}
        for stage in ("PoseStage", "AudioStage")
    }
    assert stage_nodes["PoseStage"] | stage_nodes["AudioStage"] == {"head", "second"}, report
    assert not stage_nodes["PoseStage"] & stage_nodes["AudioStage"], report
    train_workers = [
        item["node"]
        for item in placement["jobs"]["train-2n"]
        if item["kind"] == "actor" and "TrainWorker" in item["name"]
    ]
    assert len(train_workers) == TRAIN_WORKERS, report
    assert set(train_workers) == {"head", "second"}, f"training used one node:\n{report}"
