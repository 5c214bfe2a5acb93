"""``dvamn train`` and ``dvamn evaluate``. Ray and torch are imported inside the handlers."""

import argparse
import logging
import sys
from typing import Tuple

from dvamn import console
from dvamn.model_config import RHYTHM_FEATURES, DVAMNConfig
from dvamn.ray_setup import add_address_argument, ensure_ray
from dvamn.scoring_names import DEFAULT_SCORING, SCORINGS
from dvamn.search import DEFAULT_SEARCH, SEARCH_MODES, IndexSettings
from dvamn.training.config import (
    DEFAULT_ONSET_HEAD,
    INITIAL_TEMPERATURE,
    OBJECTIVES,
    TrainConfig,
    epoch_scoring,
)
from dvamn.training.data import QUERY_STRIDE_POSE_FRAMES, AugmentConfig

log = logging.getLogger(__name__)


def _joined(values: Tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def _widths(text: str) -> Tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"widths must be positive integers, got {text!r}")
    return values


SCORING_HELP = (
    "a distance (l2, cosine, logcosh) on raw embeddings; with -std on embeddings "
    "standardised by the training targets' mean and std; with -w also weighted by how "
    f"well training predicted each dimension (default {DEFAULT_SCORING})"
)
# Defaults come from the config dataclasses (TrainConfig, DVAMNConfig, AugmentConfig), which
# import no torch, so that `dvamn --help` stays fast. Network flags default to None,
# meaning DVAMNConfig's value (the paper's), so that only the flags given are recorded.
NETWORK_FLAGS = ("widths", "gru_hidden", "post_gru_widths", "fc_width", "kernel_size", "dropout")


def register(subparsers) -> None:
    _register_train(subparsers)
    _register_evaluate(subparsers)


def _register_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train DVAMN on extracted features with Ray Train",
        description=(
            "Train DVAMN (pose -> audio embeddings) with Ray Train (DDP). Defaults are the "
            "paper's network and optimiser; the width flags make a smaller network for quick "
            "runs on a CPU. Checkpoints and per-epoch metrics go to RUN (local or s3://)."
        ),
    )
    _add_data_and_optimiser_arguments(p)
    _add_network_arguments(p)
    _add_worker_and_validation_arguments(p)
    _add_objective_arguments(p)
    _add_augmentation_arguments(p)
    add_address_argument(p)
    p.set_defaults(func=run_train)


def _add_data_and_optimiser_arguments(p) -> None:
    """FEATURES, RUN, workers, epochs, the layer kind, resume and the optimiser."""
    p.add_argument(
        "features",
        metavar="FEATURES",
        help="output of `dvamn extract` (OUT or OUT/videos), local or s3://",
    )
    p.add_argument("--out", required=True, metavar="RUN", help="run directory (local or s3://)")
    p.add_argument(
        "--workers",
        type=int,
        default=TrainConfig.workers,
        help="Ray Train workers (default %(default)s)",
    )
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="(default %(default)s)")
    p.add_argument(
        "--layer",
        choices=("mfc", "fc"),
        default=DVAMNConfig.layer,
        help="mfc, or the paper's frame-wise fc ablation",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in RUN from its latest checkpoint"
    )
    p.add_argument(
        "--stride",
        type=int,
        default=TrainConfig.stride,
        help="pose frames between training windows (even; default %(default)s = 2 s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=TrainConfig.batch_size,
        help="per worker (default %(default)s, the paper's)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=TrainConfig.lr,
        help="NAdam learning rate (default %(default)s, the paper's)",
    )
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="(default %(default)s)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=TrainConfig.val_fraction,
        help="videos held out, by video id hash (default %(default)s, the paper's 4:1)",
    )


def _add_network_arguments(p) -> None:
    """The network's shape (None: DVAMNConfig's value, see NETWORK_FLAGS)."""
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help=f"dropout in the MFC blocks (default {DVAMNConfig.dropout})",
    )
    p.add_argument(
        "--widths",
        type=_widths,
        default=None,
        help=f"MFC block widths before the GRUs (paper: {_joined(DVAMNConfig.widths)})",
    )
    p.add_argument(
        "--gru-hidden",
        type=int,
        default=None,
        help=f"GRU units per direction (paper: {DVAMNConfig.gru_hidden})",
    )
    p.add_argument(
        "--post-gru-widths",
        type=_widths,
        default=None,
        help=f"MFC blocks after the GRUs (paper: {_joined(DVAMNConfig.post_gru_widths)})",
    )
    p.add_argument(
        "--fc-width",
        type=int,
        default=None,
        help=f"frame-wise FC width (paper: {DVAMNConfig.fc_width})",
    )
    p.add_argument(
        "--kernel-size",
        type=int,
        default=None,
        help=f"MFC kernel in frames (default {DVAMNConfig.kernel_size})",
    )


