"""The Ray Serve application: a FastAPI ingress, a pose deployment and a matching deployment.

    client --HTTP--> MatchAPI (FastAPI ingress: limits, validation, JSON)
                        |-- PoseEstimation  (video bytes -> pose features; GPU when present)
                        '-- MatchModel      (@serve.batch: DVAMN + scorer over the catalog)

Routes: ``POST /match`` (multipart video upload, ``top_k``), ``POST /match/keypoints``
(JSON keypoints), ``GET /healthz``, ``GET /catalog``, OpenAPI at ``/docs`` (Swagger UI
served from the package ``fastapi-offline``'s files, no CDN). With ``DVAMN_API_TOKEN`` set
on the ingress replica, the matching routes and ``/catalog`` need that bearer token
(``dvamn.serving.auth``). Answers carry content versions of the model, the catalog and the
weights, never where they were loaded from.

Build it with ``build_app({"checkpoint": ..., "catalog": ...})``: the import path
``dvamn.serving.app:build_app`` is what ``serve_config.yaml`` names for ``serve run`` /
``serve deploy``, and what ``dvamn serve`` runs. The deployments wrap plain objects
(``Matcher``, ``VideoPose``, ``keypoint_features``) that are tested without Ray. Replicas
load everything from local files or ``s3://`` in their constructor; nothing is fetched
from URLs named in requests.
"""

import asyncio
import dataclasses
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import IO, Any, Dict, List, Optional

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from ray import serve

from dvamn.devices import wants_gpu
from dvamn.pose.flags import DEFAULT_POSE
from dvamn.ray_setup import cpu_threads, limit_threads
from dvamn.search import DEFAULT_SEARCH, IndexSettings
from dvamn.serving.audio_segments import (
    MAX_SEGMENT_S,
    SEGMENT_MEDIA_TYPE,
    TrackSource,
    check_segment,
    encode_segment,
)
from dvamn.serving.auth import API_TOKEN_ENV, api_token_from_env, token_matches
from dvamn.serving.catalog_store import weights_version
from dvamn.serving.keypoint_json import KeypointParsing, KeypointQuery
from dvamn.serving.pose_track import pose_track_json
from dvamn.serving.queries import (
    DEFAULT_HEALTH_CHECK_PERIOD_S,
    DEFAULT_MAX_QUEUED_REQUESTS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_RETRY_AFTER_S,
    DEFAULT_TOP_K,
    MAX_TOP_K,
    QueryError,
    QueryFieldError,
    QueryLimits,
    check_top_k,
)

log = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    """Everything the application needs; ``build_app`` takes these as its args (strings
    from ``serve_config.yaml`` are converted)."""

    checkpoint: str  # a checkpoint dir or a training run (its best checkpoint), local/s3
    catalog: str  # a `dvamn catalog` output (its current version) or CATALOG/versions/ID
    watch_catalog_s: float = 0.0  # > 0: follow the catalog's CURRENT, checked every S s
    pose: str = DEFAULT_POSE  # "rtmo" or "rtmpose"
    pose_model: Optional[str] = None  # ONNX path/URI; None = rtmlib's default URL
    pose_detector: Optional[str] = None
    device: str = "auto"  # for the pose model and DVAMN
    # How candidates are compared (dvamn.scoring.ALL_SCORINGS); None: default_scoring, which
    # adds QB-Norm for a checkpoint with a query bank.
    scoring: Optional[str] = None
    search: str = DEFAULT_SEARCH  # "exact" or "two-stage" (dvamn.search)
    search_candidates: int = IndexSettings.candidates  # tracks two-stage search re-ranks
    # The query limits (QueryLimits' defaults; its docstring says what each means).
    min_query_s: float = QueryLimits.min_query_s
    max_query_s: float = QueryLimits.max_query_s
    max_keypoint_fps: float = QueryLimits.max_keypoint_fps  # highest fps of a keypoint query
    max_video_fps: float = QueryLimits.max_video_fps  # nominal or decoded fps of an upload
    max_video_frames: Optional[int] = QueryLimits.max_video_frames  # decoded frames
    video_timeout_s: float = QueryLimits.video_timeout_s  # decoding + pose of one upload
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    default_top_k: int = DEFAULT_TOP_K
    replicas: Optional[int] = None  # matching replicas; None: Serve's default or the
    pose_replicas: Optional[int] = None  # autoscaling_config of serve_config.yaml
    num_cpus: float = 1.0  # per replica of the pose and matching deployments
    pose_num_gpus: Optional[float] = None  # None: 1 when the cluster (or torch) has a GPU
    match_num_gpus: float = 0.0
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.01
    # Requests waiting for a replica of each deployment, past which callers get 503 with
    # Retry-After instead of an unbounded queue (Serve's max_queued_requests).
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    retry_after_s: int = DEFAULT_RETRY_AFTER_S  # what such a 503 tells the client to wait
    # Serve checks each replica this often; a dead one is found, and replaced, by a check.
    health_check_period_s: float = DEFAULT_HEALTH_CHECK_PERIOD_S
    # Catalog shards (dvamn.serving.shards): > 1 splits the catalog across shard
    # deployments of replicas_per_shard replicas each (None: Serve's default or config).
    shards: int = 1
    replicas_per_shard: Optional[int] = None

    @classmethod
    def from_args(cls, args: Dict[str, Any]) -> "ServeSettings":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(args) - set(fields)
        if unknown:
            raise ValueError(
                f"unknown application args {sorted(unknown)}; known: {', '.join(fields)}"
            )
        values = {}
        for name, value in args.items():
            kind = str(fields[name].type)
            if value is None or value == "" and "Optional" in kind:
                values[name] = None
            elif "float" in kind:
                values[name] = float(value)
            elif "int" in kind:
                values[name] = int(value)
            else:
                values[name] = str(value)
        missing = [n for n in ("checkpoint", "catalog") if n not in values]
        if missing:
            raise ValueError(f"application args need {' and '.join(missing)} (URIs)")
        return cls(**values)

    @property
    def limits(self) -> QueryLimits:
        return QueryLimits(
            min_query_s=self.min_query_s,
            max_query_s=self.max_query_s,
            max_keypoint_fps=self.max_keypoint_fps,
            max_video_fps=self.max_video_fps,
            max_video_frames=self.max_video_frames,
            video_timeout_s=self.video_timeout_s,
        )

    @property
    def threads(self) -> int:
        """Math-library threads of a replica: its CPU share (at least 1), so that replicas
        on one machine do not oversubscribe its cores (which slows them many times)."""
        return cpu_threads(self.num_cpus)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_keypoint_body_bytes(self) -> int:
        """The /match/keypoints body limit: the longest keypoint query as JSON
        (``QueryLimits.max_keypoint_body_bytes``), never above ``max_upload_mb``."""
        return min(self.limits.max_keypoint_body_bytes, self.max_upload_bytes)


VIDEO_UNAVAILABLE = (
    "video queries are unavailable on this service: its pose model could not be loaded "
    "(the service's log says why; it needs --pose-model PATH, or pose_model in "
    "serve_config.yaml); POST /match/keypoints still answers"
)


def _error(exc: QueryError) -> Dict[str, Any]:
    """Errors cross deployment boundaries as values: the ingress maps them to HTTP."""
    return {"error": {"status": exc.status, "detail": exc.detail}}


def _raise_if_error(result: Dict[str, Any]) -> Dict[str, Any]:
    if "error" in result:
        raise HTTPException(result["error"]["status"], result["error"]["detail"])
    return result


