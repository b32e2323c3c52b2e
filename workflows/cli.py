"""``echocmr loso`` and ``echocmr sweep``: workflows that train and evaluate several models.

They sit above `train` and `eval` (which never import each other): each model is trained through
`train.loop.run_training` and evaluated through `eval.job.run_eval` in process, reusing a
finished MLflow run of the same recipe (`workflows.runs`). Their flags are training's, then
evaluation's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from echocmr.eval.cli import EVAL_FLAGS, add_eval_arguments, eval_overrides

# Flags of `echocmr eval` that `loso` and `sweep --train` do not take as they are: they pass the
# shard set, model, output and MLflow/Ray settings themselves, set --holdout-site (loso), and take
# --config/--seed/--workers/--print-config as training's (--eval-config/--eval-seed/--eval-workers
# are eval's). --gpu and --cache-dir serve both.
_EVAL_SKIP = ("--shards", "--model", "--out", "--config", "--print-config", "--cache-dir",
              "--seed", "--workers", "--gpu", "--address", "--tracking-uri")
_TRAIN_SKIP = ("--print-config", "--register", "--run-name", "--exclude-site")


def _add_orchestrated(p: argparse.ArgumentParser, *, eval_skip: tuple[str, ...],
                      train_skip: tuple[str, ...] = _TRAIN_SKIP) -> None:
    """Training's flags, then evaluation's, for a command that trains and evaluates several
    models (`echocmr loso`, `echocmr sweep --train`)."""
    from echocmr.train.cli import add_train_arguments

    add_train_arguments(p, skip=train_skip)
    add_eval_arguments(p, skip=eval_skip)
    p.add_argument("--eval-config", metavar="FILE",
                   help="YAML config of each evaluation (EvalConfig, as `echocmr eval --config`)")
    p.add_argument("--eval-seed", type=int,
                   help="seed of each evaluation's bootstrap and permutations (default 0)")
    p.add_argument("--eval-workers", type=int,
                   help="Ray tasks per evaluation (default 1: in process)")


def _orchestrated_configs(args: argparse.Namespace, *, exclude_sites=()):
    """``(TrainConfig, EvalConfig)`` from an orchestrating command's flags."""
    from echocmr.eval.job import load_config as load_eval_config
    from echocmr.train.cli import overrides_from_args
    from echocmr.train.config import load_config as load_train_config

    flags = {**vars(args), "exclude_site": list(exclude_sites) or None}
    train = load_train_config(args.config, preset=args.preset,
                              overrides=overrides_from_args(argparse.Namespace(**flags)))
    ns = {flag: getattr(args, flag, None) for flag in EVAL_FLAGS}
    ns.update(seed=args.eval_seed, workers=args.eval_workers, gpu=args.gpu,
              cache_dir=args.cache_dir, no_track=args.no_track,
              pooled_sites=args.pooled_sites)
    evaluation = load_eval_config(args.eval_config,
                                  overrides=eval_overrides(argparse.Namespace(**ns)))
    return train, evaluation


def register(subparsers) -> None:
    _register_sweep(subparsers)
    _register_loso(subparsers)


def _register_loso(subparsers) -> None:
    p = subparsers.add_parser(
        "loso", help="leave-one-site-out: per site, train without it and validate on it",
        description="For each site (default: every site in the manifest): train with that site "
                    "excluded (or reuse a finished MLflow run of the same recipe, data digest "
                    "and left-out site), evaluate it with --holdout-site on that site, and write "
                    "OUT/loso.md and OUT/loso.json: internal beside external AUC per site and "
                    "task, and the external AUCs' mean over sites. Training flags as `echocmr "
                    "train`; evaluation flags as `echocmr eval` (docs/evaluation.md).")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory: loso.md, loso.json, one eval directory per site")
    p.add_argument("--sites", nargs="+", metavar="NAME",
                   help="the sites to leave out in turn (default: every site of the shard set)")
    _add_orchestrated(p, eval_skip=(*_EVAL_SKIP, "--holdout-site"))
    p.set_defaults(func=run_loso_cmd)


