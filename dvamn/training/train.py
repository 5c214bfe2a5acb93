"""Distributed DVAMN training on Ray Train.

    dvamn train OUT/videos --out runs/mfc --workers 2 --epochs 20
    dvamn train OUT/videos --out s3://bucket/runs/mfc --workers 8 --gpu
    dvamn train OUT/videos --out runs/mfc --epochs 30 --resume     # continue a run

A TorchTrainer runs ``train_loop_per_worker`` on N workers with DDP (gloo on CPU, NCCL on
GPU). Each worker reads its shard of the training windows (``get_dataset_shard``); the
validation windows are sharded too and the regression sums are all-reduced; rank 0 also
measures retrieval on the validation videos, writes the checkpoint and logs progress.

Defaults are the paper's: log-cosh loss (on standardised targets, see data.py), NAdam with
lr 2e-4 and betas (0.9, 0.999), batch 64 (per worker), 12 s windows.

Fault tolerance: checkpoints (model, optimiser, config, feature metadata, history) go to
RUN through Ray Train's storage (local path or ``s3://``); ``FailureConfig(max_failures)``
replaces a worker group that lost a worker and the loop resumes from the last checkpoint;
``--resume`` re-runs with the same RunConfig(name, storage_path), which Ray Train restores.
"""

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from dvamn import storage
from dvamn.model import DVAMNConfig
from dvamn.scoring import DEFAULT_SCORING

log = logging.getLogger(__name__)

NAN_REPORT_FILE = "nan_loss.json"
SUMMARY_FILE = "summary.json"
LOG_EVERY_STEPS = 20


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved in every checkpoint's metadata."""

    features: str  # extraction output URI (OUT or OUT/videos)
    out: str  # the run directory RUN: local path or s3:// URI
    workers: int = 1  # Ray Train workers (0: run the loop in-process, no DDP)
    gpu: bool = False
    epochs: int = 20
    batch_size: int = 64  # per worker, as the paper's single-GPU batch
    lr: float = 2e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    stride: int = 20  # pose frames between training window starts (2 s)
    val_fraction: float = 0.2  # the paper's 4:1 split, by video
    seed: int = 0
    resume: bool = False
    model: DVAMNConfig = field(default_factory=DVAMNConfig)
    max_failures: int = 2  # worker-group restarts before the run fails
    num_to_keep: Optional[int] = 3  # best checkpoints kept (the latest is always kept)
    cpus_per_worker: float = 1.0
    shuffle_buffer: int = 1024  # windows in each worker's local shuffle buffer
    query_stride: int = 60  # pose frames between validation retrieval queries
    max_retrieval_queries: Optional[int] = 256  # per epoch (evaluate uses them all)
    scoring: str = DEFAULT_SCORING  # how per-epoch retrieval compares (scoring.SCORINGS)
    max_steps_per_epoch: Optional[int] = None  # caps epochs for smoke runs and benchmarks
    # Fault-injection for tests: the worker of this rank exits hard at this global step,
    # once (the marker file records that it happened).
    crash_at_step: Optional[int] = None
    crash_marker: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    def run_location(self) -> Tuple[str, str]:
        """(storage_path, name) for Ray Train's RunConfig: RUN's parent and its last part."""
        out = self.out.rstrip("/")
        if storage.is_remote(out):
            parent, name = out.rsplit("/", 1)
            return parent, name
        out = os.path.abspath(os.path.expanduser(out))
        return os.path.dirname(out), os.path.basename(out)


@dataclass
class TrainResult:
    run_uri: str
    best_checkpoint: Optional[str]
    latest_checkpoint: Optional[str]
    history: List[Dict[str, Any]]
    parameter_count: int
    elapsed_s: float


# ---------------------------------------------------------------------------------------------
# The per-worker loop


def _setup_worker_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    logging.getLogger("dvamn").setLevel(logging.INFO)


