"""``dvamn synth OUT --videos N --seconds S [--seed K] [--broken M]``."""

import argparse
import os
import sys

from dvamn import console
from dvamn.constants import MIN_DURATION_S

# Named here, not imported, so that `dvamn --help` imports no numpy; a test checks that
# they are dvamn.synth.families.FAMILY_NAMES.
FAMILY_NAMES = ("classic", "swap", "swing", "halftime", "melodic", "random")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write synthetic dance videos (mp4 + true keypoints) for offline runs",
        description=(
            "Write synthetic dance videos: H.264 + AAC mp4 files whose music is synthesised "
            "(tempo 70-170 BPM, 3/4 or 4/4, key, timbre, drums, energy sections) and whose "
            "stick-figure dancer moves to that music. Beside each dance_NNNN.mp4 a "
            "dance_NNNN.npz holds the true COCO-17 keypoints (keypoints [T,17,2] pixels, "
            "scores [T,17], fps, width, height); synth.json lists each video's music. "
            "Deterministic for a seed."
        ),
    )
    parser.add_argument("out", metavar="OUT", help="output folder or URI (e.g. s3://bucket/synth)")
    parser.add_argument("--videos", type=int, default=40, help="dance videos to write (default 40)")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="length of each video in s (default 20)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--broken",
        type=int,
        default=0,
        help="also write this many bad files, cycling through: zero-byte, text named .mp4, "
        "truncated, corrupt, no audio, too short, nobody visible, huge resolution",
    )
    parser.add_argument(
        "--track-seconds",
        type=float,
        default=None,
        help="length of each music track (default: --seconds); each video dances to a cut "
        "of its track at a random offset, recorded in synth.json",
    )
    parser.add_argument(
        "--write-music",
        action="store_true",
        help="also write each whole track as OUT/music/dance_NNNN.wav (for a music catalog)",
    )
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--family",
        default=None,
        metavar="NAME",
        help="choreography family: how the dancer answers the music (default classic, the "
        "original generator); one of " + ", ".join(FAMILY_NAMES) + "; random draws each "
        "video's own rules (which body part answers which instrument, phrasing, swing, "
        "style, camera, detector noise) from its seed, never melodic's, and records them "
        "in synth.json",
    )
    choice.add_argument(
        "--families",
        default=None,
        metavar="A,B,...",
        help="several families, each video getting one (equal shares, order shuffled by "
        "--seed); the family of each video is in synth.json",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="parallel processes (default: all cores)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dvamn.synth.families import DEFAULT_FAMILY, parse_families
    from dvamn.synth.generate import synthesize

    try:
        families = parse_families(args.families or args.family or DEFAULT_FAMILY)
    except ValueError as exc:
        print(f"dvamn synth: {exc}", file=sys.stderr)
        return 2
    if args.family and len(families) != 1:
        print("dvamn synth: --family takes one name; use --families A,B,C", file=sys.stderr)
        return 2

    if args.seconds < MIN_DURATION_S:
        print(
            f"warning: {args.seconds:g} s videos are shorter than the {MIN_DURATION_S:g} s "
            "training window; extraction will reject them",
            file=sys.stderr,
        )

    def progress(done: int, total: int, what: str, entry: dict, took_s: float) -> None:
        if what == "video":
            music = entry["music"]
            detail = (
                f"{entry['duration_s']:.1f} s {entry['width']}x{entry['height']} "
                f"{entry['fps']:g} fps{' (variable)' if entry['variable_frame_rate'] else ''}, "
                f"{music['tempo_bpm']:g} BPM {music['meter_name']} {music['key_name']} "
                f"{music['timbre']}, {entry['family']}"
            )
        else:
            detail = f"broken: {entry['kind']}"
        console.say(
            f"[{done:>{len(str(total))}}/{total}] {entry['video']}  {detail}  ({took_s:.1f} s)"
        )
        bar.update(1)

    with console.progress(total=args.videos + args.broken, desc="files", unit="file") as bar:
        result = synthesize(
            args.out,
            args.videos,
            args.seconds,
            seed=args.seed,
            broken=args.broken,
            track_seconds=args.track_seconds,
            write_music=args.write_music,
            workers=args.workers,
            progress=progress,
            families=families,
        )
    print(
        f"wrote {len(result.videos)} videos and {len(result.broken)} broken files to "
        f"{result.out_dir} in {result.elapsed_s:.1f} s; manifest {result.manifest}"
    )
    return 0
