"""The web page's endpoints on the real service (the session's ``service`` fixture):
the page and its files, ``include_pose``, and ``GET /tracks/{id}/audio``."""

import io
import re

import av
import httpx
import pytest

from .conftest import keypoint_body
from .test_service import post_video

pytestmark = pytest.mark.ray


def test_the_page_and_its_files_are_served_from_the_package(service):
    page = httpx.get(f"{service.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'href="docs"' in page.text  # it links the API documentation
    assets = re.findall(r'(?:src|href)="(page-assets/[^"]+)"', page.text)
    assert sorted(assets) == ["page-assets/page.css", "page-assets/page.js"]
    for asset in assets:
        response = httpx.get(f"{service.url}/{asset}")
        assert response.status_code == 200
        # Offline: nothing is loaded from another host.
        assert not re.search(r"(?:src|href|url|import|fetch)\W+(?:https?:)?//", response.text)


def test_include_pose_returns_the_pose_track_the_match_used(service, serving_assets):
    dance = serving_assets.dances[0]
    plain = httpx.post(f"{service.url}/match/keypoints", json=keypoint_body(serving_assets, dance))
    assert plain.status_code == 200 and "pose" not in plain.json()
    assert "pose_track" not in plain.json()["query"]
    answer = httpx.post(
        f"{service.url}/match/keypoints",
        params={"include_pose": "true"},
        json=keypoint_body(serving_assets, dance),
    ).json()
    pose = answer["pose"]
    frames = answer["query"]["frames"]
    assert pose["fps"] == 10.0 and len(pose["keypoints"]) == len(pose["present"]) == frames
    assert len(pose["joints"]) == 17 and all(len(j) == 17 for j in pose["keypoints"])
    assert (pose["width"], pose["height"]) == (answer["query"]["width"], answer["query"]["height"])
    assert all(0 <= a < 17 and 0 <= b < 17 for a, b in pose["edges"])
    assert answer["matches"] == plain.json()["matches"]  # the same match, plus its pose

    video = post_video(service.url, serving_assets.query_video, include_pose="true").json()
    assert len(video["pose"]["keypoints"]) == video["query"]["frames"]
    assert (video["pose"]["width"], video["pose"]["height"]) == (
        video["query"]["width"],
        video["query"]["height"],
    )


def test_track_audio_plays_a_bounded_segment_of_a_catalog_track(service, serving_assets):
    track = serving_assets.dances[0]["id"]
    response = httpx.get(
        f"{service.url}/tracks/{track}/audio", params={"start": 3, "duration": 5}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/mpeg"
    with av.open(io.BytesIO(response.content)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
    assert samples / stream.rate == pytest.approx(5.0, abs=0.05)

    for params, status, words in [
        ({"duration": 61}, 422, "less than or equal to 60"),
        ({"start": -1}, 422, "greater than or equal to 0"),
        ({"start": 10_000}, 422, "past the track's end"),
    ]:
        response = httpx.get(f"{service.url}/tracks/{track}/audio", params=params)
        assert response.status_code == status and words in response.text, response.text
    # Only catalog tracks: a name that looks like a path is just an unknown track id.
    for name in ("no-such-track", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "a/../b"):
        response = httpx.get(f"{service.url}/tracks/{name}/audio")
        assert response.status_code == 404 and "not in the catalog" in response.text
    # With a token configured the audio needs it, as /match does.
    assert httpx.get(f"{service.auth_url}/tracks/{track}/audio").status_code == 401


def test_an_aist_pickle_upload_is_matched_and_a_hostile_one_runs_nothing(
    service, serving_assets, tmp_path
):
    from tests.security.test_hostile_keypoint_files import _call, _text
    from tests.support.aist import aist_pickle_bytes, at_aist_rate

    from .conftest import _keypoints

    dance = serving_assets.dances[0]
    k = _keypoints(serving_assets.root, dance)
    keypoints, scores = at_aist_rate(k["keypoints"], k["scores"], float(k["fps"]))
    # 6 s: nine views of 60 fps keypoints stay under the tests' 1 MiB upload limit.
    keypoints, scores = keypoints[:360], scores[:360]
    raw = aist_pickle_bytes(keypoints, scores)
    assert len(raw) < 2**20
    answer = httpx.post(
        f"{service.url}/match",
        params={"include_pose": "true", "top_k": 3},
        files={"video": ("gBR_sBM_cAll_d04_mBR0_ch01.pkl", raw)},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    answer = answer.json()
    assert answer["pose_source"] == "keypoints:aist++" and answer["pose_version"] == ""
    assert len(answer["pose"]["keypoints"]) == answer["query"]["frames"]
    # The same match as its first view's keypoints sent as JSON (60 fps, 1920x1080).
    body = {
        "keypoints": keypoints.tolist(),
        "scores": scores.tolist(),
        "fps": 60.0,
        "width": 1920.0,
        "height": 1080.0,
        "top_k": 3,
    }
    as_json = httpx.post(f"{service.url}/match/keypoints", json=body, timeout=120).json()
    assert answer["matches"] == as_json["matches"]

    marker = tmp_path / "MARKER"  # the replicas run on this machine: they would make it
    hostile = _call("numpy.lib._datasource", "os.system", _text(f"touch {marker}"))
    refused = httpx.post(f"{service.url}/match", files={"video": ("evil.pkl", hostile)})
    assert refused.status_code == 422, refused.text
    assert "cannot use evil.pkl: refused to unpickle the global" in refused.json()["detail"]
    assert not marker.exists(), "the payload ran"
