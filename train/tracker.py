"""MLflow tracking: the driver opens (or resumes) the run; rank 0 logs into it; other ranks no-op.

Every rank runs the same code (``tracker.log_epoch(...)``); `make_tracker` gives rank 0 an
`MlflowTracker` and the others a `NullTracker`, so there is no ``if rank == 0`` scattered through
the loop. The tracker talks to MLflow through ``MlflowClient(tracking_uri)`` with an explicit run
id, never through the fluent API's process-global active run.

What a run holds: the resolved config as params (``data.frames`` ...) and as ``config.yaml``;
``stats.json``; the shard set's manifest digest (sha256 of ``manifest.parquet``) as tag and param
``data_digest``, so a model names the exact data it saw; per epoch ``train_loss``, ``val_loss``,
``val_auc_<task>`` (tasks with enough positives), ``val_mean_auc``, throughput and data-wait share.

Resume: the driver tags the run with ``echocmr.run_key`` (Ray storage path + run name); running
the same command again finds the unfinished run and continues it.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings

from echocmr.model.tracking import sqlite_artifact_root
from echocmr.shards.format import STATS_FILE
from echocmr.shards.reader import read_manifest
from echocmr.train.config import TrainConfig, dump_yaml, flat_params

log = logging.getLogger(__name__)

RUN_KEY_TAG = "echocmr.run_key"


def open_run(tracking_uri: str, *, experiment: str, run_name: str, run_key: str,
             tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """The run tagged ``run_key`` to resume, else a new one: ``(run_id, resumed)``."""
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=sqlite_artifact_root(tracking_uri))
    found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        run = found[0]
        client.update_run(run.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run.info.run_id, True
    run = client.create_run(exp_id, run_name=run_name, tags={RUN_KEY_TAG: run_key, **(tags or {})})
    return run.info.run_id, False


def log_dataset(tracking_uri: str, run_id: str, shards: str, digest: str) -> None:
    """Record the shard set as the run's training dataset (``mlflow.log_input``'s entity): name,
    digest, source (path or URL), schema and row count of its manifest, clips per split as input
    tags; the MLflow UI shows it beside the run and its model. No row of the manifest is stored."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.tracking import MlflowClient


    manifest = read_manifest(shards)
    name = os.path.basename(shards.rstrip("/")) or shards
    # MLflow's dataset digest holds 36 characters; the full sha256 is the run's data_digest.
    # Its schema inference warns about integer columns (the manifest has no missing integers)
    # and about a local path matching two source kinds; neither says anything to our users.
    counts = manifest["split"].value_counts()
    tags = [InputTag("mlflow.data.context", "training"), InputTag("data_digest", digest),
            *(InputTag(f"clips_{split}", str(int(n))) for split, n in sorted(counts.items()))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(manifest, source=shards, name=name, digest=digest[:32])
        entity = dataset._to_mlflow_entity()
    MlflowClient(tracking_uri).log_inputs(run_id, datasets=[DatasetInput(entity, tags=tags)])


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run ``FINISHED`` (or ``FAILED`` / ``KILLED``)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


class NullTracker:
    """What ranks other than 0 get: every call does nothing."""

    def log_start(self, config: TrainConfig, *, stats: dict, data_digest: str,
                  input_spec: dict) -> None:
        pass

    def log_epoch(self, epoch: int, metrics: dict[str, float | None]) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass


class MlflowTracker(NullTracker):
    """Rank 0's tracker: logs into run ``run_id`` at ``tracking_uri``."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id

    def log_start(self, config: TrainConfig, *, stats: dict, data_digest: str,
                  input_spec: dict) -> None:
        """Params, ``config.yaml``, ``stats.json``, ``input_spec.json`` and the data digest."""
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        params = {**flat_params(config), "data_digest": data_digest}
        try:
            items = [Param(k, v[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow's batch limit
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        except MlflowException as exc:  # resumed with a changed config: keep going, say so
            log.warning("MLflow refused some params (was the config changed on resume?): %s", exc)
        self.client.log_batch(self.run_id, tags=[
            RunTag("data_digest", data_digest),
            RunTag("echocmr.selection", config.selection.describe()),  # the pre-specified rule
        ])
        self.client.log_text(self.run_id, dump_yaml(config), "config.yaml")
        self.client.log_dict(self.run_id, stats, STATS_FILE)
        self.client.log_dict(self.run_id, input_spec, "input_spec.json")

    def log_epoch(self, epoch: int, metrics: dict[str, float | None]) -> None:
        """Numeric, finite metrics at step ``epoch`` (``None``/NaN are left out)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, epoch) for k, v in metrics.items()
                 if v is not None and not (isinstance(v, float) and math.isnan(v))]
        self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)


def make_tracker(rank: int, tracking_uri: str | None, run_id: str | None) -> NullTracker:
    """`MlflowTracker` on rank 0 (when a run is given), `NullTracker` elsewhere."""
    if rank == 0 and tracking_uri and run_id:
        return MlflowTracker(tracking_uri, run_id)
    return NullTracker()
