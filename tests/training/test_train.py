"""Ray Train: two CPU workers learn, checkpoint, resume, survive a dead worker; evaluate.

Each TorchTrainer run costs ~25 s of start-up, so one run is shared by several checks."""

import json
import os

import numpy as np
import pytest

from dvamn.cli import main as dvamn_main
from dvamn.model import DVAMNConfig, list_checkpoints, load_model
from dvamn.training.evaluate import REPORTED_SCORINGS
from dvamn.training.train import TrainConfig, summary_table, train
from tests.support.contracts import EVALUATION_JSON_KEYS
from tests.training.features import write_features

TINY = DVAMNConfig(
    widths=(16, 16, 32), gru_hidden=16, post_gru_widths=(32, 16), fc_width=16, dropout=0.0
)


def tiny_config(features: str, out: str, **overrides) -> TrainConfig:
    values = dict(
        features=features,
        out=out,
        workers=2,
        epochs=2,
        batch_size=16,
        lr=3e-3,
        model=TINY,
        cpus_per_worker=0.5,  # leaves logical CPUs for Ray Data on the shared test Ray
        max_retrieval_queries=32,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return write_features(
        str(tmp_path_factory.mktemp("features")), num_videos=24, num_pose_frames=200
    )


@pytest.fixture(scope="module")
def first_run(ray_local, features, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "tiny")
    return train(tiny_config(features, out)), out


def test_two_workers_lower_the_loss_and_write_checkpoints(first_run):
    result, out = first_run
    assert [h["epoch"] for h in result.history] == [0, 1]
    first, last = result.history
    assert last["train_loss_standardised"] < first["train_loss_standardised"]
    assert last["val_loss"] < first["val_loss"]
    assert first["val_pool_size"] >= 2 and 0 <= last["val_r_at_1"] <= 1
    names = [os.path.basename(c) for c in list_checkpoints(out)]
    assert names == ["checkpoint_epoch_0001", "checkpoint_epoch_0002"]
    model, meta = load_model(out)  # the run directory resolves to its best checkpoint
    assert meta["provenance"]["audio_embedding_kind"] == "logmel"
    assert meta["train_config"]["workers"] == 2
    assert np.allclose(meta["target_mean"], model.target_mean.numpy())
    assert "val loss" in summary_table(result.history).splitlines()[0]
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["best_checkpoint"] == result.best_checkpoint


def test_evaluate_cli_writes_json_and_plots(first_run, features, tmp_path):
    _, out = first_run
    json_path, plots = tmp_path / "m.json", tmp_path / "plots"
    code = dvamn_main(["evaluate", out, features, "--json", str(json_path), "--plots", str(plots)])
    assert code == 0
    metrics = json.loads(json_path.read_text())
    for key in EVALUATION_JSON_KEYS:
        assert key in metrics
    assert metrics["chance_r_at_1"] == pytest.approx(1 / metrics["pool_size"])
    assert set(metrics["by_distance"]) == set(REPORTED_SCORINGS)
    assert sorted(os.listdir(plots)) == ["query_by_candidate.png", "training_curves.png"]


def test_a_new_run_refuses_an_existing_directory_and_resume_continues_at_the_next_epoch(
    first_run, features, capsys
):
    first, out = first_run
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(features, out))
    with pytest.raises(ValueError, match="network differs in .*gru_hidden"):
        train(tiny_config(features, out, resume=True, model=DVAMNConfig(gru_hidden=8)))
    # Through the command line, with the same network as the first run.
    argv = ["train", features, "--out", out, "--resume", "--epochs", "3", "--workers", "2"]
    argv += ["--batch-size", "16", "--lr", "3e-3", "--cpus-per-worker", "0.5", "--dropout", "0"]
    argv += ["--widths", "16,16,32", "--gru-hidden", "16", "--post-gru-widths", "32,16"]
    argv += ["--fc-width", "16"]
    assert dvamn_main(argv) == 0
    assert "R@1" in capsys.readouterr().out  # the summary table
    with open(os.path.join(out, "summary.json")) as f:
        history = json.load(f)["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[:2] == first.history  # the first two epochs came from the checkpoint
    assert history[2]["step"] > first.history[1]["step"]
    assert os.path.basename(list_checkpoints(out)[-1]) == "checkpoint_epoch_0003"


def test_a_worker_that_dies_is_replaced_and_the_run_finishes(ray_local, features, tmp_path):
    marker = tmp_path / "crashed"
    result = train(
        tiny_config(
            features,
            str(tmp_path / "crash"),
            epochs=2,
            crash_at_step=7,  # in the 2nd epoch: the 1st epoch's checkpoint exists
            crash_marker=str(marker),
        )
    )
    assert marker.exists()
    assert [h["epoch"] for h in result.history] == [0, 1]


def test_nan_loss_stops_the_run_naming_the_step(ray_local, tmp_path):
    features = write_features(
        str(tmp_path / "nan"), num_videos=12, num_pose_frames=140, nan_pose=True
    )
    with pytest.raises(FloatingPointError, match="global step 0"):
        train(tiny_config(features, str(tmp_path / "run"), workers=0, epochs=1))
