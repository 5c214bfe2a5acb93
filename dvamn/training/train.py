"""Distributed DVAMN training on Ray Train.

    dvamn train OUT/videos --out runs/mfc --workers 2 --epochs 20
    dvamn train OUT/videos --out s3://bucket/runs/mfc --workers 8 --gpu
    dvamn train OUT/videos --out runs/mfc --epochs 30 --resume     # continue a run

A TorchTrainer runs ``train_loop_per_worker`` on N workers with DDP (gloo on CPU, NCCL on
GPU). Each worker reads its shard of the training windows (``get_dataset_shard``); the
validation windows are sharded too and the regression sums are all-reduced; rank 0 also
measures retrieval on the validation videos, writes the checkpoint and logs progress.

Defaults are the paper's (NAdam with lr 2e-4 and betas (0.9, 0.999), batch 64 per worker,
12 s windows, log-cosh loss on standardised targets, see data.py), but for the objective:
``both`` adds the contrastive term to the paper's log-cosh, because it finds the right track
more often in and out of the training family (issue 13; README, "Quality on synthetic
data"); ``--objective logcosh`` is the paper's, unchanged.

Objectives (``--objective``): ``logcosh`` regresses the embeddings (the paper; this path is
unchanged by everything below); ``contrastive`` trains retrieval directly: an InfoNCE
loss over the similarity that search uses (``dvamn.scoring.aligned_similarity`` on frames
transformed as the scoring transforms them, ``DVAMN.scoring_transform_tensors``), each
window's prediction against the true target windows of the whole batch, gathered across
DDP workers, and K hard negatives per window (its own soundtrack at other offsets), plus
the symmetric term (each target window against every prediction of the batch);
``both`` adds ``contrastive_weight`` times it to the log-cosh loss. The temperature is
learnable (from ``INITIAL_TEMPERATURE``) or set. With retrieval in the objective, the
best checkpoint (and early stopping, ``patience``) is chosen by validation R@1, ties by
loss; the rule is stored in every checkpoint's metadata (``dvamn.model.best_checkpoint``).

Onset head (``--onset-head``, ``DVAMNConfig.onset_head``): the network also predicts the
music's onset strength per pose frame; it is trained by ``onset_loss`` (1 - its
correlation with the window's ``audio_onset``, weight ``onset_loss_weight``) with any
objective, and with a contrastive one every similarity also gains ``ONSET_WEIGHT`` times
the onsets' correlation, as the "+onset" scorings' rhythm term (``dvamn.scoring``). Per-
epoch retrieval then scores with "cosine-w+onset" unless ``--scoring`` says otherwise.

Every checkpoint also stores a query bank: the model's predictions for up to
``query_bank_size`` training windows (rank 0's first ones), for the hubness-correcting
scorings (``dvamn.scoring.set_hubness``).

Fault tolerance: checkpoints (model, optimiser, config, feature metadata, history) go to
RUN through Ray Train's storage (local path or ``s3://``); ``FailureConfig(max_failures)``
replaces a worker group that lost a worker and the loop resumes from the last checkpoint;
``--resume`` re-runs with the same RunConfig(name, storage_path) and continues from the
latest complete checkpoint in RUN (``_resume_state``: Ray Train's record of the run can
lag behind it when the driver was killed).
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from dvamn import storage
from dvamn.model import DVAMNConfig

# A run's configuration lives in a module without torch (the CLI reads its defaults);
# re-exported here, its usual home.
from dvamn.training.config import (  # noqa: F401
    DEFAULT_OBJECTIVE,
    INITIAL_TEMPERATURE,
    MIN_TEMPERATURE,
    OBJECTIVES,
    TrainConfig,
)
from dvamn.training.data import (
    AugmentConfig,
)
from dvamn.training.metrics import EPOCH_RETRIEVAL_KEYS, RETRIEVAL_FIGURES

log = logging.getLogger(__name__)

NAN_REPORT_FILE = "nan_loss.json"
SUMMARY_FILE = "summary.json"
LOG_EVERY_STEPS = 20


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


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(x, with_grad: bool):
    """Concatenate every worker's ``x`` (n_r, ...) along dim 0 -> (sum n_r, ...), in rank
    order, and this worker's first row index. Workers may hold different row counts (the
    last batch): rows are padded to the largest count for the collective and dropped
    after. ``with_grad``: gradients flow back to each worker's own rows
    (``torch.distributed.nn.functional.all_gather``, whose backward sums every worker's
    gradient for them, ``_AllGatherRows``); otherwise a plain all_gather. One worker:
    ``x`` itself."""
    import torch
    import torch.distributed as dist

    world = _world_size()
    if world == 1:
        return x, 0
    rank = dist.get_rank()
    counts = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(x)], dtype=torch.int64, device=x.device))
    counts = [int(c) for c in counts]
    top = max(counts)
    padded = torch.cat([x, x.new_zeros((top - len(x), *x.shape[1:]))]) if len(x) < top else x
    gathered = _AllGatherRows.apply(padded) if with_grad else _all_gather(padded.detach())
    parts = gathered.reshape(world, top, *x.shape[1:])
    rows = torch.cat([p[:c] for p, c in zip(parts, counts)])
    return rows, sum(counts[:rank])


def _all_gather(x):
    """(n, ...) on every worker -> (world · n, ...), in rank order, no gradient."""
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _AllGatherRows(torch.autograd.Function):
    """all_gather whose backward hands each worker the sum, over all workers, of the
    gradient for its own rows (every worker's loss uses every worker's rows)."""

    @staticmethod
    def forward(ctx, x):
        ctx.rows = len(x)
        return _all_gather(x)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def onset_loss(predicted, true):
    """1 - the mean Pearson correlation of each window's predicted onsets with its true
    ones, both (B, T_p): what the onset head is trained by (scale-free, as the rhythm
    term compares)."""
    from dvamn.scoring import onset_similarity

    return 1.0 - torch.diagonal(onset_similarity(predicted, true)).mean()


def contrastive_loss(
    queries,
    targets,
    negatives=None,
    negatives_valid=None,
    temperature=0.1,
    onsets=None,
):
    """InfoNCE over the search similarity, across every worker's batch.

    queries (B, A, D): this worker's predictions; targets (B, A, D): their true windows;
    negatives (B, K, A, D) with negatives_valid (B, K): each window's hard negatives
    (its own soundtrack at other offsets). All are frames as the scoring compares them
    (``dvamn.scoring.transform_frames``); ``temperature`` a float or a 0-d tensor.
    The loss is the mean of two cross-entropies: each query against every gathered true
    window and every gathered hard negative (which names its own window), and each true
    window against every gathered query (which keeps one track from matching every dance).
    ``onsets``: (predicted (B, T_p), true (B, T_p), negatives' (B, K, T_p)) of a model with
    an onset head: every similarity gains ``ONSET_WEIGHT`` times the onsets' correlation,
    as search's rhythm term (``dvamn.scoring.onset_similarity``).
    With one worker it is the plain batch loss."""
    import torch
    import torch.nn.functional as F

    from dvamn.scoring import ONSET_WEIGHT, aligned_similarity, onset_similarity

    all_targets, first = gather_rows(targets, with_grad=False)  # (N, A, D)
    all_queries, _ = gather_rows(queries, with_grad=True)  # (N, A, D)
    labels = torch.arange(first, first + len(queries), device=queries.device)
    candidates = [all_targets]
    onset_candidates = []
    if onsets is not None:
        predicted_onsets, true_onsets, negative_onsets = onsets
        all_true_onsets, _ = gather_rows(true_onsets, with_grad=False)  # (N, T_p)
        all_predicted_onsets, _ = gather_rows(predicted_onsets, with_grad=True)
        onset_candidates.append(all_true_onsets)
    mask = None
    if negatives is not None and negatives.shape[1] > 0:
        flat = negatives.reshape(-1, *negatives.shape[2:])  # (B·K, A, D)
        all_negatives, _ = gather_rows(flat, with_grad=False)
        valid, _ = gather_rows(negatives_valid.reshape(-1).float(), with_grad=False)
        candidates.append(all_negatives)
        mask = torch.cat([torch.ones(len(all_targets), device=valid.device), valid]) > 0.5
        if onsets is not None:
            flat_onsets = negative_onsets.reshape(-1, negative_onsets.shape[-1])  # (B·K, T_p)
            onset_candidates.append(gather_rows(flat_onsets, with_grad=False)[0])
    similarity = aligned_similarity(queries, torch.cat(candidates))  # (B, N + N·K)
    reverse = aligned_similarity(targets, all_queries)  # (B, N)
    if onsets is not None:
        similarity = similarity + ONSET_WEIGHT * onset_similarity(
            predicted_onsets, torch.cat(onset_candidates)
        )
        reverse = reverse + ONSET_WEIGHT * onset_similarity(true_onsets, all_predicted_onsets)
    logits = similarity / temperature
    if mask is not None:
        logits = logits.masked_fill(~mask[None, :], float("-inf"))
    to_tracks = F.cross_entropy(logits, labels)
    to_queries = F.cross_entropy(reverse / temperature, labels)
    return 0.5 * (to_tracks + to_queries)


def train_epoch(
    model,
    optimizer,
    batches,
    device,
    cfg: Dict[str, Any],
    step: int,
    ctx,
    log_temperature=None,
    epoch: int = 0,
    bank_poses: Optional[List[np.ndarray]] = None,
) -> Dict[str, Any]:
    """One pass over this worker's training shard. Returns summed metrics (all-reduced),
    the new global step and, if the loss went non-finite, ``nan_step``.

    ``log_temperature``: the contrastive temperature's log (a learnable parameter or a
    constant tensor); ``bank_poses``: when given, the first training windows' poses are
    appended to it until it holds ``query_bank_size`` (the query bank)."""
    import torch

    from dvamn.model import log_cosh
    from dvamn.scoring import split_scoring, transform_frames
    from dvamn.training.data import augment_poses
    from dvamn.training.evaluate import regression_from_sums, regression_sums

    core = getattr(model, "module", model)
    objective = cfg.get("objective", "logcosh")
    augment = AugmentConfig(**cfg["augment"]) if cfg.get("augment") else AugmentConfig()
    rng = np.random.default_rng([cfg["seed"], epoch, ctx.get_world_rank()])
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
        pose = batch["pose"]
        if bank_poses is not None and len(bank_poses) < cfg["query_bank_size"]:
            bank_poses.extend(pose[: cfg["query_bank_size"] - len(bank_poses)].numpy())
        if augment.active:
            pose = torch.from_numpy(augment_poses(pose.numpy(), rng, augment))
        pose = pose.to(device, non_blocking=True)  # (B, 120, 68)
        audio = batch["audio"].to(device, non_blocking=True)  # (B, 60, 128) target units
        onsets = None
        if core.has_onset_head:
            prediction, predicted_onsets = model(pose, with_onset=True)  # (B, 60, 128), (B, 120)
            true_onsets = batch["onset"].to(device)
            negative_onsets = batch.get("negatives_onset")
            if negative_onsets is not None:
                negative_onsets = negative_onsets.to(device)
            onsets = (predicted_onsets, true_onsets, negative_onsets)
        else:
            prediction = model(pose)  # (B, 60, 128) standardised
        if objective == "logcosh":
            loss = log_cosh(prediction, core.standardise_targets(audio))
        else:
            weighted = split_scoring(cfg["scoring"])[0].endswith("-w")
            center, scale = core.scoring_transform_tensors(weighted)
            if split_scoring(cfg["scoring"])[0] == "cosine":  # raw embeddings
                center, scale = torch.zeros_like(center), torch.ones_like(scale)
            negatives = batch.get("negatives")
            if negatives is not None:
                negatives = transform_frames(negatives.to(device), center, scale)
                valid = batch["negatives_valid"].to(device)
            else:
                valid = None
            loss = cfg["contrastive_weight"] * contrastive_loss(
                transform_frames(core.to_target_units(prediction), center, scale),
                transform_frames(audio, center, scale),
                negatives,
                valid,
                log_temperature.exp().clamp_min(MIN_TEMPERATURE),
                onsets,
            )
            if objective == "both":
                loss = loss + log_cosh(prediction, core.standardise_targets(audio))
        if onsets is not None:
            loss = loss + cfg["onset_loss_weight"] * onset_loss(onsets[0], onsets[1])
        # Every rank must agree to stop, or the others would wait forever in DDP.
        bad = _all_reduce(
            torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=device), "max"
        )
        if bad.item() > 0:
            return {"nan_step": step, "step": step}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if log_temperature is not None and log_temperature.grad is not None:
            # Not part of the DDP module: average its gradient over the workers by hand.
            log_temperature.grad.div_(_world_size())
            _all_reduce(log_temperature.grad)
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


def _resume_state(checkpoint: Any, run_uri: str) -> Optional[tuple]:
    """(where, state dict, training state, metadata) to resume from: the run's latest
    complete checkpoint (``dvamn.model.list_checkpoints``), or Ray Train's ``checkpoint``
    when it is complete and no older. None, with a warning, when there is none at all.

    The run directory is the record, not Ray Train's: a worker writes a checkpoint
    before Ray Train's controller adds it to its snapshot of the run
    (``checkpoint_manager_snapshot.json``), so a driver killed between the two restores
    the checkpoint before it, or none (``checkpoint`` None) after the first epoch. A
    crash can also cut the writing of the last one short
    (``dvamn.model.checkpoint_problem``): it is skipped."""
    from dvamn.model import checkpoint_metadata, checkpoint_problem, list_checkpoints

    complete = list_checkpoints(run_uri)
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            problem = checkpoint_problem(ckpt_dir)
            if problem is not None:
                log.warning("the latest checkpoint %s is incomplete (%s)", checkpoint.path, problem)
            elif not complete or (
                checkpoint_metadata(ckpt_dir)["epoch"] >= checkpoint_metadata(complete[-1])["epoch"]
            ):
                return (checkpoint.path, *_read_resume_state(ckpt_dir))
            else:
                log.warning(
                    "Ray Train restored %s, but the run holds a later complete checkpoint "
                    "(its driver stopped before Ray Train recorded it)",
                    checkpoint.path,
                )
    if not complete:
        if checkpoint is not None:
            log.warning("%s holds no complete checkpoint: training starts again", run_uri)
        return None
    log.warning("resuming from the latest complete checkpoint, %s", complete[-1])
    return (complete[-1], *_read_resume_state(complete[-1]))


def _read_resume_state(ckpt_dir: str) -> tuple:
    """(state dict, training state, metadata) of a complete checkpoint, read through the
    checkpoint contract (config, weights_only load, metadata) as serving reads it."""
    from dvamn.model import load_model, load_training_state

    model, meta = load_model(ckpt_dir)
    return model.state_dict(), load_training_state(ckpt_dir), meta


def train_loop_per_worker(cfg: Dict[str, Any]) -> None:
    """The Ray Train loop. ``cfg``: TrainConfig.to_dict() plus ``stats`` (feature
    statistics), ``provenance`` and ``run_uri``."""
    import ray.data
    import ray.train
    import ray.train.torch
    import torch

    from dvamn.model import DVAMN, SELECT_BY_LOSS, SELECT_BY_RECALL

    _setup_worker_logging()
    ray.data.DataContext.get_current().enable_progress_bars = False
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg["seed"])  # same initial weights everywhere (DDP broadcasts anyway)
    np.random.seed(cfg["seed"])
    device = ray.train.torch.get_device()

    model = DVAMN(DVAMNConfig.from_dict(cfg["model"]))
    model.set_scaling(**{k: np.asarray(v, np.float32) for k, v in cfg["stats"].items()})
    retrieval_objective = cfg.get("objective", "logcosh") != "logcosh"
    optimizer, log_temperature = _make_optimizer(model, cfg, device, retrieval_objective)
    selection = SELECT_BY_RECALL if retrieval_objective else SELECT_BY_LOSS
    start_epoch, step, history = _restore_from_checkpoint(
        model, optimizer, log_temperature, cfg["run_uri"], rank
    )
    torch.manual_seed(cfg["seed"] + 1000 * rank + start_epoch)  # dropout differs per rank
    model = ray.train.torch.prepare_model(model)
    core = getattr(model, "module", model)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    val_videos = _read_val_videos() if rank == 0 else []

    bank_poses: Optional[List[np.ndarray]] = [] if rank == 0 else None
    for epoch in range(start_epoch, cfg["epochs"]):
        epoch_start = time.time()
        batches = train_shard.iter_torch_batches(
            batch_size=cfg["batch_size"],
            local_shuffle_buffer_size=cfg["shuffle_buffer"],
            local_shuffle_seed=cfg["seed"] + 7919 * epoch + rank,
            drop_last=False,
        )
        metrics = train_epoch(
            model, optimizer, batches, device, cfg, step, ctx, log_temperature, epoch, bank_poses
        )
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
        if log_temperature is not None:
            metrics["temperature"] = float(log_temperature.detach().exp())
        if rank != 0:
            ray.train.report(metrics)
            if _stop_early(cfg, False, device):
                return
            continue
        _add_retrieval_metrics(metrics, core, val_videos, cfg, device, epoch_start)
        if retrieval_objective:
            metrics["selection_score"] = selection_score(metrics)
        history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        _log_epoch(metrics, cfg["epochs"])
        _report_checkpoint(
            core,
            optimizer,
            log_temperature,
            bank_poses,
            cfg,
            epoch,
            step,
            history,
            selection,
            device,
        )
        if _stop_early(cfg, _no_better_for(history, selection, cfg.get("patience")), device):
            log.info(
                "early stop after epoch %d: no better checkpoint (%s) for %d epochs",
                epoch + 1,
                selection["metric"],
                cfg["patience"],
            )
            return


def _make_optimizer(model, cfg: Dict[str, Any], device, retrieval_objective: bool):
    """NAdam over the model's parameters and, for a learnable temperature, its log.
    Returns (optimizer, log_temperature tensor or None)."""
    parameters = list(model.parameters())
    log_temperature = None
    if retrieval_objective:
        fixed = cfg.get("temperature")
        log_temperature = torch.tensor(math.log(fixed or INITIAL_TEMPERATURE), device=device)
        if fixed is None:  # learnable
            log_temperature = torch.nn.Parameter(log_temperature)
            parameters.append(log_temperature)
    optimizer = torch.optim.NAdam(parameters, lr=cfg["lr"], betas=tuple(cfg["betas"]))
    return optimizer, log_temperature


def _restore_from_checkpoint(model, optimizer, log_temperature, run_uri: str, rank: int):
    """Loads Ray Train's checkpoint, if any, into the model, optimizer and temperature.
    Returns (start_epoch, step, history): (0, 0, []) for a fresh run."""
    import ray.train

    resumed = _resume_state(ray.train.get_checkpoint(), run_uri)
    if not resumed:
        return 0, 0, []
    resumed_from, state, training_state, meta = resumed
    model.load_state_dict(state)
    if training_state is not None:
        optimizer.load_state_dict(training_state["optimizer"])
        if log_temperature is not None and "log_temperature" in training_state:
            with torch.no_grad():
                log_temperature.copy_(training_state["log_temperature"])
    start_epoch, step, history = meta["epoch"] + 1, meta.get("step", 0), meta.get("history", [])
    if rank == 0:
        log.info("resuming from %s: epoch %d, step %d", resumed_from, start_epoch + 1, step)
    return start_epoch, step, history


def _read_val_videos() -> list:
    """Rank 0's whole validation videos, for per-epoch retrieval, in video id order."""
    import ray.train

    from dvamn.training.data import batch_to_videos

    val_videos = []
    for batch in ray.train.get_dataset_shard("val_videos").iter_batches(
        batch_format="numpy", batch_size=64
    ):
        val_videos.extend(batch_to_videos(batch))
    val_videos.sort(key=lambda v: v.video_id)
    return val_videos


