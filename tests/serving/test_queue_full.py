"""A full request queue answers 503 with Retry-After on its own (no replica lost): a
MatchModel with room for one request running and one queued, and 16 clients at once."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serving.conftest import keypoint_body

pytestmark = pytest.mark.ray

APP = "dvamn-queue-test"
CLIENTS = 16


def test_a_full_queue_answers_503_with_retry_after(service, serving_assets):
    from ray import serve
    from ray.serve.config import BackpressureConfig

    from dvamn.serving.app import MatchAPI, MatchModel, PoseEstimation, ServeSettings

    # build_app's own options, with the queue made small enough to fill from a test.
    settings = ServeSettings.from_args({**service.app_args, "max_queued_requests": 1})
    replica_settings = dataclasses.replace(settings, catalog="", watch_catalog_s=0.0)
    backpressure = {
        "max_queued_requests": settings.max_queued_requests,
        "backpressure_config": BackpressureConfig(
            status_code=503, retry_after_s=settings.retry_after_s
        ),
    }
    matcher = MatchModel.options(
        max_ongoing_requests=1,
        ray_actor_options={"num_cpus": 0},
        user_config={"catalog": settings.catalog, "watch_catalog_s": 0.0},
        **backpressure,
    ).bind(replica_settings)
    pose = PoseEstimation.options(ray_actor_options={"num_cpus": 0}).bind(replica_settings)
    ingress = MatchAPI.options(ray_actor_options={"num_cpus": 0}).bind(
        pose, matcher, replica_settings
    )
    serve.run(ingress, name=APP, route_prefix="/queue")
    url = f"{service.url}/queue/match/keypoints"
    dance = serving_assets.dances[2]
    body = keypoint_body(serving_assets, dance, top_k=3)
    try:
        assert httpx.post(url, json=body, timeout=120).status_code == 200
        with ThreadPoolExecutor(CLIENTS) as pool:
            responses = list(
                pool.map(lambda _: httpx.post(url, json=body, timeout=120), range(CLIENTS))
            )
        statuses = [r.status_code for r in responses]
        refused = [r for r in responses if r.status_code == 503]
        assert set(statuses) <= {200, 503}, [(r.status_code, r.text[:200]) for r in responses]
        assert refused, f"16 clients at once never filled a queue of 1: {statuses}"
        assert statuses.count(200) >= 1
        for r in refused:
            assert r.headers.get("retry-after") == str(settings.retry_after_s)
            assert r.json()["detail"].startswith("MatchModel is at capacity (its request queue")
        for r in responses:
            if r.status_code == 200:
                assert r.json()["matches"][0]["track_id"] == dance["id"]
        # Refusing is not breaking: the next request alone is answered.
        assert httpx.post(url, json=body, timeout=120).status_code == 200
    finally:
        serve.delete(APP)
