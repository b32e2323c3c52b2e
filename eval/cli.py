"""``echocmr eval``, ``echocmr predict`` and ``echocmr models list|pull``.

Thin entry points: parse flags, load the config (`eval.job.load_config`: defaults <- ``--config
FILE`` <- flags; ``eval --print-config`` prints it), call `eval.job`, `eval.predict` and
`eval.registry`, print a short summary. Nothing heavy (torch, DALI, MLflow, Ray) is imported at
module level, so ``echocmr --help`` stays instant. MLflow: ``--tracking-uri``, else
``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from echocmr.config import flag_adder

_TRACKING_HELP = "MLflow URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
_MODEL_HELP = ("models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, a directory from "
               "`echocmr models pull`, or a checkpoint directory / checkpoint.pt")


def register(subparsers) -> None:
    _register_eval(subparsers)
    _register_predict(subparsers)
    _register_models(subparsers)
    _register_sweep(subparsers)
    _register_loso(subparsers)


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
    from echocmr.eval.loso import run_loso

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
    from echocmr.eval.sweep import read_evaluations, seed_spread, spread_table

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
    from echocmr.eval.sweep import run_seed_sweep, spread_table

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


def _register_eval(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="study-level AUCs with bootstrap and DeLong CIs, a signal audit, reports",
        description="Run a model over every clip of a split, average per video and study, and "
                    "write predictions, metrics.json, report.md/html (beside the published "
                    "table) to --out; log them to MLflow. Settings: defaults <- --config FILE "
                    "<- flags (docs/configuration.md).")
    add_eval_arguments(p)
    p.add_argument("--predictions", metavar="FILE",
                   help="judge a table of any model's per-study predictions (Parquet or CSV: "
                        "patient, study, [site, view, split,] y_<task>, p_<task>) instead of "
                        "--shards and --model: the same statistics and report")
    p.set_defaults(func=run_eval_cmd)


def add_eval_arguments(p: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """`echocmr eval`'s flags on ``p``, less those in ``skip`` (`echocmr loso` and `echocmr sweep
    --train` share the others, and set or rename these)."""
    add = flag_adder(p, skip)
    add("--shards",
        help="shard set: a directory, or a URL (s3://, gs://) staged to local disk; "
             "required unless --print-config")
    add("--model", metavar="URI",
        help=f"{_MODEL_HELP}; required unless --print-config")
    add("--out", metavar="DIR", help="output directory; required unless --print-config")
    add("--config", metavar="FILE",
        help="YAML config (EvalConfig: split, infer, evaluation, track)")
    add("--print-config", action="store_true",
        help="print the resolved config as YAML and exit without evaluating")
    add("--cache-dir", metavar="DIR",
        help="where a URL shard set is staged (default $ECHOCMR_CACHE, else "
             "~/.cache/echocmr/shards)")
    # The names of shards.format.SPLITS, spelled out: importing it (numpy, pyarrow) would slow
    # --help.
    add("--split", choices=("train", "val", "test"), help="split (default test)")
    add("--clips", choices=("all", "centre"),
        help="all windows over each video (default) or the centre one")
    add("--stride", type=int, metavar="FRAMES",
        help="frames between window starts (default: half a window's span; 1 = every "
             "clip)")
    add("--aggregation", choices=("mean", "stacker"),
        help="videos -> study: mean of probabilities (default), or a per-view "
             "logistic regression fitted on val")
    add("--bootstrap", type=int, metavar="N",
        help="patient bootstrap resamples (>= 1000; default 2000)")
    add("--permutations", type=int, metavar="N",
        help="label permutations of the signal audit (default 2000)")
    add("--seed", type=int,
        help="seed of the bootstrap and permutations (default 0)")
    add("--alpha", type=float, help="significance level of the audit (default 0.05)")
    add("--correction", choices=("holm", "none"),
        help="multiple-testing adjustment of the verdicts over the tasks (holm)")
    add("--min-positives", type=int, metavar="N",
        help="fewer positive (or negative) studies: 'insufficient data' (default 5)")
    add("--pooled-sites", action="store_true", default=None,
        help="permutation audit across sites (default: within site when there are "
             "several, so a model that recognises the site is not 'signal')")
    add("--holdout-site", metavar="NAME",
        help="external validation: judge the split's studies of site NAME (one the "
             "model never trained on), beside the other sites' (internal)")
    add("--threshold", choices=("youden", "sensitivity", "none"),
        help="operating point: threshold chosen on val, applied to the split (youden)")
    add("--min-patients", type=int, metavar="N",
        help="fewer patients with a positive (or a negative) study: 'insufficient "
             "data' (default 10)")
    add("--ci-method", choices=("percentile", "bca"),
        help="patient bootstrap interval: percentile (default) or bca")
    add("--workers", type=int,
        help="Ray tasks to spread the split's shards over (default 1: in process)")
    add("--gpu", action="store_true", default=None,
        help="CUDA model and DALI mixed decoding")
    add("--batch-size", type=int, help="windows per forward pass (default 16)")
    add("--address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    add("--tracking-uri", help=_TRACKING_HELP)
    add("--no-track", action="store_true", help="do not log to MLflow")


# Flag -> the config keys it sets (``--seed`` and ``--min-positives`` each set two).
EVAL_FLAGS: dict[str, tuple[str, ...]] = {
    "split": ("split",),
    "clips": ("infer.clips",),
    "stride": ("infer.stride",),
    "workers": ("infer.workers",),
    "gpu": ("infer.gpu",),
    "batch_size": ("infer.batch_size",),
    "cache_dir": ("infer.cache_dir",),
    "aggregation": ("evaluation.aggregation",),
    "bootstrap": ("evaluation.summary.metrics.n_bootstrap",),
    "seed": ("evaluation.summary.metrics.seed", "evaluation.summary.signal.seed"),
    "min_positives": ("evaluation.summary.metrics.min_positives",
                      "evaluation.summary.metrics.min_negatives"),
    "threshold": ("evaluation.threshold",),
    "holdout_site": ("evaluation.holdout_site",),
    "min_patients": ("evaluation.summary.metrics.min_positive_patients",
                     "evaluation.summary.metrics.min_negative_patients"),
    "ci_method": ("evaluation.summary.metrics.ci_method",),
    "permutations": ("evaluation.summary.signal.n_permutations",),
    "alpha": ("evaluation.summary.signal.alpha",),
    "correction": ("evaluation.summary.signal.correction",),
}


def eval_overrides(args: argparse.Namespace) -> dict:
    """The flags that were given, as a nested `EvalConfig` dict."""
    out: dict = {}
    for flag, keys in EVAL_FLAGS.items():
        value = getattr(args, flag, None)
        for key in keys if value is not None else ():
            *sections, name = key.split(".")
            node = out
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = value
    if getattr(args, "no_track", False):
        out["track"] = False
    if getattr(args, "pooled_sites", None):
        out.setdefault("evaluation", {}).setdefault("summary", {}).setdefault(
            "signal", {})["within_site"] = False
    return out


def _register_predict(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="per-study probabilities for raw DICOM files",
        description="Preprocess DICOM files exactly as ingest does, run the model over their "
                    "clips and write per-study probabilities (CSV or JSON by --out's extension). "
                    "Files that cannot be used are reported with the reason.")
    p.add_argument("--model", required=True, metavar="URI", help=_MODEL_HELP)
    p.add_argument("--out", required=True, metavar="FILE", help="output .csv or .json")
    p.add_argument("dicom", nargs="+", metavar="DICOM", help="DICOM files")
    p.add_argument("--clips", default="all", choices=("all", "centre"))
    p.add_argument("--stride", type=int, metavar="FRAMES")
    p.add_argument("--ingest-config", metavar="FILE",
                   help="the ingest YAML the training shards were made with (default: ingest's "
                        "defaults at the model's clip size and frame rate)")
    p.add_argument("--tracking-uri", help=_TRACKING_HELP)
    p.set_defaults(func=run_predict_cmd)


def _register_models(subparsers) -> None:
    p = subparsers.add_parser("models", help="list registered models; pull one for offline use")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    ls = sub.add_parser("list", help="registered models: versions, aliases, val AUCs, data digest")
    ls.add_argument("--name", help="only this registered model")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.add_argument("--tracking-uri", help=_TRACKING_HELP)
    ls.set_defaults(func=run_models_list_cmd)
    pull = sub.add_parser("pull", help="copy NAME@ALIAS or NAME/VERSION to a directory that "
                                       "eval and predict load without MLflow")
    pull.add_argument("ref", metavar="NAME@ALIAS", help="e.g. echo@champion or echo/3")
    pull.add_argument("--out", required=True, metavar="DIR")
    pull.add_argument("--tracking-uri", help=_TRACKING_HELP)
    pull.set_defaults(func=run_models_pull_cmd)
    promote = sub.add_parser(
        "promote", help="point an alias (champion) at a version by hand, recording who and why",
        description="Override the val-AUC alias policy: set --alias on NAME VERSION and record "
                    "on the version who did it (user name), when, and --reason.")
    promote.add_argument("name", metavar="NAME")
    promote.add_argument("version", metavar="VERSION")
    promote.add_argument("--alias", default="champion", help="alias to set (default champion)")
    promote.add_argument("--reason", required=True, help="why (recorded on the version)")
    promote.add_argument("--tracking-uri", help=_TRACKING_HELP)
    promote.set_defaults(func=run_models_promote_cmd)
    relog = sub.add_parser(
        "relog", help="re-log a version in the current model format (a new version)",
        description="Re-log NAME VERSION, logged by an older echocmr (a pickled network), as a "
                    "new version in the current format: weights from --checkpoint, else its "
                    "run's recorded checkpoint, else the old model itself. Tags, description "
                    "and aliases move to the new version.")
    relog.add_argument("name", metavar="NAME")
    relog.add_argument("version", metavar="VERSION")
    relog.add_argument("--checkpoint", metavar="PATH",
                       help="checkpoint directory or checkpoint.pt to take the weights from")
    relog.add_argument("--tracking-uri", help=_TRACKING_HELP)
    relog.set_defaults(func=run_models_relog_cmd)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_eval_cmd(args: argparse.Namespace) -> int:
    if getattr(args, "predictions", None):
        from echocmr.eval.predictions import run_predictions_cmd

        return run_predictions_cmd(args, overrides=eval_overrides(args))
    from echocmr.config import resolve_for_command
    from echocmr.eval.job import load_config, run_eval

    config, done = resolve_for_command(
        "eval", lambda: load_config(args.config, overrides=eval_overrides(args)),
        print_config=args.print_config,
        required={"--shards": args.shards, "--model": args.model, "--out": args.out})
    if done is not None:
        return done
    try:
        outcome = run_eval(args.shards, args.model, args.out, config=config,
                           tracking_uri=args.tracking_uri, address=args.address)
    except (FileNotFoundError, ValueError) as exc:
        print(f"echocmr eval: {exc}", file=sys.stderr)
        return 1
    holdout = config.evaluation.holdout_site
    ev = outcome.evaluation
    if holdout is not None and ev.internal is not None:
        from echocmr.eval.report import external_table_text

        print(f"study-level AUCs, internal (other sites, {config.split} split) beside external "
              f"(site {holdout}, {', '.join(ev.external_splits or [])}):")
        print(external_table_text(ev.results, ev.internal))
        print()
    judged = (f"site {holdout}, {', '.join(ev.external_splits or [config.split])}" if holdout
              else f"{config.split} split")
    print(f"study-level AUCs, {judged} (published study beside):")
    print(outcome.table)
    print(f"outputs in {args.out}: predictions.parquet, metrics.json, report.md, report.html")
    if outcome.run_id:
        print(f"MLflow eval run {outcome.run_id}")
    elif outcome.tracking_error:
        print(f"echocmr eval: WARNING: not logged to MLflow ({outcome.tracking_error}); "
              "the outputs above are complete", file=sys.stderr)
    return 0


def run_predict_cmd(args: argparse.Namespace) -> int:
    from echocmr.eval.predict import (
        FORMATS,
        PredictConfig,
        load_for_predict,
        predict_files,
        write_prediction,
    )

    if not args.out.lower().endswith(FORMATS):
        print(f"echocmr predict: --out {args.out}: use a .csv or .json file name", file=sys.stderr)
        return 2
    try:
        config = PredictConfig(clips=args.clips, stride=args.stride,
                               ingest_config=args.ingest_config)
        model, spec, stats = load_for_predict(args.model, tracking_uri=args.tracking_uri)
    except (FileNotFoundError, ValueError) as exc:
        print(f"echocmr predict: {exc}", file=sys.stderr)
        return 1
    result = predict_files(args.dicom, model, spec, config=config, stats=stats)
    write_prediction(result, args.out)
    for r in result.rejected:
        print(f"not used: {r['file']}: {r['reason']} ({r['detail']})", file=sys.stderr)
    print(f"{len(result.studies)} studies from {len(args.dicom) - len(result.rejected)} of "
          f"{len(args.dicom)} files -> {args.out}")
    return 0 if len(result.studies) else 1


def run_models_list_cmd(args: argparse.Namespace) -> int:
    from echocmr.eval.registry import format_models, list_models
    from echocmr.train.tracking import resolve_tracking_uri

    infos = list_models(resolve_tracking_uri(args.tracking_uri), name=args.name)
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
    else:
        print(format_models(infos))
    return 0


def run_models_promote_cmd(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from echocmr.train.registry import promote
    from echocmr.train.tracking import resolve_tracking_uri

    try:
        previous = promote(resolve_tracking_uri(args.tracking_uri), args.name, args.version,
                           alias=args.alias, reason=args.reason)
    except (ValueError, MlflowException) as exc:
        print(f"echocmr models promote: {exc}", file=sys.stderr)
        return 1
    moved = f" (was version {previous})" if previous else ""
    print(f"{args.name}@{args.alias} -> version {args.version}{moved}; reason recorded")
    return 0


def run_models_relog_cmd(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from echocmr.eval.registry import relog_version
    from echocmr.train.tracking import resolve_tracking_uri

    try:
        info = relog_version(resolve_tracking_uri(args.tracking_uri), args.name, args.version,
                             checkpoint=args.checkpoint)
    except (FileNotFoundError, ValueError, MlflowException) as exc:
        print(f"echocmr models relog: {exc}", file=sys.stderr)
        return 1
    aliases = f" (@{', @'.join(info.aliases)})" if info.aliases else ""
    print(f"re-logged {args.name} version {args.version} as version {info.version}{aliases}")
    return 0


def run_models_pull_cmd(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from echocmr.eval.registry import pull_model
    from echocmr.train.tracking import resolve_tracking_uri

    try:
        info = pull_model(args.ref, args.out, tracking_uri=resolve_tracking_uri(args.tracking_uri))
    except (FileExistsError, ValueError, MlflowException) as exc:
        print(f"echocmr models pull: {exc}", file=sys.stderr)
        return 1
    aliases = f" (@{', @'.join(info.aliases)})" if info.aliases else ""
    print(f"pulled {info.name} version {info.version}{aliases} to {args.out}; use "
          f"--model {args.out} with eval or predict (no MLflow server needed)")
    return 0
