"""Log an evaluation to MLflow: one run per eval, next to the training run it judges.

The run goes into the experiment of the model's training run when that is known (from a
``models:/`` or ``runs:/`` URI, or a pulled directory's ``echocmr_model.json``), else into
``echocmr-eval``. It holds:

* tags ``echocmr.kind=eval``, ``echocmr.model_uri`` (a local directory by its name only),
  ``echocmr.model_id`` (the MLflow 3 logged model, when known), ``echocmr.source_run_id``,
  ``split``, the evaluated shard set's ``data_digest`` (sha256 of its manifest, as training
  records it) and MLflow's provenance (``mlflow.user``, ``mlflow.source.name`` ``echocmr eval``,
  ``mlflow.source.git.commit``: `model.tracking.provenance_tags`);
* the evaluated set as the run's dataset input (context ``evaluation``; name and digest, never
  its path: `model.tracking.dataset_input`);
* params: the settings (clip sampling, aggregation, resamples, permutations, seeds; the
  breakdown rows' own counts `evaluation.summary.breakdown_bootstrap`/`_permutations`);
* metrics grouped under the split (``external_<site>`` for an external validation):
  ``test/auc_<task>``, ``test/<task>_ci_low/_ci_high`` (bootstrap), ``..._delong_low/_high``,
  ``..._p_value``, ``..._p_adjusted``, ``..._n_studies``, ``..._n_pos``, ``..._n_pos_patients``,
  ``..._n_neg_patients``, the operating point's, and ``test/signal_<task>`` (the verdict as a
  number: 1 signal, 0 no detectable signal; left out for insufficient data) — NaN-free: what
  could not be computed is left out. They are logged with the logged model's id and the
  dataset, so MLflow 3 lists them on the model's page per dataset (echocmr <= 0.2 logged them
  flat, ``test_auc_wma``, on the run only);
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
import os
import time
from pathlib import Path

from echocmr.eval.signal import NO_SIGNAL, SIGNAL
from echocmr.eval.summary import TaskResult
from echocmr.model.card import eval_tags, with_eval_section
from echocmr.model.lineage import logged_model_id, source_run_id
from echocmr.model.registry import parse_reference
from echocmr.model.tracking import dataset_input, provenance_tags

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


def grouped_eval_metrics(results: dict[str, TaskResult], label: str) -> dict[str, float]:
    """`eval_metrics` grouped under ``label`` as MLflow shows groups: ``test/auc_wma``,
    ``test/wma_ci_low`` ..., plus a verdict per task as a number, ``test/signal_<task>`` (1 for
    a signal, 0 for none detectable; left out when the data were insufficient)."""
    out = {f"{label}/{k[len(label) + 1:]}": v for k, v in eval_metrics(results, label).items()}
    for task, r in results.items():
        if r.verdict in (SIGNAL, NO_SIGNAL):
            out[f"{label}/signal_{task}"] = 1.0 if r.verdict == SIGNAL else 0.0
    return out


def uri_tag(model_uri: str) -> str:
    """A model URI as a tag: a local directory is named by its last component (a record holds
    no machine path); ``models:/`` and ``runs:/`` URIs are kept."""
    if "://" in model_uri or model_uri.startswith(("models:/", "runs:/")):
        return model_uri
    return os.path.basename(model_uri.rstrip("/")) or model_uri


def evaluation_filter(*, model_uri: str, split: str, source: str | None,
                      data_digest: str | None) -> str:
    """MLflow search filter for the eval runs of this model (its training run when known, else its
    URI) on this split (of this shard set, when its digest is known)."""
    def q(v: str) -> str:
        return v.replace("'", "\\'")

    parts = ["tags.`echocmr.kind` = 'eval'", f"tags.split = '{q(split)}'"]
    parts.append(f"tags.`echocmr.source_run_id` = '{q(source)}'" if source
                 else f"tags.`echocmr.model_uri` = '{q(uri_tag(model_uri))}'")
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
    shards: str | None = None,
    label: str | None = None,
) -> str:
    """Create the eval run, log everything, finish it; returns the run id.

    ``eval_count``: how many times this model's ``split`` has now been evaluated, this run
    included (tag ``echocmr.eval_count`` and metric ``<label>/eval_count``). ``shards`` (with
    ``data_digest``): the evaluated set, logged as the run's dataset input. ``label``: the
    metrics' group (the split, or ``external_<site>`` for an external validation).
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    label = label or split
    source = source_run_id(model_uri, tracking_uri)
    model_id = logged_model_id(model_uri, tracking_uri)
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
    tags = {"echocmr.kind": "eval", "echocmr.model_uri": uri_tag(model_uri), "split": split,
            **provenance_tags("eval")}
    if source:
        tags["echocmr.source_run_id"] = source
    if data_digest:
        tags["data_digest"] = data_digest
    if eval_count is not None:
        tags["echocmr.eval_count"] = str(eval_count)
    if model_id:
        tags["echocmr.model_id"] = model_id
    run = client.create_run(experiment_id, run_name=f"eval-{label}", tags=tags)
    run_id = run.info.run_id
    try:
        dataset = {}
        if shards and data_digest:
            entity, name, digest = dataset_input(shards, data_digest, context="evaluation")
            client.log_inputs(run_id, datasets=[entity])
            dataset = {"dataset_name": name, "dataset_digest": digest}
        now = int(time.time() * 1000)
        values = {**grouped_eval_metrics(results, label),
                  **({f"{label}/eval_count": float(eval_count)} if eval_count is not None
                     else {})}
        # Attached to the logged model as well (MLflow 3): its page lists them per dataset.
        metrics = [Metric(k, v, now, 0, model_id=model_id, **dataset) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        client.log_batch(
            run_id,
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag("verdicts", ", ".join(f"{t}: {r.verdict}" for t, r in results.items()))],
        )
        client.log_artifacts(run_id, str(out_dir), artifact_path=f"eval_{split}")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id
