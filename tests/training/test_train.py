"""Ray Train: two CPU workers learn, checkpoint, resume, survive a dead worker; evaluate.

Each TorchTrainer run costs ~25 s of start-up, so one run is shared by several checks."""

import json
import os

import numpy as np
import pytest
import torch

from dvamn.cli import main as dvamn_main
from dvamn.model import DVAMNConfig, best_checkpoint, list_checkpoints, load_model
from dvamn.training.data import AugmentConfig, collect_features, read_features
from dvamn.training.evaluate import REPORTED_SCORINGS, evaluate_videos
from dvamn.training.train import (
    TrainConfig,
    contrastive_loss,
    epoch_line,
    summary_table,
    train,
)
from tests.support.console import ray_internal_lines
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


def test_evaluate_cli_writes_json_and_plots(first_run, features, tmp_path, capsys):
    _, out = first_run
    json_path, plots = tmp_path / "m.json", tmp_path / "plots"
    capsys.readouterr()
    code = dvamn_main(["evaluate", out, features, "--json", str(json_path), "--plots", str(plots)])
    assert code == 0
    # Its stage and its summary table on the console; none of Ray's lines.
    shown = capsys.readouterr()
    assert not ray_internal_lines(shown.out + shown.err), shown.out + shown.err
    assert f"== evaluate {out} on {features}" in shown.out and "done in" in shown.out
    assert "retrieval: " in shown.out and "chance" in shown.out
    metrics = json.loads(json_path.read_text())
    for key in EVALUATION_JSON_KEYS:
        assert key in metrics
    assert metrics["chance_r_at_1"] == pytest.approx(1 / metrics["pool_size"])
    # The service's default for this checkpoint (it has a query bank) heads the figures.
    assert metrics["scoring"] == "cosine-w+qb"
    assert set(metrics["by_scoring"]) == {"cosine-w+qb", *REPORTED_SCORINGS}
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
    argv += ["--fc-width", "16", "--no-onset-head"]  # the first run's network has none
    capsys.readouterr()
    assert dvamn_main(argv) == 0
    shown = capsys.readouterr()
    # Its stage, a line for the epoch Ray Train reported (from the driver, not a worker's
    # print), the summary table; none of Ray's lines.
    assert not ray_internal_lines(shown.out + shown.err), shown.out + shown.err
    assert "== train DVAMN (Ray Train)" in shown.out
    epoch_lines = [ln for ln in shown.out.splitlines() if ln.lstrip().startswith("epoch 3/3 ")]
    assert len(epoch_lines) == 1 and "R@1" in epoch_lines[0], shown.out
    assert "val loss" in shown.out.split("done in")[-1]  # the summary table, after the stage
    with open(os.path.join(out, "summary.json")) as f:
        history = json.load(f)["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert epoch_line(history[2], 3) in epoch_lines[0]  # rank 0's metrics, as checkpointed
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


# ---------------------------------------------------------------------------------------------
# The contrastive objective


def constructed_batch(seed=0, b=6, a=10, d=8, k=2):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randn(b, a, d, generator=g)
    negatives = targets[:, None] + 0.8 * torch.randn(b, k, a, d, generator=g)  # near misses
    return targets, negatives, torch.ones(b, k)


def test_contrastive_loss_is_lower_for_matching_predictions_and_trains_the_temperature():
    targets, negatives, valid = constructed_batch()
    noisy = targets + 0.3 * torch.randn(targets.shape, generator=torch.Generator().manual_seed(1))
    log_t = torch.nn.Parameter(torch.tensor(np.log(0.1), dtype=torch.float32))
    queries = noisy.clone().requires_grad_(True)
    matched = contrastive_loss(queries, targets, negatives, valid, log_t.exp())
    shuffled = contrastive_loss(noisy[[1, 2, 3, 4, 5, 0]], targets, negatives, valid, 0.1)
    assert matched.item() < 0.5 * shuffled.item()
    matched.backward()
    assert queries.grad is not None and queries.grad.abs().sum() > 0
    assert log_t.grad is not None and log_t.grad.abs() > 0  # learnable temperature
    # The hard negatives count: without them the task is easier, the loss lower.
    assert contrastive_loss(noisy, targets, None, None, 0.1) < matched
    # Invalid negatives are ignored, as if absent.
    masked = contrastive_loss(noisy, targets, negatives, torch.zeros_like(valid), 0.1)
    plain = contrastive_loss(noisy, targets, None, None, 0.1).item()
    assert masked.item() == pytest.approx(plain, rel=1e-4)


def _gather_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    targets, negatives, valid = constructed_batch(b=6)
    queries = targets + 0.5 * torch.randn(targets.shape, generator=torch.Generator().manual_seed(2))
    rows = slice(3 * rank, 3 * rank + 3)  # each worker holds half the batch
    local = queries[rows].clone().requires_grad_(True)
    loss = contrastive_loss(local, targets[rows], negatives[rows], valid[rows], 0.1)
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": local.grad}, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


def test_two_gloo_workers_compute_the_loss_and_gradient_of_the_whole_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gather_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    targets, negatives, valid = constructed_batch(b=6)
    queries = targets + 0.5 * torch.randn(targets.shape, generator=torch.Generator().manual_seed(2))
    whole = queries.clone().requires_grad_(True)
    loss = contrastive_loss(whole, targets, negatives, valid, 0.1)
    loss.backward()
    # DDP averages the workers' gradients: their mean loss and mean gradient are the batch's.
    assert (parts[0]["loss"] + parts[1]["loss"]).item() / 2 == pytest.approx(loss.item(), 1e-5)
    grad = torch.cat([parts[0]["grad"], parts[1]["grad"]]) / 2
    torch.testing.assert_close(grad, whole.grad, rtol=1e-4, atol=1e-6)


def test_a_contrastive_run_chooses_checkpoints_by_recall_and_stores_a_query_bank(
    ray_local, features, tmp_path
):
    config = tiny_config(
        features,
        str(tmp_path / "contrastive"),
        epochs=2,
        objective="both",
        model=DVAMNConfig(**{**TINY.to_dict(), "rhythm": "accel", "onset_head": True}),
        scoring="cosine-w+onset",
        augment=AugmentConfig(
            mirror=0.5, rotate_deg=5, scale=0.05, drop_frames=0.05, time_jitter=1
        ),
    )
    result = train(config)
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert all(0 < h["temperature"] < 1 for h in result.history)
    model, meta = load_model(str(tmp_path / "contrastive"))
    assert meta["selection"]["metric"] == "val_r_at_1"
    assert meta["checkpoint_uri"] == best_checkpoint(str(tmp_path / "contrastive"))
    best = max(result.history, key=lambda h: (h["val_r_at_1"], -h["val_loss"], h["epoch"]))
    assert meta["epoch"] == best["epoch"]
    assert model.query_bank is not None and model.query_bank.shape[1:] == (60, 128)
    assert model.has_onset_head  # and per-epoch retrieval used the rhythm term:
    assert meta["train_config"]["scoring"] == "cosine-w+onset"
    videos = collect_features(read_features(features))[0][:6]
    metrics = evaluate_videos(model, videos, scorings=("cosine-w+qb", "cosine-w+qb+onset"))
    assert metrics["distance"] == "cosine-w+qb" and 0 <= metrics["r_at_1"] <= 1
    with_term = metrics["by_scoring"]["cosine-w+qb+onset"]
    assert 0 <= with_term["r_at_1"] <= 1 and with_term["pool100_size"] == 6
