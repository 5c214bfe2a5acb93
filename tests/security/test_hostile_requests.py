"""Hostile requests to ``POST /match/keypoints``, hostile query values, and a hostile
server for ``dvamn match`` (issue 10, items 3, 7 and 11).

- The body has its own limit (the longest query as JSON), enforced on the bytes received:
  past it a 413, before any parsing. Parsing streams numbers into float32 arrays and
  stops at the frame cap, so memory stays within a small multiple of the body.
- Every bad value is a 422 whose message and ``loc`` name the field: property-based
  tests throw generated shapes and values at the pure parsing function.
- ``dvamn match`` prints no control character that a server sent.

The pure parts run without Ray; the HTTP checks go through the session's real Serve
application (``service`` in tests/serving/conftest.py) and one more ingress with a larger
upload limit, for the concurrency check.
"""

import asyncio
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dvamn.constants import NUM_JOINTS, POSE_FEATURES
from dvamn.serving.keypoint_json import FIELDS, keypoint_query_features, parse_keypoint_body
from dvamn.serving.queries import (
    KEYPOINT_FRAME_JSON_BYTES,
    QueryError,
    QueryFieldError,
    QueryLimits,
    field_name,
)
from tests.serving.conftest import (  # noqa: F401 (fixtures)
    MAX_UPLOAD_MB,
    keypoint_body,
    service,
    serving_assets,
)
from tests.support.memory import measure_action

LIMITS = QueryLimits(min_query_s=1.0, max_query_s=60.0)  # 60 s at 60 fps: 3,600 frames
MAX_MESSAGE_CHARS = 300


def _dance(frames: int = 120, seed: int = 0) -> Dict[str, Any]:
    """A valid body (as a dict): a person moving in a 640x480 frame at 30 fps."""
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform(100, 500, size=(frames, NUM_JOINTS, 2))
    scores = [[0.9] * NUM_JOINTS for _ in range(frames)]
    return {"keypoints": keypoints.tolist(), "fps": 30.0, "scores": scores}


def _encode(body: Dict[str, Any]) -> bytes:
    return json.dumps(body).encode()  # NaN / inf become the non-JSON tokens NaN, Infinity


def _refusal(body: bytes, limits: QueryLimits = LIMITS) -> QueryError:
    with pytest.raises(QueryError) as caught:
        keypoint_query_features(body, limits)
    return caught.value


def _set(path: List[Any], value: Any) -> Callable[[Dict[str, Any]], None]:
    def change(body: Dict[str, Any]) -> None:
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _drop(key: str) -> Callable[[Dict[str, Any]], None]:
    return lambda body: body.pop(key)


# --- the values of issue 10, item 7, and their neighbours (no Ray) -----------------------

