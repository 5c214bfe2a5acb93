"""Serving fixtures, built once per session: synthetic dances with their music, a catalog of
that music, a tiny DVAMN trained on those dances, and a stand-in RTMO pose model.

The model is trained on the very queries the tests send (6 dances of 13 s, whole
sequences), so it has memorised them: the tests check that the service ranks the query's
own track first, not that DVAMN generalises (that is training's evaluation).
"""

import os
import secrets
import socket
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np
import pytest

from dvamn.constants import AUDIO_HOP_S

NUM_DANCES = 6
DANCE_S = 13.0
TRACK_S = 30.0
TRAIN_STEPS = 250

# The service under test: limits small enough to reach in a test.
MIN_QUERY_S = 4.0  # the tests' dances are 5 or 13 s; the service default is 12 s
MAX_UPLOAD_MB = 1.0

# The service's tests decide themselves whether a token is configured: one exported in the
# developer's shell would otherwise reach every replica (they inherit the environment of
# the process that starts Ray, which happens after this module is imported).
os.environ.pop("DVAMN_API_TOKEN", None)

# Session-wide objects, built once per process even where another directory's conftest
# imports these fixtures (pytest then holds one fixture definition per conftest).
_SESSION: Dict[str, Any] = {}


@dataclass
class ServingAssets:
    root: str
    catalog: str  # `dvamn catalog` output of the dances' music (logmel)
    checkpoint: str  # tiny DVAMN trained on the dances
    pose_model: str  # stand-in RTMO ONNX
    dances: List[Dict]  # make_video manifest entries (id, keypoints file, music offset_s)
    query_video: str  # a 5 s dance video (its music is not in the catalog)
    blank_video: str  # 5 s of a uniform picture: nobody to find


def _keypoints(root: str, entry: Dict) -> Dict[str, np.ndarray]:
    data = np.load(os.path.join(root, entry["keypoints"]))
    return {k: data[k] for k in ("keypoints", "scores", "fps", "width", "height")}


