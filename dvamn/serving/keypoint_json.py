"""The ``POST /match/keypoints`` body: JSON bytes -> numpy arrays, one number at a time.

A keypoint query is mostly numbers: [T][17][2] coordinates and [T][17] scores. Parsed
into Python lists first (``json.loads``, pydantic's ``List[List[List[float]]]``), every
number becomes a Python object and every ``[x, y]`` pair a list: measured on a body of
36,000 frames (600 s at 60 fps), ``json.loads`` grew the peak memory by 167 MB for
37.6 MB of JSON and by 97 MB (19x) for 5 MB of compact JSON, pydantic by 252 MB for
either. Here ijson's C tokenizer (yajl) streams the events and each number goes straight
into a float32 buffer: the same bodies take about 10 MB and half the time, and nothing
bigger than one frame is ever built from the body.

Every refusal is a ``QueryFieldError`` (422 naming the field, e.g. ``keypoints[3]``) or,
past ``QueryLimits.max_keypoint_frames``, a 413 raised as the first frame too many is
read. The values themselves (finite, in range) are checked by ``keypoint_features``,
which the Python API shares.
"""

import array
import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import ijson
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dvamn.constants import NUM_JOINTS
from dvamn.serving.queries import (
    MAX_TOP_K,
    QueryError,
    QueryFieldError,
    QueryLimits,
    check_top_k,
    keypoint_features,
)

MAX_NAME_CHARS = 40  # of an unknown field's name quoted back in a message

_KINDS = {
    "start_map": "an object",
    "start_array": "an array",
    "string": "a string",
    "boolean": "a boolean",
    "null": "null",
    "number": "a number",
    "end_array": "the end of the array",
    "end_map": "the end of the object",
}


class KeypointQuery(BaseModel):
    """The ``POST /match/keypoints`` body as documented (the OpenAPI schema).

    Coordinates are pixels of the frame; a joint with score 0 is missing. Without
    width/height, the frame size is derived from the keypoints' extent (``min + max`` of
    x and of y: a dancer centred on average). Unknown fields (a ``url`` to fetch, say)
    are refused: the service only reads what is sent. ``parse_keypoint_body`` enforces
    this schema and ``QueryLimits`` (the bounds below are the defaults).
    """

    model_config = ConfigDict(extra="forbid")

    keypoints: List[List[List[float]]] = Field(
        ...,
        description=(
            f"[T][{NUM_JOINTS}][2] x, y pixel coordinates, COCO-17 joint order; each within "
            "+-1e6; T at most max_query_s x max_keypoint_fps (600 s x 60 fps)"
        ),
    )
    fps: float = Field(..., ge=1, le=60, description="frames per second of the keypoints")
    scores: Optional[List[List[float]]] = Field(
        None,
        description=f"[T][{NUM_JOINTS}] confidence per joint, >= 0 (0 = missing); default all 1",
    )
    width: Optional[float] = Field(None, ge=1, le=1e6, description="frame width in pixels")
    height: Optional[float] = Field(None, ge=1, le=1e6, description="frame height in pixels")
    top_k: Optional[int] = Field(None, ge=1, le=MAX_TOP_K, description="tracks to return")


FIELDS = tuple(KeypointQuery.model_fields)


@dataclass
class KeypointRequest:
    """A parsed body: arrays and scalars as sent (their values are checked later)."""

    keypoints: np.ndarray  # float32 (T, 17, 2)
    fps: Any
    scores: Optional[np.ndarray] = None  # float32 (T, 17)
    width: Any = None
    height: Any = None
    top_k: Optional[int] = None


def _name(key: str) -> str:
    """An unknown field's name for messages and ``loc`` alike: printable (control and
    unassigned characters escaped as Python writes them) and shortened."""
    shown = repr(key[: MAX_NAME_CHARS + 1])[1:-1]
    if len(key) <= MAX_NAME_CHARS and len(shown) <= MAX_NAME_CHARS:
        return shown
    return shown[:MAX_NAME_CHARS] + "..."


def _json_problem(exc: Exception) -> str:
    """yajl's description of the error, without the excerpt of the body it quotes."""
    text = exc.args[0] if exc.args else ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = str(text).strip().splitlines()
    problem = lines[0][:120] if lines else "malformed JSON"
    if "invalid char" in problem:  # most often NaN or Infinity, which JSON does not have
        problem += " (numbers must be finite: JSON has no NaN or Infinity)"
    return problem


def _too_many_frames(field: str, limits: QueryLimits) -> QueryError:
    return QueryError(
        413,
        f"{field} has more than {limits.max_keypoint_frames} frames: at most "
        f"max_query_s x max_keypoint_fps ({limits.max_query_s:g} s at "
        f"{limits.max_keypoint_fps:g} fps) is accepted",
    )