def _add_retrieval_metrics(metrics, core, val_videos, cfg, device, epoch_start: float) -> None:
    """Adds rank 0's validation retrieval figures and the epoch's timing to ``metrics``."""
    from dvamn.training.evaluate import evaluate_videos

    retrieval = evaluate_videos(
        core,
        val_videos,
        cfg["query_stride"],
        cfg["max_retrieval_queries"],
        (cfg["scoring"],),
        device=str(device),
    )
    for key in EPOCH_RETRIEVAL_KEYS:
        metrics[f"val_{key}"] = retrieval[key]
    metrics["epoch_seconds"] = time.time() - epoch_start
    metrics["samples_per_s"] = metrics["train_samples"] / max(metrics["train_seconds"], 1e-9)


def _report_checkpoint(
    core, optimizer, log_temperature, bank_poses, cfg, epoch, step, history, selection, device
) -> None:
    """Saves the epoch's checkpoint (model, optimizer, query bank, metadata) and reports it
    to Ray Train under training's checkpoint name."""
    import ray.train

    from dvamn.model import checkpoint_dir_name, save_checkpoint
    from dvamn.training.evaluate import predict_windows

    metadata = {
        "epoch": epoch,
        "step": step,
        "metrics": history[-1],
        "history": history,
        "selection": selection,
        "provenance": cfg["provenance"],
        "train_config": {k: v for k, v in cfg.items() if k not in ("stats",)},
    }
    training_state = {"optimizer": optimizer.state_dict()}
    if log_temperature is not None:
        training_state["log_temperature"] = log_temperature.detach().cpu()
    query_bank = None
    if bank_poses:
        poses = np.stack(bank_poses)  # (Qb, 120, 68)
        query_bank = predict_windows(core, poses, cfg["batch_size"], str(device))
    with tempfile.TemporaryDirectory(prefix="dvamn-report-") as tmp:
        save_checkpoint(tmp, core, metadata, training_state, query_bank=query_bank)
        ray.train.report(
            history[-1],
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=checkpoint_dir_name(epoch),
        )


