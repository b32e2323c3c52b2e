"""train.checkpoint.log_model / load_model and train.registry on a real MLflow sqlite store."""

import mlflow
import pytest
import torch
from _train_fixtures import tiny_config
from mlflow.tracking import MlflowClient

from train.checkpoint import load_model, log_model
from train.config import TrainConfig
from train.data import InputSpec
from train.model import R2Plus1D
from train.registry import register_model


def fake_state(seed: int) -> dict:
    config = TrainConfig.from_dict(tiny_config())
    torch.manual_seed(seed)
    model = R2Plus1D(config.model)
    spec = InputSpec(frames=4, period=2, size=32, fps=30.0, mean=60.0, std=50.0)
    return {"model": model.state_dict(), "config": config.to_dict(),
            "input_spec": spec.to_dict(), "epoch": 3, "metrics": {"val_mean_auc": 0.7}}


def log_and_register(uri, name, seed, auc):
    with mlflow.start_run() as run:
        model_uri = log_model(fake_state(seed), tracking_uri=uri, run_id=run.info.run_id)
    reg = register_model(model_uri, name, tracking_uri=uri, val_mean_auc=auc,
                         val_aucs={"wma": auc, "lge": None}, data_digest="d" * 64,
                         run_id=run.info.run_id)
    return model_uri, reg


def check_reloads_on_cpu(uri, model_uri, seed):
    """MLflow's own loader and ours give the logged network, with our input spec."""
    state = fake_state(seed)
    reference = R2Plus1D(TrainConfig.from_dict(state["config"]).model)
    reference.load_state_dict(state["model"])
    reference.eval()
    clip = torch.randn(3, 1, 4, 32, 32)
    plain = mlflow.pytorch.load_model("models:/echo@champion")  # what any MLflow user does
    ours, spec = load_model(model_uri, tracking_uri=uri)
    with torch.no_grad():
        assert torch.equal(plain.eval()(clip), reference(clip))
        assert torch.equal(ours(clip), reference(clip))
    assert spec == InputSpec.from_dict(state["input_spec"])
    info = mlflow.models.get_model_info("models:/echo/1")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 4, 32, 32)


def test_champion_moves_only_to_a_better_model(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    model_uri, first = log_and_register(uri, "echo", seed=1, auc=0.70)
    assert (first.version, first.alias, first.previous_champion) == ("1", "champion", None)
    check_reloads_on_cpu(uri, model_uri, seed=1)
    _, worse = log_and_register(uri, "echo", seed=2, auc=0.65)
    assert (worse.alias, worse.previous_champion, worse.previous_champion_auc) == \
        ("challenger", "1", pytest.approx(0.70))
    _, none = log_and_register(uri, "echo", seed=3, auc=None)
    assert none.alias == "challenger"
    _, better = log_and_register(uri, "echo", seed=4, auc=0.75)
    assert better.alias == "champion"
    assert str(client.get_model_version_by_alias("echo", "champion").version) == better.version
    tags = client.get_model_version("echo", better.version).tags
    assert tags["val_mean_auc"] == "0.750000" and tags["val_auc_lge"] == "none"
    assert tags["data_digest"] == "d" * 64 and tags["run_id"]


def test_local_model_directory_loads_with_the_tracking_server_down(tmp_path, monkeypatch):
    """A downloaded model directory is self-contained: loading it never asks a server."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        model_uri = log_model(fake_state(5), tracking_uri=uri, run_id=run.info.run_id)
    local = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "pulled"))
    # Nothing listens on port 9: a call to the tracking server would fail (after retries).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    model, spec = load_model(local)
    state = fake_state(5)
    assert spec == InputSpec.from_dict(state["input_spec"])
    assert torch.equal(model.state_dict()["fc.weight"], state["model"]["fc.weight"])


def test_input_spec_records_the_clip_size_and_shard_format(caplog):
    from shards.format import FORMAT_VERSION
    from train.checkpoint import model_from_state, save_checkpoint

    stats = {"pixel_mean": 40.0, "pixel_std": 30.0, "format_version": FORMAT_VERSION,
             "clip": {"height": 112, "width": 112, "fps": 30.0}}
    spec = InputSpec.build(TrainConfig.from_dict(tiny_config()).data, stats)
    assert spec.clip_size == 112 and spec.shard_format == FORMAT_VERSION
    assert InputSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k not in ("clip_size", "shard_format")}
    assert InputSpec.from_dict(old).clip_size is None  # specs logged before these fields load
    with pytest.raises(ValueError, match="upgrade echocmr"):
        InputSpec.from_dict({**spec.to_dict(), "from_the_future": 1})

    state = fake_state(2)
    state["input_spec"] = {**spec.to_dict(), "shard_format": FORMAT_VERSION - 1}
    path = save_checkpoint(".", state)
    with caplog.at_level("WARNING", logger="train.checkpoint"):
        _, loaded = load_model(path)
    assert loaded.shard_format == FORMAT_VERSION - 1
    assert "retrain it on re-ingested shards" in caplog.text
    assert model_from_state(state)[1] == loaded
