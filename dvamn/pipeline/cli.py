"""`dvamn extract`: the feature-extraction job."""

import argparse
import sys

from dvamn.audio import add_audio_arguments
from dvamn.pipeline.config import ExtractConfig, StageResources
from dvamn.pose.flags import add_pose_arguments
from dvamn.ray_setup import add_address_argument

EPILOG = """\
examples:
  dvamn extract data/videos --out features --pose keypoints --audio logmel
  dvamn extract 's3://bucket/dance/*.mp4' --out s3://bucket/features --pose rtmo
  dvamn extract list.txt --out features --pose rtmo --pose-model models/rtmo-m.onnx \\
      --vggish-weights weights/vggish.pth --vggish-pca weights/vggish_pca.pth

Outputs: OUT/videos/ (Parquet, a row per video), OUT/errors/ (Parquet, a row per input
that failed, with the stage and a message), OUT/manifest.json (counts, options,
versions). Running again on the same OUT skips finished videos and retries failed ones;
parts appear only complete, so a killed job is finished by running it again (a part that
cannot be read is moved to OUT/unreadable/ and its videos are redone).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="extract pose and audio features from dance videos (Ray Data)",
        description="Extract normalised pose sequences (10 fps, 68 values a frame) and audio "
        "embeddings (5 Hz, 128 values) from dance videos with Ray Data, into Parquet.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "input", metavar="INPUT", help="directory, glob, list file (.txt) or s3:// prefix of videos"
    )
    parser.add_argument("--out", required=True, metavar="OUT", help="output directory or s3:// URI")
    add_pose_arguments(parser, default=ExtractConfig.pose)
    parser.add_argument(
        "--keypoints-dir",
        metavar="DIR",
        help="with --pose keypoints: where the keypoint files are (default: beside each video). "
        "AIST++ keypoints2d/*.pkl are found from the video's name",
    )
    parser.add_argument(
        "--aist-view",
        type=int,
        metavar="N",
        help="AIST++ camera view 0-8 (default: from the video name)",
    )
    add_audio_arguments(parser, default_kind=ExtractConfig.audio)
    tuning = parser.add_argument_group("limits and tuning")
    tuning.add_argument(
        "--frame-batch",
        type=int,
        default=ExtractConfig.frame_batch_size,
        help="frames per pose-model call (default %(default)s)",
    )
    tuning.add_argument(
        "--max-gap",
        type=int,
        default=ExtractConfig.max_gap_frames,
        help="longest run of frames without the dancer that is interpolated (default %(default)s)",
    )
    tuning.add_argument(
        "--max-pixels",
        type=int,
        default=ExtractConfig.max_frame_pixels,
        help="refuse videos whose frames have more pixels (default %(default)s)",
    )
    tuning.add_argument(
        "--max-duration",
        type=float,
        default=ExtractConfig.max_duration_s,
        metavar="S",
        help="videos longer than S seconds become error rows (default %(default)g)",
    )
    tuning.add_argument("--limit", type=int, help="only the first N inputs (smoke runs)")
    for stage, defaults in (
        ("pose", StageResources()),
        ("audio", ExtractConfig("", "").audio_stage),
    ):
        tuning.add_argument(
            f"--{stage}-actors",
            type=int,
            default=defaults.max_actors,
            help=f"max actors in the {stage} stage's pool (default {defaults.max_actors})"
            + (
                "; with --pose keypoints the audio actors do the pose step"
                if stage == "pose"
                else ""
            ),
        )
        tuning.add_argument(
            f"--{stage}-cpus",
            type=float,
            default=defaults.num_cpus,
            help=f"CPUs per {stage} actor (default {defaults.num_cpus})",
        )
        tuning.add_argument(
            f"--{stage}-gpus",
            type=float,
            default=defaults.num_gpus,
            help=f"GPUs per {stage} actor, e.g. 0.5 (default {defaults.num_gpus})",
        )
        tuning.add_argument(
            f"--{stage}-batch",
            type=int,
            default=defaults.videos_per_batch,
            help=f"videos per call of a {stage} actor (default {defaults.videos_per_batch})",
        )
    add_address_argument(parser)
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ExtractConfig:
    def stage(name: str) -> StageResources:
        return StageResources(
            min_actors=1,
            max_actors=getattr(args, f"{name}_actors"),
            num_cpus=getattr(args, f"{name}_cpus"),
            num_gpus=getattr(args, f"{name}_gpus"),
            videos_per_batch=getattr(args, f"{name}_batch"),
        )

    return ExtractConfig(
        input=args.input,
        out=args.out,
        pose=args.pose,
        pose_model=args.pose_model,
        pose_detector=args.pose_detector,
        keypoints_dir=args.keypoints_dir,
        aist_view=args.aist_view,
        audio=args.audio,
        vggish_weights=args.vggish_weights,
        vggish_pca=args.vggish_pca,
        device=args.device,
        audio_device=args.audio_device,
        frame_batch_size=args.frame_batch,
        max_gap_frames=args.max_gap,
        max_frame_pixels=args.max_pixels,
        max_duration_s=args.max_duration,
        limit=args.limit,
        pose_stage=stage("pose"),
        audio_stage=stage("audio"),
    )


def run(args: argparse.Namespace) -> int:
    from dvamn.pipeline.extract import run_extract
    from dvamn.ray_setup import ensure_ray

    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"dvamn extract: {error}", file=sys.stderr)
        return 2
    from dvamn import console

    ensure_ray(args.address)
    try:
        with console.stage(f"extract pose and audio features of {config.input} (Ray Data)"):
            summary = run_extract(config)
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"dvamn extract: {error}", file=sys.stderr)
        return 1
    print("\nextraction summary")
    for line in summary.lines():
        print("  " + line)
    return 0 if summary.done + summary.already_done > 0 or summary.inputs == 0 else 1