def selection_score(metrics: Dict[str, Any]) -> float:
    """One number ordering checkpoints as ``SELECT_BY_RECALL`` does, for Ray Train's
    ``num_to_keep``: validation R@1, less a loss term too small to outweigh one query
    (R@1 steps are 1/num_queries >= 1/10,000; the term stays below 1e-5)."""
    loss = max(float(metrics["val_loss"]), 0.0)
    return float(metrics["val_r_at_1"]) - 1e-5 * loss / (1.0 + loss)


def _no_better_for(history: List[Dict[str, Any]], selection: Dict[str, Any], patience) -> bool:
    """True when none of the last ``patience`` epochs beat the best epoch before them."""
    if not patience or len(history) <= patience:
        return False

    def key(h):
        value = h[selection["metric"]] * (1 if selection["mode"] == "min" else -1)
        tie = h[selection["tie_metric"]] if "tie_metric" in selection else 0.0
        return (value, tie)

    best_before = min(key(h) for h in history[:-patience])
    return all(key(h) >= best_before for h in history[-patience:])


def _stop_early(cfg: Dict[str, Any], stop: bool, device) -> bool:
    """Rank 0's decision, shared with every worker (each must leave the loop together)."""
    if not cfg.get("patience"):
        return False
    import torch

    flag = _all_reduce(torch.tensor([1.0 if stop else 0.0], device=device), "max")
    return bool(flag.item() > 0)


