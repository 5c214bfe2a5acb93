"""Sharded serving (dvamn.serving.shards) on the local Ray: the catalog split across two
shard deployments answers exactly what the one-replica service answers."""

import httpx
import pytest

from tests.serving.conftest import keypoint_body

pytestmark = pytest.mark.ray

APP = "dvamn-shards-test"


def test_two_shards_return_exactly_the_ranking_of_one(service, serving_assets):
    from ray import serve

    from dvamn.serving.app import build_app

    args = {**service.app_args, "shards": 2, "replicas_per_shard": 1}
    serve.run(build_app(args), name=APP, route_prefix="/shards")
    try:
        deployments = set(serve.status().applications[APP].deployments)
        assert {"MatchShard0", "MatchShard1", "MatchModel"} <= deployments, deployments
        num_tracks = None
        with httpx.Client(timeout=120) as http:
            for entry in serving_assets.dances[:3]:
                body = keypoint_body(serving_assets, entry, top_k=6)
                one = http.post(f"{service.url}/match/keypoints", json=body)
                two = http.post(f"{service.url}/shards/match/keypoints", json=body)
                assert one.status_code == two.status_code == 200, (one.text, two.text)
                a, b = one.json(), two.json()
                # The same tracks in the same order (the top 6: the catalog's 6 dances'
                # music, both shards' tracks), with the same offsets and scores: the
                # merge is the single bank's ranking.
                assert [m["track_id"] for m in b["matches"]] == [
                    m["track_id"] for m in a["matches"]
                ]
                assert len(b["matches"]) == min(6, b["catalog"]["num_tracks"])
                assert b["catalog"]["num_tracks"] == a["catalog"]["num_tracks"] >= 4
                for x, y in zip(a["matches"], b["matches"], strict=True):
                    assert x["offset_s"] == y["offset_s"]
                    assert x["score"] == pytest.approx(y["score"], abs=1e-6)
                assert b["catalog"]["version"] == a["catalog"]["version"]
                assert b["catalog"]["shards"] == 2
                num_tracks = b["catalog"]["num_tracks"]
            info = http.get(f"{service.url}/shards/catalog").json()
            assert info["num_tracks"] == num_tracks
    finally:
        serve.delete(APP)