HOSTILE_VALUES = [
    # (case, change to a valid body, the field the 422 names)
    ("coordinate 1e300 (was a 500)", _set(["keypoints", 5, 3, 0], 1e300), "keypoints[5][3]"),
    (
        "coordinate 3e38 (was NaN features, 200)",
        _set(["keypoints", 5, 3, 1], 3e38),
        "keypoints[5][3]",
    ),
    ("coordinate -2e6", _set(["keypoints", 7, 0, 0], -2e6), "keypoints[7][0]"),
    ("coordinate NaN", _set(["keypoints", 2, 4, 0], float("nan")), "keypoints[2]"),
    ("coordinate Infinity", _set(["keypoints", 2, 4, 1], float("inf")), "keypoints[2]"),
    ("coordinate as text", _set(["keypoints", 2, 4, 1], "3"), "keypoints[2][4]"),
    ("score 1e39 (inf as float32)", _set(["scores", 2, 4], 1e39), "scores[2][4]"),
    ("score NaN", _set(["scores", 2, 4], float("nan")), "scores[2]"),
    ("score -inf", _set(["scores", 3, 1], float("-inf")), "scores[3]"),
    ("score negative", _set(["scores", 3, 1], -0.5), "scores[3][1]"),
    ("width Infinity", _set(["width"], float("inf")), "width"),
    ("width 0", _set(["width"], 0), "width"),
    ("width negative", _set(["width"], -640), "width"),
    ("height 1e-300", _set(["height"], 1e-300), "height"),
    ("height 1e300", _set(["height"], 1e300), "height"),
    ("width as text", _set(["width"], "640"), "width"),
    ("top_k 0", _set(["top_k"], 0), "top_k"),
    ("top_k 101", _set(["top_k"], 101), "top_k"),
    ("top_k 2.5", _set(["top_k"], 2.5), "top_k"),
    ("top_k true", _set(["top_k"], True), "top_k"),
    ("fps 1e-300 (was a 413 with a 300-digit number)", _set(["fps"], 1e-300), "fps"),
    ("fps 0", _set(["fps"], 0), "fps"),
    ("fps above the highest accepted", _set(["fps"], 1000), "fps"),
    ("fps NaN", _set(["fps"], float("nan")), "fps"),
    ("fps as a list", _set(["fps"], [30]), "fps"),
    ("fps missing", _drop("fps"), "fps"),
    ("keypoints missing", _drop("keypoints"), "keypoints"),
    ("a frame of 12 joints", _set(["keypoints", 3], [[1.0, 2.0]] * 12), "keypoints[3]"),
    ("a joint of 3 numbers", _set(["keypoints", 3, 4], [1.0, 2.0, 3.0]), "keypoints[3][4]"),
    ("keypoints of rank 2", _set(["keypoints"], [[1.0, 2.0]] * 40), "keypoints[0]"),
    ("keypoints a number", _set(["keypoints"], 7), "keypoints"),
    ("scores of 16 joints", _set(["scores", 1], [1.0] * 16), "scores[1]"),
    ("scores one frame short", lambda b: b["scores"].pop(), "scores"),
    ("a url to fetch", _set(["video_url"], "http://example.com/x.mp4"), "video_url"),
]


@pytest.mark.parametrize(
    "change, field", [c[1:] for c in HOSTILE_VALUES], ids=[c[0] for c in HOSTILE_VALUES]
)
def test_hostile_values_are_a_422_naming_the_field(change, field):
    body = _dance()
    change(body)
    error = _refusal(_encode(body))
    assert isinstance(error, QueryFieldError), error
    assert error.status == 422
    assert field_name(error.loc).startswith(field.split("[")[0]) and field in error.detail
    assert len(error.detail) < MAX_MESSAGE_CHARS  # numbers with bounded precision
    assert error.validation_error()["loc"][:2] == ["body", error.loc[0]]


