"""MLflow tracking: the driver opens (or resumes) the run; rank 0 logs into it; other ranks no-op.

Every rank runs the same code (``tracker.log_epoch(...)``); `make_tracker` gives rank 0 an
`MlflowTracker` and the others a `NullTracker`, so there is no ``if rank == 0`` scattered through
the loop. The tracker talks to MLflow through ``MlflowClient(tracking_uri)`` with an explicit run
id, never through the fluent API's process-global active run.

What a run holds: the resolved config as params (``data.frames`` ...) and as ``config.yaml``;
``stats.json``; the shard set's manifest digest (sha256 of ``manifest.parquet``) as tag and param
``data_digest``, so a model names the exact data it saw; per epoch, grouped as MLflow's UI shows
them (`model.tracking.grouped_metric`): ``val/selection_score`` (the checkpoint rule's score: the
headline), ``val/auc_<task>`` (tasks with enough positives), ``val/mean_auc``, ``val/loss``,
``train/loss``, ``train/loss_<task>``, and ``system/clips_per_s``, ``system/data_wait_fraction``,
``system/epoch`` ... Run tags include MLflow's provenance (`model.tracking.provenance_tags`).

Resume: the driver tags the run with ``echocmr.run_key`` (a hash of the Ray storage path + run
name: no machine path in a tag); running the same command again finds the unfinished run and
continues it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from echocmr.model.tracking import dataset_input, grouped_metric, sqlite_artifact_root
from echocmr.shards.format import STATS_FILE, ShardStats
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
    # The key names the run's Ray storage folder, a machine path: the tag holds its hash (runs
    # of echocmr <= 0.2 hold the key itself, and resume as well).
    keyed = run_key_hash(run_key)
    found = []
    for value in (keyed, run_key):
        found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{value}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            break
    if found:
        run = found[0]
        client.update_run(run.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run.info.run_id, True
    run = client.create_run(exp_id, run_name=run_name, tags={RUN_KEY_TAG: keyed, **(tags or {})})
    return run.info.run_id, False


def run_key_hash(run_key: str) -> str:
    """What the ``echocmr.run_key`` tag holds: sha256 of the key, 32 hex characters."""
    return hashlib.sha256(run_key.encode("utf-8")).hexdigest()[:32]


def log_dataset(tracking_uri: str, run_id: str, shards: str, digest: str) -> None:
    """Record the shard set as the run's training dataset (`model.tracking.dataset_input`:
    name, digest, schema, clips per split; never its path); the MLflow UI shows it beside the
    run and its model."""
    from mlflow.tracking import MlflowClient

    entity, _, _ = dataset_input(shards, digest, context="training")
    MlflowClient(tracking_uri).log_inputs(run_id, datasets=[entity])


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run ``FINISHED`` (or ``FAILED`` / ``KILLED``)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


class NullTracker:
    """What ranks other than 0 get: every call does nothing."""

    def log_start(self, config: TrainConfig, *, stats: ShardStats, data_digest: str,
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

    def log_start(self, config: TrainConfig, *, stats: ShardStats, data_digest: str,
                  input_spec: dict) -> None:
        """Params, ``config.yaml``, ``stats.json``, ``input_spec.json`` and the data digest."""
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        # A path in the config (storage, cache_dir, model.init) is recorded by its last
        # component: the folders above it are this machine's, not the run's.
        params = {**{k: _path_name(v) for k, v in flat_params(config).items()},
                  "data_digest": data_digest}
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
        self.client.log_text(self.run_id, recorded_yaml(config), "config.yaml")
        self.client.log_dict(self.run_id, stats.to_dict(), STATS_FILE)
        self.client.log_dict(self.run_id, input_spec, "input_spec.json")

    def log_epoch(self, epoch: int, metrics: dict[str, float | None]) -> None:
        """Numeric, finite metrics at step ``epoch`` under their group's name
        (`model.tracking.grouped_metric`: ``train/loss``, ``val/auc_wma``, ``system/...``);
        ``None``/NaN are left out."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(grouped_metric(k), float(v), now, epoch) for k, v in metrics.items()
                 if v is not None and not (isinstance(v, float) and math.isnan(v))]
        self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)


def recorded_yaml(config: TrainConfig) -> str:
    """The resolved config as the run records it (``config.yaml``): `dump_yaml` with every path
    as its last component, as in the params."""
    import yaml

    def names(value):
        if isinstance(value, dict):
            return {k: names(v) for k, v in value.items()}
        if isinstance(value, list):
            return [names(v) for v in value]
        return _path_name(value) if isinstance(value, str) else value

    return yaml.safe_dump(names(yaml.safe_load(dump_yaml(config))), sort_keys=False)


def _path_name(value: str) -> str:
    """An absolute path or ``file://`` URL as its last component; anything else as it is."""
    text = str(value)
    if text.startswith(("/", "file://")) and len(text) > 1:
        return text.rstrip("/").rsplit("/", 1)[-1] or text
    return text


def make_tracker(rank: int, tracking_uri: str | None, run_id: str | None) -> NullTracker:
    """`MlflowTracker` on rank 0 (when a run is given), `NullTracker` elsewhere."""
    if rank == 0 and tracking_uri and run_id:
        return MlflowTracker(tracking_uri, run_id)
    return NullTracker()
