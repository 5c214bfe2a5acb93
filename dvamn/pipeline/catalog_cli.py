"""``dvamn catalog``: embed a music collection (or an extraction's soundtracks) for matching."""

import argparse
import sys

from dvamn import console
from dvamn.audio import add_audio_arguments
from dvamn.pipeline.catalog import CatalogConfig
from dvamn.ray_setup import add_address_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "catalog",
        help="build the music catalog (per-track audio embeddings) with Ray Data",
        description=(
            "Decode every audio file of MUSIC to 16 kHz mono and store its audio-embedding "
            "sequence (128 values every 0.2 s) as Parquet in a new version of the catalog: "
            "OUT/versions/ID/ holds tracks/, errors/ (failed inputs) and manifest.json, and "
            "OUT/CURRENT names the current version. A build becomes current only when it is "
            "complete, so a running service (or a failed build) never sees a partial catalog; "
            "older versions stay readable (see --keep-versions). MUSIC is a directory, glob, list "
            "file or s3:// prefix of audio files (wav, mp3, flac, ogg, m4a, ...: anything PyAV "
            "decodes), or an extraction output (a directory with videos/ from `dvamn extract`) "
            "whose soundtracks become the tracks, reusing their embeddings. Use the same "
            "--audio embedding as the model you will serve: the service refuses a mismatch."
        ),
    )
    parser.add_argument("music", metavar="MUSIC", help="audio files or an extraction output")
    parser.add_argument("--out", required=True, metavar="CATALOG", help="output dir or URI")
    add_audio_arguments(
        parser,
        default_kind=CatalogConfig.audio,
        kind_note="; ignored for an extraction output, whose embedding is reused",
        device_flag="--device",
    )
    parser.add_argument(
        "--actors",
        type=int,
        default=CatalogConfig.max_actors,
        help="max embedding actors (default %(default)s)",
    )
    parser.add_argument(
        "--cpus-per-actor",
        type=float,
        default=CatalogConfig.num_cpus_per_actor,
        help="Ray CPUs per actor, may be < 1 (default %(default)s)",
    )
    parser.add_argument(
        "--max-duration",
        type=float,
        default=CatalogConfig.max_duration_s,
        metavar="S",
        help="audio files longer than S seconds are recorded as errors (default: %(default)g)",
    )
    parser.add_argument("--limit", type=int, help="only the first N inputs (smoke runs)")
    parser.add_argument(
        "--keep-versions",
        type=int,
        default=3,
        metavar="N",
        help="complete versions to keep, the new current one included; older ones are "
        "removed after the new one is current (default: %(default)s)",
    )
    parser.add_argument(
        "--index-checkpoint",
        metavar="RUN",
        help="also build two-stage search's coarse index (dvamn.search) into the catalog "
        "version, in the scoring space of this checkpoint or training run (the one the "
        "service will load), its tracks encoded on Ray Data; without it, `dvamn serve "
        "--search two-stage` builds the index at every replica start",
    )
    parser.add_argument(
        "--index-scoring",
        default=CatalogConfig.index_scoring,
        help="the service's scoring the index is for (a cosine one; default %(default)s)",
    )
    add_address_argument(parser)
    parser.set_defaults(func=run_catalog)


def run_catalog(args: argparse.Namespace) -> int:
    from dvamn.pipeline.catalog import build_catalog
    from dvamn.ray_setup import ensure_ray

    try:
        config = CatalogConfig(
            music=args.music,
            out=args.out,
            audio=args.audio,
            vggish_weights=args.vggish_weights,
            vggish_pca=args.vggish_pca,
            device=args.audio_device,
            max_actors=args.actors,
            num_cpus_per_actor=args.cpus_per_actor,
            limit=args.limit,
            max_duration_s=args.max_duration,
            keep_versions=args.keep_versions,
            index_checkpoint=args.index_checkpoint,
            index_scoring=args.index_scoring,
        )
        ensure_ray(args.address)
        with console.stage(f"embed the tracks of {config.music} (Ray Data)"):
            summary = build_catalog(config)
    except (FileNotFoundError, ValueError) as exc:
        print(f"dvamn catalog: {exc}", file=sys.stderr)
        return 2
    print(
        f"catalog {summary.out}: {summary.num_tracks} tracks "
        f"({summary.total_duration_s / 60:.1f} min), {summary.num_errors} errors of "
        f"{summary.num_inputs} inputs; embedding {summary.audio_embedding_kind}, "
        f"version {summary.version}; {summary.num_playable} tracks playable by the service"
    )
    version = f"{summary.out.rstrip('/')}/versions/{summary.version_id}"
    print(f"current version: {version}")
    if summary.num_errors:
        print(f"failed inputs: {version}/errors/")
    return 0 if summary.num_tracks else 1
