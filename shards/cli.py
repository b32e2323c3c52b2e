"""``echocmr shards verify | stats | reshard``: the shard toolkit's command line.

Thin: parse, call `shards.verify`, `shards.stats` or `shards.reshard`, print, return an exit code.
Imports of the toolkit happen inside the run functions so ``echocmr --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    """Add ``shards`` and its subcommands to the top-level parser's subparsers."""
    shards = subparsers.add_parser(
        "shards",
        help="check, describe and merge shard sets",
        description="Check, describe and merge shard sets (a "
        "directory or a URL prefix such as s3://bucket/set).",
    )
    sub = shards.add_subparsers(dest="shards_command", metavar="ACTION")

    verify = sub.add_parser("verify", help="check every shard, index, sample and the manifest")
    verify.add_argument("dir", help="shard set directory or URL")
    verify.add_argument(
        "--decode",
        action="store_true",
        help="also decode every clip through DALI on CPU and check frame counts",
    )
    verify.add_argument("--json", action="store_true", help="print problems as JSON")
    verify.add_argument(
        "--allow-extra-files",
        action="store_true",
        help="report files in the set's directory that are not the set's as warnings, not "
        "problems (default: each one is a problem)",
    )
    _address_option(verify)
    verify.set_defaults(func=run_verify)

    stats = sub.add_parser("stats", help="clips, patients, labels, shard sizes per split")
    stats.add_argument("dir", help="shard set directory or URL")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=run_stats)

    reshard = sub.add_parser(
        "reshard",
        help="merge shard sets (e.g. add a site) into even, site-mixed shards",
        description="Merge shard sets into a new one. Splits are kept; samples are shuffled "
        "within each split across inputs; every sample is checked against its input's "
        "manifest as it is copied and the output set is verified before success. "
        "ingest_report.parquet is never copied.",
    )
    reshard.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="DIR",
        help="input shard sets (directories or URLs)",
    )
    reshard.add_argument(
        "--out",
        required=True,
        help="output directory or URL (new or a "
        "previous reshard's output: a re-run finishes an interrupted job)",
    )
    size = reshard.add_mutually_exclusive_group()
    size.add_argument(
        "--samples-per-shard",
        type=int,
        default=None,
        metavar="N",
        help="samples per output shard (default 256)",
    )
    size.add_argument(
        "--shard-mb",
        type=float,
        default=None,
        metavar="M",
        help="target shard size in MB instead of a sample count",
    )
    reshard.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    reshard.add_argument("--exclude-site", action="append", default=[], metavar="NAME",
                         help="leave this site out (repeatable): train without it, then "
                              "`echocmr eval --holdout-site NAME` on a set that has it")
    reshard.add_argument(
        "--decode", action="store_true", help="verify the output with --decode (every clip decoded)"
    )
    _address_option(reshard)
    reshard.set_defaults(func=run_reshard)

    shards.set_defaults(func=lambda args: _help(shards))


def _address_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        metavar="RAY",
        help="run one task per shard on this Ray cluster (auto, HOST:PORT, ray://HOST:10001; "
        "default $RAY_ADDRESS, else here); the set must be at a path every node sees or a URL",
    )


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_verify(args: argparse.Namespace) -> int:
    from echocmr.shards.distributed import resolve_address
    from echocmr.shards.verify import format_problems, problems_json, summary_line, verify_set

    report = verify_set(args.dir, decode=args.decode, address=resolve_address(args.address),
                        allow_extra_files=args.allow_extra_files)
    problems = report.problems
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(problems_json(problems))
    elif problems:
        print(format_problems(problems))
    print(summary_line(args.dir, problems, args.decode), file=sys.stderr if args.json else None)
    return 1 if problems else 0


def run_stats(args: argparse.Namespace) -> int:
    from echocmr.shards.reader import IncompleteShardSetError
    from echocmr.shards.stats import describe, format_table

    try:
        report = describe(args.dir)
    except IncompleteShardSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def run_reshard(args: argparse.Namespace) -> int:
    from echocmr.shards.distributed import resolve_address
    from echocmr.shards.reshard import ReshardConfig, ReshardError, reshard

    config = ReshardConfig(
        samples_per_shard=args.samples_per_shard,
        shard_mb=args.shard_mb,
        seed=args.seed,
        verify_decode=args.decode,
        exclude_sites=tuple(args.exclude_site),
    )
    try:
        summary = reshard(args.input, args.out, config=config,
                          address=resolve_address(args.address))
    except ReshardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = sum(summary.clips.values())
    per_split = ", ".join(
        f"{s} {summary.clips[s]} clips / {summary.shards[s]} shards" for s in summary.clips
    )
    print(
        f"{summary.out}: {total} clips ({per_split}); {summary.written} shards written, "
        f"verified OK in {summary.seconds:.1f} s"
    )
    return 0
