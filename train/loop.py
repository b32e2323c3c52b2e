"""Distributed training with Ray Train V2: the per-worker loop and the driver around it.

``run_training(config, shards)`` (the driver) opens or resumes the MLflow run, starts a
``TorchTrainer`` with ``config.workers`` data-parallel workers (gloo on CPU, NCCL with one GPU
each), then logs the best checkpoint's model to MLflow and registers it. ``train_worker`` runs on
every worker: it builds an `Engine` on ``ray.train.torch.get_device()`` (each worker its own DALI
pipeline), restores ``ray.train.get_checkpoint()`` if there is one, and per epoch trains,
validates (per-task AUC over predictions gathered from all ranks), logs from rank 0, and calls
``ray.train.report`` with the metrics and a checkpoint (rank 0 writes it; report is a barrier).

A shard set at a URL (``s3://``, ``gs://``): the driver reads its stats and manifest digest
through fsspec, and every worker stages the train and val splits onto its node's disk
(`shards.stage`, in ``config.cache_dir``) before it builds its DALI readers; the stage lock
makes one worker per node download while the others wait, and a restart finds the copy in place.

Failures: ``FailureConfig(max_failures)`` restarts the whole worker group from the last reported
checkpoint when a worker dies: an epoch's, or with ``checkpoint_every_steps`` a step checkpoint
inside the epoch (``step_NNNNNNNN``, no val score, never the best), from which `Engine` replays the
epoch's reader to the saved batch and goes on exactly. A driver crash: run the same command with
the same run name and storage again; Ray Train restores the run's latest checkpoint and the MLflow
run (found by its ``echocmr.run_key`` tag) continues. A rerun with another ``--workers`` goes on
from an epoch checkpoint (`train.engine.world_change_note` says what the epochs then see) and is
refused from a step checkpoint (`_check_resume`, from the checkpoint's ``resume.json``).

Before any of that, on a cluster of several nodes, `train.preflight` refuses a local sqlite
tracking URI and a local ``--storage`` that another node cannot see.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from echocmr.model.artifact import echocmr_version
from echocmr.model.card import data_summary, training_card
from echocmr.model.checkpoint import read_checkpoint, save_checkpoint
from echocmr.model.publish import ExpectedViews, log_model
from echocmr.model.registry import describe_version, register_model
from echocmr.model.tracking import (
    manifest_digest,
    provenance_tags,
    resolve_tracking_uri,
    set_name,
    site_tags,
)
from echocmr.model.view_store import fetch_view_model
from echocmr.progress import Progress
from echocmr.ray_connect import ray_init
from echocmr.read.assign import ReadPlan, plan_reading
from echocmr.read.loader import ReaderPosition, check_decoder, site_selection, view_counts
from echocmr.read.pipeline import resolve_decoder
from echocmr.shards import storage
from echocmr.shards.format import TASKS, ShardStats, check_format_version
from echocmr.shards.reader import read_stats
from echocmr.shards.stage import stage
from echocmr.shards.storage import is_url
from echocmr.train.config import TrainConfig
from echocmr.train.engine import Engine, mid_epoch_world_change
from echocmr.train.preflight import PreflightError, check_cluster
from echocmr.train.selection import scored_on
from echocmr.train.tracker import finish_run, log_dataset, make_tracker, open_run

log = logging.getLogger(__name__)

SCORE = "val_score"  # the checkpoint score under config.selection (-val_loss without its AUCs)
# A step checkpoint's score: below any val score. Finite: Ray Train's snapshot of its checkpoints
# stores -inf as null, and a restarted controller then fails to rank it (measured, Ray 2.60).
STEP_SCORE = -sys.float_info.max
RESUME_FILE = "resume.json"  # beside checkpoint.pt: position, worker count, step (small)
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of a run's checkpoints


# Called on every rank after each training step as ``hook(rank, global_step)``, once the step is
# counted and its step checkpoint (if any) reported. Tests pass one that kills a worker at a step;
# it travels to the workers in `LoopConfig`, so it must pickle (a module-level class or function).
StepHook = Callable[[int, int], None]


@dataclass(frozen=True)
class LoopConfig:
    """What the driver hands every worker (``train_loop_config["loop"]``): the resolved config as
    a dict (each worker rebuilds `TrainConfig`), where the data and the run are, and the shard
    statistics the driver read once."""

    config: dict[str, Any]
    shards: str
    stats: ShardStats
    tracking_uri: str
    run_id: str
    data_digest: str
    train_sites: list[str]
    step_hook: StepHook | None = None
    # What each rank reads, planned once here from the manifest (read.assign.plan_reading):
    # every rank deals itself its own shards from it and reads no manifest rows but its own.
    plan: ReadPlan | None = None


@dataclass
class TrainOutcome:
    """What a finished run left behind."""

    run_name: str
    storage: str
    run_id: str
    tracking_uri: str
    best_checkpoint: str  # directory of the best epoch's checkpoint
    best_epoch: int
    val_mean_auc: float | None
    val_aucs: dict[str, float | None]
    model_uri: str | None
    registration: Any = None  # model.registry.Registration when --register was given
    last_metrics: dict[str, Any] | None = None


def epoch_metrics(result, val) -> dict[str, Any]:
    """The per-epoch metrics reported to Ray and logged to MLflow."""

    metrics: dict[str, Any] = {
        "epoch": result.epoch,
        "train_loss": result.loss,
        **{f"train_loss_{t}": result.task_loss[t] for t in TASKS},
        "val_loss": val.loss,
        **{f"val_auc_{t}": (math.nan if a is None else a) for t, a in val.aucs.items()},
        "val_mean_auc": math.nan if val.mean_auc is None else val.mean_auc,
        SCORE: val.score,
        "val_clips": len(val.keys),
        "train_steps": result.steps,
    }
    return metrics


def train_worker(ray_config: dict[str, Any]) -> None:
    """Ray Train's per-worker function (see module docstring); ``ray_config["loop"]`` is the
    driver's `LoopConfig` (Ray Train hands a dict to the function)."""
    import ray.train
    import ray.train.torch
    import torch


    if not logging.getLogger().handlers:  # Ray workers start without logging configured
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                            datefmt="%H:%M:%S")
    _quiet_ray_train_reports()
    started = time.perf_counter()
    loop: LoopConfig = ray_config["loop"]
    config = TrainConfig.from_dict(loop.config)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if config.gpu else torch.device("cpu")
    torch.set_num_threads(config.cpus_per_worker)
    stats = loop.stats
    shards = _local_shards(loop.shards, config.cache_dir, loop.data_digest)
    engine = Engine(config, shards, stats=stats, rank=rank, world=world, device=device,
                    plan=loop.plan)
    tracker = make_tracker(rank, loop.tracking_uri, loop.run_id)
    log.info("rank %d/%d on %s: %d train steps/epoch, ready in %.1f s", rank, world, device,
             engine.steps_per_epoch, time.perf_counter() - started)

    restored, last_metrics = ray.train.get_checkpoint(), None
    if restored is not None:
        with restored.as_directory() as directory:
            state = read_checkpoint(directory)
        engine.load_state_dict(state)  # ResumeError: mid-epoch with another worker count
        last_metrics = state.get("metrics")
        log.info("rank %d resumed at epoch %d, batch %d (step %d)", rank, engine.position.epoch,
                 engine.position.batch, engine.global_step)
        if engine.resume_note and rank == 0:
            log.warning("%s", engine.resume_note)
            tracker.set_tags({"echocmr.resume_note": engine.resume_note[:5000]})
    else:
        tracker.log_start(config, stats=stats, data_digest=loop.data_digest,
                          input_spec=engine.spec.to_dict())
    resumed_at = engine.position.epoch if restored is not None else -1
    resumed_step = engine.global_step if restored is not None else -1

    def checkpoint_state(epoch: int | None, metrics: dict) -> dict:
        state = engine.state_dict()  # collective (gathers per-rank states): every rank calls it
        return {**state, "epoch": epoch, "metrics": metrics, "config": config.to_dict(),
                "train_sites": loop.train_sites,
                "input_spec": engine.spec.to_dict()}

    def report(state: dict, metrics: dict, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_checkpoint(tmp, state)
                with open(os.path.join(tmp, RESUME_FILE), "w") as f:  # what the driver reads
                    json.dump({"position": state["position"], "world": state["world"],
                               "global_step": state["global_step"]}, f)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    every = config.checkpoint_every_steps

    def step_checkpoint() -> None:
        """Every ``every`` global steps, inside an epoch (its end has the epoch checkpoint)."""
        if not every or engine.global_step % every or \
                engine.position.batch >= engine.steps_per_epoch:
            return
        # No val score: Ray ranks it below every epoch checkpoint; `_finish` never picks it.
        metrics = {"epoch": engine.position.epoch, "batch": engine.position.batch,
                   "global_step": engine.global_step, "mid_epoch": 1, SCORE: STEP_SCORE,
                   "resumed_at_epoch": resumed_at, "resumed_at_step": resumed_step}
        report(checkpoint_state(engine.position.epoch - 1, metrics), metrics,
               f"step_{engine.global_step:08d}")

    shown: Progress | None = None  # rank 0's progress through the epoch (a line every 30 s)

    def after_step() -> None:
        step_checkpoint()
        if shown is not None:
            shown.update(1)
        if loop.step_hook is not None:
            loop.step_hook(rank, engine.global_step)

    if engine.position.epoch >= config.epochs:  # the run had already finished
        ray.train.report({**(last_metrics or {}), "resumed_at_epoch": resumed_at,
                          "resumed_at_step": resumed_step})
        return
    while engine.position.epoch < config.epochs:
        shown = Progress(engine.steps_per_epoch, desc=f"train epoch {engine.position.epoch}",
                         unit="step", initial=engine.position.batch, enabled=rank == 0, bar=False,
                         stream=sys.stdout)
        result = engine.train_epoch(on_step=after_step)
        shown.close()
        val = engine.validate()
        metrics = epoch_metrics(result, val)
        # Throughput over all workers; the share of step time spent waiting for data (mean).
        metrics["train_clips_per_s"] = engine.mean_over_ranks(result.clips_per_s) * world
        metrics["data_wait_fraction"] = engine.mean_over_ranks(result.data_wait_fraction)
        metrics["resumed_at_epoch"] = resumed_at
        metrics["resumed_at_step"] = resumed_step
        metrics["global_step"] = engine.global_step
        tracker.log_epoch(result.epoch, metrics)
        if rank == 0:
            log.info("epoch %d: train loss %.4f, val loss %.4f, val mean AUC %s, %.1f clips/s, "
                     "%.0f%% of step time waiting for data", result.epoch, result.loss, val.loss,
                     "n/a" if val.mean_auc is None else f"{val.mean_auc:.3f}",
                     metrics["train_clips_per_s"], 100 * metrics["data_wait_fraction"])
        report(checkpoint_state(result.epoch, metrics), metrics, f"epoch_{result.epoch:04d}")


def _local_shards(shards: str, cache_dir: str | None, data_digest: str) -> str:
    """``shards`` itself when local; else its node-local copy of train and val, checked to be
    the data the driver opened the run with (the set may have changed at the URL since)."""

    if not is_url(shards):
        return shards
    local = stage(shards, cache_dir, splits=("train", "val"))
    if manifest_digest(local) != data_digest:
        raise RuntimeError(f"{shards} changed after this run started (its manifest digest is no "
                           f"longer {data_digest[:16]}); start the run again to train on the "
                           "new data, under a new --run-name")
    return local


# Ray Train loggers whose INFO/WARNING lines repeat what our logs say, or flood them.
_QUIET_RAY_LOGGERS = {
    # "Reporting training result N: TrainingReport(<every metric>)" from every rank, per epoch;
    # our one-line epoch summary says the same.
    "ray.train.v2._internal.execution.context": logging.WARNING,
    # "Checkpoint successfully created at ..." per epoch: the run result and MLflow have it.
    "ray.train.v2._internal.execution.storage": logging.WARNING,
    # Polls the State API, which a Ray started without a dashboard lacks (our local Ray): it
    # then warns every second that the API "may be temporarily unavailable".
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
}

# "Failed to send resource request ... safe to ignore" with a 20-line GetTimeoutError traceback,
# from the Train controller when the machine is busy: kept as one line (the traceback says
# nothing more); any other exception there keeps its traceback.
_ONE_LINE_TIMEOUTS = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"


class _OneLineTimeouts(logging.Filter):
    """Drops the traceback of a record whose exception is Ray's ``GetTimeoutError``."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "GetTimeoutError":
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = ()
            record.exc_info = record.exc_text = None
        return True


def _quiet_ray_train_reports() -> None:
    """Raise the level of `_QUIET_RAY_LOGGERS` and keep `_ONE_LINE_TIMEOUTS` to one line, in this
    process.

    Runs in every Ray worker process of our jobs (``worker_process_setup_hook``) and at the top
    of `train_worker`. Ray names some loggers by module and some by file path: both are set.
    """
    for module, level in _QUIET_RAY_LOGGERS.items():
        for logger in _loggers_of(module):
            logger.setLevel(level)
    for logger in _loggers_of(_ONE_LINE_TIMEOUTS):
        if not any(isinstance(f, _OneLineTimeouts) for f in logger.filters):
            logger.addFilter(_OneLineTimeouts())


def _loggers_of(module: str) -> list[logging.Logger]:
    """The loggers a Ray module may log under: its name and its file's path."""
    from importlib.util import find_spec

    loggers = [logging.getLogger(module)]
    try:
        spec = find_spec(module)
    except (ImportError, ValueError):
        return loggers
    if spec is not None and spec.origin:
        loggers.append(logging.getLogger(spec.origin))
    return loggers


def run_training(config: TrainConfig, shards: str, *, tracking_uri: str | None = None,
                 address: str | None = None, step_hook: StepHook | None = None) -> TrainOutcome:
    """Train ``config`` on the shard set ``shards``; log, and register if ``config.register``.

    Uses the Ray cluster at ``address`` (else ``RAY_ADDRESS``, else a local Ray started here, or
    the one this process already initialised) and MLflow at ``tracking_uri`` (else
    ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory).
    ``step_hook`` runs on every rank after each step (`StepHook`; tests use it).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer


    # Workers may start in another directory: local paths absolute, URLs as they are.
    shards = (storage.canonical(shards) if storage.is_url(shards)
              else os.path.abspath(storage.local_path(shards)))
    config = replace(
        config,
        run_name=config.run_name or time.strftime("echocmr-%Y%m%d-%H%M%S"),
        storage=_storage_path(config.storage or "train_runs"),
        cache_dir=_cache_path(config.cache_dir))
    tracking_uri = resolve_tracking_uri(tracking_uri)
    stats = read_stats(shards)
    check_format_version(stats, shards)  # here, before a run is opened or a worker started
    # A GPU run decoding on NVDEC needs clips NVDEC takes: refuse now, not in every worker.
    check_decoder(stats, resolve_decoder(config.data.decoder, gpu=config.gpu),
                  f"shard set {shards}")
    # Left-out sites (data.exclude_sites): checked against the set, and the stats every worker
    # normalises with recomputed without them (read.loader.site_selection).
    stats, train_sites = site_selection(shards, stats, config.data.exclude_sites)
    # Views (data.views): what this run reads and what it leaves out, counted in the run.
    views = view_counts(shards, config.data.views, exclude_sites=config.data.exclude_sites)
    if not views["read"]:
        raise ValueError(f"data.views {', '.join(config.data.views)}: {shards} has no train or "
                         f"val clip of these views (its clips: {views['left_out']}); ingest "
                         "with --views or --view-model, or pass --views for the views it has")
    log.info("views read: %s; left out: %s", views["read"], views["left_out"] or "none")
    # Which shards and samples the run reads, once for every rank (--exclude-site resolved here).
    plan = plan_reading(shards, ("train", "val"), exclude_sites=config.data.exclude_sites,
                        views=config.data.views)
    digest = manifest_digest(shards)

    started_ray = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        # A Ray we start here gets the log filter in every process; a cluster's job keeps the
        # runtime env it was submitted with (train_worker still filters its own loggers).
        hook = None if address else {"worker_process_setup_hook": _quiet_ray_train_reports}
        started_ray = ray_init(address, include_dashboard=False, log_to_driver=True,
                               runtime_env=hook)
    try:
        # Before an MLflow run is opened or a worker started: what cannot work is refused now.
        _check_resources(config, local=started_ray and address is None)
        check_cluster(tracking_uri=tracking_uri, storage=config.storage)
        _check_resume(config)
        run_key = f"{config.storage}/{config.run_name}"
        run_id, resumed = open_run(tracking_uri, experiment=config.experiment,
                                   run_name=config.run_name, run_key=run_key,
                                   tags={"data_digest": digest, "shards": set_name(shards),
                                         **provenance_tags("train"),
                                         **site_tags(config.data.exclude_sites, train_sites),
                                         **_view_tags(views)})
        log.info("MLflow run %s (%s) at %s", run_id, "resumed" if resumed else "new",
                 tracking_uri)
        if not resumed:
            log_dataset(tracking_uri, run_id, shards, digest)  # what the model saw, in MLflow
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"loop": LoopConfig(
                config=config.to_dict(), shards=shards, stats=stats, tracking_uri=tracking_uri,
                run_id=run_id, data_digest=digest, train_sites=list(train_sites),
                step_hook=step_hook, plan=plan)},
            torch_config=TorchConfig(backend="nccl" if config.gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=config.workers, use_gpu=config.gpu,
                resources_per_worker={"CPU": config.cpus_per_worker,
                                      **({"GPU": 1} if config.gpu else {})}),
            run_config=RunConfig(
                name=config.run_name, storage_path=config.storage,
                failure_config=FailureConfig(max_failures=config.max_failures),
                checkpoint_config=CheckpointConfig(
                    num_to_keep=config.keep_checkpoints, checkpoint_score_attribute=SCORE,
                    checkpoint_score_order="max")),
        )
        try:
            result = trainer.fit()
            if result.error is not None:
                raise result.error
        except BaseException:
            finish_run(tracking_uri, run_id, "FAILED")
            raise
        return _finish(config, result, tracking_uri=tracking_uri, run_id=run_id, digest=digest,
                       shards=shards, train_sites=train_sites)
    finally:
        if started_ray:
            ray.shutdown()


def _finish(config: TrainConfig, result, *, tracking_uri: str, run_id: str,
            digest: str, shards: str, train_sites: list[str]) -> TrainOutcome:
    """Log the best checkpoint's model, register it with its model card, close the MLflow run."""
    import mlflow
    from mlflow.tracking import MlflowClient


    scored = [(c, m) for c, m in (result.best_checkpoints or [])
              if m.get(SCORE) is not None and not m.get("mid_epoch")]
    if not scored:
        raise RuntimeError(f"run {config.run_name} reported no checkpoint; nothing to log")
    best, best_metrics = max(scored, key=lambda cm: cm[1][SCORE])
    with best.as_directory() as directory:
        state = read_checkpoint(directory)

    aucs = {t: _none_if_nan(best_metrics.get(f"val_auc_{t}")) for t in TASKS}
    mean = _none_if_nan(best_metrics.get("val_mean_auc"))
    outcome = TrainOutcome(run_name=config.run_name, storage=config.storage, run_id=run_id,
                           tracking_uri=tracking_uri, best_checkpoint=best.path,
                           best_epoch=int(state["epoch"]), val_mean_auc=mean, val_aucs=aucs,
                           model_uri=None, last_metrics=result.metrics)

    client = MlflowClient(tracking_uri)
    tags = client.get_run(run_id).data.tags
    mlflow.set_tracking_uri(tracking_uri)
    # The checkpoint as a path inside the run's storage (a record names no machine folder);
    # runs of echocmr <= 0.2 recorded the full path.
    checkpoint_tag = _storage_relative(best.path, config.storage)
    with mlflow.start_run(run_id=run_id):  # FINISHED on success, FAILED on an exception
        if tags.get("echocmr.model_checkpoint") in (checkpoint_tag, best.path) \
                and tags.get("echocmr.model_uri"):
            log.info("best checkpoint %s was already logged; not logging it again", best.path)
            outcome.model_uri = tags["echocmr.model_uri"]
            return outcome
        with tempfile.TemporaryDirectory(prefix="echocmr-viewmodel-") as vtmp:
            views = expected_views(shards, config.data.views, tracking_uri=tracking_uri,
                                   dst=vtmp)
            outcome.model_uri = log_model(state, tracking_uri=tracking_uri, run_id=run_id,
                                          views=views)
        mlflow.set_tags({"echocmr.model_checkpoint": checkpoint_tag,
                         "echocmr.model_uri": outcome.model_uri,
                         "echocmr.best_epoch": str(outcome.best_epoch)})
        # The headline: the best checkpoint's score under the run's selection rule.
        mlflow.log_metrics({"best/selection_score": _nan_if_none(best_metrics.get(SCORE)),
                            "best/val_mean_auc": _nan_if_none(mean),
                            **{f"best/val_auc_{t}": _nan_if_none(a) for t, a in aucs.items()}})
        if config.register:
            outcome.registration = register_model(
                outcome.model_uri, config.register, tracking_uri=tracking_uri,
                val_mean_auc=mean, val_aucs=aucs, data_digest=digest, run_id=run_id,
                selection=scored_on(config.selection.describe(), aucs,
                                    metric=config.selection.metric,
                                    tasks=config.selection.tasks,
                                    weights=config.selection.weights),
                selection_score=_none_if_nan(best_metrics.get(SCORE)),
                data_scope=_data_scope(config))
            _write_card(outcome, config, tracking_uri=tracking_uri, shards=shards, digest=digest,
                        train_sites=train_sites)
            mlflow.set_tags({"echocmr.registered": f"{config.register}/"
                                                   f"{outcome.registration.version}"})
    return outcome


def _storage_relative(path: str, storage: str) -> str:
    """``path`` relative to the run storage ``storage`` (``RUN/checkpoint_000003``)."""
    prefix = storage.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path.rstrip("/").rsplit("/", 1)[-1]


def _nan_if_none(value) -> float:
    return math.nan if value is None else float(value)


def _data_scope(config: TrainConfig) -> str:
    """Which part of the shard set the run trained and chose its checkpoint on (registry tag)."""
    excluded = sorted(config.data.exclude_sites or [])
    return f"excluding sites {', '.join(excluded)}" if excluded else "all sites"


def _write_card(outcome: TrainOutcome, config: TrainConfig, *, tracking_uri: str, shards: str,
                digest: str, train_sites: list[str]) -> None:
    """The registered version's description (`model.card.training_card`)."""

    reg = outcome.registration
    card = training_card(name=reg.name, version=reg.version, run_id=outcome.run_id,
                         shards=shards, digest=digest,
                         data=data_summary(shards, exclude_sites=config.data.exclude_sites,
                                           train_sites=train_sites),
                         config=config.to_dict(), best_epoch=outcome.best_epoch,
                         val_aucs=outcome.val_aucs, val_mean_auc=outcome.val_mean_auc,
                         echocmr_version=echocmr_version())
    describe_version(tracking_uri, reg.name, reg.version, card)


def _check_resources(config: TrainConfig, *, local: bool) -> None:
    """Fail fast (local Ray) or warn (a cluster may autoscale) when workers cannot fit."""
    import ray

    have = ray.cluster_resources()
    need_cpu = config.workers * config.cpus_per_worker
    need_gpu = config.workers if config.gpu else 0
    problems = []
    if have.get("CPU", 0) < need_cpu:
        problems.append(f"{need_cpu} CPUs ({config.workers} workers x {config.cpus_per_worker}) "
                        f"but the cluster has {have.get('CPU', 0):g}")
    if have.get("GPU", 0) < need_gpu:
        problems.append(f"{need_gpu} GPUs but the cluster has {have.get('GPU', 0):g}")
    if problems:
        message = "training needs " + "; ".join(problems) + \
            " (use fewer --workers, drop --gpu, or point --address at a bigger cluster)"
        if local:
            raise RuntimeError(message)
        log.warning("%s; waiting for the cluster to provide them", message)


def latest_resume_point(storage: str, run_name: str) -> dict | None:
    """``resume.json`` of the checkpoint a rerun of ``run_name`` restores (Ray Train V2's latest,
    from its snapshot in the run directory), or None: no such run, or a checkpoint without one.
    """
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(storage)

    def read(path: str) -> dict | None:
        try:
            with fs.open_input_stream(path) as f:
                return json.loads(f.read().decode())
        except (FileNotFoundError, OSError, ValueError):
            return None

    run_dir = f"{root.rstrip('/')}/{run_name}"
    snapshot = read(f"{run_dir}/{SNAPSHOT_FILE}") or {}
    latest = snapshot.get("latest_checkpoint_result") or {}
    name = latest.get("checkpoint_dir_name")
    return read(f"{run_dir}/{name}/{RESUME_FILE}") if name else None


def _check_resume(config: TrainConfig) -> None:
    """Refuse, before any worker starts, a rerun whose latest checkpoint is mid-epoch and was
    written by another number of workers (`train.engine.mid_epoch_world_change`)."""

    point = latest_resume_point(config.storage, config.run_name)
    if point is None:
        return
    position, world = ReaderPosition(**point["position"]), int(point["world"])
    if world != config.workers and position.batch > 0:
        raise PreflightError(f"run {config.run_name} in {config.storage}: "
                           + mid_epoch_world_change(position, world, config.workers))
    if world != config.workers:
        log.warning("run %s resumes at epoch %d with %d workers; its checkpoint was written by "
                    "%d (what the epochs then see: the run's MLflow tag echocmr.resume_note, "
                    "docs/training.md)", config.run_name, position.epoch, config.workers, world)


def _storage_path(storage: str) -> str:
    """Local paths made absolute (workers may start elsewhere); URIs (s3://, gs://) kept."""
    return storage if "://" in storage else os.path.abspath(storage)


def _cache_path(cache_dir: str | None) -> str | None:
    """A relative cache dir made absolute here; ``~`` and the default stay for each node's home."""
    if cache_dir is None or cache_dir.startswith("~"):
        return cache_dir
    return os.path.abspath(cache_dir)


def _none_if_nan(value) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _view_tags(views: dict[str, dict[str, int]]) -> dict[str, str]:
    """The run tags that count the clips (train and val) of each view read and left out."""
    fmt = lambda d: ",".join(f"{k}={v}" for k, v in d.items())  # noqa: E731
    return {"echocmr.views_read": fmt(views["read"]),
            "echocmr.views_left_out": fmt(views["left_out"])}


def expected_views(shards: str, views, *, tracking_uri: str, dst: str) -> ExpectedViews:
    """What the logged model records about views: ``data.views``, and the view classifier that
    labelled the training set's views (stats.json ``view_models``) when every site that used
    one used the same, fetched into ``dst`` so the served model carries it (docs/views.md)."""
    used = sorted(set((read_stats(shards).view_models or {}).values()))
    if len(used) != 1:
        if len(used) > 1:
            log.warning("the training set's sites were labelled by different view models (%s): "
                        "the logged model carries none", ", ".join(used))
        return ExpectedViews(views=tuple(views))
    try:
        directory = fetch_view_model(used[0], tracking_uri=tracking_uri, dst=dst)
    except Exception as exc:  # the model still logs; serving then uses every file
        log.warning("view model %s could not be fetched (%s): the logged model carries none",
                    used[0], exc)
        return ExpectedViews(views=tuple(views), source=used[0])
    return ExpectedViews(views=tuple(views), source=used[0], view_model_dir=directory)
