"""The DVAMN network: shapes, what MFC and FC layers see, checkpoints."""

import json
import os

import numpy as np
import pytest
import torch

from dvamn.constants import num_audio_frames, num_pose_frames
from dvamn.model import (
    DVAMN,
    MFC,
    SELECT_BY_RECALL,
    DVAMNConfig,
    MFCBlock,
    best_checkpoint,
    load_model,
    log_cosh,
    rhythm_features,
    save_checkpoint,
)

SMALL = dict(widths=(8, 8, 16), gru_hidden=8, post_gru_widths=(16, 8), fc_width=8)


def small_model(layer: str = "mfc", seed: int = 0) -> DVAMN:
    torch.manual_seed(seed)
    return DVAMN(DVAMNConfig(layer=layer, dropout=0.0, **SMALL)).eval()


@pytest.mark.parametrize("frames", [2, 3, 17, 120, 121, 301])
def test_output_has_half_the_pose_frames_for_any_length(frames):
    out = small_model()(torch.randn(2, frames, 68))
    assert out.shape == (2, frames // 2, 128)


@pytest.mark.parametrize("duration_s", [1.0, 12.0, 12.35, 30.7])
def test_output_length_matches_the_audio_frame_count_of_the_same_duration(duration_s):
    out = small_model()(torch.randn(1, num_pose_frames(duration_s), 68))
    assert out.shape[1] == num_audio_frames(duration_s)


def test_paper_sized_model_builds_with_paper_widths():
    model = DVAMN(DVAMNConfig())
    assert model.config.widths == (128, 256, 512) and model.config.gru_hidden == 512
    assert model.gru1.hidden_size == 512 and model.gru1.bidirectional
    assert 20_000_000 < model.parameter_count() < 40_000_000


def test_bad_inputs_are_refused_with_the_expected_shape_in_the_message():
    model = small_model()
    with pytest.raises(ValueError, match=r"\(B, T, 68\)"):
        model(torch.randn(2, 10, 34))
    with pytest.raises(ValueError, match="at least 2 pose frames"):
        model(torch.randn(2, 1, 68))
    with pytest.raises(ValueError, match="layer"):
        DVAMNConfig(layer="conv")
    with pytest.raises(ValueError, match="odd"):
        DVAMNConfig(kernel_size=4)


def _frame_influence(layer: torch.nn.Module, t: int = 10) -> torch.Tensor:
    """Which output frames change when only input frame t changes: (T,) bool."""
    x = torch.randn(1, 4, 21)
    y = x.clone()
    y[0, :, t] += 5.0
    with torch.no_grad():
        return (layer(x) - layer(y)).abs().sum(1)[0] > 1e-6


def test_mfc_layer_mixes_neighbouring_frames_and_fc_does_not():
    torch.manual_seed(0)
    mfc = MFC(4, 6, kernel_size=7, relu=False)
    fc = MFC(4, 6, kernel_size=1, relu=False)
    changed = _frame_influence(mfc)
    assert changed[7:14].all() and not changed[:7].any() and not changed[14:].any()
    changed = _frame_influence(fc)
    assert changed[10] and changed.sum() == 1


def test_mfc_block_has_a_shortcut_from_its_first_layer():
    torch.manual_seed(0)
    block = MFCBlock(4, 6, kernel_size=3, dropout=0.0)
    x = torch.randn(1, 4, 9)
    with torch.no_grad():
        assert torch.allclose(block(x), block.first(x) + block.third(block.second(block.first(x))))


def test_whole_network_sees_neighbours_only_with_mfc():
    # Before the GRUs, an FC network keeps frames apart; MFC spreads a change to neighbours.
    pose = torch.randn(1, 40, 68)
    moved = pose.clone()
    moved[0, 20] += 3.0
    for layer, spreads in (("mfc", True), ("fc", False)):
        blocks = small_model(layer).pose_blocks
        with torch.no_grad():
            diff = (blocks(pose.transpose(1, 2)) - blocks(moved.transpose(1, 2))).abs().sum(1)[0]
        assert bool(diff[18] > 1e-6) == spreads and bool(diff[22] > 1e-6) == spreads
        assert diff[20] > 1e-6


def test_log_cosh_is_finite_for_large_errors_and_near_half_square_for_small():
    big = log_cosh(torch.tensor([300.0]), torch.tensor([0.0]))
    assert torch.isfinite(big) and abs(float(big) - (300 - np.log(2))) < 1e-3
    small = log_cosh(torch.tensor([0.01]), torch.tensor([0.0]))
    assert abs(float(small) - 0.5e-4) < 1e-7


def test_predict_answers_in_target_units():
    model = small_model()
    model.set_scaling(np.zeros(68), np.ones(68), np.full(128, 100.0), np.full(128, 10.0))
    pose = torch.randn(30, 68)
    with torch.no_grad():
        standardised = model(pose[None])[0]
    assert torch.allclose(model.predict(pose), standardised * 10.0 + 100.0, atol=1e-4)


def test_checkpoint_round_trip_keeps_weights_scaling_and_metadata(tmp_path):
    model = small_model("fc", seed=3)
    model.set_scaling(np.full(68, 0.5), np.full(68, 2.0), np.full(128, 127.0), np.full(128, 30.0))
    save_checkpoint(str(tmp_path / "ckpt"), model, {"epoch": 4, "provenance": {"pose_model": "x"}})
    loaded, meta = load_model(str(tmp_path / "ckpt"))
    assert loaded.config == model.config
    assert meta["epoch"] == 4 and meta["provenance"] == {"pose_model": "x"}
    assert meta["target_mean"][0] == 127.0
    pose = torch.randn(1, 24, 68)
    assert torch.equal(loaded.predict(pose), model.predict(pose))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "metadata.json", "model.pt"]