def test_raw_json_refusals_name_the_field():
    body = _encode(_dance())
    cases = {
        b'{"fps": 30, "width": Infinity, "keypoints": []}': "width",
        b'{"fps": 1e400, "keypoints": []}': "fps",  # past float64: the tokenizer refuses
        b'{"fps": 30, "keypoints": [[[1e400, 1]]]}': "keypoints[0]",
        b'{"fps": 30, "fps": 30, "keypoints": []}': "fps",  # given twice
        body[: len(body) // 2]: "keypoints",  # truncated inside the keypoints
        body + b" []": "body",  # content after the object
        b"[1, 2]": "body",
        b"\xff\xfe{}": "body",
        b"": "body",
    }
    for raw, field in cases.items():
        error = _refusal(raw)
        assert isinstance(error, QueryFieldError) and error.status == 422, raw[:40]
        assert field in error.detail, (raw[:40], error.detail)
        assert len(error.detail) < MAX_MESSAGE_CHARS


def test_messages_quote_neither_the_body_nor_long_names():
    secret = "s3cr3t-" + "x" * 5000
    error = _refusal(_encode({**_dance(), secret: 1}))
    assert error.status == 422 and len(error.detail) < MAX_MESSAGE_CHARS
    error = _refusal(b'{"fps": 30, "keypoints": [[[1, "' + secret.encode() + b'"]]]}')
    assert "s3cr3t" not in error.detail


@pytest.mark.parametrize("name", ["\ud7a4", "a\x1b[2J", "\U000e0001" * 40, "tab\there"])
def test_an_unknown_name_is_escaped_alike_in_the_message_and_its_loc(name):
    """Found by the property test: an unassigned character was escaped in the message
    but raw in ``loc``. Both now name it the same, printable way."""
    error = _refusal(_encode({**_dance(), name: 1}))
    assert error.status == 422 and error.detail.startswith("unknown field")
    assert field_name(error.loc) in error.detail and error.loc[0].isprintable(), error.loc
    assert len(error.detail) < MAX_MESSAGE_CHARS


def test_frames_past_the_cap_are_a_413_as_soon_as_they_are_read():
    frame = [[0.0, 0.0]] * NUM_JOINTS
    error = _refusal(_encode({"fps": 60, "keypoints": [frame] * (LIMITS.max_keypoint_frames + 1)}))
    assert error.status == 413 and f"more than {LIMITS.max_keypoint_frames} frames" in error.detail
    # The cap applies while the array is read: the rest of the body is never parsed (it
    # is not even JSON here).
    head = _encode({"keypoints": [frame] * (LIMITS.max_keypoint_frames + 1)})[:-2]
    error = _refusal(head + b", this is not JSON")
    assert error.status == 413
    # The longest accepted query is accepted.
    frames = LIMITS.max_keypoint_frames
    rng = np.random.default_rng(1)
    body = {"fps": 60, "keypoints": rng.uniform(10, 300, (frames, NUM_JOINTS, 2)).tolist()}
    features, description, _ = keypoint_query_features(_encode(body), LIMITS)
    assert features.shape == (600, POSE_FEATURES) and description["frames"] == 600


def test_a_valid_body_is_parsed_exactly():
    body = _dance(frames=90)
    body.update(width=640, height=480, top_k=3)
    query = parse_keypoint_body(_encode(body), LIMITS)
    assert np.array_equal(query.keypoints, np.asarray(body["keypoints"], np.float32))
    assert np.array_equal(query.scores, np.asarray(body["scores"], np.float32))
    assert (query.fps, query.width, query.height, query.top_k) == (30.0, 640, 480, 3)
    features, description, top_k = keypoint_query_features(_encode(body), LIMITS)
    assert features.shape == (30, POSE_FEATURES) and top_k == 3
    assert description["frame_size"] == "given"


# --- property-based: generated shapes and values (no Ray) ---------------------------------

_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2e6, 2e6),
    st.integers(-(2**70), 2**70),
)
_junk = st.one_of(st.none(), st.booleans(), st.text(max_size=4), _numbers)
_pair = st.one_of(st.lists(_numbers, min_size=2, max_size=2), st.lists(_junk, max_size=3), _junk)
_frame = st.one_of(
    st.lists(_pair, min_size=NUM_JOINTS, max_size=NUM_JOINTS), st.lists(_pair, max_size=19), _junk
)
_ragged_keypoints = st.one_of(st.lists(_frame, max_size=6), _junk)


@st.composite
def _array_bodies(draw) -> Dict[str, Any]:
    """Mostly well-shaped bodies: arrays of any float values, scores of any (or the
    wrong) length, and any scalars; sometimes an unknown field."""
    frames = draw(st.integers(1, 80))
    elements = st.floats(allow_nan=True, allow_infinity=True, width=64)
    special = draw(st.booleans())
    keypoints = draw(
        hnp.arrays(
            np.float64,
            (frames, NUM_JOINTS, 2),
            elements=elements if special else st.floats(-1e6, 1e6),
        )
    )
    body: Dict[str, Any] = {"keypoints": keypoints.tolist()}
    if draw(st.booleans()):
        score_frames = draw(st.sampled_from([frames, frames, frames - 1, frames + 1]))
        body["scores"] = draw(
            hnp.arrays(np.float64, (max(0, score_frames), NUM_JOINTS), elements=elements)
        ).tolist()
    body["fps"] = draw(st.one_of(st.floats(1, 60), _junk))
    for key in ("width", "height", "top_k"):
        if draw(st.booleans()):
            body[key] = draw(st.one_of(_numbers, _junk))
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(max_size=8))] = draw(_junk)
    return body


