"""``echocmr eval``: a model over a split of a shard set, to study-level AUCs, reports and MLflow.

    infer (eval.infer: DALI decode, all or centre windows, Ray workers for large splits)
      -> evaluate (eval.evaluate: aggregate, metrics with both CIs, signal audit, reports)
      -> log (eval.record: one MLflow run with metrics, params and every output file)

The stacker aggregation also runs the model over the val split to fit its per-view weights.

`EvalConfig` is the whole command's config: each stage's own section (``infer``, ``evaluation``
with its ``stacker`` and ``summary.metrics`` / ``summary.signal``), loaded by `load_config` from
``--config FILE`` and the flags through `echocmr.config`, and logged to MLflow as its `flat`
params (``infer.clips``, ``evaluation.summary.metrics.n_bootstrap``, ...).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from echocmr import config as loader
from echocmr.eval.evaluate import Evaluation, EvaluationConfig, evaluate_clips
from echocmr.eval.infer import InferConfig, infer_split
from echocmr.eval.missingness import studies_from_manifest
from echocmr.eval.record import (
    annotate_version,
    log_evaluation,
    previous_evaluations,
    uri_tag,
)
from echocmr.eval.report import auc_table_text
from echocmr.model.lineage import training_sites
from echocmr.model.tracking import manifest_digest, resolve_tracking_uri, set_name
from echocmr.shards.format import SPLITS
from echocmr.shards.reader import read_manifest

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvalConfig:
    """One ``echocmr eval`` run (the shards, model and output directory are its arguments)."""

    split: Literal["train", "val", "test"] = "test"
    infer: InferConfig = field(default_factory=InferConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    track: bool = True  # log the evaluation to MLflow

    def __post_init__(self) -> None:
        loader.check_choices(self)


def load_config(path: str | os.PathLike | None = None, *,
                overrides: dict[str, Any] | None = None) -> EvalConfig:
    """Defaults <- the YAML file at ``path`` <- ``overrides`` (nested, the command-line flags)."""
    layers = [] if path is None else [loader.file_layer(path)]
    if overrides:
        layers.append(loader.Layer(overrides, loader.FLAGS))
    return loader.load(EvalConfig, *layers)


@dataclass(kw_only=True)
class EvalOutcome:
    evaluation: Evaluation
    table: str  # the AUC table beside the published one, as printed
    run_id: str | None  # the MLflow eval run, None when not tracked
    tracking_error: str | None = None


def check_holdout(model_uri: str, site: str, tracking_uri: str) -> dict | None:
    """The model's record of its training sites (`eval.record.training_sites`) for an
    external validation on ``site``; ValueError when the model trained on ``site``.

    Refusing, not warning: a model that saw a site's patients (even other patients of it, or
    its val split for model selection) measures internal performance there, and a report
    calling that external would be wrong. No record (models from before, bare networks): a
    warning, and the evaluation keeps to the split evaluated.
    """

    record = training_sites(model_uri, tracking_uri)
    if record is None:
        log.warning("%s has no record of the sites it trained on: cannot check that it never saw "
                    "site %s; its external AUC is only external if it did not", model_uri, site)
        return None
    if site in record["train_sites"]:
        raise ValueError(
            f"--holdout-site {site}: {model_uri} trained on site {site} (its training sites: "
            f"{', '.join(record['train_sites'])}), so its AUC there is not external. Train "
            f"without it (`echocmr train --exclude-site {site}`) or drop --holdout-site")
    return record


def _with_whole_site(clips, val_clips, shards, config: EvalConfig, model_uri: str, site: str, *,
                     loaded, tracking_uri: str, address: str | None):
    """``clips`` plus the held-out site's clips of every other split (val's from ``val_clips``
    when eval inferred val anyway): none of that site's patients was seen in training."""
    import pandas as pd


    manifest = read_manifest(shards)
    has = set(manifest.loc[manifest["site"].astype(str) == site, "split"].astype(str))
    parts = [clips]
    for split in SPLITS:
        if split == config.split or split not in has:
            continue
        if split == "val" and val_clips is not None:
            parts.append(val_clips[val_clips["site"].astype(str) == site])
            continue
        extra, _ = infer_split(shards, split, model_uri, config=config.infer, loaded=loaded,
                               tracking_uri=tracking_uri, address=address, sites=(site,))
        parts.append(extra)
    out = pd.concat(parts, ignore_index=True)
    log.info("external site %s: %d clips of %s splits", site,
             int((out["site"].astype(str) == site).sum()), ", ".join(sorted(has)))
    return out.sort_values(["key", "clip_index"], ignore_index=True)


