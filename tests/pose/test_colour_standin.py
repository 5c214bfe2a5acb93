"""The colour-matching RTMO stand-in finds the synthetic dancer's joints through rtmlib."""

import warnings

import numpy as np

from dvamn.pose import load_pose_estimator
from dvamn.synth.video import make_background, render_frame
from tests.support.standin_pose import TEMPLATE, export_rtmo_colour_standin

BODY_JOINTS = slice(5, 17)  # the face joints are drawn small; the body ones must be exact


def test_joints_found_by_colour_within_a_few_pixels(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_rtmo_colour_standin(str(tmp_path / "rtmo-colour.onnx"))
    estimator = load_pose_estimator("rtmo", model=path, device="cpu")
    rng = np.random.default_rng(0)
    frames, truths = [], []
    for width, height in [(640, 360), (480, 640), (1280, 720)]:
        scale = 0.4 * height  # pixels per body unit: the figure is ~0.8 of the height
        offset = np.array([width / 2 - 0.4 * scale + rng.uniform(-40, 40), 0.1 * height])
        keypoints = np.asarray(TEMPLATE) * np.array([0.8, 1.8]) * scale + offset
        frames.append(render_frame(make_background(rng, width, height), keypoints, True, scale))
        truths.append(keypoints)
    frames.append(make_background(rng, 640, 360))  # nobody
    results = [estimator(frame[None])[0] for frame in frames]
    for people, truth, frame in zip(results, truths, frames):
        assert len(people) == 1
        error = np.linalg.norm(people.keypoints[0, BODY_JOINTS] - truth[BODY_JOINTS], axis=1)
        assert np.median(error) < 2.0 and error.max() < 0.05 * frame.shape[0], error
    assert len(results[-1]) == 0
