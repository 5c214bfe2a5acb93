"""The Ray Serve application over real HTTP on loopback (the session's ``service``
fixture of conftest.py, shared with tests/security)."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dvamn.serving.queries import MAX_TOP_K

from .conftest import MAX_UPLOAD_MB, MIN_QUERY_S, NUM_DANCES, keypoint_body

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def url(service) -> str:
    return service.url


def post_video(url: str, path: str, name: str = "dance.mp4", **params) -> httpx.Response:
    with open(path, "rb") as f:
        return httpx.post(
            f"{url}/match", params=params, files={"video": (name, f, "video/mp4")}, timeout=120
        )


def check_answer(answer: dict, top_k: int) -> None:
    assert set(answer) >= {"matches", "model", "catalog", "timings_ms", "pose_source"}
    assert len(answer["matches"]) == top_k
    for match in answer["matches"]:
        assert set(match) == {"track_id", "title", "score", "offset_s"}
        assert isinstance(match["score"], float) and match["offset_s"] >= 0
    scores = [m["score"] for m in answer["matches"]]
    assert scores == sorted(scores)  # best first
    assert answer["model"]["version"] and answer["catalog"]["version"]
    assert answer["catalog"]["num_tracks"] == NUM_DANCES


def test_video_and_keypoints_are_matched(url, serving_assets):
    response = post_video(url, serving_assets.query_video, top_k=3)
    assert response.status_code == 200, response.text
    answer = response.json()
    check_answer(answer, 3)
    assert answer["pose_source"].startswith("video:")
    assert answer["timings_ms"]["decode_pose"] > 0

    dance = serving_assets.dances[0]
    response = httpx.post(f"{url}/match/keypoints", json=keypoint_body(serving_assets, dance))
    assert response.status_code == 200, response.text
    answer = response.json()
    check_answer(answer, 5)  # the service's default_top_k
    assert answer["pose_source"] == "keypoints"


def test_own_track_ranks_first_for_most_keypoint_queries(url, serving_assets):
    hits = 0
    for dance in serving_assets.dances:
        body = keypoint_body(serving_assets, dance, top_k=1)
        answer = httpx.post(f"{url}/match/keypoints", json=body, timeout=60).json()
        hits += answer["matches"][0]["track_id"] == dance["id"]
    # A model trained on these dances: 6/6 in practice.
    assert hits >= NUM_DANCES - 1, f"own track ranked first for {hits}/{NUM_DANCES}"


def test_keypoints_without_frame_size_are_matched(url, serving_assets):
    body = keypoint_body(serving_assets, serving_assets.dances[1], top_k=2)
    del body["width"], body["height"], body["scores"]
    response = httpx.post(f"{url}/match/keypoints", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["query"]["frame_size"] == "derived from the keypoints' extent"


def test_health_catalog_and_docs(url):
    health = httpx.get(f"{url}/healthz").json()
    assert health["status"] == "ok" and health["num_tracks"] == NUM_DANCES
    catalog = httpx.get(f"{url}/catalog").json()
    assert catalog["num_tracks"] == NUM_DANCES
    assert catalog["audio_embedding_kind"] == "logmel"
    assert catalog["version"] == health["catalog_version"]
    assert httpx.get(f"{url}/docs").status_code == 200
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert {"/match", "/match/keypoints", "/healthz", "/catalog"} <= set(paths)


def _field_errors(response: httpx.Response) -> str:
    return str(response.json()["detail"])


def test_bad_inputs_get_their_status_codes(url, serving_assets, tmp_path):
    dance = serving_assets.dances[0]
    # Too large: refused with the limit, before the body is parsed.
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * int((MAX_UPLOAD_MB + 0.5) * 2**20))
    response = post_video(url, str(big))
    assert response.status_code == 413 and str(2**20) in response.text
    response = httpx.post(
        f"{url}/match/keypoints",
        content=big.read_bytes(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413

    # Not a video at all, and a corrupt one.
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    assert post_video(url, str(text)).status_code == 415
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(open(serving_assets.query_video, "rb").read()[:3000])
    assert post_video(url, str(corrupt)).status_code in (415, 422)

    # No person in the picture.
    response = post_video(url, serving_assets.blank_video)
    assert response.status_code == 422 and "no person" in response.text

    # Too short, with the minimum in the message.
    short = keypoint_body(serving_assets, dance)
    frames = int(2 * short["fps"])
    short.update(keypoints=short["keypoints"][:frames], scores=short["scores"][:frames])
    response = httpx.post(f"{url}/match/keypoints", json=short)
    assert response.status_code == 422 and f"at least {MIN_QUERY_S:g} s" in response.text

    # Malformed keypoints: the answer names the field.
    body = keypoint_body(serving_assets, dance)
    body["keypoints"][3] = body["keypoints"][3][:12]
    response = httpx.post(f"{url}/match/keypoints", json=body)
    assert response.status_code == 422 and "keypoints[3]" in _field_errors(response)
    body = keypoint_body(serving_assets, dance)
    del body["fps"]
    response = httpx.post(f"{url}/match/keypoints", json=body)
    assert response.status_code == 422 and "fps" in _field_errors(response)
    body = keypoint_body(serving_assets, dance)
    body["scores"] = body["scores"][:-1]
    response = httpx.post(f"{url}/match/keypoints", json=body)
    assert response.status_code == 422 and "scores" in _field_errors(response)
    response = httpx.post(
        f"{url}/match/keypoints", json=keypoint_body(serving_assets, dance, top_k=0)
    )
    assert response.status_code == 422 and "top_k" in _field_errors(response)
    # A URL to fetch is not a field: the service reads only what is sent.
    body = keypoint_body(serving_assets, dance, video_url="http://example.com/dance.mp4")
    response = httpx.post(f"{url}/match/keypoints", json=body)
    assert response.status_code == 422 and "video_url" in _field_errors(response)
    response = httpx.post(
        f"{url}/match/keypoints", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422

    # Upload without the 'video' field, and a top_k out of range.
    response = httpx.post(f"{url}/match", files={"clip": ("a.mp4", b"123")})
    assert response.status_code == 422 and "video" in response.text
    # A broken multipart body: a 422 that describes it and quotes none of it.
    response = httpx.post(
        f"{url}/match",
        content=b"--zz\r\nsecret-part-text\r\n",
        headers={"content-type": "multipart/form-data; boundary=zz"},
    )
    assert response.status_code == 422 and "could not be parsed" in response.text
    assert "secret-part-text" not in response.text
    response = post_video(url, serving_assets.query_video, top_k=MAX_TOP_K + 1)
    assert response.status_code == 422

    # ... and the service keeps serving.
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_fifty_concurrent_requests_over_eight_threads(url, serving_assets):
    bodies = [
        keypoint_body(serving_assets, serving_assets.dances[i % NUM_DANCES], top_k=3)
        for i in range(50)
    ]

    def send(body: dict) -> tuple:
        response = httpx.post(f"{url}/match/keypoints", json=body, timeout=120)
        return response.status_code, response.json().get("batch_size", 0)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(send, bodies))
    assert [status for status, _ in results] == [200] * 50
    assert all(batch >= 1 for _, batch in results)


def test_match_cli_prints_a_table(url, serving_assets, capsys):
    from dvamn.cli import main

    dance = serving_assets.dances[2]
    keypoint_file = f"{serving_assets.root}/{dance['keypoints']}"
    assert main(["match", keypoint_file, "--url", url, "--top-k", "3"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["rank", "score", "offset", "track"]
    assert dance["id"] in table and "pose from keypoints" in table

    assert main(["match", serving_assets.blank_video, "--url", url]) == 1
    assert "422" in capsys.readouterr().err
