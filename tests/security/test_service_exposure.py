"""What the service gives away, and to whom (issue 10, items 9, 10 and 13).

- Answers carry content versions, never locations: no checkpoint, catalog or weight path
  or URI (nor their basenames) in any answer of any endpoint, errors included.
- ``/docs`` and ``/redoc`` load nothing from another host: their scripts and styles come
  from the service itself.
- With ``DVAMN_API_TOKEN`` set on the ingress, the matching endpoints and ``/catalog``
  answer only the right bearer token; ``/healthz`` and the docs stay open.

The plain-Python parts are tested without Ray; the HTTP parts go through the session's
real Serve applications (``service`` in tests/serving/conftest.py).
"""

import json
import logging
import os
from html.parser import HTMLParser
from typing import List

import httpx
import numpy as np
import pytest

from dvamn.serving.auth import (
    API_TOKEN_ENV,
    TokenConfigError,
    api_token_from_env,
    exposure_warning,
    is_loopback,
    token_matches,
)
from dvamn.serving.catalog_store import Catalog, weights_version
from tests.serving.conftest import (  # noqa: F401 (fixtures)
    MAX_UPLOAD_MB,
    keypoint_body,
    service,
    serving_assets,
)

WEIGHTS = (
    "/srv/private/vggish-q7x.pth sha256:0123456789ab; pca s3://corp-q7x/pca.npz sha256:ba9876543210"
)


# --- versions, not locations (no Ray) ------------------------------------------------------


def test_weights_version_keeps_the_digests_and_drops_the_sources():
    assert weights_version(WEIGHTS) == "0123456789ab+ba9876543210"
    assert weights_version(
        "det=s3://b/yolox.onnx sha256:aaaaaaaaaaaa; pose=/m/p.onnx sha256:bbbbbbbbbbbb"
    ) == ("aaaaaaaaaaaa+bbbbbbbbbbbb")
    assert weights_version("") == "" and weights_version(None) == ""
    assert weights_version("/srv/private/vggish.pth") == "unhashed"  # never the path itself


def test_matcher_reports_versions_not_locations():
    from dvamn.model import DVAMN, DVAMNConfig
    from dvamn.serving.matcher import Matcher

    config = DVAMNConfig(widths=(8, 8, 8), gru_hidden=8, post_gru_widths=(8, 8), fc_width=8)
    catalog = Catalog.from_sequences(
        [np.random.default_rng(0).random((80, 128), np.float32)],
        audio_embedding_kind="vggish",
        audio_weights=WEIGHTS,
        uri="s3://corp-q7x/catalogs/music-q7x",
    )
    metadata = {
        "checkpoint_uri": "s3://corp-q7x/runs/run-q7x/checkpoint_000003",
        "audio_embedding_kind": "vggish",
        "audio_weights": WEIGHTS,
        "pose_model": "rtmo",
        "epoch": 3,
    }
    matcher = Matcher(DVAMN(config), metadata, catalog, device="cpu")
    reported = json.dumps({"model": matcher.model_info, "catalog": matcher.catalog_info})
    for needle in ("s3://", "q7x", "/srv/", "vggish-q7x.pth", "pca.npz", "checkpoint_000003"):
        assert needle not in reported, (needle, reported)
    assert matcher.model_info["audio_weights_version"] == "0123456789ab+ba9876543210"
    assert matcher.catalog_info["audio_weights_version"] == "0123456789ab+ba9876543210"
    assert matcher.catalog_info["version"] == catalog.version
    assert len(matcher.model_info["version"]) == 12


def test_pose_model_unavailable_answer_names_no_location(tmp_path, caplog):
    from dvamn.serving.app import VIDEO_UNAVAILABLE, PoseEstimation, ServeSettings

    missing = tmp_path / "weights-q7x" / "rtmo-absent-q7x.onnx"
    settings = ServeSettings(checkpoint="unused", catalog="unused", pose_model=str(missing))
    with caplog.at_level(logging.ERROR, logger="dvamn.serving.app"):
        pose = PoseEstimation.func_or_class(settings)  # the class the deployment wraps
    answer = pose.features(b"not read", "dance.mp4")
    assert answer == {"error": {"status": 503, "detail": VIDEO_UNAVAILABLE}}
    for needle in (str(tmp_path), "weights-q7x", missing.name, "does not exist"):
        assert needle not in json.dumps(answer)
    # The operator still learns why, in the replica's log.
    assert str(missing) in caplog.text and "--pose-model" in caplog.text