@serve.deployment(name="PoseEstimation", max_ongoing_requests=4)
class PoseEstimation:
    """Video bytes -> pose features of the main dancer (``dvamn.serving.queries.VideoPose``);
    an AIST++ keypoints2d pickle's bytes -> its keypoints' features (``aist_pickle_features``)."""

    def __init__(self, settings: ServeSettings):
        from dvamn.pose import PoseWeightsError
        from dvamn.serving.queries import VideoPose

        self.video_pose: Optional[VideoPose] = None
        self.pose_version = ""
        self.limits = settings.limits
        try:
            self.video_pose = VideoPose(
                pose=settings.pose,
                pose_model=settings.pose_model,
                pose_detector=settings.pose_detector,
                device=settings.device,
                limits=settings.limits,
                num_threads=settings.threads,
            )
        except PoseWeightsError as exc:
            # Keypoint queries need no pose model: keep serving them. The operator reads
            # why in the log (the weights' source and the error); clients get a plain
            # message, which names no location.
            log.error(
                "video queries are unavailable: %s; restart the service with --pose-model "
                "PATH (or pose_model in serve_config.yaml)",
                exc,
            )
        else:
            self.pose_version = weights_version(getattr(self.video_pose.estimator, "weights", ""))

    def features(self, data: bytes, name: str) -> Dict[str, Any]:
        from dvamn.serving.queries import AIST_POSE_SOURCE, aist_pickle_features, is_aist_pickle

        try:
            if is_aist_pickle(data, name):  # keypoints: no pose model needed
                features, description = aist_pickle_features(data, name, self.limits)
                source, version = AIST_POSE_SOURCE, ""
            elif self.video_pose is None:
                return _error(QueryError(503, VIDEO_UNAVAILABLE))
            else:
                features, description = self.video_pose(data, name)
                source, version = self.video_pose.source, self.pose_version
        except QueryError as exc:
            return _error(exc)
        return {
            "features": features,
            "pose": description,
            "source": source,
            "pose_version": version,
        }