def _add_worker_and_validation_arguments(p) -> None:
    """Fault tolerance, worker size, per-epoch retrieval scoring and the epoch cap."""
    p.add_argument(
        "--max-failures",
        type=int,
        default=TrainConfig.max_failures,
        help="worker-group restarts allowed (default %(default)s)",
    )
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=TrainConfig.cpus_per_worker,
        help="(default %(default)s)",
    )
    p.add_argument("--scoring", help="how per-epoch retrieval compares: " + SCORING_HELP)
    p.add_argument(
        "--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (smoke runs)"
    )


def _add_objective_arguments(p) -> None:
    """The training objective, the rhythm features and early stopping."""
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=TrainConfig.objective,
        help="logcosh: regress the embeddings (the paper's objective); contrastive: InfoNCE over the "
        "search similarity with hard negatives (other offsets of the same track); both: "
        "log-cosh + --contrastive-weight x contrastive (default %(default)s)",
    )
    p.add_argument(
        "--contrastive-weight",
        type=float,
        default=TrainConfig.contrastive_weight,
        help="weight of the contrastive term (default %(default)s)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"a fixed contrastive temperature (default: learnable, starting at {INITIAL_TEMPERATURE})",
    )
    p.add_argument(
        "--hard-negatives",
        type=int,
        default=TrainConfig.hard_negatives,
        help="per window: its own soundtrack at other offsets, >= 0.6 s away (default %(default)s)",
    )
    p.add_argument(
        "--rhythm",
        choices=tuple(RHYTHM_FEATURES),
        default=None,
        help="rhythm features derived in the network from the pose: none (the paper) or "
        f"accel (joint accelerations, speeds and the motion onset; default {DVAMNConfig.rhythm})",
    )
    p.add_argument(
        "--onset-head",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_ONSET_HEAD,
        help="the network also predicts the music's onset strength per pose frame, trained "
        "against the features' audio_onset channel (and, with a contrastive objective, in "
        "its similarity), for the rhythm term of '+onset' scorings (default: on; "
        "--no-onset-head is the paper's network)",
    )
    p.add_argument(
        "--onset-loss-weight",
        type=float,
        default=TrainConfig.onset_loss_weight,
        help="weight of the onset head's loss, 1 - correlation (default %(default)s)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many epochs without a better checkpoint (default: never)",
    )


def _add_augmentation_arguments(p) -> None:
    aug = p.add_argument_group("pose augmentation (training windows only; default none)")
    aug.add_argument(
        "--aug-mirror",
        type=float,
        default=AugmentConfig.mirror,
        help="probability of a left-right mirror",
    )
    aug.add_argument(
        "--aug-rotate",
        type=float,
        default=AugmentConfig.rotate_deg,
        help="rotation up to +- degrees",
    )
    aug.add_argument(
        "--aug-scale", type=float, default=AugmentConfig.scale, help="scale by 1 +- this"
    )
    aug.add_argument(
        "--aug-drop-frames",
        type=float,
        default=AugmentConfig.drop_frames,
        help="fraction of frames where the dancer is lost, then gap-filled as at inference",
    )
    aug.add_argument(
        "--aug-time-jitter",
        type=int,
        default=AugmentConfig.time_jitter,
        help="pose shifted by up to this many frames (with --aug-drop-frames and spatial "
        "augmentation, measured to take served R@1 on new rules from 0.377 to 0.147: README)",
    )