# --- the token (no Ray) --------------------------------------------------------------------


def test_token_comes_from_the_environment_and_bad_values_refuse_to_serve():
    assert api_token_from_env({}) is None
    good = "Zx9-" * 8
    assert api_token_from_env({API_TOKEN_ENV: good}) == good
    for bad in ("", "short-token", "has a space in it!", "tab\tseparated-token-value", "é" * 20):
        with pytest.raises(TokenConfigError, match=API_TOKEN_ENV) as caught:
            api_token_from_env({API_TOKEN_ENV: bad})
        if bad:
            assert bad not in str(caught.value)  # the message never quotes the secret


def test_tokens_are_compared_with_hmac_compare_digest(monkeypatch):
    import dvamn.serving.auth as auth

    calls: List[tuple] = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    expected = "right-token-0123456789"
    assert token_matches(expected, expected)
    assert not token_matches("wrong-token-0123456789", expected)
    assert not token_matches("right-token-012345678", expected)  # a prefix
    assert not token_matches("\udcff" * 3, expected)  # undecodable header bytes
    assert not token_matches(None, expected)
    # Every presented token went through compare_digest, on fixed-length digests: the
    # time taken depends on neither token's content nor its length.
    assert len(calls) == 4 and all(len(a) == len(b) == 32 for a, b in calls)


def test_loopback_and_the_exposure_warning():
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host) and exposure_warning(host, 8000, None) is None
    for host in ("0.0.0.0", "::", "10.1.2.3", "dvamn.example.org"):
        assert not is_loopback(host)
        warning = exposure_warning(host, 8000, None)
        assert warning and API_TOKEN_ENV in warning and host in warning
        assert exposure_warning(host, 8000, "t" * 20) is None


