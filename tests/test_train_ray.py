"""End to end on Ray Train V2 (local, 2 CPUs): DDP on gloo, a worker crash, MLflow, the registry.

Default run (one Ray training run, to keep the suite quick on 2 cores): a real ``mlflow server``
on loopback (sqlite backend and artifacts in tmp); ``echocmr train`` (the CLI) with two CPU
workers trains into it; rank 1 exits hard mid-epoch 1 (a test step hook passed to `run_training`,
``step_hook=CrashAtStep(...)``), Ray restarts the worker group from the last checkpoint and the run
finishes. MLflow then holds the run, per-task
val AUC per epoch, params, artifacts and a registered version with the ``champion`` alias;
``mlflow.pyfunc.load_model("models:/NAME@champion")`` loads on the CPU and gives the best
checkpoint's outputs; the version's description is the model card and the run records the shard
set as its training dataset.

With step checkpoints every 2 steps it restarts from the step-4 checkpoint, not epoch 0's. A
second default test kills the only worker mid-epoch and checks that the run restarts from its
last step checkpoint and ends with the weights and logged losses of an uninterrupted in-process
`Engine` run.

Slow: the embedded ``sqlite:///mlflow.db`` default, re-running a run name after the driver
stopped (resume from the latest checkpoint into the same MLflow run), two workers killed
mid-epoch against an uninterrupted two-worker run, and a rerun with another worker count.
"""

import hashlib
import os

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from echocmr.model.store import load_model
from echocmr.shards.format import TASKS
from echocmr.train.config import TrainConfig
from echocmr.train.loop import run_training

from _train_fixtures import CrashAtStep, make_tiny_shards, tiny_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(str(tmp_path_factory.mktemp("shards")))


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # The V2 controller polls workers for reports; poll often so that a report made just before
    # the injected crash is registered (production keeps Ray's 2 s default).
    saved = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    # Workers unpickle the crash hook from tests/_train_fixtures.py.
    tests = os.path.dirname(os.path.abspath(__file__))
    ray.init(num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 filter(None, [tests, os.environ.get("PYTHONPATH")]))}})
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", None)
    else:
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = saved


def check_mlflow_run(uri, outcome, shards, *, epochs, workers, model_name):
    """The MLflow run and registry hold what a finished run must leave."""
    client = MlflowClient(uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    for task in TASKS:  # per-task val AUC per epoch, for the tasks val can score
        steps = [m.step for m in client.get_metric_history(outcome.run_id, f"val/auc_{task}")]
        assert steps == (list(range(epochs)) if outcome.val_aucs[task] is not None else [])
    assert outcome.val_aucs["wma"] is not None  # the fixture's val split has both WMA classes
    steps = [m.step for m in client.get_metric_history(outcome.run_id, "train/loss")]
    assert steps == list(range(epochs))
    digest = hashlib.sha256(open(os.path.join(shards, "manifest.parquet"), "rb").read())
    assert run.data.params["data_digest"] == run.data.tags["data_digest"] == digest.hexdigest()
    assert run.data.params["data.frames"] == "4" and run.data.params["workers"] == str(workers)
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"config.yaml", "stats.json", "input_spec.json"} <= artifacts

    version = client.get_model_version_by_alias(model_name, "champion")
    assert str(version.version) == outcome.registration.version
    assert version.tags["data_digest"] == digest.hexdigest()
    assert float(version.tags["val_auc_wma"]) == pytest.approx(outcome.val_aucs["wma"], abs=1e-6)

    assert digest.hexdigest() in version.description and "## Validation" in version.description
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.source and dataset.dataset.digest == digest.hexdigest()[:32]
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"
    # MLflow's provenance, the selection score as the headline, and no machine path in records
    assert run.data.tags["mlflow.source.name"] == "echocmr train" and run.data.tags["mlflow.user"]
    assert "best/selection_score" in run.data.metrics and "val/selection_score" in run.data.metrics
    records = str([run.data.tags, run.data.params, dataset.dataset.source, version.tags,
                   version.description])
    assert os.path.abspath(shards) not in records and str(outcome.storage) not in records

    mlflow.set_tracking_uri(uri)
    champion = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")  # CPU-only machine
    reference, spec = load_model(outcome.best_checkpoint)
    clip = torch.randn(3, spec.channels, spec.frames, spec.size, spec.size)
    served = champion.predict(pd.DataFrame({"clip": list(clip.numpy())}))
    with torch.no_grad():
        expected = reference(clip).numpy()
    assert served[[f"logit_{t}" for t in TASKS]].to_numpy() == pytest.approx(expected, abs=1e-6)