def _all_reduce(tensor, op: str = "sum"):
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def train_epoch(
    model, optimizer, batches, device, cfg: Dict[str, Any], step: int, ctx
) -> Dict[str, Any]:
    """One pass over this worker's training shard. Returns summed metrics (all-reduced),
    the new global step and, if the loss went non-finite, ``nan_step``."""
    import torch

    from dvamn.model import log_cosh
    from dvamn.training.evaluate import regression_from_sums, regression_sums

    core = getattr(model, "module", model)
    model.train()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    # Per target dimension: sums of p, t, p^2, t^2, p*t (standardised) for correlations.
    moments = torch.zeros(5, core.config.audio_dim, dtype=torch.float64, device=device)
    loss_sum, batches_done, samples = 0.0, 0, 0
    start = time.time()
    for i, batch in enumerate(batches):
        if cfg["max_steps_per_epoch"] is not None and i >= cfg["max_steps_per_epoch"]:
            break
        if cfg["crash_at_step"] is not None and step == cfg["crash_at_step"]:
            _crash_once(cfg, ctx)
        pose = batch["pose"].to(device, non_blocking=True)  # (B, 120, 68)
        audio = batch["audio"].to(device, non_blocking=True)  # (B, 60, 128) target units
        prediction = model(pose)  # (B, 60, 128) standardised
        loss = log_cosh(prediction, core.standardise_targets(audio))
        # Every rank must agree to stop, or the others would wait forever in DDP.
        bad = _all_reduce(
            torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=device), "max"
        )
        if bad.item() > 0:
            return {"nan_step": step, "step": step}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sums += regression_sums(core.to_target_units(prediction.detach()), audio)
            p = prediction.detach().reshape(-1, prediction.shape[-1]).double()
            t = core.standardise_targets(audio).reshape(-1, prediction.shape[-1]).double()
            moments += torch.stack(
                [p.sum(0), t.sum(0), (p * p).sum(0), (t * t).sum(0), (p * t).sum(0)]
            )
        loss_sum += float(loss.detach())
        batches_done += 1
        samples += len(pose)
        step += 1
        if ctx.get_world_rank() == 0 and step % LOG_EVERY_STEPS == 0:
            log.info(
                "  step %d: loss %.4f (standardised), %.1f samples/s on this worker",
                step,
                float(loss.detach()),
                samples / max(time.time() - start, 1e-9),
            )
    counts = _all_reduce(
        torch.tensor([loss_sum, batches_done, samples], dtype=torch.float64, device=device)
    )
    sums = _all_reduce(sums)
    moments = _all_reduce(moments)
    # Every rank holds the same totals, so every copy of the buffer stays identical.
    frames = float(sums[3]) / core.config.audio_dim  # target frames seen, all workers
    core.target_weight.copy_(_correlation(moments, frames))
    out = regression_from_sums(sums.cpu(), "train_")
    out["train_loss_standardised"] = float(counts[0] / max(float(counts[1]), 1.0))
    out["train_samples"] = int(counts[2])
    out["train_seconds"] = time.time() - start
    out["step"] = step
    return out


def _correlation(moments, count: float):
    """Per-dimension Pearson correlation from summed moments (5, D), clipped to [0, 1]."""
    import torch

    if count < 2:
        return torch.ones(moments.shape[1], dtype=torch.float32, device=moments.device)
    sp, st, spp, stt, spt = moments
    cov = spt / count - (sp / count) * (st / count)
    var_p = (spp / count - (sp / count) ** 2).clamp_min(1e-12)
    var_t = (stt / count - (st / count) ** 2).clamp_min(1e-12)
    return (cov / torch.sqrt(var_p * var_t)).clamp(0.0, 1.0).float()


def eval_epoch(model, batches, device) -> Dict[str, float]:
    """Regression metrics over this worker's validation shard, all-reduced."""
    import torch

    from dvamn.training.evaluate import regression_from_sums, regression_sums

    core = getattr(model, "module", model)
    core.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in batches:
            pose = batch["pose"].to(device)
            audio = batch["audio"].to(device)
            sums += regression_sums(core.to_target_units(core(pose)), audio)
    return regression_from_sums(_all_reduce(sums).cpu(), "val_")