def _read_frames(
    first_event: str,
    next_event: Callable,
    limits: QueryLimits,
    field: str,
    shape: str,
    frame_kind: str,
    read_frame: Callable,
) -> Tuple[array.array, int]:
    """The frame loop of ``keypoints`` and ``scores``: an array of at most
    ``max_keypoint_frames`` frames, each an array that ``read_frame(next_event, t,
    append)`` reads after its opening, into float32 values (4 bytes a number, whatever
    the text's length). Returns (values, number of frames)."""
    if first_event != "start_array":
        raise QueryFieldError(
            (field,), f"{field} must be an array {shape} of numbers, got {_KINDS[first_event]}"
        )
    values = array.array("f")
    append = values.append
    frames = 0
    try:
        while True:
            event, _ = next_event()
            if event == "end_array":
                break
            if frames == limits.max_keypoint_frames:
                raise _too_many_frames(field, limits)
            if event != "start_array":
                raise QueryFieldError(
                    (field, frames),
                    f"{field}[{frames}] must be {frame_kind}, got {_KINDS[event]}",
                )
            read_frame(next_event, frames, append)
            frames += 1
    except ijson.JSONError as exc:
        raise QueryFieldError(
            (field, frames), f"{field}[{frames}]: not valid JSON: {_json_problem(exc)}"
        ) from None
    return values, frames


def _keypoint_frame(next_event: Callable, t: int, append: Callable) -> None:
    """One frame of keypoints after its ``[``: 17 [x, y] pairs and the closing ``]``."""
    for joint in range(NUM_JOINTS):
        opened, _ = next_event()
        if opened != "start_array":
            got = str(joint) if opened == "end_array" else _KINDS[opened]
            raise QueryFieldError(
                ("keypoints", t),
                f"keypoints[{t}] must hold {NUM_JOINTS} [x, y] pairs (COCO-17), got {got}",
            )
        kind_x, x = next_event()
        kind_y, y = next_event()
        closed, _ = next_event()
        if kind_x != "number" or kind_y != "number" or closed != "end_array":
            raise QueryFieldError(
                ("keypoints", t, joint), f"keypoints[{t}][{joint}] must be [x, y]: two numbers"
            )
        append(x)
        append(y)
    event, _ = next_event()
    if event != "end_array":
        raise QueryFieldError(
            ("keypoints", t),
            f"keypoints[{t}] must hold {NUM_JOINTS} [x, y] pairs (COCO-17), got more",
        )


def _score_frame(next_event: Callable, t: int, append: Callable) -> None:
    """One frame of scores after its ``[``: 17 numbers and the closing ``]``."""
    count = 0
    kind, value = next_event()
    while kind == "number" and count < NUM_JOINTS:
        append(value)
        count += 1
        kind, value = next_event()
    if kind != "end_array" or count != NUM_JOINTS:
        got = f"{count} numbers" if kind == "end_array" else "more"
        if kind not in ("end_array", "number"):
            got = f"{_KINDS[kind]} after {count} numbers"
        raise QueryFieldError(
            ("scores", t),
            f"scores[{t}] must hold {NUM_JOINTS} numbers (one per joint), got {got}",
        )


def _read_keypoints(next_event: Callable, limits: QueryLimits) -> np.ndarray:
    """[T][17][2] numbers -> float32 (T, 17, 2), streamed (the events after the key)."""
    event, _ = next_event()
    values, frames = _read_frames(
        event,
        next_event,
        limits,
        "keypoints",
        f"[T][{NUM_JOINTS}][2]",
        f"an array of {NUM_JOINTS} [x, y] pairs",
        _keypoint_frame,
    )
    if frames == 0:
        raise QueryFieldError(("keypoints",), f"keypoints is empty; expected [T][{NUM_JOINTS}][2]")
    return np.frombuffer(values, np.float32).reshape(frames, NUM_JOINTS, 2)


def _read_scores(next_event: Callable, limits: QueryLimits) -> Optional[np.ndarray]:
    """[T][17] numbers (or null) -> float32 (T, 17), streamed."""
    event, _ = next_event()
    if event == "null":
        return None
    values, frames = _read_frames(
        event,
        next_event,
        limits,
        "scores",
        f"[T][{NUM_JOINTS}]",
        f"an array of {NUM_JOINTS} numbers",
        _score_frame,
    )
    return np.frombuffer(values, np.float32).reshape(frames, NUM_JOINTS)


def _read_scalar(next_event: Callable, key: str) -> Any:
    """A number or null; a container is refused at its first event (never built)."""
    event, value = next_event()
    if event == "null":
        return None
    if event != "number":
        raise QueryFieldError((key,), f"{key} must be a number, got {_KINDS[event]}")
    return value


