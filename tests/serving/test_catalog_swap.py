"""A new catalog version while the service answers: queries run continuously while the
catalog is swapped (the replica following ``CURRENT``, then ``reconfigure`` with a new
``user_config``, which is what Serve calls on a lightweight ``serve deploy``); none fails,
every answer is consistent with exactly one version, and the replica never restarts."""

import os
import threading
import time
from collections import Counter

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dvamn.catalog_format import publish_version, resolve_catalog, version_uri
from dvamn.pipeline.catalog import write_catalog_tables
from tests.serving.conftest import keypoint_body

pytestmark = pytest.mark.ray

APP = "dvamn-swap-test"


def _renamed(tracks: pa.Table, prefix: str) -> pa.Table:
    """The same tracks under other ids: answers then show which version scored them."""
    ids = pc.binary_join_element_wise(pa.scalar(prefix), tracks["track_id"], "")
    return tracks.set_column(tracks.schema.get_field_index("track_id"), "track_id", ids)


def _replica_actors() -> set:
    from ray._private.state import actors  # GCS's table: the tests' Ray has no dashboard

    return {
        a["ActorID"]
        for a in actors().values()
        if a["State"] == "ALIVE" and f"{APP}#MatchModel" in (a.get("Name") or "")
    }


def test_queries_during_catalog_swaps_all_succeed_on_exactly_one_version(
    service, serving_assets, tmp_path
):
    from ray import serve

    from dvamn.serving.app import build_app

    source = load_tracks(serving_assets.catalog)
    root = str(tmp_path / "catalog")
    versions = {}  # version_id -> the track ids it holds
    for prefix in ("v1/", "v2/", "v3/"):
        tracks = _renamed(source, prefix)
        summary = write_catalog_tables(root, tracks, keep_versions=10)
        versions[summary.version_id] = set(tracks["track_id"].to_pylist())
    v1, v2, v3 = sorted(versions)
    publish_version(root, v1)  # the service starts on v1

    args = {**service.app_args, "catalog": root, "watch_catalog_s": 0.3}
    serve.run(build_app(args), name=APP, route_prefix="/swap")
    url = f"{service.url}/swap/match/keypoints"
    body = keypoint_body(serving_assets, serving_assets.dances[0], top_k=3)
    answers, failures, stop = [], [], threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                response = http.post(url, json=body)
                if response.status_code != 200:
                    failures.append((response.status_code, response.text[:200]))
                    continue
                answers.append(response.json())

    clients = [threading.Thread(target=client) for _ in range(4)]
    try:
        replicas = _replica_actors()
        assert len(replicas) == 1
        for thread in clients:
            thread.start()

        def wait_for(version_id: str, timeout_s: float = 60.0) -> None:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if answers and answers[-1]["catalog"]["version_id"] == version_id:
                    return
                time.sleep(0.1)
            raise AssertionError(f"the service never answered from {version_id}")

        wait_for(v1)
        # Swap 1: a new build becomes current; the replica follows CURRENT (watch_catalog_s,
        # dvamn serve --watch-catalog).
        publish_version(root, v2)
        wait_for(v2)
        # Swap 2: a new user_config pinning version v3 (what `serve deploy` of a config
        # with an edited MatchModel user_config delivers to the running replica).
        handle = serve.get_deployment_handle("MatchModel", app_name=APP)
        handle.reconfigure.remote({"catalog": version_uri(root, v3)}).result(timeout_s=120)
        wait_for(v3)
        time.sleep(0.5)
        assert _replica_actors() == replicas, "a swap must not restart the replica"
    finally:
        stop.set()
        for thread in clients:
            if thread.is_alive():
                thread.join(timeout=60)
        serve.delete(APP)

    assert not failures, failures[:3]
    seen = Counter(a["catalog"]["version_id"] for a in answers)
    assert set(seen) == {v1, v2, v3}, seen
    for answer in answers:
        version = answer["catalog"]["version_id"]
        ids = [m["track_id"] for m in answer["matches"]]
        assert set(ids) <= versions[version], (version, ids)  # scored on exactly that version
        assert answer["catalog"]["num_tracks"] == len(versions[version])
        assert ids[0].split("/", 1)[1] == serving_assets.dances[0]["id"]  # and still right


def load_tracks(catalog: str) -> pa.Table:
    _, _, version = resolve_catalog(catalog)
    tracks = os.path.join(version, "tracks")
    return pa.concat_tables(
        pq.read_table(os.path.join(tracks, f))
        for f in sorted(os.listdir(tracks))
        if f.endswith(".parquet")
    )