def _check_outcome(raw: bytes) -> None:
    """Accepted with finite features, or refused with a 413/422 that names its field:
    never another exception."""
    try:
        features, description, top_k = keypoint_query_features(raw, LIMITS)
    except QueryFieldError as error:
        assert error.status == 422
        if error.loc and error.loc[0] not in FIELDS:
            assert error.detail.startswith("unknown field"), error.detail
        assert field_name(error.loc) in error.detail, (error.loc, error.detail)
        assert len(error.detail) < MAX_MESSAGE_CHARS
    except QueryError as error:  # no person, too short or too long: not one field's fault
        assert error.status in (413, 422), error.detail
        assert len(error.detail) < MAX_MESSAGE_CHARS
    else:
        assert features.ndim == 2 and features.shape[1] == POSE_FEATURES
        assert np.isfinite(features).all()
        assert top_k is None or 1 <= top_k <= 100
        assert 1 <= description["width"] <= 2e6 and 1 <= description["height"] <= 2e6


_PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_PROPERTY_SETTINGS
@given(_array_bodies())
def test_generated_array_bodies_are_accepted_or_named(body):
    _check_outcome(json.dumps(body).encode())


@_PROPERTY_SETTINGS
@given(
    st.fixed_dictionaries(
        {"keypoints": _ragged_keypoints},
        optional={
            "fps": _junk,
            "scores": st.one_of(st.lists(st.lists(_junk, max_size=18), max_size=6), _junk),
            "width": _junk,
            "top_k": _junk,
        },
    )
)
def test_generated_ragged_bodies_are_refused_by_name(body):
    _check_outcome(json.dumps(body).encode())


@_PROPERTY_SETTINGS
@given(st.binary(max_size=300), st.integers(0, 4000))
def test_arbitrary_bytes_and_truncations_never_escape(noise, cut):
    _check_outcome(noise)
    valid = _encode(_dance(frames=40))
    _check_outcome(valid[:cut] + noise)


# --- memory: the largest accepted body, in a subprocess (no Ray) --------------------------

LARGEST_BODY_MULTIPLE = 1.0  # peak growth / body size at the limit (measured 0.33)
COMPACT_BODY_MULTIPLE = 4.0  # for the most compact body at the frame cap (measured 3.0)


def _write_body(path: str, limits: QueryLimits, long_numbers: bool) -> int:
    """The longest query (max_keypoint_frames) written frame by frame: with 18-digit
    numbers and whitespace up to exactly the body limit, or as compact as JSON allows."""
    frames = limits.max_keypoint_frames
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        f.write(b'{"fps": 60, "keypoints": [')
        for t in range(frames):
            if long_numbers:
                frame = json.dumps((rng.uniform(-999_999, 999_999, (NUM_JOINTS, 2))).tolist())
            else:
                frame = "[" + ",".join(["[0,0]"] * NUM_JOINTS) + "]"
            f.write(("," if t else "").encode() + frame.encode())
        f.write(b"]")
        if long_numbers:
            f.write(b', "scores": [')
            for t in range(frames):
                scores = json.dumps(rng.uniform(0.01, 1.0, NUM_JOINTS).tolist())
                f.write(("," if t else "").encode() + scores.encode())
            f.write(b"]")
            f.write(b" " * (limits.max_keypoint_body_bytes - f.tell() - 1))
        f.write(b"}")
    return os.path.getsize(path)


@pytest.mark.parametrize("long_numbers", [True, False], ids=["largest", "most-compact"])
def test_memory_of_the_longest_query_is_a_small_multiple_of_its_body(tmp_path, long_numbers):
    limits = QueryLimits()  # the service's defaults: 600 s at 60 fps
    path = str(tmp_path / "body.json")
    size = _write_body(path, limits, long_numbers)
    if long_numbers:
        assert size == limits.max_keypoint_body_bytes
    setup = f"""
from dvamn.serving.keypoint_json import keypoint_query_features
from dvamn.serving.queries import QueryLimits
body = open({path!r}, "rb").read()
"""
    measured = measure_action(
        setup, "features, description, _ = keypoint_query_features(body, QueryLimits())"
    )
    assert measured.error_type is None, measured.traceback
    body_mb = size / 2**20
    multiple = LARGEST_BODY_MULTIPLE if long_numbers else COMPACT_BODY_MULTIPLE
    assert measured.growth_mb <= multiple * body_mb, (
        f"peak grew {measured.growth_mb:.1f} MB for a {body_mb:.1f} MiB body"
    )