def epoch_line(m: Dict[str, Any], epochs: int) -> str:
    """One epoch's metrics on one line: rank 0's log line, and the line ``dvamn train``
    and the demo print for each epoch Ray Train reports (``train(on_epoch=...)``)."""
    return (
        f"epoch {int(m['epoch']) + 1}/{epochs}  train loss {m['train_loss']:.3f} | val loss "
        f"{m['val_loss']:.3f} rmse {m['val_rmse']:.3f} mae {m['val_mae']:.3f} | R@1 "
        f"{m['val_r_at_1']:.3f} R@5 {m['val_r_at_5']:.3f} R@10 {m['val_r_at_10']:.3f} median "
        f"rank {m['val_median_rank']:.1f} of {int(m['val_pool_size'])} (chance R@1 "
        f"{m['val_chance_r_at_1']:.3f}) | {m['samples_per_s']:.0f} samples/s, "
        f"{m['epoch_seconds']:.0f} s"
    )


def say_epochs(epochs: int) -> Callable[[Dict[str, Any]], None]:
    """``train(on_epoch=...)`` for a command: each reported epoch as a line of its own
    console output (``dvamn.console.say``)."""
    from dvamn import console

    return lambda metrics: console.say("   " + epoch_line(metrics, epochs))


def _log_epoch(m: Dict[str, Any], epochs: int) -> None:
    log.info(
        "%s (train rmse %.3f mae %.3f)", epoch_line(m, epochs), m["train_rmse"], m["train_mae"]
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
    from dvamn.model import checkpoint_config, list_checkpoints

    checkpoints = list_checkpoints(run_uri) if config.resume else []
    if not checkpoints:
        return
    saved = json.loads(json.dumps(checkpoint_config(checkpoints[-1]).to_dict()))
    wanted = json.loads(json.dumps(config.model.to_dict()))  # tuples -> lists, as saved
    if saved != wanted:
        differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise ValueError(
            f"cannot resume {run_uri}: its network differs in {', '.join(differing)} "
            f"(saved {[saved.get(k) for k in differing]}, asked {[wanted.get(k) for k in differing]}); "
            "pass the same network flags as the first run"
        )


def train(config: TrainConfig, on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None):
    """Train DVAMN as ``config`` says. Returns a TrainResult (run URI, best and latest
    checkpoint, per-epoch history). Raises FloatingPointError naming the step when the
    loss became NaN, ValueError for unusable features.

    ``on_epoch(metrics)`` is called in this process (the driver) for each epoch as Ray
    Train reports it: rank 0's metrics (``epoch_line`` formats them). Not with
    ``workers=0``, whose loop runs here without Ray Train's controller."""
    import ray
    import ray.data

    from dvamn.model import DVAMN
    from dvamn.ray_setup import ensure_ray

    started = time.time()
    ensure_ray()
    # Per-operator progress bars from every worker drown the per-epoch lines.
    ray.data.DataContext.get_current().enable_progress_bars = False
    storage_path, name = config.run_location()
    run_uri = storage.join(storage_path, name)
    _prepare_run_dir(run_uri, config)
    survey, train_videos, val_videos = _survey_and_split(config)
    model_size = DVAMN(config.model).parameter_count()
    log.info(
        "training DVAMN (%s, %s parameters) on %d videos, validating on %d; features %s",
        config.model.layer,
        f"{model_size:,}",
        survey.num_train_videos,
        survey.num_val_videos,
        survey.provenance,
    )
    loop_config = config.to_dict()
    loop_config.update(
        stats={k: v.tolist() for k, v in survey.stats.items()},
        provenance=survey.provenance,
        run_uri=run_uri,
    )
    with _reported_epochs(config, on_epoch) as callbacks:
        _make_trainer(
            config, loop_config, storage_path, name, train_videos, val_videos, callbacks
        ).fit()
    _raise_for_nan_report(run_uri)
    result = _collect_result(run_uri, model_size, started)
    _write_summary(result)
    return result


def _epochs_to_driver(queue):
    """A Ray Train callback that forwards each epoch's metrics, as Ray Train received them
    from rank 0, to the driver through ``queue`` (a Ray queue: the callback runs in Ray
    Train's controller actor, not in the driver). Defined here so that importing this
    module does not import Ray Train."""
    from ray.train import UserCallback

    class EpochsToDriver(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):  # noqa: ARG002
            # metrics[i] is worker i's; rank 0's has the validation retrieval figures.
            # A NaN stop reports only nan_step: nothing to show.
            if metrics and "val_loss" in metrics[0]:
                queue.put(dict(metrics[0]))

    return EpochsToDriver()


@contextlib.contextmanager
def _reported_epochs(config: TrainConfig, on_epoch: Optional[Callable[[Dict[str, Any]], None]]):
    """Yields the Ray Train callbacks for the trainer; while the block (``fit()``) runs, a
    thread of the driver hands every reported epoch's metrics to ``on_epoch`` (console
    lines of ours instead of the workers' prints)."""
    if on_epoch is None or not config.workers:
        yield []
        return
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    finished = threading.Event()

    def hand_over() -> None:
        while True:
            try:
                metrics = queue.get(timeout=0.5)
            except Empty:
                if finished.is_set():
                    return
                continue
            except Exception:  # noqa: BLE001 - the queue's actor is gone: Ray shut down
                return
            on_epoch(metrics)

    thread = threading.Thread(target=hand_over, name="dvamn-epochs", daemon=True)
    thread.start()
    try:
        yield [_epochs_to_driver(queue)]
    finally:
        finished.set()  # the thread takes what is left in the queue, then ends
        thread.join(timeout=10)
        try:
            queue.shutdown()
        except Exception as error:  # noqa: BLE001 - cleanup after a failed or stopped run
            log.info("the epoch queue's actor: %s", error)


def _prepare_run_dir(run_uri: str, config: TrainConfig) -> None:
    """Refuses to overwrite a run unless resuming it with the same network, and clears a
    previous attempt's NaN report."""
    if _run_has_state(run_uri) and not config.resume:
        raise FileExistsError(
            f"{run_uri} already holds a training run: pass --resume to continue it, or "
            "choose a new --out"
        )
    _check_resumable(run_uri, config)
    if storage.exists(storage.join(run_uri, NAN_REPORT_FILE)):
        fs, path = storage.filesystem(storage.join(run_uri, NAN_REPORT_FILE))
        fs.rm(path)


def _survey_and_split(config: TrainConfig):
    """One read of the Parquet, then one pass for provenance, split counts and statistics.
    Returns (survey, train_videos, val_videos); ValueError when either split is empty."""
    from dvamn.training.data import ONSET_COLUMN, read_features, split_by_video, survey_features

    ds = read_features(config.features).materialize()
    if config.model.onset_head and ONSET_COLUMN not in ds.schema().names:
        raise ValueError(
            f"the onset head (dvamn train's default) trains on the features' {ONSET_COLUMN} "
            f"channel, and {config.features!r} has none (extracted before it existed): "
            "extract them again, or train without the head (--no-onset-head)"
        )
    survey = survey_features(ds, config.val_fraction)
    n_train, n_val = survey.num_train_videos, survey.num_val_videos
    if n_train == 0 or n_val == 0:
        raise ValueError(
            f"the by-video split of {config.features!r} gave {n_train} training and {n_val} "
            f"validation videos (val_fraction {config.val_fraction}): give more videos"
        )
    train_videos, val_videos = split_by_video(ds, config.val_fraction)
    return survey, train_videos, val_videos


def _make_trainer(
    config: TrainConfig, loop_config, storage_path, name, train_videos, val_videos, callbacks=()
):
    """The TorchTrainer: workers, checkpoint ranking, failure retries and window datasets."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from dvamn.training.data import windows_dataset

    return TorchTrainer(
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
                checkpoint_score_attribute=(
                    "selection_score" if config.retrieval_objective else "val_loss"
                ),
                checkpoint_score_order="max" if config.retrieval_objective else "min",
            ),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            callbacks=list(callbacks),
        ),
        datasets={
            "train": windows_dataset(
                train_videos,
                stride_pose_frames=config.stride,
                hard_negatives=config.hard_negatives if config.retrieval_objective else 0,
                seed=config.seed,
                with_onset=config.model.onset_head,
            ),
            "val": windows_dataset(val_videos, stride_pose_frames=config.stride),
            "val_videos": val_videos,
        },
        dataset_config=ray.train.DataConfig(datasets_to_split=["train", "val"]),
    )


def _raise_for_nan_report(run_uri: str) -> None:
    """FloatingPointError naming the epoch and step when a worker wrote a NaN report."""
    nan_uri = storage.join(run_uri, NAN_REPORT_FILE)
    if storage.exists(nan_uri):
        with storage.open_uri(nan_uri) as f:
            report = json.loads(f.read().decode())
        raise FloatingPointError(
            f"training stopped: the loss became NaN/inf at epoch {report['epoch'] + 1}, global "
            f"step {report['step']}; lower --lr, or check the features for NaN/inf values"
        )


def _collect_result(run_uri: str, model_size: int, started: float) -> "TrainResult":
    """The run's best and latest complete checkpoints and the latest one's history."""
    from dvamn.model import best_checkpoint, checkpoint_metadata, list_checkpoints

    checkpoints = list_checkpoints(run_uri)
    latest = checkpoints[-1] if checkpoints else None
    best = best_checkpoint(run_uri) if checkpoints else None
    history: List[Dict[str, Any]] = []
    if latest:
        history = checkpoint_metadata(latest).get("history", [])
    return TrainResult(run_uri, best, latest, history, model_size, time.time() - started)


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
        *((f"val_{key}", title, fmt) for key, title, fmt in RETRIEVAL_FIGURES),
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