def run_eval(shards: str, model_uri: str, out: str | Path, *, config: EvalConfig | None = None,
             tracking_uri: str | None = None, address: str | None = None,
             loaded=None) -> EvalOutcome:
    """Run the whole evaluation; ``loaded=(model, spec)`` skips loading ``model_uri``.

    ``address``: Ray cluster for ``infer.workers > 1`` (else ``RAY_ADDRESS``, else local Ray).
    """

    config = config or EvalConfig()
    tracking_uri = resolve_tracking_uri(tracking_uri)
    out = Path(out)
    clips, spec = infer_split(shards, config.split, model_uri, config=config.infer, loaded=loaded,
                              tracking_uri=tracking_uri, address=address)
    log.info("%d clips of %d videos in %s", len(clips), clips["key"].nunique(), config.split)
    val_clips = None
    if config.evaluation.aggregation == "stacker" and config.split == "val":
        raise ValueError("the stacker is fitted on val; evaluate it on another split")
    # The stacker is fitted on val, and the operating point's threshold is chosen there.
    if config.split != "val" and (config.evaluation.aggregation == "stacker"
                                  or config.evaluation.threshold != "none"):
        val_clips, _ = infer_split(shards, "val", model_uri, config=config.infer,
                                   loaded=loaded, tracking_uri=tracking_uri, address=address)
    holdout = config.evaluation.holdout_site
    record = None
    if holdout is not None:
        record = check_holdout(model_uri, holdout, tracking_uri)
        if record is not None and config.evaluation.external_splits == "all":
            clips = _with_whole_site(clips, val_clips, shards, config, model_uri, holdout,
                                     loaded=loaded, tracking_uri=tracking_uri, address=address)
    digest = manifest_digest(shards)
    context = {
        "model": model_uri,
        "shards": f"{set_name(shards)} (the set's name; the digest names the data)",
        "data digest": digest[:16],
        "split": config.split,
        "clips": config.infer.describe(spec),
        "network input": f"{spec.frames}×{spec.size}×{spec.size} at {spec.fps:g} fps",
        "aggregation": ("mean of probabilities (clip → video → study)"
                        if config.evaluation.aggregation == "mean"
                        else "per-view logistic-regression stacker fitted on val"),
    }
    if holdout is not None:
        context["training sites"] = (
            f"The model's training recorded sites {', '.join(record['train_sites'])} (left out: "
            f"{', '.join(record['exclude_sites']) or 'none'}): site {holdout} was never seen, "
            "so every one of its patients is external." if record is not None else
            f"The model has no record of its training sites: that it never saw site {holdout} "
            f"is NOT verified, and only site {holdout}'s {config.split} studies are used.")
    eval_count = None
    if config.track:

        try:
            eval_count = 1 + previous_evaluations(tracking_uri=tracking_uri, model_uri=model_uri,
                                                  split=config.split, data_digest=digest)
            context[f"evaluations of this {config.split} split for this model"] = (
                f"{eval_count} (this one included)" + (
                    "; every look at a held-out split spends some of its independence"
                    if eval_count > 1 and config.split == "test" else ""))
        except Exception as exc:  # tracking down: say so; logging below will say it too
            log.warning("could not count earlier evaluations at %s: %s", tracking_uri, exc)
            context[f"evaluations of this {config.split} split for this model"] = (
                "unknown (MLflow unreachable)")

    evaluation = evaluate_clips(clips, out, config=config.evaluation, val_clips=val_clips,
                                context=context,
                                label_table=studies_from_manifest(read_manifest(shards)))
    table = auc_table_text(evaluation.results)
    run_id, error = None, None
    if config.track:

        params = {"model_uri": uri_tag(model_uri), **loader.flat(config)}
        # A registered version gets the test AUCs, CIs and verdicts as tags and in its card.
        # An external validation is written as such, not as the model's test result.
        label = config.split if holdout is None else f"external_{holdout}"
        try:
            run_id = log_evaluation(tracking_uri=tracking_uri, model_uri=model_uri,
                                    split=config.split, results=evaluation.results, out_dir=out,
                                    params=params, data_digest=digest, eval_count=eval_count,
                                    shards=shards, label=label)
            annotate_version(tracking_uri=tracking_uri, model_uri=model_uri, split=label,
                             results=evaluation.results, eval_run=run_id, data_digest=digest)
        except Exception as exc:  # the outputs are on disk; say clearly that logging failed
            error = f"{type(exc).__name__}: {exc}"
            log.error("evaluation written to %s but not logged to MLflow at %s: %s", out,
                      tracking_uri, error)
    return EvalOutcome(evaluation=evaluation, table=table, run_id=run_id, tracking_error=error)
