"""A checkpoint counts only when complete: a run holding one cut short by a crash (no
metadata, or a truncated model.pt) is still served from its complete checkpoints."""

import json
import logging
import os

import pytest

from dvamn.model import (
    best_checkpoint,
    checkpoint_problem,
    list_checkpoints,
    load_model,
    save_checkpoint,
)
from tests.test_model import small_model


def _save(run, epoch: int, val_loss: float) -> str:
    path = str(run / f"checkpoint_epoch_{epoch:04d}")
    save_checkpoint(path, small_model(), {"epoch": epoch, "metrics": {"val_loss": val_loss}})
    return path


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)


def test_the_metadata_names_every_file_with_its_size(tmp_path):
    path = _save(tmp_path, 1, 1.0)
    meta = json.loads(open(os.path.join(path, "metadata.json")).read())
    assert meta["files"] == {
        name: os.path.getsize(os.path.join(path, name)) for name in ("config.json", "model.pt")
    }
    assert checkpoint_problem(path) is None


def test_a_checkpoint_without_metadata_is_skipped_with_a_warning(tmp_path, caplog):
    good = _save(tmp_path, 1, 2.0)
    broken = _save(tmp_path, 2, 1.0)  # the better loss, then cut short: metadata never written
    os.unlink(os.path.join(broken, "metadata.json"))
    _truncate(os.path.join(broken, "model.pt"))
    with caplog.at_level(logging.WARNING, logger="dvamn.model"):
        assert list_checkpoints(str(tmp_path)) == [good]
    assert f"skipping the checkpoint {broken}: it has no metadata.json" in caplog.text
    _, meta = load_model(str(tmp_path))
    assert meta["checkpoint_uri"] == good and meta["epoch"] == 1


def test_a_truncated_model_with_the_better_loss_is_not_chosen(tmp_path, caplog):
    good = _save(tmp_path, 1, 2.0)
    broken = _save(tmp_path, 2, 1.0)
    _truncate(os.path.join(broken, "model.pt"))
    with caplog.at_level(logging.WARNING, logger="dvamn.model"):
        assert best_checkpoint(str(tmp_path)) == good
    assert "model.pt has" in caplog.text and "truncated" in caplog.text
    assert load_model(str(tmp_path))[1]["checkpoint_uri"] == good
    # Asked for by name, the broken checkpoint is refused with the reason.
    with pytest.raises(FileNotFoundError, match="incomplete or unreadable: its model.pt has"):
        load_model(broken)
    # A run with no complete checkpoint at all says what a run should hold.
    _truncate(os.path.join(good, "config.json"))
    with pytest.raises(FileNotFoundError, match="complete checkpoint"):
        load_model(str(tmp_path))


def test_resume_takes_the_latest_complete_checkpoint(tmp_path, caplog):
    """What the training loop does with Ray Train's latest checkpoint on ``--resume``."""
    from ray.train import Checkpoint

    from dvamn.training.train import _resume_state

    _save(tmp_path, 1, 2.0)
    second = _save(tmp_path, 2, 1.5)
    third = _save(tmp_path, 3, 1.0)
    resumed = _resume_state(Checkpoint.from_directory(third), str(tmp_path))
    assert resumed[0] == third and resumed[3]["epoch"] == 3 and resumed[2] is None

    _truncate(os.path.join(third, "model.pt"))  # the crash hit while it was written
    with caplog.at_level(logging.WARNING):
        where, state, training_state, meta = _resume_state(
            Checkpoint.from_directory(third), str(tmp_path)
        )
    assert (where, meta["epoch"]) == (second, 2)
    assert state.keys() == small_model().state_dict().keys()
    assert "resuming from the latest complete checkpoint" in caplog.text


def test_resume_takes_the_runs_later_checkpoint_over_an_older_one_ray_train_restored(
    tmp_path, caplog
):
    """A driver killed after a worker wrote a checkpoint but before Ray Train's controller
    recorded it: Ray Train restores the one before, or none after the first epoch."""
    from ray.train import Checkpoint

    from dvamn.training.train import _resume_state

    first = _save(tmp_path, 1, 2.0)
    second = _save(tmp_path, 2, 1.5)
    with caplog.at_level(logging.WARNING):
        where, _, _, meta = _resume_state(Checkpoint.from_directory(first), str(tmp_path))
    assert (where, meta["epoch"]) == (second, 2)
    assert "the run holds a later complete checkpoint" in caplog.text
    where, _, _, meta = _resume_state(None, str(tmp_path))
    assert (where, meta["epoch"]) == (second, 2)
    assert _resume_state(None, str(tmp_path / "fresh")) is None
