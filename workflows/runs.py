"""Train, or reuse a finished run of the same recipe: what `echocmr loso` and `echocmr sweep
--train` do for each model they need.

A run is reused when MLflow at the tracking URI holds one, in the config's experiment, that

* is ``FINISHED`` and has a logged model (tag ``echocmr.model_uri``, written once its best
  checkpoint was logged),
* trained on the same shard set (tag ``data_digest``: sha256 of its ``manifest.parquet``),
* left out exactly the same sites (tag ``echocmr.exclude_sites``, comma-joined and sorted), and
* has the same recipe: every param of `recipe_params` (the resolved config as MLflow params,
  less the keys that name or house a run and do not change its weights, `NOT_RECIPE`) equal.

So a plain ``echocmr train`` run counts as much as one started here. Otherwise the config is
trained through `train.loop.run_training` under the run name ``<prefix>-<fingerprint>``, the
fingerprint a hash of the recipe and the data digest: a crashed orchestration resumes that run
(Ray's checkpoint, the MLflow run by its ``echocmr.run_key``) when run again, and a changed recipe
gets a new name instead of resuming a different one.

In process, not a subprocess of ``echocmr train``: the training itself already runs in Ray's
worker processes, MLflow is reached through explicit clients (no process-global active run is
left behind, `train.loop._finish` closes its own), and a local Ray started by `run_training` is
shut down by it; calling the function keeps errors typed (a refused shard set is a
`FormatVersionError`, not an exit status to parse).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace

from echocmr.model.tracking import EXCLUDE_SITES_TAG, manifest_digest, resolve_tracking_uri
from echocmr.train.config import TrainConfig, flat_params
from echocmr.train.loop import run_training

log = logging.getLogger(__name__)

# Config keys that name, house or babysit a run without changing what it learns.
NOT_RECIPE = frozenset({"run_name", "storage", "register", "cache_dir", "experiment",
                        "max_failures", "keep_checkpoints"})
_PARAM_LIMIT = 6000  # what train.tracker.MlflowTracker.log_start stores of each value


@dataclass(frozen=True)
class TrainedModel:
    """A finished training run and its model, either trained now or found."""

    run_id: str
    run_name: str
    model_uri: str
    reused: bool


def recipe_params(config: TrainConfig) -> dict[str, str]:
    """The run's params that define its recipe (as MLflow stores them)."""
    return {k: v[:_PARAM_LIMIT] for k, v in flat_params(config).items()
            if k.split(".", 1)[0] not in NOT_RECIPE}


def fingerprint(config: TrainConfig, data_digest: str) -> str:
    """12 hex digits naming (recipe, data): the run name's tail."""
    blob = json.dumps({"recipe": recipe_params(config), "data": data_digest}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def find_finished_run(tracking_uri: str, config: TrainConfig, data_digest: str):
    """The newest finished MLflow run of ``config``'s recipe on that data (module docstring),
    or None."""
    from mlflow.tracking import MlflowClient


    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(config.experiment)
    if exp is None:
        return None
    excluded = ",".join(sorted(config.data.exclude_sites or ()))
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=(f"attributes.status = 'FINISHED' and tags.data_digest = '{data_digest}' "
                       f"and tags.`{EXCLUDE_SITES_TAG}` = '{excluded}'"),
        order_by=["attributes.start_time DESC"])
    want = recipe_params(config)
    for run in runs:
        if not run.data.tags.get("echocmr.model_uri"):
            continue
        have = run.data.params
        diff = sorted(k for k in want if have.get(k) != want[k])
        if not diff:
            return run
        log.debug("run %s differs in %s; not reused", run.info.run_id, ", ".join(diff[:5]))
    return None


def train_or_reuse(config: TrainConfig, shards: str, *, prefix: str, tracking_uri: str,
                   address: str | None = None) -> TrainedModel:
    """A finished run of ``config`` on ``shards``: found (`find_finished_run`) or trained now."""

    tracking_uri = resolve_tracking_uri(tracking_uri)
    digest = manifest_digest(shards)
    found = find_finished_run(tracking_uri, config, digest)
    if found is not None:
        log.info("reusing finished run %s (%s) for %s", found.info.run_id, found.info.run_name,
                 prefix)
        return TrainedModel(run_id=found.info.run_id, run_name=found.info.run_name or "",
                            model_uri=found.data.tags["echocmr.model_uri"], reused=True)
    name = f"{prefix}-{fingerprint(config, digest)}"
    outcome = run_training(replace(config, run_name=name), shards, tracking_uri=tracking_uri,
                           address=address)
    if outcome.model_uri is None:
        raise RuntimeError(f"run {name} finished without a logged model")
    return TrainedModel(run_id=outcome.run_id, run_name=outcome.run_name,
                        model_uri=outcome.model_uri, reused=False)