def _crash_once(cfg: Dict[str, Any], ctx) -> None:
    marker = cfg["crash_marker"]
    rank = 1 if ctx.get_world_size() > 1 else 0
    if ctx.get_world_rank() == rank and marker and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(f"worker {rank} exited at step {cfg['crash_at_step']}\n")
        log.warning("fault injection: worker %d exits at step %d", rank, cfg["crash_at_step"])
        os._exit(1)


def train_loop_per_worker(cfg: Dict[str, Any]) -> None:
    """The Ray Train loop. ``cfg``: TrainConfig.to_dict() plus ``stats`` (feature
    statistics), ``provenance`` and ``run_uri``."""
    import ray.data
    import ray.train
    import ray.train.torch
    import torch

    from dvamn.model import DVAMN, load_training_state, save_checkpoint
    from dvamn.training.data import batch_to_videos
    from dvamn.training.evaluate import evaluate_videos

    _setup_worker_logging()
    ray.data.DataContext.get_current().enable_progress_bars = False
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg["seed"])  # same initial weights everywhere (DDP broadcasts anyway)
    np.random.seed(cfg["seed"])
    device = ray.train.torch.get_device()

    model = DVAMN(DVAMNConfig.from_dict(cfg["model"]))
    model.set_scaling(**{k: np.asarray(v, np.float32) for k, v in cfg["stats"].items()})
    optimizer = torch.optim.NAdam(model.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]))
    start_epoch, step, history = 0, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            state = torch.load(
                os.path.join(ckpt_dir, "model.pt"), map_location="cpu", weights_only=True
            )
            model.load_state_dict(state)
            training_state = load_training_state(ckpt_dir)
            with open(os.path.join(ckpt_dir, "metadata.json")) as f:
                meta = json.load(f)
        if training_state is not None:
            optimizer.load_state_dict(training_state["optimizer"])
        start_epoch, step, history = meta["epoch"] + 1, meta.get("step", 0), meta.get("history", [])
        if rank == 0:
            log.info("resuming from %s: epoch %d, step %d", checkpoint.path, start_epoch + 1, step)
    torch.manual_seed(cfg["seed"] + 1000 * rank + start_epoch)  # dropout differs per rank
    model = ray.train.torch.prepare_model(model)
    core = getattr(model, "module", model)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    val_videos = []
    if rank == 0:
        for batch in ray.train.get_dataset_shard("val_videos").iter_batches(
            batch_format="numpy", batch_size=64
        ):
            val_videos.extend(batch_to_videos(batch))
        val_videos.sort(key=lambda v: v.video_id)

    for epoch in range(start_epoch, cfg["epochs"]):
        epoch_start = time.time()
        batches = train_shard.iter_torch_batches(
            batch_size=cfg["batch_size"],
            local_shuffle_buffer_size=cfg["shuffle_buffer"],
            local_shuffle_seed=cfg["seed"] + 7919 * epoch + rank,
            drop_last=False,
        )
        metrics = train_epoch(model, optimizer, batches, device, cfg, step, ctx)
        if "nan_step" in metrics:
            if rank == 0:
                _write_nan_report(cfg["run_uri"], epoch, metrics["nan_step"])
            ray.train.report({"nan_step": metrics["nan_step"], "epoch": epoch})
            return
        step = metrics["step"]
        metrics.update(
            eval_epoch(model, val_shard.iter_torch_batches(batch_size=cfg["batch_size"]), device)
        )
        metrics["epoch"] = epoch
        if rank != 0:
            ray.train.report(metrics)
            continue
        retrieval = evaluate_videos(
            core,
            val_videos,
            cfg["query_stride"],
            cfg["max_retrieval_queries"],
            (cfg["scoring"],),
            device=str(device),
        )
        for key in (
            "r_at_1",
            "r_at_5",
            "r_at_10",
            "median_rank",
            "pool_size",
            "chance_r_at_1",
            "offset_within_0_5s",
            "num_queries",
        ):
            metrics[f"val_{key}"] = retrieval[key]
        metrics["epoch_seconds"] = time.time() - epoch_start
        metrics["samples_per_s"] = metrics["train_samples"] / max(metrics["train_seconds"], 1e-9)
        history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        _log_epoch(metrics, cfg["epochs"])
        metadata = {
            "epoch": epoch,
            "step": step,
            "metrics": history[-1],
            "history": history,
            "provenance": cfg["provenance"],
            "train_config": {k: v for k, v in cfg.items() if k not in ("stats",)},
        }
        with tempfile.TemporaryDirectory(prefix="dvamn-report-") as tmp:
            save_checkpoint(
                tmp, core, metadata, training_state={"optimizer": optimizer.state_dict()}
            )
            ray.train.report(
                history[-1],
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"checkpoint_epoch_{epoch + 1:04d}",
            )