@serve.deployment(name="MatchModel", max_ongoing_requests=32)
class MatchModel:
    """DVAMN + scorer over the catalog (``dvamn.serving.matcher.Matcher``), batched.

    The catalog comes from the deployment's ``user_config`` (``build_app`` sets it from
    the ``catalog`` arg): ``{"catalog": URI, "watch_catalog_s": S}``. ``URI`` is a catalog
    root (its current version) or one version (``CATALOG/versions/ID``). A changed
    ``user_config`` (``serve deploy`` of an edited config) reaches the running replicas
    through ``reconfigure``, without a restart; with ``watch_catalog_s`` > 0 the replica
    also follows the root's ``CURRENT`` pointer, checked every S seconds. Either way the
    new version is loaded beside the old one, which keeps answering, and swapped in when
    ready; a batch finishes on the version it started on, and every answer names it.
    A version that fails to load is logged and the old one kept.
    """

    def __init__(self, settings: ServeSettings):
        from dvamn.model import load_model

        limit_threads(settings.num_cpus, uses_torch=True)
        self.settings = settings
        self.model, self.model_metadata = load_model(settings.checkpoint)
        self.matcher: Any = None  # set by reconfigure, which Serve calls before any request
        self.catalog_uri = ""
        self.watch_catalog_s = 0.0
        self._swap_lock = threading.Lock()
        self._watcher: Optional[threading.Thread] = None
        self._track_index: tuple = (None, {})  # (the matcher it indexes, track id -> row)
        self.match.set_max_batch_size(settings.max_batch_size)
        self.match.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    def reconfigure(self, user_config: Dict[str, Any]) -> None:
        config = dict(user_config or {})
        unknown = set(config) - {"catalog", "watch_catalog_s"}
        if unknown or not config.get("catalog"):
            raise ValueError(
                f"MatchModel's user_config needs 'catalog' (a URI) and may set "
                f"'watch_catalog_s'; got {sorted(config)}"
            )
        self.watch_catalog_s = float(config.get("watch_catalog_s") or 0.0)
        self.catalog_uri = str(config["catalog"])
        if self.matcher is None:
            self._load(self.catalog_uri, raise_errors=True)  # the first: no old one to keep
        else:
            self._load(self.catalog_uri)
        if self.watch_catalog_s > 0 and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="catalog-watch", daemon=True)
            self._watcher.start()

    def _load(self, uri: str, raise_errors: bool = False) -> bool:
        """Load the version ``uri`` names unless it is the one served; True on a swap."""
        from dvamn.catalog_format import resolve_catalog
        from dvamn.serving.matcher import Matcher

        with self._swap_lock:
            try:
                _, version_id, _ = resolve_catalog(uri)
                if self.matcher is not None and version_id == self.matcher.catalog.version_id:
                    return False
                started = time.perf_counter()
                catalog = self._read_catalog(uri)
                if self.matcher is None:
                    matcher = Matcher(
                        self.model,
                        self.model_metadata,
                        catalog,
                        device=self.settings.device,
                        scoring=self.settings.scoring,
                        search=self.settings.search,
                        index_settings=IndexSettings(candidates=self.settings.search_candidates),
                    )
                else:
                    matcher = self.matcher.with_catalog(catalog)
            except Exception:
                if raise_errors:
                    raise
                log.exception(
                    "catalog %s: the new version cannot be served; keeping %s",
                    uri,
                    self.matcher.catalog_info["version_id"],
                )
                return False
            old = self.matcher.catalog_info["version_id"] if self.matcher else None
            self.matcher = matcher  # one reference swap: batches hold the matcher they began on
            log.info(
                "catalog %s: now serving version %s (content %s, %d tracks; was %s), "
                "loaded in %.1f s",
                uri,
                matcher.catalog_info["version_id"],
                matcher.catalog_info["version"],
                matcher.catalog_info["num_tracks"],
                old,
                time.perf_counter() - started,
            )
            return True

    def _read_catalog(self, uri: str):
        """The catalog this replica serves: all of it (a shard replica: its part)."""
        from dvamn.serving.catalog_store import load_catalog
        from dvamn.serving.matcher import holds_embeddings

        return load_catalog(uri, embeddings=holds_embeddings(self.settings.search))

    def _watch(self) -> None:
        while True:
            time.sleep(max(0.1, self.watch_catalog_s))
            self._load(self.catalog_uri)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def match(self, poses: List[np.ndarray], top_ks: List[int]) -> List[Dict[str, Any]]:
        """Queries gathered by Serve: model calls share one forward pass per length."""
        matcher = self.matcher  # the whole batch is scored against one catalog version
        return matcher.match_many(poses, top_ks)

    def info(self) -> Dict[str, Any]:
        matcher = self.matcher
        return {"model": matcher.model_info, "catalog": matcher.catalog_info}

    def track_source(self, track_id: str) -> Optional[TrackSource]:
        """Where the catalog job found ``track_id``'s audio (None: not in the catalog)."""
        matcher = self.matcher  # the version served now (a swap replaces the index too)
        catalog = matcher.catalog
        if self._track_index[0] is not matcher:
            self._track_index = (matcher, {t: i for i, t in enumerate(catalog.track_ids)})
        i = self._track_index[1].get(track_id)
        if i is None:
            return None
        return TrackSource(
            track_id=track_id,
            uri=catalog.uris[i],
            duration_s=float(catalog.durations_s[i]),
            playable=bool(catalog.audio_playable[i]),
        )


app = FastAPI(
    title="DVAMN music matching",
    description=(
        "Send a silent dance video (or its 2D keypoints) and get the catalog tracks that "
        "fit it best, each with the offset in the track where the dance fits."
    ),
    version="1.0",
    docs_url=None,  # FastAPI's own pages load Swagger UI and ReDoc from a CDN: see below
    redoc_url=None,
)

