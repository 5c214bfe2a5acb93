"""``dvamn convert-aist KEYPOINTS2D --out DIR [--view N]``: AIST++ pickles to our .npz."""

import argparse
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-aist",
        help="convert AIST++ keypoints2d pickles to keypoint .npz files, once",
        description=(
            "Convert AIST++ keypoints2d pickles (<sequence>.pkl, 9 camera views each) to "
            "keypoint .npz files (keypoints [T,17,2] pixels, scores [T,17], fps 60, width "
            "1920, height 1080), one per camera view, named like the AIST video of that "
            "view (gBR_sBM_cAll_d04_mBR0_ch01.pkl -> gBR_sBM_c01_d04_mBR0_ch01.npz ... "
            "c09). Run it once where the data arrives; then `dvamn extract --pose keypoints "
            "--keypoints-dir OUT` reads the .npz files and nothing on the cluster ever "
            "unpickles. The pickles are read with the hardened reader (only numpy's array "
            "pickling, size and shape limits checked before anything is allocated). Prints "
            "a line per file, an error line per file it refuses, and exits 1 if any failed."
        ),
    )
    parser.add_argument(
        "input",
        metavar="KEYPOINTS2D",
        help="AIST++ keypoints2d folder (searched recursively for .pkl), a glob, a list file "
        "or one .pkl; local or s3://",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder or URI")
    parser.add_argument(
        "--view",
        type=int,
        default=None,
        choices=range(9),
        metavar="N",
        help="write only camera view N (0-8, camera c01-c09); default: every view",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dvamn import storage
    from dvamn.pose.keypoint_files import KeypointFileError, convert_aist_pickle

    try:
        inputs = storage.list_inputs(args.input, extensions=(".pkl",))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    width = len(str(len(inputs)))
    failed = written = 0
    for index, uri in enumerate(inputs, start=1):
        started = time.perf_counter()
        prefix = f"[{index:>{width}}/{len(inputs)}] {uri}"
        try:
            outputs = convert_aist_pickle(uri, args.out, view=args.view)
        except (KeypointFileError, OSError) as error:
            failed += 1
            print(f"{prefix}: error: {error}", file=sys.stderr)
            continue
        written += len(outputs)
        print(f"{prefix} -> {len(outputs)} .npz ({time.perf_counter() - started:.2f} s)")
    print(
        f"converted {len(inputs) - failed} of {len(inputs)} pickles into {written} .npz files "
        f"in {args.out}; {failed} failed"
    )
    return 1 if failed else 0
