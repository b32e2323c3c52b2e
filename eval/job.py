"""``echocmr eval``: a model over a split of a shard set, to study-level AUCs, reports and MLflow.

    infer (eval.infer: DALI decode, all or centre windows, Ray workers for large splits)
      -> evaluate (eval.evaluate: aggregate, metrics with both CIs, signal audit, reports)
      -> log (eval.tracking: one MLflow run with metrics, params and every output file)

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
from echocmr.eval.report import auc_table_text

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


def run_eval(shards: str, model_uri: str, out: str | Path, *, config: EvalConfig | None = None,
             tracking_uri: str | None = None, address: str | None = None,
             loaded=None) -> EvalOutcome:
    """Run the whole evaluation; ``loaded=(model, spec)`` skips loading ``model_uri``.

    ``address``: Ray cluster for ``infer.workers > 1`` (else ``RAY_ADDRESS``, else local Ray).
    """
    from echocmr.train.tracking import manifest_digest, resolve_tracking_uri

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
    digest = manifest_digest(shards)
    context = {
        "model": model_uri,
        "shards": str(shards),
        "data digest": digest[:16],
        "split": config.split,
        "clips": config.infer.describe(spec),
        "network input": f"{spec.frames}×{spec.size}×{spec.size} at {spec.fps:g} fps",
        "aggregation": ("mean of probabilities (clip → video → study)"
                        if config.evaluation.aggregation == "mean"
                        else "per-view logistic-regression stacker fitted on val"),
    }
    eval_count = None
    if config.track:
        from echocmr.eval.tracking import previous_evaluations

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
    from echocmr.eval.missingness import studies_from_manifest
    from echocmr.shards.reader import read_manifest

    evaluation = evaluate_clips(clips, out, config=config.evaluation, val_clips=val_clips,
                                context=context,
                                label_table=studies_from_manifest(read_manifest(shards)))
    table = auc_table_text(evaluation.results)
    run_id, error = None, None
    if config.track:
        from echocmr.eval.tracking import annotate_version, log_evaluation

        params = {"model_uri": model_uri, **loader.flat(config)}
        try:
            run_id = log_evaluation(tracking_uri=tracking_uri, model_uri=model_uri,
                                    split=config.split, results=evaluation.results, out_dir=out,
                                    params=params,
                                    data_digest=digest, eval_count=eval_count)
            # A registered version gets the test AUCs, CIs and verdicts as tags and in its card.
            annotate_version(tracking_uri=tracking_uri, model_uri=model_uri, split=config.split,
                             results=evaluation.results, eval_run=run_id, data_digest=digest)
        except Exception as exc:  # the outputs are on disk; say clearly that logging failed
            error = f"{type(exc).__name__}: {exc}"
            log.error("evaluation written to %s but not logged to MLflow at %s: %s", out,
                      tracking_uri, error)
    return EvalOutcome(evaluation=evaluation, table=table, run_id=run_id, tracking_error=error)