# Swagger UI and ReDoc from the files that the package fastapi-offline ships, mounted on
# the service itself: the documentation pages load nothing from another host, so they
# work on offline and locked-down deployments.
DOCS_ASSETS_URL = "/docs-assets"
app.mount(
    DOCS_ASSETS_URL,
    StaticFiles(directory=str(resources.files("fastapi_offline") / "static")),
    name="docs-assets",
)


@app.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")  # the route prefix under Serve
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
    )


@app.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )


# The web page's own files, shipped in the package (no CDN, no build step).
PAGE_DIR = resources.files("dvamn.serving") / "page"
PAGE_ASSETS_URL = "/page-assets"
app.mount(PAGE_ASSETS_URL, StaticFiles(directory=str(PAGE_DIR)), name="page-assets")

_INCLUDE_POSE = (
    "also answer the pose track the match used (`pose`: the main dancer's joints at "
    "10 fps and the frames where the dancer was lost; docs/serving.md)"
)

# Optional bearer token (dvamn.serving.auth): read here, checked by MatchAPI._authorize,
# so that a missing token is a 401 with WWW-Authenticate, and Swagger UI offers "Authorize".
_bearer = HTTPBearer(
    auto_error=False,
    description=f"the token set in {API_TOKEN_ENV} on the service (when one is set)",
)

_UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video"],
                    "properties": {
                        "video": {"type": "string", "format": "binary"},
                        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
                    },
                }
            }
        },
    }
}


_KEYPOINTS_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": KeypointQuery.model_json_schema()}},
    }
}


async def _limited_chunks(request: Request, limit: int):
    """The request body's chunks, refusing (413) past ``limit`` bytes (declared or
    received) without receiving more."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body is {int(declared)} bytes; the limit is {limit}")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
        yield chunk


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body as bytes, refusing (413) past ``limit`` bytes."""
    return b"".join([chunk async for chunk in _limited_chunks(request, limit)])


def _form_top_k(query_value: Optional[int], form_value: Any, default: int) -> int:
    """``top_k`` of an upload: the query string's (already checked by FastAPI) or the form
    field's, checked the same way (a form ``top_k=0`` is a 422, as ``?top_k=0`` is)."""
    if form_value is None:
        return default if query_value is None else query_value
    if query_value is not None:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ["body", "top_k"],
                    "msg": "top_k is given both in the query string and in the form; send one",
                }
            ]
        )
    if not isinstance(form_value, str):
        raise RequestValidationError(
            [{"type": "value_error", "loc": ["body", "top_k"], "msg": "top_k must be text"}]
        )
    try:
        return check_top_k(form_value, default)
    except QueryFieldError as exc:
        raise RequestValidationError([exc.validation_error()]) from None


_SPOOL_MEMORY_BYTES = 1 << 20  # an upload's first MiB stays in memory, the rest on disk
_SPOOL_CHUNK_BYTES = 1 << 20


async def _spool_limited(request: Request, limit: int) -> tempfile.SpooledTemporaryFile:
    """The request body streamed into a spooled temporary file (memory up to 1 MiB, then
    disk), refusing (413) past ``limit`` bytes; the caller closes it."""
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY_BYTES)
    try:
        async for chunk in _limited_chunks(request, limit):
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def _replay(request: Request, spool: IO[bytes]) -> Request:
    """A request whose body is read from ``spool`` in chunks, so that Starlette's multipart
    parser (which spools file parts itself) never sees the body as one bytes object."""

    async def receive() -> Dict[str, Any]:
        chunk = spool.read(_SPOOL_CHUNK_BYTES)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunk)}

    return Request(request.scope, receive)


