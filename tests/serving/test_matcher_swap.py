"""A catalog swap while the matcher answers (no Ray): the replica builds the new version's
matcher in its watcher thread from the model that the old matcher is predicting with."""

import threading
import time

import numpy as np
import torch

from dvamn.constants import POSE_FEATURES
from dvamn.model import DVAMN, DVAMNConfig
from dvamn.serving.matcher import Matcher

from .test_matcher_onset import METADATA, SMALL, catalog


def test_building_a_matcher_for_a_new_catalog_does_not_disturb_queries_in_flight():
    # Before the fix, Module.to() in with_catalog emptied the GRUs' flat-weight references
    # under running forward passes: some queries failed within the first second.
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    served = Matcher(DVAMN(DVAMNConfig(**SMALL)), METADATA, catalog(rng), device="cpu")
    pose = rng.normal(size=(60, POSE_FEATURES)).astype(np.float32)
    expected = served.match(pose, top_k=3)["matches"]
    errors, answers, stop = [], [], threading.Event()

    def query() -> None:
        while not stop.is_set():
            try:
                answers.append(served.match(pose, top_k=3)["matches"])
            except Exception as exc:  # what a replica would have answered as a 500
                errors.append(repr(exc))

    thread = threading.Thread(target=query)
    thread.start()
    swaps = 0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            served.with_catalog(catalog(np.random.default_rng(swaps)))
            swaps += 1
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, f"{len(errors)} of {len(errors) + len(answers)} queries failed: {errors[:2]}"
    assert swaps >= 10 and len(answers) >= 10
    assert all(a == expected for a in answers)  # the served version answered throughout


def test_a_model_in_training_mode_is_put_in_eval_mode():
    model = DVAMN(DVAMNConfig(**SMALL)).train()
    Matcher(model, METADATA, catalog(np.random.default_rng(0)), device="cpu")
    assert not any(m.training for m in model.modules())