def _log_epoch(m: Dict[str, Any], epochs: int) -> None:
    log.info(
        "epoch %d/%d  train loss %.3f rmse %.3f mae %.3f | val loss %.3f rmse %.3f mae %.3f | "
        "R@1 %.3f R@5 %.3f R@10 %.3f median rank %.1f of %d (chance R@1 %.3f) | %.0f samples/s, %.0f s",
        m["epoch"] + 1,
        epochs,
        m["train_loss"],
        m["train_rmse"],
        m["train_mae"],
        m["val_loss"],
        m["val_rmse"],
        m["val_mae"],
        m["val_r_at_1"],
        m["val_r_at_5"],
        m["val_r_at_10"],
        m["val_median_rank"],
        m["val_pool_size"],
        m["val_chance_r_at_1"],
        m["samples_per_s"],
        m["epoch_seconds"],
    )


def _write_nan_report(run_uri: str, epoch: int, step: int) -> None:
    uri = storage.join(run_uri, NAN_REPORT_FILE)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"epoch": epoch, "step": step}, f)
    storage.copy_file(f.name, uri)
    os.unlink(f.name)
    log.error("loss is NaN/inf at epoch %d, global step %d: stopping", epoch + 1, step)


# ---------------------------------------------------------------------------------------------
# The driver


def _run_has_state(run_uri: str) -> bool:
    fs, path = storage.filesystem(run_uri)
    return fs.isdir(path) and bool(fs.ls(path, detail=False))


def _check_resumable(run_uri: str, config: TrainConfig) -> None:
    """Refuse to resume a run with another network than its checkpoints hold (the weights
    would not load, and the error would surface in every worker after start-up)."""
    from dvamn.model import CONFIG_FILE, list_checkpoints

    checkpoints = list_checkpoints(run_uri) if config.resume else []
    if not checkpoints:
        return
    with storage.open_uri(storage.join(checkpoints[-1], CONFIG_FILE)) as f:
        saved = json.loads(f.read().decode())
    wanted = json.loads(json.dumps(config.model.to_dict()))  # tuples -> lists, as saved
    if saved != wanted:
        differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise ValueError(
            f"cannot resume {run_uri}: its network differs in {', '.join(differing)} "
            f"(saved {[saved.get(k) for k in differing]}, asked {[wanted.get(k) for k in differing]}); "
            "pass the same network flags as the first run"
        )


