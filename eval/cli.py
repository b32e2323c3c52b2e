"""``echocmr eval``.

A thin entry point: parse flags, load the config (`eval.job.load_config`: defaults <- ``--config
FILE`` <- flags; ``eval --print-config`` prints it), call `eval.job`, print a short summary. Nothing heavy (torch, DALI, MLflow, Ray) is imported at
module level, so ``echocmr --help`` stays instant. MLflow: ``--tracking-uri``, else
``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory.
"""

from __future__ import annotations

import argparse
import sys

from echocmr.config import flag_adder
from echocmr.model.cli import MODEL_HELP, TRACKING_HELP


def register(subparsers) -> None:
    _register_eval(subparsers)


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
        help=f"{MODEL_HELP}; required unless --print-config")
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
    add("--tracking-uri", help=TRACKING_HELP)
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