def _train_tiny_model(features: List[np.ndarray], targets: List[np.ndarray]):
    """A small DVAMN fitted to (pose (T, 68), audio (T // 2, 128)) pairs on random crops."""
    import torch

    from dvamn.model import DVAMN, DVAMNConfig, log_cosh

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many threads on a busy 2-core machine are 40x slower
    try:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        config = DVAMNConfig(
            widths=(32, 32, 32), gru_hidden=32, post_gru_widths=(32, 32), fc_width=32, dropout=0.0
        )
        model = DVAMN(config)
        frames = min(len(f) for f in features) // 2 * 2
        x = np.stack([f[:frames] for f in features])  # (B, T, 68)
        y = np.stack([t[: frames // 2] for t in targets])  # (B, A, 128)
        model.set_scaling(
            x.reshape(-1, x.shape[-1]).mean(0),
            x.reshape(-1, x.shape[-1]).std(0),
            y.reshape(-1, y.shape[-1]).mean(0),
            y.reshape(-1, y.shape[-1]).std(0),
        )
        x_t = torch.as_tensor(x)
        y_t = model.standardise_targets(torch.as_tensor(y))
        optimizer = torch.optim.NAdam(model.parameters(), lr=3e-3)
        crop = 60  # pose frames per step (6 s)
        for _ in range(TRAIN_STEPS):
            start = int(rng.integers(0, frames - crop + 1)) // 2 * 2
            loss = log_cosh(
                model(x_t[:, start : start + crop]), y_t[:, start // 2 :][:, : crop // 2]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        # As training does at its last epoch: weigh each embedding dimension by how well
        # the model predicts it (the per-dimension correlation, clipped to [0, 1]); the
        # service's default scoring uses these weights.
        with torch.no_grad():
            predicted = model.predict(x_t).numpy().reshape(-1, y.shape[-1])
        truth = y[:, : len(predicted) // len(y)].reshape(-1, y.shape[-1])
        correlation = np.array(
            [np.corrcoef(predicted[:, d], truth[:, d])[0, 1] for d in range(truth.shape[1])]
        )
        model.target_weight.copy_(torch.as_tensor(np.clip(np.nan_to_num(correlation), 0, 1)))
        return model
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def serving_assets(ray_local, tmp_path_factory) -> ServingAssets:
    if "assets" not in _SESSION:
        _SESSION["assets"] = _build_serving_assets(tmp_path_factory)
    return _SESSION["assets"]


def _build_serving_assets(tmp_path_factory) -> ServingAssets:
    from dvamn.model import save_checkpoint
    from dvamn.pipeline.catalog import CatalogConfig, build_catalog
    from dvamn.serving.catalog_store import load_catalog
    from dvamn.serving.queries import keypoint_features
    from dvamn.synth.clip import VideoSpec, make_video
    from dvamn.synth.video import encode_mp4
    from tests.support.standin_pose import export_rtmo_standin

    root = str(tmp_path_factory.mktemp("serving"))
    dances = [
        make_video(
            VideoSpec(
                f"dance{i}", seed=100 + i, seconds=DANCE_S, track_seconds=TRACK_S, write_music=True
            ),
            root,
        )
        for i in range(NUM_DANCES)
    ]
    query = make_video(VideoSpec("query", seed=999, seconds=5.0, track_seconds=5.0), root)
    blank_video = os.path.join(root, "blank.mp4")
    blank = np.full((120, 160, 3), 90, np.uint8)
    encode_mp4(blank_video, [(blank, k / 10) for k in range(50)], 160, 120, 10.0)

    catalog = os.path.join(root, "catalog-q7x")  # names no answer can hold by chance
    build_catalog(CatalogConfig(music=os.path.join(root, "music"), out=catalog, audio="logmel"))
    tracks = load_catalog(catalog)

    features, targets = [], []
    for entry in dances:
        k = _keypoints(root, entry)
        pose, _ = keypoint_features(
            k["keypoints"], float(k["fps"]), k["scores"], float(k["width"]), float(k["height"])
        )
        features.append(pose)
        track = tracks.track_embedding(tracks.track_ids.index(entry["id"]))
        offset = int(round(entry["music"]["offset_s"] / AUDIO_HOP_S))
        targets.append(track[offset:])
    model = _train_tiny_model(features, targets)
    checkpoint = os.path.join(root, "checkpoint-q7x")
    save_checkpoint(
        checkpoint,
        model,
        {
            "audio_embedding_kind": "logmel",
            "audio_weights": tracks.audio_weights,
            "pose_model": "keypoints",
            "epoch": TRAIN_STEPS,
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on the TorchScript exporter
        pose_model = export_rtmo_standin(os.path.join(root, "rtmo-standin-q7x.onnx"))
    return ServingAssets(
        root=root,
        catalog=catalog,
        checkpoint=checkpoint,
        pose_model=pose_model,
        dances=dances,
        query_video=os.path.join(root, query["video"]),
        blank_video=blank_video,
    )


def keypoint_body(assets: ServingAssets, entry: Dict, **extra) -> Dict:
    """The /match/keypoints JSON body of a dance's true keypoints."""
    k = _keypoints(assets.root, entry)
    body = {
        "keypoints": k["keypoints"].tolist(),
        "scores": k["scores"].tolist(),
        "fps": float(k["fps"]),
        "width": float(k["width"]),
        "height": float(k["height"]),
    }
    body.update(extra)
    return body


@dataclass
class Service:
    """The Ray Serve application under test, on loopback.

    ``url``: ``build_app`` with the tests' limits and no token (DVAMN_API_TOKEN unset).
    ``auth_url``: a second ingress (``MatchAPI`` only, under the route prefix ``/auth``)
    whose replica has ``DVAMN_API_TOKEN`` = ``token`` in its environment, as a deployment
    given the token would; it calls the first application's MatchModel, and its own
    PoseEstimation has no pose weights (``missing_pose_model`` does not exist), so that
    video queries there get the 503 of a service without them.
    """

    url: str
    auth_url: str
    token: str
    missing_pose_model: str
    app_args: Dict[str, Any]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def service(serving_assets):
    """Started once per session (``serve.run`` with FastAPI costs seconds); Serve's
    ``_local_testing_mode`` cannot run ``@serve.batch``, so this is the real
    ``serve.run`` over HTTP; replicas take ``num_cpus: 0`` so that they never wait for CPUs."""
    if "service" in _SESSION:
        yield _SESSION["service"]
        return
    from ray import serve

    from dvamn.serving.app import MatchAPI, PoseEstimation, ServeSettings, build_app
    from dvamn.serving.auth import API_TOKEN_ENV

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "checkpoint": serving_assets.checkpoint,
        "catalog": serving_assets.catalog,
        "pose": "rtmo",
        "pose_model": serving_assets.pose_model,
        "device": "cpu",
        "num_cpus": 0,
        "min_query_s": MIN_QUERY_S,
        "max_upload_mb": MAX_UPLOAD_MB,
        "default_top_k": 5,
        "batch_wait_timeout_s": 0.02,
    }
    token = "test-" + secrets.token_urlsafe(24)
    missing = os.path.join(serving_assets.root, "pose-weights-q7x", "rtmo-absent-q7x.onnx")
    try:
        serve.run(build_app(args), name="dvamn-test", route_prefix="/")
        settings = ServeSettings.from_args({**args, "pose_model": missing})
        no_pose = PoseEstimation.options(ray_actor_options={"num_cpus": 0}).bind(settings)
        matcher = serve.get_deployment_handle("MatchModel", app_name="dvamn-test")
        ingress = MatchAPI.options(
            ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": {API_TOKEN_ENV: token}}}
        ).bind(no_pose, matcher, settings)
        serve.run(ingress, name="dvamn-test-auth", route_prefix="/auth")
        _SESSION["service"] = Service(
            url=f"http://127.0.0.1:{port}",
            auth_url=f"http://127.0.0.1:{port}/auth",
            token=token,
            missing_pose_model=missing,
            app_args=args,
        )
        yield _SESSION["service"]
    finally:
        _SESSION.pop("service", None)
        serve.shutdown()