def test_two_workers_survive_a_crash_and_register_in_a_server(mlflow_server, local_ray, shards,
                                                              tmp_path, monkeypatch):
    import echocmr.cli as echocmr_cli
    import echocmr.train.loop as train_loop
    mlflow_server.wait()
    outcomes = []
    real = train_loop.run_training
    marker = tmp_path / "rank1-crashed"
    crash = CrashAtStep(rank=1, step=5, marker=str(marker))
    monkeypatch.setattr(train_loop, "run_training", lambda *a, **k: outcomes.append(
        real(*a, step_hook=crash, **k)) or outcomes[-1])
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(epochs=2, max_steps_per_epoch=3, max_failures=1,
                                                 checkpoint_every_steps=2)))
    rc = echocmr_cli.main(["train", "--shards", shards, "--config", str(config), "--workers", "2",
                           "--tracking-uri", mlflow_server, "--register", "echo_cmr",
                           "--run-name", "two-workers", "--storage", str(tmp_path / "runs")])
    assert rc == 0
    (outcome,) = outcomes

    # rank 1 died in epoch 1 (step 5 of 3-step epochs); the group restarted from the step
    # checkpoint of step 4 (epoch 1, after its first batch) and finished epoch 1
    assert marker.exists()
    assert outcome.last_metrics["epoch"] == 1 and outcome.last_metrics["resumed_at_epoch"] == 1
    assert outcome.last_metrics["resumed_at_step"] == 4 and outcome.last_metrics["train_steps"] == 3
    assert (outcome.registration.version, outcome.registration.alias) == ("1", "champion")
    check_mlflow_run(mlflow_server, outcome, shards, epochs=2, workers=2, model_name="echo_cmr")
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    stored = [f for _, _, files in os.walk(mlflow_server.artifacts) for f in files]
    assert "MLmodel" in stored  # the model went to the server's artifact store


