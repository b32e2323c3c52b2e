"""``echocmr train``: parse flags, resolve the config, run `train.loop.run_training`, summarise.

Nothing heavy is imported at module level (``echocmr --help`` stays instant); torch, Ray, DALI and
MLflow load inside `run`.

Precedence: built-in defaults <- ``--preset`` <- ``--config FILE`` <- flags (`echocmr.config`
merges them; ``--print-config`` prints the result and exits without training). MLflow:
``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` here. Ray:
``--address``, else ``RAY_ADDRESS``, else a local Ray.
"""

from __future__ import annotations

import argparse
import sys

from echocmr.config import flag_adder


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train the 5-task video network on a shard set (Ray Train + DALI + MLflow)",
        description="Train one R(2+1)D network with five heads (WMA, LGE, T1, T2, ECV) on the "
                    "shards, on one machine or a Ray cluster; log to MLflow and optionally "
                    "register.")
    add_train_arguments(p)
    p.set_defaults(func=run)


def add_train_arguments(p: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """`echocmr train`'s flags on ``p``, less those in ``skip`` (`echocmr loso` and `echocmr sweep
    --train` set them themselves)."""
    add = flag_adder(p, skip)
    add("--shards",
        help="shard set: a directory, or a URL (s3://, gs://) that each node stages "
             "onto its disk (train and val splits); required unless --print-config")
    add("--cache-dir", metavar="DIR",
        help="where nodes stage a URL shard set (default $ECHOCMR_CACHE, else "
             "~/.cache/echocmr/shards)")
    add("--workers", type=int, help="data-parallel Ray workers (default 1)")
    add("--gpu", action="store_true", default=None,
        help="one GPU per worker: DALI mixed decode, NCCL, bf16")
    add("--epochs", type=int, help="epochs to train")
    add("--config", metavar="FILE", help="YAML config (see docs/training.md)")
    add("--preset", help="named starting config: cpu-small, gpu, demo")
    add("--register", metavar="NAME", help="register the best model under NAME")
    add("--address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    add("--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI, else "
                               "sqlite:///mlflow.db)")
    add("--init", metavar="FILE", help="published r2plus1d_18 state dict to start from")
    add("--run-name", help="run name; re-running with the same name resumes it")
    add("--storage", metavar="DIR",
        help="checkpoint storage shared by all nodes (default ./train_runs)")
    add("--seed", type=int,
        help="training seed (data.seed: weight init, shuffle, clip starts, "
             "augmentation); vary it for a seed sweep (docs/evaluation.md)")
    add("--exclude-site", action="append", metavar="NAME",
        help="leave site NAME out of training and validation (repeatable; "
             "data.exclude_sites), to validate on it externally with `echocmr eval "
             "--holdout-site NAME`")
    add("--views", action="append", metavar="VIEW",
        help="train on clips of this view only (repeatable; data.views, default A4C, A2C and "
             "PLAX): --views A4C trains a per-view model, as the study did; 'other' and "
             "'unknown' clips are left out unless named, and counted in the run")
    add("--print-config", action="store_true",
        help="print the resolved config as YAML and exit without training")


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The flags that were given, as a nested config dict."""
    out: dict = {}
    for flag, key in (("workers", "workers"), ("gpu", "gpu"), ("epochs", "epochs"),
                      ("register", "register"), ("run_name", "run_name"),
                      ("storage", "storage"), ("cache_dir", "cache_dir")):
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    if getattr(args, "init", None):
        out["model"] = {"init": args.init}
    if getattr(args, "seed", None) is not None:
        out.setdefault("data", {})["seed"] = args.seed
    if getattr(args, "exclude_site", None):
        out.setdefault("data", {})["exclude_sites"] = sorted(set(args.exclude_site))
    if getattr(args, "views", None):
        out.setdefault("data", {})["views"] = list(dict.fromkeys(args.views))
    return out


# From this width up the network is torchvision's size class (64: r2plus1d_18, 33 M parameters).
FULL_WIDTH = 64


def run(args: argparse.Namespace) -> int:
    from echocmr.config import resolve_for_command
    from echocmr.train.config import load_config

    config, done = resolve_for_command(
        "train", lambda: load_config(args.config, preset=args.preset,
                                     overrides=overrides_from_args(args)),
        print_config=args.print_config, required={"--shards": args.shards})
    if done is not None:
        return done
    if not config.gpu and config.model.width >= FULL_WIDTH:
        print(f"echocmr train: warning: this is the full R(2+1)D (width {config.model.width}) on "
              "CPU, which trains at about 0.24 clips/s on 2 cores (docs/training.md); for a quick "
              "CPU run use --preset cpu-small, or train on a GPU with --gpu", file=sys.stderr)
    from echocmr.shards.format import FormatVersionError, GPUDecodeError
    from echocmr.train.loop import run_training
    from echocmr.train.preflight import PreflightError

    try:
        outcome = run_training(config, args.shards, tracking_uri=args.tracking_uri,
                               address=args.address)
    except (FormatVersionError, GPUDecodeError, PreflightError) as exc:  # before any worker
        print(f"echocmr train: {exc}", file=sys.stderr)
        return 2
    print(f"run {outcome.run_name} (MLflow run {outcome.run_id} at {outcome.tracking_uri})")
    print(f"best epoch {outcome.best_epoch}: checkpoint {outcome.best_checkpoint}")
    aucs = ", ".join(f"{t} {'n/a' if a is None else f'{a:.3f}'}"
                     for t, a in outcome.val_aucs.items())
    mean = "n/a" if outcome.val_mean_auc is None else f"{outcome.val_mean_auc:.3f}"
    print(f"val AUC (clips): {aucs}; mean {mean}")
    print(f"model {outcome.model_uri}")
    if outcome.registration is not None:
        r = outcome.registration
        print(f"registered {r.name} version {r.version} as @{r.alias} "
              f"(models:/{r.name}@{r.alias}): {r.decision}")
    return 0