def train(config: TrainConfig):
    """Train DVAMN as ``config`` says. Returns a TrainResult (run URI, best and latest
    checkpoint, per-epoch history). Raises FloatingPointError naming the step when the
    loss became NaN, ValueError for unusable features."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from dvamn.model import DVAMN, best_checkpoint, list_checkpoints
    from dvamn.ray_setup import ensure_ray
    from dvamn.training.data import (
        read_features,
        split_by_video,
        survey_features,
        windows_dataset,
    )

    started = time.time()
    ensure_ray()
    # Per-operator progress bars from every worker drown the per-epoch lines.
    ray.data.DataContext.get_current().enable_progress_bars = False
    storage_path, name = config.run_location()
    run_uri = storage.join(storage_path, name)
    if _run_has_state(run_uri) and not config.resume:
        raise FileExistsError(
            f"{run_uri} already holds a training run: pass --resume to continue it, or "
            "choose a new --out"
        )
    _check_resumable(run_uri, config)
    if storage.exists(storage.join(run_uri, NAN_REPORT_FILE)):
        fs, path = storage.filesystem(storage.join(run_uri, NAN_REPORT_FILE))
        fs.rm(path)

    # One read of the Parquet, then one pass for provenance, split counts and statistics.
    ds = read_features(config.features).materialize()
    survey = survey_features(ds, config.val_fraction)
    provenance, stats = survey.provenance, survey.stats
    n_train, n_val = survey.num_train_videos, survey.num_val_videos
    if n_train == 0 or n_val == 0:
        raise ValueError(
            f"the by-video split of {config.features!r} gave {n_train} training and {n_val} "
            f"validation videos (val_fraction {config.val_fraction}): give more videos"
        )
    train_videos, val_videos = split_by_video(ds, config.val_fraction)
    model_size = DVAMN(config.model).parameter_count()
    log.info(
        "training DVAMN (%s, %s parameters) on %d videos, validating on %d; features %s",
        config.model.layer,
        f"{model_size:,}",
        n_train,
        n_val,
        provenance,
    )
    loop_config = config.to_dict()
    loop_config.update(
        stats={k: v.tolist() for k, v in stats.items()},
        provenance=provenance,
        run_uri=run_uri,
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.gpu,
            resources_per_worker={"CPU": config.cpus_per_worker} if config.workers else None,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.num_to_keep,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
        ),
        datasets={
            "train": windows_dataset(train_videos, stride_pose_frames=config.stride),
            "val": windows_dataset(val_videos, stride_pose_frames=config.stride),
            "val_videos": val_videos,
        },
        dataset_config=ray.train.DataConfig(datasets_to_split=["train", "val"]),
    )
    trainer.fit()

    nan_uri = storage.join(run_uri, NAN_REPORT_FILE)
    if storage.exists(nan_uri):
        with storage.open_uri(nan_uri) as f:
            report = json.loads(f.read().decode())
        raise FloatingPointError(
            f"training stopped: the loss became NaN/inf at epoch {report['epoch'] + 1}, global "
            f"step {report['step']}; lower --lr, or check the features for NaN/inf values"
        )
    checkpoints = list_checkpoints(run_uri)
    latest = checkpoints[-1] if checkpoints else None
    best = best_checkpoint(run_uri) if checkpoints else None
    history: List[Dict[str, Any]] = []
    if latest:
        with storage.open_uri(storage.join(latest, "metadata.json")) as f:
            history = json.loads(f.read().decode()).get("history", [])
    result = TrainResult(run_uri, best, latest, history, model_size, time.time() - started)
    _write_summary(result)
    return result


def _write_summary(result: TrainResult) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(dataclasses.asdict(result), f, indent=2)
    storage.copy_file(f.name, storage.join(result.run_uri, SUMMARY_FILE))
    os.unlink(f.name)


def summary_table(history: List[Dict[str, Any]]) -> str:
    """A plain-text table of the per-epoch metrics (the CLI's closing output)."""
    columns = [
        ("epoch", "epoch", "{:d}"),
        ("train_loss", "train loss", "{:.3f}"),
        ("val_loss", "val loss", "{:.3f}"),
        ("val_rmse", "val RMSE", "{:.3f}"),
        ("val_mae", "val MAE", "{:.3f}"),
        ("val_r_at_1", "R@1", "{:.3f}"),
        ("val_r_at_5", "R@5", "{:.3f}"),
        ("val_r_at_10", "R@10", "{:.3f}"),
        ("val_median_rank", "med.rank", "{:.1f}"),
        ("samples_per_s", "samples/s", "{:.0f}"),
    ]
    rows = []
    for h in history:
        row = []
        for key, _, fmt in columns:
            value = h.get(key, math.nan)
            if key == "epoch":
                value = int(value) + 1
            row.append(fmt.format(value) if value == value else "-")
        rows.append(row)
    widths = [
        max(len(title), *(len(r[i]) for r in rows)) if rows else len(title)
        for i, (_, title, _) in enumerate(columns)
    ]
    lines = ["  ".join(title.rjust(w) for (_, title, _), w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
