"""A MatchModel replica killed (SIGKILL, by its PID from Ray's actor table) while 50
clients send queries: every request succeeds or gets a retryable 503, no answer is wrong,
and the deployment is healthy again within a bounded time."""

import os
import signal
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.serving.conftest import keypoint_body

pytestmark = pytest.mark.ray

APP = "dvamn-kill-test"
CLIENTS = 50
RECOVERY_LIMIT_S = 60.0  # the goal is 30 s; this machine is shared and slow


def _replicas() -> dict:
    """ActorID -> PID of this app's live MatchModel replicas (GCS's actor table: the
    tests' Ray runs without the dashboard that ray.util.state needs)."""
    from ray._private.state import actors

    return {
        a["ActorID"]: a["Pid"]
        for a in actors().values()
        if a["State"] == "ALIVE" and f"{APP}#MatchModel" in (a.get("Name") or "")
    }


def test_a_replica_killed_under_load_costs_only_retryable_503s(service, serving_assets):
    from ray import serve

    from dvamn.serving.app import build_app

    serve.run(build_app(dict(service.app_args)), name=APP, route_prefix="/kill")
    url = f"{service.url}/kill/match/keypoints"
    dance = serving_assets.dances[1]
    body = keypoint_body(serving_assets, dance, top_k=3)
    statuses, wrong, others, stop = Counter(), [], [], threading.Event()
    successes_after_kill = []
    killed_at = [None]

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                sent = time.monotonic()
                response = http.post(url, json=body)
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    top = response.json()["matches"][0]["track_id"]
                    if top != dance["id"]:
                        wrong.append(top)
                    if killed_at[0] is not None and sent > killed_at[0]:
                        successes_after_kill.append(time.monotonic())  # sent after the kill
                elif response.status_code != 503:
                    others.append((response.status_code, response.text[:300]))
                elif response.status_code == 503 and not response.headers.get("retry-after"):
                    wrong.append("a 503 without Retry-After")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    try:
        (before,) = _replicas().items()
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while statuses[200] < CLIENTS and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(before[1], signal.SIGKILL)  # a process this test's Ray started
        killed_at[0] = time.monotonic()
        deadline = killed_at[0] + RECOVERY_LIMIT_S
        while time.monotonic() < deadline:
            replicas = _replicas()
            if replicas and before[0] not in replicas and successes_after_kill:
                break
            time.sleep(0.2)
        recovery_s = (successes_after_kill or [float("inf")])[0] - killed_at[0]
        print(f"replica kill: first answer {recovery_s:.1f} s after, statuses {dict(statuses)}")
        assert recovery_s < RECOVERY_LIMIT_S, f"no answer within {RECOVERY_LIMIT_S} s of the kill"
        assert before[0] not in _replicas() and len(_replicas()) == 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        serve.delete(APP)
    assert set(statuses) <= {200, 503}, (dict(statuses), others[:3])
    assert not wrong, wrong[:5]