# --- the body reader: counts the bytes received (no Ray) ----------------------------------


def _streamed_request(chunks: List[bytes], content_length: "int | None"):
    from starlette.requests import Request

    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    consumed = []

    async def receive() -> Dict[str, Any]:
        chunk = chunks[len(consumed)]
        consumed.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": len(consumed) < len(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    return Request(scope, receive), consumed


@pytest.mark.parametrize("declared", [None, 100], ids=["chunked", "lying-content-length"])
def test_the_body_limit_counts_the_bytes_received(declared):
    from fastapi import HTTPException

    from dvamn.serving.app import _read_limited

    limit = 1 << 20
    chunks = [b"x" * 65536] * 64  # 4 MiB arrive, whatever the header says
    request, consumed = _streamed_request(chunks, declared)
    with pytest.raises(HTTPException) as refused:
        asyncio.run(_read_limited(request, limit))
    assert refused.value.status_code == 413
    assert len(consumed) == limit // 65536 + 1  # stopped at the first chunk past the limit

    request, consumed = _streamed_request(chunks, 4 << 20)  # an honest header: no reading
    with pytest.raises(HTTPException) as refused:
        asyncio.run(_read_limited(request, limit))
    assert refused.value.status_code == 413 and consumed == []


def test_the_service_limit_is_the_longest_query_capped_by_the_upload_limit():
    from dvamn.serving.app import ServeSettings

    settings = ServeSettings(checkpoint="c", catalog="k")
    frames = 600 * 60
    assert settings.max_keypoint_body_bytes == frames * KEYPOINT_FRAME_JSON_BYTES + 64 * 1024
    assert settings.max_keypoint_body_bytes < settings.max_upload_bytes / 3
    assert ServeSettings(checkpoint="c", catalog="k", max_upload_mb=1).max_keypoint_body_bytes == (
        2**20
    )
    roomy = ServeSettings(checkpoint="c", catalog="k", max_keypoint_fps=120, max_query_s=60)
    assert roomy.limits.max_keypoint_frames == 7200


# --- dvamn match against a hostile server (no Ray) ----------------------------------------

ESCAPES = [
    "\x1b[2J",  # clear the screen
    "\x1b[1;1H",  # move the cursor
    "\x1b]0;owned\x07",  # set the window title
    "\x1b]8;;http://evil.example/\x1b\\",  # a hyperlink
    "\x9b31m",  # C1 CSI
    "\x1bc",  # reset the terminal
    "\x08\x08",
    "\x00\x7f",
    "\u202e",  # right-to-left override
]
HOSTILE_TITLE = "Song" + "".join(ESCAPES) + " B"


def _answer(title: str) -> Dict[str, Any]:
    return {
        "matches": [{"track_id": "rock/b\x1b[31m", "title": title, "score": 0.5, "offset_s": 61.5}],
        "catalog": {"version": "abc\x1b[2J", "num_tracks": 1},
        "model": {"version": "m1\x07"},
        "timings_ms": {"model\x1b[5m": 3.0},
        "pose_source": "keypoints\x1b]0;x\x07",
    }


def _assert_printable(text: str) -> None:
    bad = [ch for ch in text if (ord(ch) < 32 and ch != "\n") or 0x7F <= ord(ch) <= 0x9F]
    assert not bad and "\u202e" not in text, repr(text)


