"""``dvamn serve`` (run the matching service) and ``dvamn match`` (a client for it)."""

import argparse
import json
import os
import re
import sys
import unicodedata
from typing import Any, Dict, List

from dvamn.pose.estimators import POSE_KINDS
from dvamn.pose.flags import add_pose_arguments
from dvamn.ray_setup import add_address_argument
from dvamn.search import DEFAULT_SEARCH, SEARCH_MODES, IndexSettings
from dvamn.serving.queries import (
    DEFAULT_MAX_QUEUED_REQUESTS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_REQUEST_TIMEOUT_S,
    QueryLimits,
)

DEFAULT_URL = "http://127.0.0.1:8000"
APP_NAME = "dvamn"  # the Serve application `dvamn serve` deploys
KEYPOINT_SUFFIXES = (".npz", ".json")
MAX_DETAIL_CHARS = 2000  # of a server's error message printed

# Terminal escape sequences, removed whole: CSI (ESC [ or 0x9b, parameters, a final
# byte), the string commands OSC / DCS / SOS / PM / APC up to their terminator (BEL or
# ST) or the end of the text, and the other two- or three-character ESC sequences.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$)"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?",
    re.DOTALL,
)
# Invisible characters that reorder the text around them (bidirectional controls).
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def printable(text: Any) -> str:
    """A server-provided string made safe for a terminal: escape sequences removed, tabs
    and line breaks turned into spaces, every other control character (C0, DEL, C1),
    line/paragraph separator and bidirectional control removed."""
    text = _ESCAPE_SEQUENCE.sub("", str(text))
    return "".join(
        " "
        if ch in "\t\n\r\v\f"
        else ""
        if ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Zl", "Zp")
        else ch
        for ch in text
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    serve_parser = subparsers.add_parser(
        "serve",
        help="serve music matching over HTTP with Ray Serve",
        description=(
            "Start the matching service: a web page at / (drop a dance video, hear the "
            "suggestions), POST /match (video upload), POST /match/keypoints (JSON), GET "
            "/tracks/ID/audio, GET /healthz, GET /catalog, OpenAPI at /docs. With "
            "DVAMN_API_TOKEN set in the environment, /match, /match/keypoints, /catalog and "
            "the track audio need that bearer token. "
            "For a cluster deployment use `serve deploy serve_config.yaml` instead (same "
            "application)."
        ),
    )
    serve_parser.add_argument(
        "--checkpoint", required=True, help="checkpoint dir or training run (best), local/s3"
    )
    serve_parser.add_argument(
        "--catalog",
        required=True,
        help="`dvamn catalog` output (its current version) or CATALOG/versions/ID, local/s3",
    )
    serve_parser.add_argument(
        "--watch-catalog",
        type=float,
        default=0.0,
        metavar="S",
        help="check the catalog's CURRENT version every S seconds and swap a new one in "
        "without a restart (answers name the version that scored them); default: off",
    )
    serve_parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default %(default)s; another one without DVAMN_API_TOKEN warns)",
    )
    serve_parser.add_argument(
        "--port", type=int, default=8000, help="HTTP port (default %(default)s)"
    )
    serve_parser.add_argument(
        "--replicas", type=int, default=1, help="matching replicas (default %(default)s)"
    )
    serve_parser.add_argument("--pose-replicas", type=int, default=1)
    add_pose_arguments(
        serve_parser, sources=POSE_KINDS, device_what="the pose model and the network"
    )
    limits = QueryLimits()
    serve_parser.add_argument(
        "--search",
        choices=SEARCH_MODES,
        default=DEFAULT_SEARCH,
        help="exact: every track at every offset; two-stage: a coarse segment index "
        "proposes candidates and only those are scored exactly (large catalogs; "
        "default %(default)s)",
    )
    serve_parser.add_argument(
        "--search-candidates",
        type=int,
        default=IndexSettings.candidates,
        help="tracks two-stage search re-ranks exactly (default %(default)s)",
    )
    serve_parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="split the catalog across this many shard deployments; the matching "
        "replicas then run the model and merge the shards' top-k (default %(default)s)",
    )
    serve_parser.add_argument(
        "--replicas-per-shard", type=int, default=1, help="replicas of each shard (default 1)"
    )
    serve_parser.add_argument(
        "--min-query-s",
        type=float,
        default=limits.min_query_s,
        help="shortest accepted query in seconds (default: %(default)g, one training window)",
    )
    serve_parser.add_argument(
        "--max-query-s",
        type=float,
        default=limits.max_query_s,
        help="longest accepted query in seconds (default: %(default)g)",
    )
    serve_parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help="larger uploads get 413 (default: %(default)g)",
    )
    serve_parser.add_argument(
        "--cpus-per-replica", type=float, default=1.0, help="Ray CPUs per replica (may be < 1)"
    )
    serve_parser.add_argument(
        "--max-queued-requests",
        type=int,
        default=DEFAULT_MAX_QUEUED_REQUESTS,
        metavar="N",
        help="requests waiting per deployment; past it clients get 503 with Retry-After "
        "(default: %(default)s)",
    )
    serve_parser.add_argument(
        "--request-timeout-s",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        metavar="S",
        help="HTTP requests unanswered after S seconds get 408 from Serve's proxy "
        "(default: %(default)g, as serve_config.yaml)",
    )
    add_address_argument(serve_parser)
    serve_parser.set_defaults(func=run_serve)

    match_parser = subparsers.add_parser(
        "match",
        help="ask a running service for the music that fits a video or keypoint file",
        description=(
            "Send a video (any format; its audio is ignored) or a keypoint file (.npz in the "
            "keypoint-file format, or .json with the /match/keypoints body) and print the "
            "best-matching tracks."
        ),
    )
    match_parser.add_argument("query", metavar="VIDEO_OR_KEYPOINTS")
    match_parser.add_argument("--url", default=DEFAULT_URL, help="service URL (%(default)s)")
    match_parser.add_argument("--top-k", type=int, default=10)
    match_parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
    match_parser.add_argument("--timeout-s", type=float, default=300.0)
    match_parser.add_argument(
        "--token",
        help="bearer token of a service that has DVAMN_API_TOKEN set (default: "
        "$DVAMN_API_TOKEN; prefer the variable, a flag shows in the process list)",
    )
    match_parser.set_defaults(func=run_match)


