"""The `echocmr` command line.

One entry point; each package contributes its subcommands through ``register(subparsers)`` in its
own ``cli`` module. Those modules import nothing heavy at import time, so ``echocmr --help`` is
instant and a subcommand only pays for the libraries it uses.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Subcommand providers, in the order `--help` lists them. A module that fails to import is a bug,
# not an optional feature: let the ImportError surface.
_PROVIDERS = (
    "ingest.synth.cli",
    "ingest.cli",
    "shards.cli",
    "train.cli",
    "eval.cli",
    "cluster.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echocmr",
        description="Train video networks on echo clips to predict cardiac-MRI labels.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _PROVIDERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):  # provider not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