def _register_evaluate(subparsers) -> None:
    e = subparsers.add_parser(
        "evaluate",
        help="regression and retrieval metrics of a trained model",
        description=(
            "Evaluate a run's best checkpoint (or one checkpoint) on the validation videos: "
            "loss/RMSE/MAE as the paper's Table 1, and retrieval of each window's own "
            "soundtrack among all validation soundtracks at every offset."
        ),
    )
    e.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    e.add_argument("features", metavar="FEATURES")
    e.add_argument("--json", metavar="PATH", help="write the metrics as JSON")
    e.add_argument(
        "--plots",
        metavar="DIR",
        help="write training curves and a query-by-candidate picture (PNG)",
    )
    e.add_argument(
        "--scoring",
        help="report only these ways of comparing (comma-separated, the first on top), or "
        "'all' (default: all but the slow log-cosh ones, cosine-w first, and for a model "
        "with an onset head also cosine-w+onset and cosine-w+qb+onset): "
        + SCORING_HELP
        + "; +qb or +csls: hubness-corrected; +onset: with the rhythm term",
    )
    e.add_argument(
        "--query-stride",
        type=int,
        default=QUERY_STRIDE_POSE_FRAMES,
        help="pose frames between query windows (default %(default)s)",
    )
    e.add_argument("--max-queries", type=int, default=None)
    e.add_argument("--val-fraction", type=float, default=None, help="default: the run's own")
    e.add_argument(
        "--pad-features",
        metavar="FEATURES",
        help="pad the fixed pool of 100 candidates with the soundtracks of this extraction "
        "output (e.g. the training features, when FEATURES is an unseen set evaluated with "
        "--val-fraction 1.0); default: the training-split videos of FEATURES",
    )
    e.add_argument(
        "--search",
        choices=SEARCH_MODES,
        default=DEFAULT_SEARCH,
        help="two-stage: also rank by two-stage search (coarse segment index, then exact "
        "re-ranking; cosine scorings) and report its R@k beside the exhaustive ones, with "
        "their agreement (default %(default)s: exhaustive only)",
    )
    e.add_argument(
        "--search-candidates",
        type=int,
        default=IndexSettings.candidates,
        help="tracks two-stage search re-ranks exactly (default %(default)s)",
    )
    add_address_argument(e)
    e.set_defaults(func=run_evaluate)


def run_train(args: argparse.Namespace) -> int:
    from dvamn.training.train import say_epochs, summary_table, train

    try:
        config = train_config_from_args(args)
    except ValueError as exc:
        print(f"dvamn train: {exc}", file=sys.stderr)
        return 2
    try:
        ensure_ray(args.address)
        with console.stage("train DVAMN (Ray Train)"):
            result = train(config, on_epoch=say_epochs(config.epochs))
    except (ValueError, FileExistsError, FileNotFoundError, FloatingPointError) as exc:
        print(f"dvamn train: {exc}", file=sys.stderr)
        return 2
    print(summary_table(result.history))
    rule = "highest val R@1, ties by loss" if config.retrieval_objective else "lowest val loss"
    print(f"run: {result.run_uri}\nbest checkpoint ({rule}): {result.best_checkpoint}")
    print(f"parameters: {result.parameter_count:,}; elapsed {result.elapsed_s:.0f} s")
    return 0


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """``dvamn train``'s flags as the run's TrainConfig (ValueError on a bad value)."""
    network = {k: getattr(args, k) for k in NETWORK_FLAGS if getattr(args, k) is not None}
    if args.rhythm is not None:
        network["rhythm"] = args.rhythm
    model = DVAMNConfig(layer=args.layer, onset_head=args.onset_head, **network)
    augment = AugmentConfig(
        mirror=args.aug_mirror,
        rotate_deg=args.aug_rotate,
        scale=args.aug_scale,
        drop_frames=args.aug_drop_frames,
        time_jitter=args.aug_time_jitter,
    )
    return TrainConfig(
        features=args.features,
        out=args.out,
        workers=args.workers,
        gpu=args.gpu,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        stride=args.stride,
        val_fraction=args.val_fraction,
        seed=args.seed,
        resume=args.resume,
        model=model,
        max_failures=args.max_failures,
        cpus_per_worker=args.cpus_per_worker,
        scoring=args.scoring or epoch_scoring(args.onset_head),
        max_steps_per_epoch=args.max_steps_per_epoch,
        objective=args.objective,
        contrastive_weight=args.contrastive_weight,
        temperature=args.temperature,
        hard_negatives=args.hard_negatives,
        augment=augment,
        patience=args.patience,
        onset_loss_weight=args.onset_loss_weight,
    )