def parse_keypoint_body(body: bytes, limits: Optional[QueryLimits] = None) -> KeypointRequest:
    """The JSON body (``KeypointQuery``) -> arrays and scalars, checked for structure.

    Raises ``QueryFieldError`` (422, naming the field) for malformed JSON, unknown,
    repeated or missing fields, wrong shapes and types, an out-of-range ``top_k``; and a
    413 ``QueryError`` past ``limits.max_keypoint_frames`` frames.
    """
    limits = limits or QueryLimits()
    events = ijson.basic_parse(body, use_float=True)
    next_event = events.__next__
    found: Dict[str, Any] = {}
    key: Optional[str] = None
    try:
        event, _ = next_event()
        if event != "start_map":
            raise QueryFieldError(
                (), f"the body must be a JSON object with keypoints and fps, got {_KINDS[event]}"
            )
        while True:
            event, key = next_event()
            if event == "end_map":
                break
            if key not in FIELDS:
                raise QueryFieldError(
                    (_name(key),),
                    f"unknown field '{_name(key)}'; the fields are {', '.join(FIELDS)}",
                )
            if key in found:
                raise QueryFieldError((key,), f"{key} is given twice")
            if key == "keypoints":
                found[key] = _read_keypoints(next_event, limits)
            elif key == "scores":
                found[key] = _read_scores(next_event, limits)
            else:
                found[key] = _read_scalar(next_event, key)
        key = None
        for _ in events:  # runs the tokenizer to the end: trailing content is an error
            raise QueryFieldError((), "the body has content after the JSON object")
    except ijson.JSONError as exc:
        where = () if key is None else (_name(key),)
        field = "the body" if key is None else _name(key)
        raise QueryFieldError(where, f"{field}: not valid JSON: {_json_problem(exc)}") from None
    except StopIteration:  # the tokenizer reports a truncated body itself; a backstop
        raise QueryFieldError((), "the body ends before the JSON object does") from None
    for required in ("keypoints", "fps"):
        if found.get(required) is None:
            raise QueryFieldError((required,), f"{required} is required")
    keypoints, scores = found["keypoints"], found.get("scores")
    if scores is not None and len(scores) != len(keypoints):
        raise QueryFieldError(
            ("scores",), f"scores has {len(scores)} frames but keypoints has {len(keypoints)}"
        )
    top_k = found.get("top_k")
    if top_k is not None:
        top_k = check_top_k(top_k, default=1)
    return KeypointRequest(
        keypoints=keypoints,
        fps=found["fps"],
        scores=scores,
        width=found.get("width"),
        height=found.get("height"),
        top_k=top_k,
    )


def keypoint_query_features(
    body: bytes, limits: Optional[QueryLimits] = None
) -> Tuple[np.ndarray, Dict[str, Any], Optional[int]]:
    """A /match/keypoints body -> (pose features (T', 68) at POSE_FPS, description, top_k
    or None for the service's default). Plain, blocking: the service runs it in a thread."""
    limits = limits or QueryLimits()
    query = parse_keypoint_body(body, limits)
    features, description = keypoint_features(
        query.keypoints, query.fps, query.scores, query.width, query.height, limits
    )
    return features, description, query.top_k


# About 3,000 frames as clients write them: under 0.1 s to parse alone.
LARGE_KEYPOINT_BODY_BYTES = 1 << 20


class KeypointParsing:
    """``keypoint_query_features`` off the event loop, in a thread, so that a replica
    goes on answering its other requests meanwhile (a 600 s query takes about a second).

    Parsing holds the GIL, so bodies over ``large_bytes`` take turns, one at a time:
    three parsed at once added no throughput, only memory and contention for the GIL,
    and kept a small query waiting about 1.7 s, nearly until they had all ended. Smaller
    bodies never queue behind them. A turn lasts until its thread ends, even when the
    request is cancelled (a thread cannot be stopped).
    """

    def __init__(self, large_bytes: int = LARGE_KEYPOINT_BODY_BYTES, parse=None):
        self.large_bytes = large_bytes
        self._parse = parse or keypoint_query_features
        self._turn = asyncio.Lock()  # bound to the replica's loop at its first wait

    async def features(
        self, body: bytes, limits: QueryLimits
    ) -> Tuple[np.ndarray, Dict[str, Any], Optional[int]]:
        if len(body) <= self.large_bytes:
            return await asyncio.to_thread(self._parse, body, limits)
        async with self._turn:
            parse = asyncio.ensure_future(asyncio.to_thread(self._parse, body, limits))
            try:
                return await asyncio.shield(parse)
            except asyncio.CancelledError:
                await asyncio.gather(parse, return_exceptions=True)
                raise
