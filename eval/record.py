"""Log an evaluation to MLflow: one run per eval, next to the training run it judges.

The run goes into the experiment of the model's training run when that is known (from a
``models:/`` or ``runs:/`` URI, or a pulled directory's ``echocmr_model.json``), else into
``echocmr-eval``. It holds:

* tags ``echocmr.kind=eval``, ``echocmr.model_uri``, ``echocmr.source_run_id``, ``split`` and the
  evaluated shard set's ``data_digest`` (sha256 of its manifest, as training records it);
* params: the settings (clip sampling, aggregation, resamples, permutations, seeds);
* metrics ``<split>_auc_<task>``, ``..._ci_low/_ci_high`` (bootstrap), ``..._delong_low/_high``,
  ``..._p_value``, ``..._p_adjusted``, ``..._n_studies``, ``..._n_pos``,
  ``..._n_pos_patients``, ``..._n_neg_patients`` — NaN-free: what could
  not be computed is left out;
* every output file under the artifact folder ``eval_<split>/``;
* ``echocmr.eval_count``: how many eval runs of this model (its training run, else its URI) on
  this split of this shard set exist, this one included — each look at a test split spends some
  of its independence, and the report says how many looks there have been.

The client is explicit (``MlflowClient(uri)`` and a run id); nothing touches the fluent API's
process-global active run.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from echocmr.eval.summary import TaskResult
from echocmr.model.card import eval_tags, with_eval_section
from echocmr.model.lineage import source_run_id
from echocmr.model.registry import parse_reference

log = logging.getLogger(__name__)

EVAL_EXPERIMENT = "echocmr-eval"
_KEYS = ("auc", "ci_low", "ci_high", "delong_low", "delong_high", "pr_auc", "p_value",
         "p_adjusted",
         "n_studies", "n_pos", "n_pos_patients", "n_neg_patients")


def annotate_version(*, tracking_uri: str, model_uri: str, split: str,
                     results: dict[str, TaskResult], eval_run: str | None,
                     data_digest: str) -> tuple[str, str] | None:
    """When ``model_uri`` is a registered version (``models:/NAME@ALIAS`` or ``/VERSION``),
    write the evaluation on it: tags ``<split>_auc_<task>``, ``<split>_ci_<task>``,
    ``<split>_verdict_<task>`` and the model card's section for ``split``. Returns
    ``(name, version)``, or None for other URIs."""
    from mlflow.tracking import MlflowClient


    if not model_uri.startswith("models:/"):
        return None
    try:
        name, alias, version = parse_reference(model_uri)
    except ValueError:  # models:/m-<id>: a logged model, not a registered version
        return None
    client = MlflowClient(tracking_uri)
    mv = (client.get_model_version_by_alias(name, alias) if alias
          else client.get_model_version(name, version))
    version = str(mv.version)
    tags = {**eval_tags(split, results), f"{split}_data_digest": data_digest}
    if eval_run:
        tags[f"{split}_eval_run"] = eval_run
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=with_eval_section(
        mv.description, split, results, eval_run=eval_run, digest=data_digest))
    return name, version


def eval_metrics(results: dict[str, TaskResult], split: str) -> dict[str, float]:
    out = {}
    for task, r in results.items():
        for key in _KEYS:
            value = getattr(r, key)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            name = f"{split}_auc_{task}" if key == "auc" else f"{split}_{task}_{key}"
            out[name] = float(value)
        op = r.operating
        for key in ("threshold", "sensitivity", "specificity", "ppv", "npv"):
            value = getattr(op, key) if op is not None else None
            if value is not None:
                out[f"{split}_{task}_{key}"] = float(value)
    return out


def evaluation_filter(*, model_uri: str, split: str, source: str | None,
                      data_digest: str | None) -> str:
    """MLflow search filter for the eval runs of this model (its training run when known, else its
    URI) on this split (of this shard set, when its digest is known)."""
    def q(v: str) -> str:
        return v.replace("'", "\\'")

    parts = ["tags.`echocmr.kind` = 'eval'", f"tags.split = '{q(split)}'"]
    parts.append(f"tags.`echocmr.source_run_id` = '{q(source)}'" if source
                 else f"tags.`echocmr.model_uri` = '{q(model_uri)}'")
    if data_digest:
        parts.append(f"tags.data_digest = '{q(data_digest)}'")
    return " and ".join(parts)


def previous_evaluations(*, tracking_uri: str, model_uri: str, split: str,
                         data_digest: str | None = None) -> int:
    """How many eval runs of this model on this split are already recorded (every experiment)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    source = source_run_id(model_uri, tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return 0
    flt = evaluation_filter(model_uri=model_uri, split=split, source=source,
                            data_digest=data_digest)
    n, token = 0, None
    while True:
        page = client.search_runs(ids, flt, max_results=1000, page_token=token)
        n += len(page)
        token = page.token
        if not token:
            return n


def log_evaluation(
    *,
    tracking_uri: str,
    model_uri: str,
    split: str,
    results: dict[str, TaskResult],
    out_dir: Path,
    params: dict[str, str],
    data_digest: str | None = None,
    eval_count: int | None = None,
) -> str:
    """Create the eval run, log everything, finish it; returns the run id.

    ``eval_count``: how many times this model's ``split`` has now been evaluated, this run
    included (tag ``echocmr.eval_count`` and metric ``<split>_eval_count``).
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    source = source_run_id(model_uri, tracking_uri)
    experiment_id = None
    if source:
        try:
            experiment_id = client.get_run(source).info.experiment_id
        except Exception as exc:
            log.info("training run %s not found on %s (%s); logging to %s", source,
                     tracking_uri, exc, EVAL_EXPERIMENT)
    if experiment_id is None:
        exp = client.get_experiment_by_name(EVAL_EXPERIMENT)
        experiment_id = exp.experiment_id if exp else client.create_experiment(EVAL_EXPERIMENT)
    tags = {"echocmr.kind": "eval", "echocmr.model_uri": model_uri, "split": split}
    if source:
        tags["echocmr.source_run_id"] = source
    if data_digest:
        tags["data_digest"] = data_digest
    if eval_count is not None:
        tags["echocmr.eval_count"] = str(eval_count)
    run = client.create_run(experiment_id, run_name=f"eval-{split}", tags=tags)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in {
                **eval_metrics(results, split),
                **({f"{split}_eval_count": float(eval_count)} if eval_count is not None else {}),
            }.items()],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag("verdicts", ", ".join(f"{t}: {r.verdict}" for t, r in results.items()))],
        )
        client.log_artifacts(run_id, str(out_dir), artifact_path=f"eval_{split}")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id