@serve.deployment(name="MatchAPI", max_ongoing_requests=64)
@serve.ingress(app)
class MatchAPI:
    """HTTP ingress: checks and parses requests, calls the pose and matching deployments."""

    def __init__(self, pose_handle: Any, match_handle: Any, settings: ServeSettings):
        self.pose = pose_handle
        self.matcher = match_handle
        self.settings = settings
        # Read once, on this replica; an unusable value stops the replica (never open).
        self._api_token = api_token_from_env()
        self._keypoint_parsing = KeypointParsing()
        log.info(
            "bearer-token authentication is %s",
            f"on ({API_TOKEN_ENV})" if self._api_token else f"off ({API_TOKEN_ENV} unset)",
        )

    def _authorize(self, credentials: Optional[HTTPAuthorizationCredentials]) -> None:
        """401 unless no token is configured or the request carries it (before any of
        the body is read)."""
        if self._api_token is None:
            return
        if credentials is None:
            raise HTTPException(
                401,
                "this service needs a bearer token: send the header "
                "'Authorization: Bearer <token>' (dvamn match --token)",
                headers={"WWW-Authenticate": 'Bearer realm="dvamn"'},
            )
        if not token_matches(credentials.credentials, self._api_token):
            raise HTTPException(
                401,
                "the bearer token is not this service's",
                headers={"WWW-Authenticate": 'Bearer realm="dvamn", error="invalid_token"'},
            )

    async def _retryable_503(self, response: Any, deployment: str) -> Any:
        """Await ``deployment``'s answer. Its full queue (Serve's ``max_queued_requests``)
        or the loss of the replica that held the request (Serve starts another) becomes a
        retryable 503 with ``Retry-After``, never a 500; its detail names the deployment
        that refused (a full ingress gets Serve's proxy's own 503 instead)."""
        from ray.exceptions import ActorUnavailableError, RayActorError
        from ray.serve.exceptions import (
            BackPressureError,
            DeploymentUnavailableError,
            ReplicaUnavailableError,
        )

        try:
            return await response
        except BackPressureError:
            reason = f"{deployment} is at capacity (its request queue is full)"
        except (
            RayActorError,
            ActorUnavailableError,
            ReplicaUnavailableError,
            DeploymentUnavailableError,
        ) as exc:
            log.warning("a replica was lost while answering: %s", type(exc).__name__)
            reason = (
                f"the {deployment} replica answering this request was lost and is being replaced"
            )
        raise HTTPException(
            503,
            f"{reason}; retry after {self.settings.retry_after_s} s",
            headers={"Retry-After": str(self.settings.retry_after_s)},
        )

    async def _service_info(self) -> Dict[str, Any]:
        """The model and catalog a matching replica serves (asked each time: the catalog
        version changes while the service runs)."""
        return await self._retryable_503(self.matcher.info.remote(), MatchModel.name)

    async def _answer(
        self,
        features: np.ndarray,
        top_k: int,
        source: str,
        timings: Dict[str, float],
        pose_version: str = "",
        query: Optional[Dict[str, Any]] = None,
        include_pose: bool = False,
    ) -> Dict[str, Any]:
        query = dict(query or {})
        pose_track = query.pop("pose_track", None)
        started = time.perf_counter()
        result = await self._retryable_503(
            self.matcher.match.remote(features, top_k), MatchModel.name
        )
        timings["match_call"] = round(1000 * (time.perf_counter() - started), 2)
        info = await self._service_info()
        return {
            "matches": result["matches"],
            "model": info["model"],
            "catalog": result["catalog"],  # the version that scored this query
            "timings_ms": {**timings, **result["timings_ms"]},
            "batch_size": result["batch_size"],
            "pose_source": source,
            "pose_version": pose_version,  # the pose model files' SHA-256 ("" for keypoints)
            "query": query,
            **(
                {"pose": pose_track_json(pose_track, query["width"], query["height"])}
                if include_pose and pose_track is not None
                else {}
            ),
        }

    @app.get("/healthz")
    async def healthz(self) -> Dict[str, Any]:
        info = await self._service_info()
        return {
            "status": "ok",
            "model_version": info["model"]["version"],
            "catalog_version": info["catalog"]["version"],
            "num_tracks": info["catalog"]["num_tracks"],
        }

    @app.get("/catalog")
    async def catalog(
        self, credentials: Optional[HTTPAuthorizationCredentials] = Security(_bearer)
    ) -> Dict[str, Any]:
        """Catalog size, embedding kind and version."""
        self._authorize(credentials)
        return (await self._service_info())["catalog"]

    @app.post("/match", openapi_extra=_UPLOAD_OPENAPI)
    async def match_video(
        self,
        request: Request,
        top_k: Optional[int] = Query(None, ge=1, le=MAX_TOP_K),
        include_pose: bool = Query(False, description=_INCLUDE_POSE),
        credentials: Optional[HTTPAuthorizationCredentials] = Security(_bearer),
    ) -> Dict[str, Any]:
        """Multipart upload ``video`` (any format PyAV decodes; its audio is ignored), or an
        AIST++ ``keypoints2d`` ``.pkl`` (its camera c01; read without running anything in it)."""
        self._authorize(credentials)
        started = time.perf_counter()
        # The upload is held in memory once: the body goes to a spooled file, the multipart
        # parser spools the video part again, and only its bytes go on to the pose replica.
        body = await _spool_limited(request, self.settings.max_upload_bytes)
        try:
            form = await _replay(request, body).form()
        except Exception as exc:  # Starlette raises several types for broken multipart
            body.close()
            # Described, not quoted: Starlette's text can carry parts of the body.
            raise HTTPException(
                422,
                "the body is not multipart/form-data with a 'video' file: its Content-Type "
                "boundary, part headers or parts could not be parsed",
            ) from exc
        body.close()
        try:
            upload = form.get("video")
            if upload is None or isinstance(upload, str):
                raise HTTPException(422, "multipart field 'video' (a file) is missing")
            top_k = _form_top_k(top_k, form.get("top_k"), self.settings.default_top_k)
            data = await upload.read()
        finally:
            await form.close()
        name = upload.filename or "upload"
        timings = {"receive": round(1000 * (time.perf_counter() - started), 2)}
        started = time.perf_counter()
        pose = _raise_if_error(
            await self._retryable_503(self.pose.features.remote(data, name), PoseEstimation.name)
        )
        timings["pose_call"] = round(1000 * (time.perf_counter() - started), 2)
        timings["decode_pose"] = pose["pose"].pop("decode_pose_ms")
        return await self._answer(
            pose["features"],
            top_k,
            pose["source"],
            timings,
            pose_version=pose["pose_version"],
            query=pose["pose"],
            include_pose=include_pose,
        )

    @app.post("/match/keypoints", openapi_extra=_KEYPOINTS_OPENAPI)
    async def match_keypoints(
        self,
        request: Request,
        include_pose: bool = Query(False, description=_INCLUDE_POSE),
        credentials: Optional[HTTPAuthorizationCredentials] = Security(_bearer),
    ) -> Dict[str, Any]:
        """2D keypoints [T][17][2] in pixels at ``fps`` (COCO-17), JSON (``KeypointQuery``)."""
        self._authorize(credentials)
        started = time.perf_counter()
        # Read here rather than by FastAPI, so that this endpoint's own limit (the longest
        # query as JSON) applies to the bytes received, before any parsing.
        body = await _read_limited(request, self.settings.max_keypoint_body_bytes)
        try:
            # Parsing, checks and features in a thread; large bodies take turns.
            features, description, top_k = await self._keypoint_parsing.features(
                body, self.settings.limits
            )
        except QueryFieldError as exc:
            raise RequestValidationError([exc.validation_error()]) from None
        except QueryError as exc:
            raise HTTPException(exc.status, exc.detail) from None
        finally:
            del body
        timings = {"features": round(1000 * (time.perf_counter() - started), 2)}
        top_k = top_k or self.settings.default_top_k
        return await self._answer(
            features,
            top_k,
            "keypoints",
            timings,
            query=description,
            include_pose=include_pose,
        )

    @app.get(
        "/tracks/{track_id:path}/audio",
        response_class=Response,
        responses={200: {"content": {SEGMENT_MEDIA_TYPE: {}}}, 404: {}},
    )
    async def track_audio(
        self,
        track_id: str,
        start: float = Query(0.0, ge=0, description="seconds into the track"),
        duration: Optional[float] = Query(
            None, gt=0, le=MAX_SEGMENT_S, description="seconds (default 30)"
        ),
        credentials: Optional[HTTPAuthorizationCredentials] = Security(_bearer),
    ) -> Response:
        """A segment of a catalog track as MP3 (stereo, 44.1 kHz, 128 kbit/s), read from
        the source the catalog job recorded: 404 when the track is not in the catalog or
        its audio is not reachable by the service (the message says which)."""
        self._authorize(credentials)
        track = await self.matcher.track_source.remote(track_id)
        if track is None:
            raise HTTPException(404, f"track {track_id[:200]!r} is not in the catalog")
        try:
            start, duration = check_segment(start, duration, track.duration_s)
            data = await asyncio.to_thread(encode_segment, track, start, duration)
        except QueryError as exc:
            raise HTTPException(exc.status, exc.detail) from None
        return Response(
            data,
            media_type=SEGMENT_MEDIA_TYPE,
            headers={"Cache-Control": "private, max-age=3600"},
        )

    @app.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        """The web page (dvamn/serving/page/): drop a dance video, hear the suggestions."""
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html")


