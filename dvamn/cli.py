"""The ``dvamn`` command: one subcommand per stage of the product.

Each stage keeps its own arguments next to its code: a module listed in ``COMMAND_MODULES``
has ``register(subparsers)``, which adds its subcommand(s) with ``func`` set to a handler
``handler(args) -> int``. Those modules import Ray and torch inside the handlers so that
``dvamn --help`` stays fast.
"""

import argparse
import importlib
import sys
from typing import Optional, Sequence

from dvamn import console

COMMAND_MODULES = (
    "dvamn.demo",
    "dvamn.synth.cli",
    "dvamn.pipeline.cli",
    "dvamn.pose.convert_cli",
    "dvamn.training.cli",
    "dvamn.pipeline.catalog_cli",
    "dvamn.serving.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dvamn",
        description=(
            "Recommend music for a silent dance video. Start with `dvamn demo`: it "
            "synthesises dance videos, extracts features with Ray Data, trains DVAMN with "
            "Ray Train, builds a music catalog and answers queries with Ray Serve, offline."
        ),
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every log record on the console, Ray's internal ones included (by "
        "default they go to a log file whose path is printed at the end)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with console.session(args.command, args.verbose):
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            where = console.where_logs_went()
            if where:
                print(where, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