def run_evaluate(args: argparse.Namespace) -> int:
    from dvamn.training.evaluate import REPORTED_SCORINGS, evaluate

    if args.scoring == "all":
        scorings = (DEFAULT_SCORING, *[s for s in SCORINGS if s != DEFAULT_SCORING])
    else:
        scorings = tuple(args.scoring.split(",")) if args.scoring else REPORTED_SCORINGS
    try:
        ensure_ray(args.address)
        with console.stage(f"evaluate {args.checkpoint} on {args.features}"):
            metrics = evaluate(
                args.checkpoint,
                args.features,
                val_fraction=args.val_fraction,
                query_stride=args.query_stride,
                max_queries=args.max_queries,
                scorings=scorings,
                json_path=args.json,
                plots_dir=args.plots,
                pad_features=args.pad_features,
                search=args.search,
                index_settings=IndexSettings(candidates=args.search_candidates).check(),
            )
    except (ValueError, FileNotFoundError) as exc:
        print(f"dvamn evaluate: {exc}", file=sys.stderr)
        return 2
    print(format_metrics(metrics))
    return 0


def format_metrics(m: dict) -> str:
    from dvamn.model import checkpoint_label
    from dvamn.training.metrics import RETRIEVAL_FIGURES

    lines = [
        f"checkpoint: {m['checkpoint']} ({m['layer']}, {checkpoint_label(m)})",
        f"regression (target units): loss {m['loss']:.3f}  RMSE {m['rmse']:.3f}  MAE {m['mae']:.3f}",
        f"retrieval: {m['num_queries']} queries, {m['pool_size']} candidate tracks",
        f"{'scoring':>11}  "
        + " ".join(f"{t:>8}" for _, t, _ in RETRIEVAL_FIGURES)
        + f" {'offset<=0.5s':>12}",
    ]
    for d, r in m["by_scoring"].items():
        figures = " ".join(f"{fmt.format(r[key]):>8}" for key, _, fmt in RETRIEVAL_FIGURES)
        lines.append(f"{d:>11}  {figures} {r['offset_within_0_5s']:12.3f}")
    chance = {"median_rank": m["chance_median_rank"]}
    chance.update(
        {key: m[f"chance_{key}"] for key, _, _ in RETRIEVAL_FIGURES if key != "median_rank"}
    )
    figures = " ".join(f"{fmt.format(chance[key]):>8}" for key, _, fmt in RETRIEVAL_FIGURES)
    lines.append(f"{'chance':>11}  {figures}")
    two_stage = {d: r["two_stage"] for d, r in m["by_scoring"].items() if "two_stage" in r}
    if two_stage:
        lines.append("two-stage search (coarse index, exact re-ranking), same queries:")
        lines.append(
            f"{'scoring':>11}  {'R@1':>6} {'R@5':>6} {'R@10':>6} {'med.rank':>8} "
            f"{'offset<=0.5s':>12} {'top-1 as exact':>14} {'recall@10':>9}"
        )
        for d, r in two_stage.items():
            if not r.get("available"):
                lines.append(f"{d:>11}  not available: {r['reason']}")
                continue
            lines.append(
                f"{d:>11}  {r['r_at_1']:6.3f} {r['r_at_5']:6.3f} {r['r_at_10']:6.3f} "
                f"{r['median_rank']:8.1f} {r['offset_within_0_5s']:12.3f} "
                f"{r['top1_same']:14.3f} {r['recall_at_10']:9.3f}"
            )
    if "pool100_size" in m:
        lines.append(f"fixed pool of {m['pool100_size']}: {m['pool100_padding']}")
        lines.append(f"{'scoring':>11}  " + " ".join(f"{t:>8}" for _, t, _ in RETRIEVAL_FIGURES))
        for d, r in m["by_scoring"].items():
            figures = " ".join(
                f"{fmt.format(r['pool100_' + key]):>8}" for key, _, fmt in RETRIEVAL_FIGURES
            )
            lines.append(f"{d:>11}  {figures}")
        lines.append(f"{'chance':>11}  {m['pool100_chance_r_at_1']:6.3f}")
    rhythm = m.get("rhythm_baseline")
    if rhythm and rhythm.get("available"):
        lines.append(
            f"rhythm baseline (no training, same queries): R@1 {rhythm['r_at_1']:.3f}  R@5 "
            f"{rhythm['r_at_5']:.3f}  R@10 {rhythm['r_at_10']:.3f}  median rank "
            f"{rhythm['median_rank']:.1f} of {rhythm['pool_size']}; pool of "
            f"{rhythm['pool100_size']}: R@1 {rhythm['pool100_r_at_1']:.3f}  R@5 "
            f"{rhythm['pool100_r_at_5']:.3f}  median rank {rhythm['pool100_median_rank']:.1f}"
        )
    elif rhythm:
        lines.append(f"rhythm baseline: not available ({rhythm['reason']})")
    if m.get("plots"):
        lines.append("plots: " + ", ".join(m["plots"]))
    return "\n".join(lines)