def test_serve_refuses_an_unusable_token_before_starting(monkeypatch, capsys):
    from dvamn.cli import main

    monkeypatch.setenv(API_TOKEN_ENV, "guessable")
    assert main(["serve", "--checkpoint", "c", "--catalog", "k", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert API_TOKEN_ENV in err and "at least 16" in err and "guessable" not in err


# --- over HTTP (the session's Serve applications) --------------------------------------------


def _needles(assets, svc) -> List[str]:
    """Locations no answer may hold: the paths, their basenames, the fixtures' root."""
    paths = [assets.checkpoint, assets.catalog, assets.pose_model, svc.missing_pose_model]
    return [*paths, *(os.path.basename(p) for p in paths), assets.root, "s3://"]


def _everything(response: httpx.Response) -> str:
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return f"{response.status_code}\n{headers}\n{response.text}"


@pytest.mark.ray
def test_no_answer_of_any_endpoint_names_a_location(service, serving_assets, tmp_path):  # noqa: F811
    from dvamn.storage import file_sha256

    url, auth = service.url, service.auth_url
    bearer = {"Authorization": f"Bearer {service.token}"}
    dance = keypoint_body(serving_assets, serving_assets.dances[0], top_k=2)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n" * 50)
    big = b"\0" * int((MAX_UPLOAD_MB + 0.5) * 2**20)
    track, segment = serving_assets.dances[0]["id"], {"start": 1, "duration": 2}

    def video(base: str, path: str, **kwargs) -> httpx.Response:
        with open(path, "rb") as f:
            return httpx.post(
                f"{base}/match", files={"video": ("dance.mp4", f)}, timeout=120, **kwargs
            )

    answers = {
        "healthz": httpx.get(f"{url}/healthz"),
        "catalog": httpx.get(f"{url}/catalog"),
        "openapi": httpx.get(f"{url}/openapi.json"),
        "docs": httpx.get(f"{url}/docs"),
        "redoc": httpx.get(f"{url}/redoc"),
        "video": video(url, serving_assets.query_video),
        "keypoints": httpx.post(f"{url}/match/keypoints", json=dance, timeout=60),
        "413 video": httpx.post(f"{url}/match", files={"video": ("big.mp4", big)}),
        "413 keypoints": httpx.post(
            f"{url}/match/keypoints", content=big, headers={"content-type": "application/json"}
        ),
        "415": video(url, str(not_video)),
        "422 nobody": video(url, serving_assets.blank_video),
        "422 keypoints": httpx.post(f"{url}/match/keypoints", json={**dance, "fps": -1}),
        "401": httpx.post(f"{auth}/match/keypoints", json=dance),
        "401 catalog": httpx.get(f"{auth}/catalog", headers={"Authorization": "Bearer wrong"}),
        "503": video(auth, serving_assets.query_video, headers=bearer),
        "auth keypoints": httpx.post(f"{auth}/match/keypoints", json=dance, headers=bearer),
        "auth catalog": httpx.get(f"{auth}/catalog", headers=bearer),
        "auth healthz": httpx.get(f"{auth}/healthz"),
        # The page, its static files and the audio route, answers and refusals alike.
        "page": httpx.get(f"{url}/"),
        "page.js": httpx.get(f"{url}/page-assets/page.js"),
        "page.css": httpx.get(f"{url}/page-assets/page.css"),
        "404 asset": httpx.get(f"{url}/page-assets/no-such-file.js"),
        "404 asset path": httpx.get(f"{url}/page-assets/..%2F..%2Fapp.py"),
        "audio": httpx.get(f"{url}/tracks/{track}/audio", params=segment, timeout=60),
        "422 audio": httpx.get(f"{url}/tracks/{track}/audio", params={"start": 10_000}),
        "404 audio": httpx.get(f"{url}/tracks/no-such-track/audio"),
        "404 audio path": httpx.get(f"{url}/tracks/%2Fetc%2Fpasswd/audio"),
        "401 audio": httpx.get(f"{auth}/tracks/{track}/audio", params=segment),
        "auth audio": httpx.get(
            f"{auth}/tracks/{track}/audio", params=segment, headers=bearer, timeout=60
        ),
    }
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {
        **{n: 200 for n in ("healthz", "catalog", "openapi", "docs", "redoc", "video")},
        **{"keypoints": 200, "413 video": 413, "413 keypoints": 413, "415": 415},
        **{"422 nobody": 422, "422 keypoints": 422, "401": 401, "401 catalog": 401},
        **{"503": 503, "auth keypoints": 200, "auth catalog": 200, "auth healthz": 200},
        **{"page": 200, "page.js": 200, "page.css": 200, "404 asset": 404, "404 asset path": 404},
        **{"audio": 200, "422 audio": 422, "404 audio": 404, "404 audio path": 404},
        **{"401 audio": 401, "auth audio": 200},
    }
    for name, response in answers.items():
        text = _everything(response)
        for needle in _needles(serving_assets, service):
            assert needle not in text, f"the {name} answer holds {needle!r}"

    # ... and what they carry instead: content versions.
    answer = answers["video"].json()
    assert set(answer["catalog"]) == {"version", "version_id", "num_tracks"}
    assert answer["pose_version"] == file_sha256(serving_assets.pose_model)
    assert answers["keypoints"].json()["pose_version"] == ""
    assert answer["model"]["version"] == answers["healthz"].json()["model_version"]
    assert answer["model"]["audio_weights_version"] == ""  # logmel: no weights
    catalog = answers["catalog"].json()
    assert catalog["version"] == answer["catalog"]["version"] and "uri" not in catalog
    assert answers["503"].json()["detail"].startswith("video queries are unavailable")


class _Assets(HTMLParser):
    """Every src= and href= of a page."""

    def __init__(self):
        super().__init__()
        self.urls: List[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.mark.ray
@pytest.mark.parametrize("page", ["docs", "redoc"])
def test_docs_pages_load_nothing_from_another_host(service, page):  # noqa: F811
    for base, prefix in ((service.url, ""), (service.auth_url, "/auth")):
        response = httpx.get(f"{base}/{page}")
        assert response.status_code == 200
        assert "://" not in response.text  # no absolute URL at all, inline script included
        parser = _Assets()
        parser.feed(response.text)
        scripts = [u for u in parser.urls if u.endswith(".js")]
        styles = [u for u in parser.urls if u.endswith(".css")]
        assert scripts and (styles or page == "redoc")
        origin = base[: len(base) - len(prefix)]
        for path in parser.urls:
            assert path.startswith(f"{prefix}/docs-assets/"), path  # on this service
            asset = httpx.get(f"{origin}{path}")
            assert asset.status_code == 200 and len(asset.content) > 1000, path
        # The spec the page loads is this application's (under its route prefix).
        assert f"{prefix}/openapi.json" in response.text
        assert httpx.get(f"{origin}{prefix}/openapi.json").status_code == 200


@pytest.mark.ray
def test_token_guards_the_matching_endpoints(service, serving_assets):  # noqa: F811
    auth = service.auth_url
    dance = keypoint_body(serving_assets, serving_assets.dances[1], top_k=1)
    right = {"Authorization": f"Bearer {service.token}"}
    wrong_tokens = [
        {},
        {"Authorization": "Bearer " + service.token[:-1]},
        {"Authorization": "Bearer " + service.token + "x"},
        {"Authorization": f"Basic {service.token}"},
        {"Authorization": service.token},
    ]
    for headers in wrong_tokens:
        for response in (
            httpx.post(f"{auth}/match/keypoints", json=dance, headers=headers, timeout=60),
            httpx.get(f"{auth}/catalog", headers=headers),
            httpx.post(f"{auth}/match", files={"video": ("a.mp4", b"0" * 1000)}, headers=headers),
        ):
            assert response.status_code == 401, (headers, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert service.token not in _everything(response)
    wrong = httpx.get(f"{auth}/catalog", headers={"Authorization": "Bearer not-this-one"})
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    # Refused before the body is read: an oversized upload without the token is a 401.
    big = b"\0" * int((MAX_UPLOAD_MB + 0.5) * 2**20)
    assert httpx.post(f"{auth}/match", files={"video": ("big.mp4", big)}).status_code == 401

    response = httpx.post(f"{auth}/match/keypoints", json=dance, headers=right, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["matches"][0]["track_id"] == serving_assets.dances[1]["id"]
    assert httpx.get(f"{auth}/catalog", headers=right).status_code == 200
    # Open without a token: health checks and the documentation.
    for path in ("/healthz", "/docs", "/openapi.json"):
        assert httpx.get(f"{auth}{path}").status_code == 200, path
    # The spec declares the scheme, so that Swagger UI offers "Authorize".
    spec = httpx.get(f"{auth}/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # Without DVAMN_API_TOKEN the service answers as before, with or without a header.
    assert httpx.post(f"{service.url}/match/keypoints", json=dance, timeout=60).status_code == 200
    assert httpx.get(f"{service.url}/catalog", headers=right).status_code == 200


@pytest.mark.ray
def test_match_client_sends_the_token(service, serving_assets, monkeypatch, capsys):  # noqa: F811
    from dvamn.cli import main

    dance = serving_assets.dances[2]
    keypoint_file = os.path.join(serving_assets.root, dance["keypoints"])
    monkeypatch.delenv(API_TOKEN_ENV, raising=False)
    assert main(["match", keypoint_file, "--url", service.auth_url]) == 1
    err = capsys.readouterr().err
    assert "401" in err and "bearer token" in err
    assert main(["match", keypoint_file, "--url", service.auth_url, "--token", service.token]) == 0
    assert dance["id"] in capsys.readouterr().out
    monkeypatch.setenv(API_TOKEN_ENV, service.token)  # the default of --token
    assert main(["match", keypoint_file, "--url", service.auth_url, "--top-k", "2"]) == 0
    assert dance["id"] in capsys.readouterr().out
