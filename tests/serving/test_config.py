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


def _match_model_user_config(config: dict) -> dict:
    [match_model] = [
        d for d in config["applications"][0]["deployments"] if d["name"] == MatchModel.name
    ]
    return match_model["user_config"]


def test_serve_deploy_of_a_new_catalog_in_user_config_is_a_lightweight_update():
    """What docs/serving.md says of `serve deploy serve_config.yaml` with a new catalog:
    the application builds from the file's import path and args as Serve builds it;
    every deployment gets its health-check period; MatchModel's user_config there names
    the same keys as the one the code sets (the
    file's replaces the code's); editing its catalog leaves the application's code
    version alone (Serve reconfigures the running replicas), while editing the `catalog`
    arg changes it (Serve restarts them)."""
    import copy

    from ray._common.utils import import_attr
    from ray.serve._private.build_app import build_app as serve_build_app
    from ray.serve._private.deploy_utils import get_app_code_version
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(CONFIG.read_text())
    [application] = ServeDeploySchema.model_validate(config).applications
    built = serve_build_app(import_attr(application.import_path)(application.args), name="dvamn")
    [match_model] = [d for d in built.deployments if d.name == MatchModel.name]
    from_file = _match_model_user_config(config)
    assert set(from_file) == set(match_model.user_config) == {"catalog", "watch_catalog_s"}
    assert from_file["catalog"] == application.args["catalog"] == match_model.user_config["catalog"]
    # Every replica is checked as often as the file says (a dead one is found by a check).
    periods = {d.name: d._deployment_config.health_check_period_s for d in built.deployments}
    assert set(periods.values()) == {float(application.args["health_check_period_s"])}

    def code_version(edit) -> str:
        edited = copy.deepcopy(config)
        edit(edited)
        return get_app_code_version(ServeDeploySchema.model_validate(edited).applications[0])

    unchanged = code_version(lambda c: None)
    new_version = "catalogs/music/versions/20260102T000000-abc123"
    assert code_version(lambda c: _match_model_user_config(c).update(catalog=new_version)) == (
        unchanged
    )
    assert code_version(lambda c: c["applications"][0]["args"].update(catalog=new_version)) != (
        unchanged
    )
