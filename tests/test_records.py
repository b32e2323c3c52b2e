"""What echocmr writes into MLflow, read back the way an MLflow user reads it (``MlflowClient``).

An evaluation of a registered version (the tiny model of `_eval_model`, a real sqlite store and
a real shard set in a folder named like a patient's) must leave: MLflow's provenance tags on the
run (user, source, git commit of this checkout); grouped metrics (``test/auc_wma``) with the
verdicts as numbers; the evaluated set as the run's dataset input; the same metrics attached to
the logged model (MLflow 3 model metrics, per dataset); and no machine path anywhere — not in
the run's tags or params, the dataset, the version's tags or description, or the MLmodel.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from echocmr.eval.record import annotate_version, log_evaluation
from echocmr.eval.signal import NO_SIGNAL, SIGNAL
from echocmr.eval.summary import TaskResult
from echocmr.model.lineage import logged_model_id
from echocmr.model.tracking import grouped_metric, manifest_digest, run_metric
from echocmr.shards.format import FORMAT_VERSION, TASKS

from _eval_model import register
from _shards_fixtures import make_shard_set

STATS = {"pixel_mean": 40.0, "pixel_std": 30.0, "format_version": FORMAT_VERSION,
         "clip": {"height": 64, "width": 64, "fps": 30.0}}
PATIENT_FOLDER = "SMITH_JOHN_1965"  # a site that names folders after patients


def result(task: str, auc: float, verdict: str) -> TaskResult:
    return TaskResult(task=task, auc=auc, ci_low=auc - 0.1, ci_high=min(auc + 0.1, 1.0),
                      delong_low=None, delong_high=None, delong_se=None, n_studies=20,
                      n_patients=20, n_pos=8, n_neg=12, n_unknown=0, p_value=0.01,
                      verdict=verdict)


def test_grouped_names_and_reading_old_runs():
    assert grouped_metric("val_auc_wma") == "val/auc_wma"
    assert grouped_metric("val_score") == "val/selection_score"
    assert grouped_metric("train_loss_lge") == "train/loss_lge"
    assert grouped_metric("data_wait_fraction") == "system/data_wait_fraction"
    assert grouped_metric("best_val_mean_auc") == "best/val_mean_auc"
    assert grouped_metric("test/auc_wma") == "test/auc_wma"
    assert run_metric({"val/auc_wma": 0.7}, "val_auc_wma") == 0.7
    assert run_metric({"val_auc_wma": 0.6}, "val_auc_wma") == 0.6  # a run of echocmr 0.2
    assert run_metric({}, "val_auc_wma") is None


@pytest.mark.timeout(300)
def test_an_evaluation_is_recorded_as_mlflow_users_expect(tmp_path):
    from mlflow.tracking import MlflowClient

    from echocmr.model.tracking import sqlite_artifact_root

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.create_experiment("echocmr", artifact_location=sqlite_artifact_root(uri))
    register(uri, STATS, name="echo")
    shards = make_shard_set(str(tmp_path / PATIENT_FOLDER / "shards"), n_patients=4,
                            clips_per_patient=1, n_frames=20, size=32)
    digest = manifest_digest(shards)
    results = {t: result(t, auc, v) for t, auc, v in
               (("wma", 0.9, SIGNAL), ("lge", 0.55, NO_SIGNAL), ("t1", 0.5, NO_SIGNAL),
                ("t2", 0.52, NO_SIGNAL), ("ecv", 0.51, NO_SIGNAL))}
    out = tmp_path / "eval_out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    model_uri = "models:/echo@champion"
    run_id = log_evaluation(tracking_uri=uri, model_uri=model_uri, split="test", results=results,
                            out_dir=out, params={"clips": "all"}, data_digest=digest,
                            eval_count=1, shards=shards, label="test")
    annotate_version(tracking_uri=uri, model_uri=model_uri, split="test", results=results,
                     eval_run=run_id, data_digest=digest)

    run = client.get_run(run_id)
    tags = run.data.tags
    assert tags["mlflow.source.name"] == "echocmr eval"
    assert tags["mlflow.user"]
    head = subprocess.run(["git", "-C", os.path.dirname(__file__), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head

    metrics = run.data.metrics
    assert metrics["test/auc_wma"] == pytest.approx(0.9)
    assert metrics["test/wma_ci_low"] == pytest.approx(0.8)
    assert (metrics["test/signal_wma"], metrics["test/signal_lge"]) == (1.0, 0.0)
    assert metrics["test/eval_count"] == 1.0
    assert not any(k.startswith("test_") for k in metrics)

    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "shards" and dataset.dataset.digest == digest[:32]
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "evaluation"

    version = client.get_model_version_by_alias("echo", "champion")
    model_id = logged_model_id(model_uri, uri)
    assert model_id and model_id.startswith("m-") and tags["echocmr.model_id"] == model_id
    model = client.get_logged_model(model_id)
    on_model = {m.key: m for m in model.metrics}
    for task in TASKS:
        assert on_model[f"test/auc_{task}"].value == pytest.approx(results[task].auc)
    assert on_model["test/auc_wma"].dataset_digest == digest[:32]
    assert on_model["test/signal_wma"].value == 1.0

    # No machine path, and nothing of the folder a site named after a patient, in any record.
    records = json.dumps({"tags": tags, "params": run.data.params,
                          "dataset": dataset.dataset.source,
                          "version_tags": version.tags, "card": version.description})
    assert str(tmp_path) not in records and PATIENT_FOLDER not in records
    from mlflow.artifacts import download_artifacts

    model_dir = download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path / "m"))
    mlmodel = open(os.path.join(model_dir, "MLmodel")).read()
    assert os.path.dirname(os.path.dirname(os.path.abspath(__file__))) not in mlmodel  # checkout
