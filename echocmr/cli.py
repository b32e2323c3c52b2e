"""The `echocmr` command line.

One entry point; each package contributes its subcommands through ``register(subparsers)`` in its
own ``cli`` module. Those modules import nothing heavy at import time, so ``echocmr --help`` is
instant and a subcommand only pays for the libraries it uses. The providers are imported
statically: a provider that fails to import is an ImportError here, never a missing subcommand.
"""

from __future__ import annotations

import argparse
import logging
import sys

from echocmr import demo
from echocmr.cluster import cli as cluster_cli
from echocmr.eval import cli as eval_cli
from echocmr.ingest import cli as ingest_cli
from echocmr.ingest.synth import cli as synth_cli
from echocmr.model import cli as model_cli
from echocmr.shards import cli as shards_cli
from echocmr.train import cli as train_cli
from echocmr.views import cli as views_cli
from echocmr.workflows import cli as workflows_cli

# Subcommand providers, in the order `--help` lists them.
_PROVIDERS = (synth_cli, ingest_cli, shards_cli, train_cli, views_cli, eval_cli, model_cli,
              workflows_cli, cluster_cli, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echocmr",
        description="Train video networks on echo clips to predict cardiac-MRI labels.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for provider in _PROVIDERS:
        provider.register(sub)
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