def test_an_onset_head_predicts_one_value_per_pose_frame_and_travels_with_the_checkpoint(
    tmp_path,
):
    torch.manual_seed(5)
    model = DVAMN(DVAMNConfig(dropout=0.0, onset_head=True, **SMALL)).eval()
    pose = torch.randn(2, 41, 68)
    embeddings, onsets = model.predict(pose, with_onset=True)
    assert embeddings.shape == (2, 20, 128) and onsets.shape == (2, 41)
    assert torch.equal(embeddings, model.predict(pose))  # the head changes no embedding
    save_checkpoint(str(tmp_path / "ckpt"), model)
    loaded, _ = load_model(str(tmp_path / "ckpt"))
    assert loaded.has_onset_head
    assert torch.equal(loaded.predict(pose, with_onset=True)[1], onsets)
    with pytest.raises(ValueError, match="no onset head"):
        small_model().predict(pose, with_onset=True)


def test_load_model_on_a_run_directory_picks_the_lowest_validation_loss(tmp_path):
    model = small_model()
    for epoch, val_loss in ((1, 3.0), (2, 1.0), (3, 2.0)):
        save_checkpoint(
            str(tmp_path / f"checkpoint_epoch_{epoch:04d}"),
            model,
            {"epoch": epoch, "metrics": {"val_loss": val_loss}},
        )
    assert best_checkpoint(str(tmp_path)).endswith("checkpoint_epoch_0002")
    _, meta = load_model(str(tmp_path))
    assert meta["epoch"] == 2
    with pytest.raises(FileNotFoundError, match="dvamn train"):
        load_model(str(tmp_path / "nothing-here"))


def test_a_retrieval_run_picks_the_highest_recall_ties_by_loss_as_its_metadata_says(tmp_path):
    model = small_model()
    # epoch 2 has the lowest loss, epochs 3 and 4 share the best R@1; 4 has the lower loss.
    for epoch, r1, val_loss in ((1, 0.1, 3.0), (2, 0.2, 0.5), (3, 0.4, 2.0), (4, 0.4, 1.5)):
        save_checkpoint(
            str(tmp_path / f"checkpoint_epoch_{epoch:04d}"),
            model,
            {
                "epoch": epoch,
                "metrics": {"val_loss": val_loss, "val_r_at_1": r1},
                "selection": SELECT_BY_RECALL,
            },
        )
    assert best_checkpoint(str(tmp_path)).endswith("checkpoint_epoch_0004")
    _, meta = load_model(str(tmp_path))  # what evaluation and the service load
    assert meta["epoch"] == 4 and meta["selection"]["metric"] == "val_r_at_1"
    # Asked explicitly, the loss rule still works.
    assert best_checkpoint(str(tmp_path), "val_loss", "min").endswith("checkpoint_epoch_0002")


