"""rtmlib's RTMO and YOLOX + RTMPose paths, run on stand-in ONNX models in batches."""

import urllib.error
import warnings

import numpy as np
import pytest

from dvamn.pose import FramePoses, PoseWeightsError, load_pose_estimator
from dvamn.pose.estimators import BatchedSession, resolve_onnx_device
from tests.support.standin_pose import export_rtmo_standin, person_frame

FIGURE_BOXES = [(260, 60, 380, 330), (100, 40, 220, 300), (400, 20, 520, 340)]


def _frames() -> np.ndarray:
    """Three frames with a figure in different places, then a blank one (nobody)."""
    frames = [person_frame(box=box) for box in FIGURE_BOXES]
    frames.append(np.full_like(frames[0], 200))
    return np.stack(frames)  # (4, 360, 640, 3)


def _check_people_on_figures(results: list) -> None:
    assert len(results) == 4
    for people, (x1, y1, x2, y2) in zip(results, FIGURE_BOXES):
        assert isinstance(people, FramePoses)
        assert len(people) == 1, "one person per frame after thresholds and NMS"
        assert people.keypoints.shape == (1, 17, 2) and people.keypoints.dtype == np.float32
        assert people.scores.shape == (1, 17) and people.boxes.shape == (1, 4)
        hip_mid = people.keypoints[0, 11:13].mean(axis=0)
        assert x1 - 10 < hip_mid[0] < x2 + 10 and y1 - 10 < hip_mid[1] < y2 + 10
        assert people.scores.min() > 0.5
    assert len(results[3]) == 0, "a blank frame has nobody"


def test_rtmo_finds_the_figure_in_each_frame_of_a_batch(standin_models):
    estimator = load_pose_estimator("rtmo", model=standin_models["rtmo"], device="cpu")
    assert estimator.name == "rtmo"
    assert estimator.weights.startswith(standin_models["rtmo"] + " sha256:")
    assert estimator._session.fixed_batch is None and estimator._session.chunk > 1
    _check_people_on_figures(estimator(_frames()))


def test_two_stage_finds_the_figure_in_each_frame_of_a_batch(standin_models):
    estimator = load_pose_estimator(
        "rtmpose",
        model=standin_models["rtmpose"],
        detector=standin_models["yolox"],
        device="cpu",
    )
    assert estimator.name == "yolox+rtmpose"
    assert "det=" in estimator.weights and "pose=" in estimator.weights
    _check_people_on_figures(estimator(_frames()))


@pytest.mark.parametrize("kind", ["rtmo", "rtmpose"])
def test_batched_results_equal_one_frame_at_a_time(standin_models, kind):
    paths = dict(model=standin_models[kind], detector=standin_models["yolox"])
    if kind == "rtmo":
        paths.pop("detector")
    batched = load_pose_estimator(kind, device="cpu", max_batch=3, **paths)(_frames())
    single = load_pose_estimator(kind, device="cpu", max_batch=1, **paths)(_frames())
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_model_with_batch_fixed_to_one_runs_frame_by_frame(standin_models, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_rtmo_standin(str(tmp_path / "rtmo-batch1.onnx"), dynamic_batch=False)
    estimator = load_pose_estimator("rtmo", model=path, device="cpu")
    assert estimator._session.fixed_batch == 1
    _check_people_on_figures(estimator(_frames()))


def test_session_that_ignores_the_batch_falls_back_to_single_images(standin_models):
    class AnswersForOne:
        """An ONNX session wrapper whose model answers for the first image only."""

        def __init__(self, session):
            self.session = session

        def get_inputs(self):
            return self.session.get_inputs()

        def get_outputs(self):
            return self.session.get_outputs()

        def run(self, names, feeds):
            name = self.session.get_inputs()[0].name
            return self.session.run(names, {name: feeds[name][:1]})

    estimator = load_pose_estimator("rtmo", model=standin_models["rtmo"], device="cpu")
    batched = BatchedSession(AnswersForOne(estimator._rtmo.session), max_batch=4)
    inputs = np.random.default_rng(0).uniform(0, 255, (3, 3, 640, 640)).astype(np.float32)
    outputs = batched.run(inputs)
    assert batched.chunk == 1 and len(outputs) == 3
    expected = estimator._rtmo.session.run(None, {"input": inputs[2:3]})
    np.testing.assert_allclose(outputs[2][0], expected[0], rtol=1e-5)


def test_file_uri_model_is_fetched_like_a_path(standin_models):
    estimator = load_pose_estimator("rtmo", model="file://" + standin_models["rtmo"], device="cpu")
    assert len(estimator(_frames()[:1])[0]) == 1


def test_missing_model_file_names_the_flags(tmp_path):
    with pytest.raises(PoseWeightsError, match="--pose-model") as info:
        load_pose_estimator("rtmo", model=str(tmp_path / "nope.onnx"), device="cpu")
    assert "nope.onnx" in str(info.value) and "--pose keypoints" in str(info.value)


def test_default_weights_offline_fail_before_any_work(monkeypatch, tmp_path):
    """No internet: rtmlib's download fails, and the error names the flags that fix it."""
    import rtmlib.tools.file

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty rtmlib cache
    monkeypatch.setattr(rtmlib.tools.file, "download_url_to_file", offline)
    for kind in ("rtmo", "rtmpose"):
        with pytest.raises(PoseWeightsError) as info:
            load_pose_estimator(kind, device="cpu")
        message = str(info.value)
        assert "--pose-model" in message and "--pose-detector" in message
        assert "--pose keypoints" in message and "https://" in message


def test_frames_must_be_uint8_bgr(standin_models):
    estimator = load_pose_estimator("rtmo", model=standin_models["rtmo"], device="cpu")
    with pytest.raises(ValueError, match="uint8 BGR"):
        estimator(np.zeros((1, 64, 64, 3), np.float32))
    assert estimator(np.zeros((0, 64, 64, 3), np.uint8)) == []


def _has_cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(_has_cuda_provider(), reason="this machine has the CUDA provider")
def test_cuda_without_the_provider_says_how_to_get_it():
    assert resolve_onnx_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match=r"dvamn\[gpu\]"):
        resolve_onnx_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda_provider(), reason="needs ONNX Runtime's CUDA provider")
def test_rtmo_on_cuda_matches_cpu(standin_models):
    gpu = load_pose_estimator("rtmo", model=standin_models["rtmo"], device="auto")
    assert gpu.device == "cuda"
    assert "CUDAExecutionProvider" in gpu._rtmo.session.get_providers()
    cpu = load_pose_estimator("rtmo", model=standin_models["rtmo"], device="cpu")
    for a, b in zip(gpu(_frames()), cpu(_frames())):
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=0.5)