def run_loso_cmd(args: argparse.Namespace) -> int:
    from echocmr.config import ConfigError
    from echocmr.workflows.loso import run_loso

    if not args.shards:
        print("echocmr loso: --shards is required", file=sys.stderr)
        return 2
    try:
        train, evaluation = _orchestrated_configs(args)
        result = run_loso(args.shards, train, args.out, eval_config=evaluation, sites=args.sites,
                          tracking_uri=args.tracking_uri, address=args.address)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"echocmr loso: {exc}", file=sys.stderr)
        return 1
    print((Path(args.out) / "loso.md").read_text())
    for s in result.sites:
        print(f"site {s.site}: {'reused' if s.reused else 'trained'} run {s.run_name} "
              f"({s.run_id}), eval in {s.eval_dir}")
    print(f"table in {Path(args.out) / 'loso.md'} and {Path(args.out) / 'loso.json'}")
    return 0


def _register_sweep(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="AUC spread over training seeds beside the sampling CI",
        description="Read the metrics.json of several `echocmr eval` outputs (one model per "
                    "training seed, same split) and print each task's AUC mean, SD and range "
                    "over the seeds beside the mean bootstrap CI width. With --train --seeds "
                    "S1 S2 ... --shards DIR --out OUT: train once per seed (reusing a finished "
                    "run of the same recipe and seed), evaluate each on the same split, and "
                    "write that table to OUT/sweep.md and OUT/sweep.json.")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="eval output directories")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--train", action="store_true",
                   help="train and evaluate one model per --seeds value, then summarise")
    p.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                   help="with --train: the training seeds (data.seed), two or more")
    p.add_argument("--out", metavar="DIR",
                   help="with --train: output directory (sweep.md, sweep.json, seed-<s>/)")
    p.add_argument("--exclude-site", action="append", metavar="NAME",
                   help="with --train: leave site NAME out of every run (repeatable), e.g. the "
                        "--holdout-site")
    # --seeds replaces training's --seed
    _add_orchestrated(p, eval_skip=_EVAL_SKIP, train_skip=(*_TRAIN_SKIP, "--seed"))
    p.set_defaults(func=run_sweep_cmd)


def run_sweep_cmd(args: argparse.Namespace) -> int:
    from echocmr.workflows.sweep import read_evaluations, seed_spread, spread_table

    if args.train:
        return _run_sweep_train(args)
    if not args.dirs:
        print("echocmr sweep: give eval output directories, or --train --seeds ... to train "
              "them", file=sys.stderr)
        return 2
    if args.seeds or args.shards or args.out:
        print("echocmr sweep: --seeds, --shards and --out train a sweep: add --train (and drop "
              "the directories)", file=sys.stderr)
        return 2
    try:
        spread = seed_spread(read_evaluations(args.dirs))
    except (OSError, ValueError, KeyError) as exc:
        print(f"echocmr sweep: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(spread, indent=2) if args.json else spread_table(spread))
    return 0


def _run_sweep_train(args: argparse.Namespace) -> int:
    from echocmr.config import ConfigError
    from echocmr.workflows.sweep import run_seed_sweep, spread_table

    missing = [f for f, v in (("--seeds", args.seeds), ("--shards", args.shards),
                              ("--out", args.out)) if not v]
    if args.dirs or missing:
        print("echocmr sweep --train: " + (f"needs {', '.join(missing)}" if missing else
              f"takes no directories (got {' '.join(args.dirs)})"), file=sys.stderr)
        return 2
    excluded = sorted(set(args.exclude_site or []))
    if args.holdout_site and args.holdout_site not in excluded:
        print(f"echocmr sweep --train: --holdout-site {args.holdout_site} is external only for "
              f"models trained without it: add --exclude-site {args.holdout_site}",
              file=sys.stderr)
        return 2
    try:
        train, evaluation = _orchestrated_configs(args, exclude_sites=excluded)
        doc = run_seed_sweep(args.shards, train, args.seeds, args.out, eval_config=evaluation,
                             tracking_uri=args.tracking_uri, address=args.address)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"echocmr sweep: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(doc["spread"], indent=2) if args.json else spread_table(doc["spread"]))
    for r in doc["runs"]:
        print(f"seed {r['seed']}: {'reused' if r['reused'] else 'trained'} run {r['run_name']} "
              f"({r['run_id']}), eval in {r['eval_dir']}")
    print(f"table in {Path(args.out) / 'sweep.md'} and {Path(args.out) / 'sweep.json'}")
    return 0