def test_format_matches_strips_control_characters():
    from dvamn.serving.cli import format_matches, printable

    table = format_matches(_answer(HOSTILE_TITLE))
    _assert_printable(table)
    assert "Song B (rock/b)" in table and "[2J" not in table and "owned" not in table
    assert "evil.example" not in table  # the hyperlink's target goes with its sequence
    assert printable("Beyoncé — Déjà vu ♪ 夜に駆ける") == "Beyoncé — Déjà vu ♪ 夜に駆ける"
    assert printable("two\nlines\tand tabs\rend") == "two lines and tabs end"


class _HostileServer(BaseHTTPRequestHandler):
    status = 200
    payload: Dict[str, Any] = {}

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        data = json.dumps(self.payload).encode()
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status", [200, 422])
def test_dvamn_match_prints_no_control_character_a_server_sends(tmp_path, capsys, status):
    from dvamn.cli import main

    handler = type("Handler", (_HostileServer,), {"status": status})
    handler.payload = (
        _answer(HOSTILE_TITLE)
        if status == 200
        else {"detail": [{"loc": ["body", "fps\x1b[2J"], "msg": "bad\x1b]0;owned\x07 fps"}]}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    query = tmp_path / "query.json"
    query.write_text(json.dumps(_dance(frames=20)))
    try:
        code = main(["match", str(query), "--url", f"http://127.0.0.1:{server.server_port}"])
    finally:
        server.shutdown()
        server.server_close()
    out, err = capsys.readouterr()
    _assert_printable(out)
    _assert_printable(err)
    if status == 200:
        assert code == 0 and "Song B (rock/b)" in out
    else:
        assert code == 1 and "422" in err and "fps: bad fps" in err and "owned" not in err


# --- over real HTTP (the session's Serve application) -------------------------------------


def _post_json(url: str, body: Dict[str, Any], **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/match/keypoints", content=_encode(body), timeout=120, **kwargs)


def _raw_post(port: int, path: str, content_length: int, body: bytes) -> bytes:
    """A request written by hand, whose Content-Length may lie: the headers and the
    declared bytes, the answer's first bytes, then the rest of ``body``."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(head + body[:content_length])
        answer = b""
        while len(answer) < 64 and (part := conn.recv(4096)):
            answer += part
        try:  # what follows is not part of this request: the server may hang up on it
            conn.sendall(body[content_length:])
        except OSError:
            pass
    return answer


@pytest.mark.ray
def test_over_limit_bodies_get_413_before_parsing(service):  # noqa: F811
    url, limit = service.url, int(MAX_UPLOAD_MB * 2**20)
    not_json = b"x" * (limit + 1)  # parsed, this would be a 422
    response = httpx.post(
        f"{url}/match/keypoints", content=not_json, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and str(limit) in response.text

    def chunks():  # no Content-Length: only the counter can refuse it
        for _ in range(4):
            yield b"x" * (limit // 2)

    response = httpx.post(f"{url}/match/keypoints", content=chunks(), timeout=60)
    assert response.status_code == 413 and "exceeds" in response.text

    # A Content-Length that lies low: the service reads what it declares (not JSON here:
    # a 422), never more of what follows; and it keeps serving.
    port = int(url.rsplit(":", 1)[1])
    answer = _raw_post(port, "/match/keypoints", 50, b"x" * (2 * limit))
    assert answer.startswith(b"HTTP/1.1 422"), answer
    assert httpx.get(f"{url}/healthz").status_code == 200


@pytest.mark.ray
def test_hostile_values_over_http_are_422_naming_the_field(service, serving_assets):  # noqa: F811
    url = service.url
    dance = serving_assets.dances[0]
    cases = [
        (["keypoints", 5, 3, 0], 1e300, "keypoints"),
        (["keypoints", 5, 3, 1], 3e38, "keypoints"),
        (["scores", 2, 4], 1e39, "scores"),
        (["width"], float("inf"), "width"),
        (["height"], 0, "height"),
        (["fps"], 1e-300, "fps"),
        (["fps"], 240, "fps"),
    ]
    for path, value, field in cases:
        body = keypoint_body(serving_assets, dance)
        _set(path, value)(body)
        response = _post_json(url, body, headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, response.text)
        detail = response.json()["detail"]
        assert detail[0]["loc"][:2] == ["body", field], detail
        assert len(response.text) < 2 * MAX_MESSAGE_CHARS

    # top_k: the form field and the query string are checked alike.
    with open(serving_assets.query_video, "rb") as f:
        video = f.read()
    for params, data, where in (({}, {"top_k": "0"}, "body"), ({"top_k": 0}, {}, "query")):
        response = httpx.post(
            f"{url}/match", params=params, data=data, files={"video": ("d.mp4", video)}, timeout=60
        )
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == [where, "top_k"]
    response = httpx.post(
        f"{url}/match", data={"top_k": "3"}, files={"video": ("d.mp4", video)}, timeout=120
    )
    assert response.status_code == 200 and len(response.json()["matches"]) == 3


@pytest.fixture(scope="module")
def roomy_url(service):  # noqa: F811
    """One more ingress (route prefix /roomy) over the session's pose and matching
    deployments, with a 64 MB upload limit: the keypoint limit is then the derived one."""
    from ray import serve

    from dvamn.serving.app import MatchAPI, ServeSettings

    settings = ServeSettings.from_args({**service.app_args, "max_upload_mb": 64.0})
    pose = serve.get_deployment_handle("PoseEstimation", app_name="dvamn-test")
    matcher = serve.get_deployment_handle("MatchModel", app_name="dvamn-test")
    ingress = MatchAPI.options(ray_actor_options={"num_cpus": 0}).bind(pose, matcher, settings)
    serve.run(ingress, name="dvamn-test-roomy", route_prefix="/roomy")
    try:
        yield f"{service.url}/roomy", settings
    finally:
        serve.delete("dvamn-test-roomy")


@pytest.mark.ray
def test_the_derived_limit_and_a_small_query_answered_during_a_large_parse(
    roomy_url,
    serving_assets,  # noqa: F811
):
    url, settings = roomy_url
    limit = settings.max_keypoint_body_bytes
    assert limit == QueryLimits().max_keypoint_body_bytes < settings.max_upload_bytes
    port = int(url.split(":")[2].split("/")[0])
    answer = _raw_post(port, "/roomy/match/keypoints", limit + 1, b"")  # the header is enough
    assert answer.startswith(b"HTTP/1.1 413"), answer

    small = keypoint_body(serving_assets, serving_assets.dances[1], top_k=1)
    assert _post_json(url, small).status_code == 200  # warm
    # Large bodies within the limit: the longest query (36,000 frames at 60 fps), nobody
    # in it, so that each answer (422) comes right after its parse.
    frame = "[" + ",".join(["[0.5,0.5]"] * NUM_JOINTS) + "]"
    zeros = "[" + ",".join(["0"] * NUM_JOINTS) + "]"
    frames = settings.limits.max_keypoint_frames
    large = (
        f'{{"fps": 60, "keypoints": [{",".join([frame] * frames)}], '
        f'"scores": [{",".join([zeros] * frames)}]}}'
    ).encode()
    assert len(large) < limit
    done: Dict[str, float] = {}
    statuses: Dict[str, int] = {}

    def send(name: str, content: bytes) -> None:
        response = httpx.post(f"{url}/match/keypoints", content=content, timeout=300)
        done[name], statuses[name] = time.perf_counter(), response.status_code

    started = time.perf_counter()
    threads = [threading.Thread(target=send, args=(f"large{i}", large)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # the large bodies are uploaded (loopback) and being parsed
    send("small", _encode(small))
    for thread in threads:
        thread.join()
    assert statuses == {"large0": 422, "large1": 422, "large2": 422, "small": 200}
    large_done = sorted(done[f"large{i}"] - started for i in range(3))
    # A parse inside the event loop would hold the small query until the parses ended.
    # The large ones take turns (tests/serving/test_keypoint_parsing.py), so the small
    # one is answered while the second one (at least) is parsed; at once, on threads,
    # they held it until nearly the first one's end (the GIL), which CI saw as a tie.
    assert done["small"] - started < large_done[1], (
        f"small answered {done['small'] - started:.2f} s after the start, the large ones "
        f"at {', '.join(f'{t:.2f}' for t in large_done)} s"
    )