def run_serve(args: argparse.Namespace) -> int:
    import time

    from ray import serve

    from dvamn import console
    from dvamn.ray_setup import ensure_ray, stop_service
    from dvamn.serving.app import build_app

    app_args: Dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "catalog": args.catalog,
        "watch_catalog_s": args.watch_catalog,
        "pose": args.pose,
        "pose_model": args.pose_model,
        "pose_detector": args.pose_detector,
        "device": args.device,
        "min_query_s": args.min_query_s,
        "search": args.search,
        "search_candidates": args.search_candidates,
        "shards": args.shards,
        "replicas_per_shard": args.replicas_per_shard,
        "max_query_s": args.max_query_s,
        "max_upload_mb": args.max_upload_mb,
        "replicas": args.replicas,
        "pose_replicas": args.pose_replicas,
        "num_cpus": args.cpus_per_replica,
        "max_queued_requests": args.max_queued_requests,
    }
    from dvamn.serving.auth import TokenConfigError, api_token_from_env, exposure_warning

    try:
        # The local Ray started below passes this process's environment to the replicas.
        warning = exposure_warning(args.host, args.port, api_token_from_env())
    except TokenConfigError as exc:
        print(f"dvamn serve: {exc}", file=sys.stderr)
        return 2
    if warning:
        print(f"dvamn serve: warning: {warning}", file=sys.stderr)
    own_ray = ensure_ray(args.address)
    console.route_ray_logs()  # Serve's logger, given a console handler when ray.serve loads
    try:
        with console.stage("start the matching service (Ray Serve)"):
            serve.start(
                http_options={
                    "host": args.host,
                    "port": args.port,
                    "request_timeout_s": args.request_timeout_s,
                }
            )
            serve.run(build_app(app_args), name=APP_NAME, route_prefix="/")
    except Exception as exc:  # a replica that fails to start names its cause here
        print(f"dvamn serve: the application did not start: {exc}", file=sys.stderr)
        stop_service(APP_NAME, own_ray)
        return 1
    print(
        f"serving on http://{args.host}:{args.port}: the web page at /, the API at /docs; "
        "Ctrl-C stops"
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # On a cluster (--address) only this application goes: Serve and Ray stay up.
        stop_service(APP_NAME, own_ray)
    return 0


def keypoint_request(path: str, top_k: int) -> Dict[str, Any]:
    """The /match/keypoints body for a keypoint file (.npz format or a .json body)."""
    if path.endswith(".json"):
        with open(path) as f:
            body = json.load(f)
    else:
        from dvamn.pose import load_keypoint_file

        track = load_keypoint_file(path)
        body = {
            "keypoints": track.keypoints.tolist(),
            "scores": track.scores.tolist(),
            "fps": track.fps,
        }
        if track.width and track.height:
            body.update(width=track.width, height=track.height)
    body["top_k"] = top_k
    return body


def format_matches(answer: Dict[str, Any]) -> str:
    """A readable table of a /match answer. Every string in it comes from the server (a
    catalog title can hold anything): each goes through ``printable``."""
    lines = [f"{'rank':>4}  {'score':>10}  {'offset':>8}  track"]
    for rank, m in enumerate(answer["matches"], 1):
        minutes, seconds = divmod(float(m["offset_s"]), 60)
        title, track_id = printable(m["title"]), printable(m["track_id"])
        title = title if title == track_id else f"{title} ({track_id})"
        score = float(m["score"])
        lines.append(f"{rank:>4}  {score:>10.4f}  {int(minutes):>3}:{seconds:04.1f}  {title}")
    timings = ", ".join(
        f"{printable(k)} {float(v):.0f} ms" for k, v in answer.get("timings_ms", {}).items()
    )
    catalog = answer.get("catalog", {})
    lines.append(
        f"pose from {printable(answer.get('pose_source'))}; catalog "
        f"{printable(catalog.get('version'))} ({printable(catalog.get('num_tracks'))} tracks); "
        f"model {printable(answer.get('model', {}).get('version'))}"
    )
    lines.append(f"timings: {timings}")
    return "\n".join(lines)


def _detail(response: Any) -> str:
    """The error message of a refused request, printable and at most MAX_DETAIL_CHARS."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):  # not JSON, or not an object
        detail = response.text
    if isinstance(detail, list):  # FastAPI validation errors: name each field
        parts: List[str] = []
        for item in detail:
            item = item if isinstance(item, dict) else {"msg": item}
            where = ".".join(str(x) for x in item.get("loc", []) if x != "body")
            parts.append(f"{where}: {item.get('msg')}")
        detail = "; ".join(parts)
    text = printable(detail)
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "..."


def run_match(args: argparse.Namespace) -> int:
    import logging

    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # no log line per request
    from dvamn.serving.auth import API_TOKEN_ENV, bearer_headers

    url = args.url.rstrip("/")
    headers = bearer_headers(args.token or os.environ.get(API_TOKEN_ENV))
    if not os.path.isfile(args.query):
        print(f"dvamn match: {args.query} is not a file", file=sys.stderr)
        return 2
    try:
        if args.query.lower().endswith(KEYPOINT_SUFFIXES):
            response = httpx.post(
                f"{url}/match/keypoints",
                json=keypoint_request(args.query, args.top_k),
                headers=headers,
                timeout=args.timeout_s,
            )
        else:
            from tqdm.utils import CallbackIOWrapper

            from dvamn import console

            size = os.path.getsize(args.query)
            # The upload's progress on stderr (stdout keeps only the answer, for --json).
            with (
                open(args.query, "rb") as f,
                console.progress(total=size, desc="upload", unit="B", unit_scale=True) as bar,
            ):
                response = httpx.post(
                    f"{url}/match",
                    params={"top_k": args.top_k},
                    files={
                        "video": (os.path.basename(args.query), CallbackIOWrapper(bar.update, f))
                    },
                    headers=headers,
                    timeout=args.timeout_s,
                )
    except httpx.HTTPError as exc:
        print(f"dvamn match: cannot reach {url}: {printable(exc)}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"dvamn match: {response.status_code}: {_detail(response)}", file=sys.stderr)
        return 1
    try:
        answer = response.json()
        # --json: json.dumps escapes every control character (ensure_ascii).
        print(json.dumps(answer, indent=2) if args.json else format_matches(answer))
    except (ValueError, KeyError, TypeError, AttributeError):
        print(f"dvamn match: {url} did not answer with matches", file=sys.stderr)
        return 1
    return 0
