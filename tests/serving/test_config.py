"""serve_config.yaml: a valid Serve config whose application and deployments exist."""

from pathlib import Path

import pytest
import yaml

from dvamn.serving.app import MatchAPI, MatchModel, PoseEstimation, ServeSettings, build_app

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"


def test_serve_config_is_valid_and_names_our_application():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(config)
    [application] = schema.applications
    assert application.import_path == "dvamn.serving.app:build_app"
    names = {d.name for d in application.deployments}
    assert names == {MatchAPI.name, PoseEstimation.name, MatchModel.name}
    settings = ServeSettings.from_args(application.args)
    assert settings.min_query_s == 12.0 and settings.num_cpus == 1.0
    assert build_app(application.args) is not None  # builds without starting anything


def test_application_args_are_checked():
    with pytest.raises(ValueError, match="checkpoint and catalog"):
        ServeSettings.from_args({"pose": "rtmo"})
    with pytest.raises(ValueError, match="unknown application args"):
        ServeSettings.from_args({"checkpoint": "a", "catalog": "b", "replica": 2})
    settings = ServeSettings.from_args(
        {"checkpoint": "a", "catalog": "b", "replicas": "3", "pose_model": ""}
    )
    assert settings.replicas == 3 and settings.pose_model is None


def test_without_pose_weights_video_queries_get_503(tmp_path):
    settings = ServeSettings(
        checkpoint="unused", catalog="unused", pose_model=str(tmp_path / "missing.onnx")
    )
    pose = PoseEstimation.func_or_class(settings)  # the plain class inside the deployment
    answer = pose.features(b"...", "dance.mp4")
    assert answer["error"]["status"] == 503
    assert "--pose-model" in answer["error"]["detail"]


def test_video_limits_are_application_args():
    settings = ServeSettings.from_args(
        {
            "checkpoint": "a",
            "catalog": "b",
            "max_video_fps": "120",
            "max_video_frames": "5000",
            "video_timeout_s": "30",
        }
    )
    limits = settings.limits
    assert (limits.max_video_fps, limits.max_video_frames, limits.video_timeout_s) == (
        120.0,
        5000,
        30.0,
    )
    defaults = ServeSettings.from_args({"checkpoint": "a", "catalog": "b", "max_video_frames": ""})
    assert defaults.limits.max_video_frames is None
    assert defaults.limits.max_video_fps == 240.0 and defaults.limits.video_timeout_s == 120.0