def test_query_bank_travels_with_the_checkpoint_and_not_in_the_weights(tmp_path):
    model = small_model()
    bank = np.random.default_rng(0).normal(size=(5, 60, 128)).astype(np.float32)
    save_checkpoint(str(tmp_path / "ckpt"), model, {"epoch": 0}, query_bank=bank)
    loaded, _ = load_model(str(tmp_path / "ckpt"))
    assert loaded.query_bank.shape == (5, 60, 128)
    np.testing.assert_allclose(loaded.query_bank, bank, atol=2e-2)  # stored as float16
    assert not any("query_bank" in k for k in loaded.state_dict())
    with pytest.raises(ValueError, match="query bank"):
        save_checkpoint(str(tmp_path / "bad"), model, {}, query_bank=bank[:, :, :5])
    save_checkpoint(str(tmp_path / "none"), model, {"epoch": 0})
    assert load_model(str(tmp_path / "none"))[0].query_bank is None


def test_rhythm_features_expose_acceleration_speed_and_onsets():
    x = torch.zeros(1, 6, 68)
    x[0, 3, 34] = 2.0  # joint 0 moves right between frames 3 and 4 only
    r = rhythm_features(x)  # (1, 6, 52)
    assert r.shape == (1, 6, 52)
    accel, speed, onset = r[0, :, :34], r[0, :, 34:51], r[0, :, 51]
    assert accel[2, 0] == 2.0 and accel[3, 0] == -2.0  # motion starts, then stops
    assert speed[3, 0] == 2.0 and speed[:, 1:].abs().sum() == 0
    assert onset.argmax() == 3 and onset[3] > 0 and (onset >= 0).all()  # rectified rise
    model = DVAMN(DVAMNConfig(rhythm="accel", dropout=0.0, **SMALL))
    assert model.pose_blocks[0].first.conv.in_channels == 68 + 52
    assert model(torch.randn(2, 40, 68)).shape == (2, 20, 128)
    with pytest.raises(ValueError, match="rhythm"):
        DVAMNConfig(rhythm="beats")


def test_checkpoint_config_is_plain_json(tmp_path):
    save_checkpoint(str(tmp_path), small_model(), {})
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["widths"] == [8, 8, 16]


@pytest.fixture
def s3_bucket(monkeypatch):
    """A moto S3 server on loopback with one bucket; fsspec/s3fs pointed at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("FSSPEC_S3_ENDPOINT_URL", endpoint),
    ):
        monkeypatch.setenv(key, value)
    import fsspec.config
    import s3fs

    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("models")
    yield "s3://models"
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_checkpoint_round_trip_through_s3(s3_bucket):
    model = small_model(seed=5)
    run = f"{s3_bucket}/runs/a"
    save_checkpoint(
        f"{run}/checkpoint_epoch_0001", model, {"epoch": 0, "metrics": {"val_loss": 1.0}}
    )
    loaded, meta = load_model(run)
    assert meta["checkpoint_uri"] == f"{run}/checkpoint_epoch_0001"
    pose = torch.randn(1, 20, 68)
    assert torch.equal(loaded.predict(pose), model.predict(pose))


@pytest.mark.gpu
def test_model_runs_on_the_gpu_like_on_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = small_model(seed=9)
    pose = torch.randn(3, 41, 68)
    expected = model.predict(pose)
    got = model.cuda().predict(pose.cuda()).cpu()
    assert torch.allclose(expected, got, atol=1e-3)


def test_a_checkpoint_is_printed_with_the_epoch_its_name_counts():
    from dvamn.model import checkpoint_dir_name, checkpoint_label
    from dvamn.training.cli import format_metrics

    assert checkpoint_dir_name(8) == "checkpoint_epoch_0009"
    assert checkpoint_label({"epoch": 8}) == "epoch 9"
    by_scoring = {"r_at_1": 0.5, "r_at_5": 1.0, "r_at_10": 1.0, "median_rank": 1.5}
    metrics = {
        "checkpoint": "runs/mfc/checkpoint_epoch_0009",
        "layer": "mfc",
        "epoch": 8,
        "loss": 0.1,
        "rmse": 0.2,
        "mae": 0.3,
        "num_queries": 4,
        "pool_size": 4,
        "by_scoring": {"cosine-w": {**by_scoring, "offset_within_0_5s": 0.5}},
        "chance_r_at_1": 0.25,
        "chance_r_at_5": 1.0,
        "chance_r_at_10": 1.0,
        "chance_median_rank": 2.5,
    }
    first = format_metrics(metrics).splitlines()[0]
    assert first == "checkpoint: runs/mfc/checkpoint_epoch_0009 (mfc, epoch 9)"