@pytest.mark.usefixtures("one_torch_thread")
def test_worker_killed_mid_epoch_resumes_at_its_step_checkpoint_with_identical_weights(
        local_ray, shards, tmp_path, monkeypatch):
    """One worker, killed at step 7 (epoch 1, batch 2 of 5): Ray restarts it from the step-6
    checkpoint, and the run ends with the weights of an uninterrupted run (in-process Engine)."""
    from echocmr.model.checkpoint import read_checkpoint
    from echocmr.shards.reader import read_stats
    from echocmr.train.engine import Engine

    settings = tiny_config(epochs=2, max_steps_per_epoch=5, checkpoint_every_steps=3,
                           max_failures=1, keep_checkpoints=None)
    marker = tmp_path / "rank0-killed"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    outcome = run_training(TrainConfig.from_dict(
        {**settings, "run_name": "killed", "storage": str(tmp_path / "runs")}), shards,
        tracking_uri=uri, step_hook=CrashAtStep(rank=0, step=7, marker=str(marker)))
    assert marker.exists()
    assert outcome.last_metrics["resumed_at_epoch"] == 1
    assert outcome.last_metrics["resumed_at_step"] == 6  # not 5: the epoch 0 checkpoint
    run_dir = tmp_path / "runs" / "killed"
    assert sorted(p.name for p in run_dir.glob("step_*")) == [
        "step_00000003", "step_00000006", "step_00000009"]  # 9: written again after the restart
    last = read_checkpoint(str(run_dir / "epoch_0001"))

    straight = Engine(TrainConfig.from_dict(settings), shards, stats=read_stats(shards))
    epochs = [straight.train_epoch() for _ in range(2)]
    assert last["global_step"] == straight.global_step == 10
    for (name, a), b in zip(straight.model.state_dict().items(), last["model"].values(),
                            strict=True):
        assert torch.equal(a, b), name
    # the resumed epoch's logged loss covers the whole epoch, as the uninterrupted one's does
    history = MlflowClient(uri).get_metric_history(outcome.run_id, "train/loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [e.loss for e in epochs]


@pytest.mark.slow
def test_embedded_sqlite_default(local_ray, shards, tmp_path):
    config = TrainConfig.from_dict(tiny_config(
        workers=2, epochs=2, max_steps_per_epoch=3, run_name="embedded",
        storage=str(tmp_path / "runs"), register="echo_local"))
    outcome = run_training(config, shards)  # no URI: sqlite:///mlflow.db in the cwd (tmp_path)
    assert outcome.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert outcome.last_metrics["resumed_at_epoch"] == -1
    check_mlflow_run(outcome.tracking_uri, outcome, shards, epochs=2, workers=2,
                     model_name="echo_local")
    stored = [f for _, _, files in os.walk(tmp_path / "mlruns") for f in files]
    assert "MLmodel" in stored and "config.yaml" in stored  # artifacts beside mlflow.db


@pytest.mark.slow
def test_rerun_after_driver_stop_resumes_the_same_run(local_ray, shards, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = dict(workers=1, max_steps_per_epoch=2, run_name="again",
                  storage=str(tmp_path / "runs"), register="echo_again")
    first = run_training(TrainConfig.from_dict(tiny_config(epochs=1, **common)), shards,
                         tracking_uri=uri)
    # as after a driver crash: the same command (here with more epochs) picks the run up
    second = run_training(TrainConfig.from_dict(tiny_config(epochs=2, **common)), shards,
                          tracking_uri=uri)
    assert second.run_id == first.run_id
    assert second.last_metrics["resumed_at_epoch"] == 1 and second.last_metrics["epoch"] == 1
    steps = [m.step for m in MlflowClient(uri).get_metric_history(first.run_id, "train/loss")]
    assert steps == [0, 1]


@pytest.mark.slow
def test_two_workers_killed_mid_epoch_end_with_an_uninterrupted_runs_weights(
        local_ray, shards, tmp_path, monkeypatch):
    """DDP on gloo: rank 1 killed at step 5 (epoch 1, batch 2 of 3); the group restarts from the
    step-4 checkpoint, which holds both ranks' part of the epoch; the final weights and the
    logged train losses equal those of the same run without the crash."""
    from echocmr.model.checkpoint import read_checkpoint

    settings = tiny_config(workers=2, epochs=2, max_steps_per_epoch=3, checkpoint_every_steps=2,
                           max_failures=1)
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def run(name, hook=None):
        outcome = run_training(TrainConfig.from_dict(
            {**settings, "run_name": name, "storage": str(tmp_path / "runs")}), shards,
            tracking_uri=uri, step_hook=hook)
        losses = MlflowClient(uri).get_metric_history(outcome.run_id, "train/loss")
        return (outcome, read_checkpoint(str(tmp_path / "runs" / name / "epoch_0001")),
                [m.value for m in sorted(losses, key=lambda m: m.step)])

    straight, straight_last, straight_losses = run("straight")
    assert straight.last_metrics["resumed_at_step"] == -1
    marker = tmp_path / "rank1-killed"
    crashed, crashed_last, crashed_losses = run("crashed", CrashAtStep(rank=1, step=5,
                                                                      marker=str(marker)))
    assert marker.exists() and crashed.last_metrics["resumed_at_step"] == 4
    assert crashed_losses == straight_losses
    for (name, a), b in zip(straight_last["model"].items(), crashed_last["model"].values(),
                            strict=True):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_rerun_with_another_worker_count(local_ray, shards, tmp_path, monkeypatch):
    """A step checkpoint of 1 worker is refused for 2 before anything starts; the same run with
    1 worker finishes the epoch; from that epoch checkpoint 2 workers go on, and say so."""
    from ray.train import TrainingFailedError

    from echocmr.train.preflight import PreflightError

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = dict(max_steps_per_epoch=4, checkpoint_every_steps=2, run_name="grow",
                  storage=str(tmp_path / "runs"))
    marker = tmp_path / "killed"
    with pytest.raises(TrainingFailedError):  # no restarts allowed: the run stops mid-epoch 0
        run_training(TrainConfig.from_dict(tiny_config(epochs=1, workers=1, max_failures=0,
                                                       **common)), shards, tracking_uri=uri,
                     step_hook=CrashAtStep(rank=0, step=3, marker=str(marker)))
    with pytest.raises(PreflightError, match=r"mid-epoch \(epoch 0, after batch 2\) of a "
                                             r"1-worker run.*--workers 1"):
        run_training(TrainConfig.from_dict(tiny_config(epochs=1, workers=2, **common)), shards,
                     tracking_uri=uri)
    first = run_training(TrainConfig.from_dict(tiny_config(epochs=1, workers=1, **common)),
                         shards, tracking_uri=uri)
    assert first.last_metrics["resumed_at_step"] == 2
    grown = run_training(TrainConfig.from_dict(tiny_config(epochs=2, workers=2, **common)),
                         shards, tracking_uri=uri)
    assert grown.run_id == first.run_id
    assert grown.last_metrics["resumed_at_epoch"] == 1 and grown.last_metrics["epoch"] == 1
    note = MlflowClient(uri).get_run(grown.run_id).data.tags["echocmr.resume_note"]
    assert note.startswith("resumed at epoch 1 with 2 workers; the checkpoint was written by 1")