def build_app(args: Dict[str, Any]):
    """The application for ``serve run`` / ``serve deploy`` / ``dvamn serve``.

    ``args``: ServeSettings fields (``checkpoint`` and ``catalog`` required). Deployment
    options in ``serve_config.yaml`` (replicas, autoscaling, resources) override the ones
    set here.
    """
    settings = ServeSettings.from_args(dict(args))
    pose_gpus = settings.pose_num_gpus
    if pose_gpus is None:
        pose_gpus = 1.0 if wants_gpu(settings.device) else 0.0
    pose_options: Dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": pose_gpus}
    }
    match_options: Dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": settings.match_num_gpus}
    }
    # Only a fixed count given here; otherwise an autoscaling_config may apply.
    if settings.pose_replicas is not None:
        pose_options["num_replicas"] = settings.pose_replicas
    if settings.replicas is not None:
        match_options["num_replicas"] = settings.replicas
    from ray.serve.config import BackpressureConfig

    # A full queue answers 503 with Retry-After: Serve's proxy does it for the ingress,
    # MatchAPI._retryable_503 for the deployments behind it.
    backpressure = {
        "max_queued_requests": settings.max_queued_requests,
        "backpressure_config": BackpressureConfig(
            status_code=503, retry_after_s=settings.retry_after_s
        ),
    }
    pose_options.update(backpressure)
    match_options.update(backpressure)
    # A killed replica is replaced within about this period plus its start-up.
    checks = {"health_check_period_s": settings.health_check_period_s}
    pose_options.update(checks)
    match_options.update(checks)
    # The catalog travels in MatchModel's user_config, not in the replicas' constructor
    # arguments: a new catalog is then a reconfigure of the running replicas, not a restart.
    match_options["user_config"] = {
        "catalog": settings.catalog,
        "watch_catalog_s": settings.watch_catalog_s,
    }
    replica_settings = dataclasses.replace(settings, catalog="", watch_catalog_s=0.0)
    pose = PoseEstimation.options(**pose_options).bind(replica_settings)
    if settings.shards < 1:
        raise ValueError(f"application arg shards must be >= 1, got {settings.shards}")
    if settings.shards > 1:
        from dvamn.serving.shards import bind_sharded

        matcher = bind_sharded(settings, replica_settings, match_options)
    else:
        matcher = MatchModel.options(**match_options).bind(replica_settings)
    return MatchAPI.options(ray_actor_options={"num_cpus": 0}, **checks).bind(
        pose, matcher, replica_settings
    )
