"""train.checkpoint.log_model / load_model and train.registry on a real MLflow sqlite store."""

import os

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from echocmr.model.config import ModelConfig
from echocmr.model.contract import InputSpec
from echocmr.model.network import R2Plus1D
from echocmr.model.publish import log_model
from echocmr.model.registry import register_model
from echocmr.model.store import load_model
from echocmr.train.config import TrainConfig

from _train_fixtures import tiny_config


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


def log_pickled(state: dict, uri: str, run_id: str) -> str:
    """A model as echocmr logged it before the pyfunc artifact: the network pickled by
    ``mlflow.pytorch`` with only torch in its requirements."""
    from echocmr.model.checkpoint import model_from_state

    model, spec = model_from_state(state)
    with mlflow.start_run(run_id=run_id):
        return mlflow.pytorch.log_model(
            model, name="model", serialization_format="pickle",
            metadata={"input_spec": spec.to_dict(), "epoch": state.get("epoch")},
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"]).model_uri


def check_reloads_on_cpu(uri, model_uri, seed):
    """MLflow's own loader (pyfunc) and ours give the logged network, with our input spec."""
    state = fake_state(seed)
    reference = R2Plus1D(TrainConfig.from_dict(state["config"]).model)
    reference.load_state_dict(state["model"])
    reference.eval()
    clip = torch.randn(3, 1, 4, 32, 32)
    plain = mlflow.pyfunc.load_model("models:/echo@champion")  # what any MLflow user does
    ours, spec = load_model(model_uri, tracking_uri=uri)
    served = plain.predict(pd.DataFrame({"clip": list(clip.numpy())}))
    with torch.no_grad():
        expected = reference(clip).numpy()
        assert torch.equal(ours(clip), reference(clip))
    assert served[[f"logit_{t}" for t in ("wma", "lge", "t1", "t2", "ecv")]].to_numpy() == \
        pytest.approx(expected, abs=1e-6)
    assert spec == InputSpec.from_dict(state["input_spec"])
    info = mlflow.models.get_model_info("models:/echo/1")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["clip", "dicom", "view"]
    assert info.metadata["input_spec"] == state["input_spec"]


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


def test_champion_follows_the_checkpoint_rule_and_compares_only_like_with_like(tmp_path):
    """The alias moves by the run's pre-specified selection rule, and only against a champion
    chosen by the same rule on the same data; otherwise challenger, with the reason on the tag."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)

    def reg(seed, *, wma, mean, selection="val AUC (wma)", digest="d" * 64):
        with mlflow.start_run() as run:
            model_uri = log_model(fake_state(seed), tracking_uri=uri, run_id=run.info.run_id)
        return register_model(model_uri, "echo", tracking_uri=uri, val_mean_auc=mean,
                              val_aucs={"wma": wma}, data_digest=digest, run_id=run.info.run_id,
                              selection=selection, selection_score=wma)

    first = reg(1, wma=0.80, mean=0.60)
    assert first.alias == "champion"
    # A better mean AUC over five tasks (three null by design) no longer wins: WMA is the rule.
    noisier = reg(2, wma=0.78, mean=0.70)
    assert noisier.alias == "challenger" and "does not beat champion v1's 0.800000" in \
        noisier.decision
    better = reg(3, wma=0.85, mean=0.55)
    assert better.alias == "champion" and "beats champion v1's" in better.decision
    other_data = reg(4, wma=0.95, mean=0.90, digest="e" * 64)
    assert other_data.alias == "challenger" and "other data" in other_data.decision
    with mlflow.start_run() as run:
        scoped_uri = log_model(fake_state(6), tracking_uri=uri, run_id=run.info.run_id)
    other_scope = register_model(scoped_uri, "echo", tracking_uri=uri, val_mean_auc=0.9,
                                 val_aucs={"wma": 0.96}, data_digest="d" * 64,
                                 selection="val AUC (wma)", selection_score=0.96,
                                 data_scope="excluding sites st_elsewhere")
    assert other_scope.alias == "challenger" and "excluding sites st_elsewhere" in \
        other_scope.decision
    other_rule = reg(5, wma=0.95, mean=0.90, selection="val loss")
    assert other_rule.alias == "challenger" and "'val loss'" in other_rule.decision
    assert str(client.get_model_version_by_alias("echo", "champion").version) == better.version
    tags = client.get_model_version("echo", other_rule.version).tags
    assert tags["selection"] == "val loss" and tags["champion_decision"] == other_rule.decision
    assert client.get_model_version("echo", better.version).tags["selection_score"] == "0.850000"


def test_a_champion_registered_before_selection_tags_is_read_as_the_mean_auc_rule(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    _, old = log_and_register(uri, "echo", seed=1, auc=0.70)
    for key in ("selection", "selection_score", "champion_decision"):  # as 0.1/0.2.0 tagged it
        client.delete_model_version_tag("echo", old.version, key)
    _, legacy_rule = log_and_register(uri, "echo", seed=2, auc=0.75)
    assert legacy_rule.alias == "champion" and legacy_rule.selection == "val mean AUC (all tasks)"
    with mlflow.start_run() as run:
        model_uri = log_model(fake_state(3), tracking_uri=uri, run_id=run.info.run_id)
    new_rule = register_model(model_uri, "echo", tracking_uri=uri, val_mean_auc=0.9,
                              val_aucs={"wma": 0.9}, data_digest="d" * 64,
                              selection="val AUC (wma)", selection_score=0.9)
    assert new_rule.alias == "challenger" and "promote by hand" in new_rule.decision


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
    from echocmr.model.checkpoint import model_from_state, save_checkpoint
    from echocmr.shards.format import FORMAT_VERSION, ShardStats

    stats = ShardStats.from_dict({"pixel_mean": 40.0, "pixel_std": 30.0,
                                  "format_version": FORMAT_VERSION,
                                  "clip": {"height": 112, "width": 112, "fps": 30.0}})
    spec = InputSpec.build(TrainConfig.from_dict(tiny_config()).data, stats)
    assert spec.clip_size == 112 and spec.shard_format == FORMAT_VERSION
    assert InputSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k not in ("clip_size", "shard_format")}
    assert InputSpec.from_dict(old).clip_size is None  # specs logged before these fields load
    with pytest.raises(ValueError, match="upgrade echocmr"):
        InputSpec.from_dict({**spec.to_dict(), "from_the_future": 1})

    state = fake_state(2)
    # Format 2 stores clips as format 3 does (3 added the vendor): no warning; format 1 does not.
    state["input_spec"] = {**spec.to_dict(), "shard_format": 2}
    with caplog.at_level("WARNING", logger="echocmr.model.checkpoint"):
        load_model(save_checkpoint("v2", state))
    assert "retrain it on re-ingested shards" not in caplog.text
    state["input_spec"] = {**spec.to_dict(), "shard_format": 1}
    path = save_checkpoint(".", state)
    with caplog.at_level("WARNING", logger="echocmr.model.checkpoint"):
        _, loaded = load_model(path)
    assert loaded.shard_format == 1
    assert "retrain it on re-ingested shards" in caplog.text
    assert model_from_state(state)[1] == loaded


def test_a_model_logged_before_the_namespace_still_loads(tmp_path, monkeypatch):
    """echocmr 0.1 installed `train` at top level, so its pickles name `train.model.R2Plus1D`.
    Build such a model here: log it while the class says it lives in `train.model`."""
    import os
    import subprocess
    import sys
    import textwrap
    import zipfile

    import echocmr.model.config as config_module
    import echocmr.model.network as model_module
    import echocmr.train as train_pkg

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    with monkeypatch.context() as old_layout:
        # every class a pickled network holds, under the module names echocmr 0.1 gave them
        for module, old in ((model_module, "train.model"), (config_module, "train.config")):
            for value in vars(module).values():
                if isinstance(value, type) and value.__module__ == module.__name__:
                    old_layout.setattr(value, "__module__", old)
            old_layout.setitem(sys.modules, old, module)
        old_layout.setitem(sys.modules, "train", train_pkg)
        with mlflow.start_run() as run:
            pass
        model_uri = log_pickled(fake_state(6), uri, run.info.run_id)
    assert "train" not in sys.modules and R2Plus1D.__module__ == "echocmr.model.network"
    assert ModelConfig.__module__ == "echocmr.model.config"
    local = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "old"))
    with zipfile.ZipFile(next((tmp_path / "old").rglob("model.pth"))) as zf:
        pickled = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    assert b"train.model" in pickled and b"echocmr" not in pickled  # really the old layout

    # Load where only the installed package is importable (not this checkout's bare folders).
    code = textwrap.dedent(f"""
        import sys, torch, mlflow
        from echocmr.model.store import load_model
        try:
            mlflow.pytorch.load_model({local!r})
            print("plain: loaded")
        except ModuleNotFoundError as exc:
            print("plain:", exc.name)
        model, spec = load_model({local!r})
        print("ours:", type(model).__module__, "train" in sys.modules)
        torch.save({{"fc.weight": model.state_dict()["fc.weight"], "spec": spec.to_dict()}},
                   "loaded.pt")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                         capture_output=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["plain: train", "ours: echocmr.model.network False"]
    loaded = torch.load(tmp_path / "loaded.pt")
    state = fake_state(6)
    assert loaded["spec"] == state["input_spec"]
    assert torch.equal(loaded["fc.weight"], state["model"]["fc.weight"])


def test_an_old_model_is_refused_clearly_when_train_is_another_package(tmp_path, monkeypatch):
    import sys
    import types

    import echocmr.model.legacy as legacy

    monkeypatch.setitem(sys.modules, "train", types.ModuleType("train"))  # somebody else's
    with pytest.raises(RuntimeError, match="echocmr models relog"), \
            legacy._legacy_module_names():
        pass


def test_the_logged_model_holds_no_pickle(tmp_path, monkeypatch):
    """Weights as plain tensors, the network described as JSON, the class from code: it loads
    where pickle loading is disabled, and the reader refuses a format it does not know."""
    import json

    from echocmr.model.artifact import read_model_dir

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        model_uri = log_model(fake_state(7), tracking_uri=uri, run_id=run.info.run_id)
    local = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "m"))
    files = sorted(os.path.relpath(os.path.join(r, f), local)
                   for r, _, fs in os.walk(local) for f in fs)
    assert "artifacts/model/weights.pt" in files and "artifacts/model/model.json" in files
    assert "model_code.py" in files and "serving_input_example.json" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pth", ".cloudpickle"))]
    weights = torch.load(os.path.join(local, "artifacts/model/weights.pt"), weights_only=True)
    assert torch.equal(weights["fc.weight"], fake_state(7)["model"]["fc.weight"])
    meta = json.loads(open(os.path.join(local, "artifacts/model/model.json")).read())
    assert meta["format"] == 1 and meta["model_config"]["width"] == 4
    requirements = open(os.path.join(local, "requirements.txt")).read().split()
    # the model carries its echocmr code; its requirements are the serving set, no echocmr
    assert not any(r.startswith("echocmr") for r in requirements)
    assert any(r.startswith("torch==") for r in requirements)
    assert "code/echocmr/model/serving.py" in files and "code/echocmr/ingest/preprocess.py" in files

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    out = pyfunc.predict(pd.DataFrame({"clip": [torch.zeros(1, 4, 32, 32).numpy()]}))
    assert list(out.columns)[:1] == ["logit_wma"] and len(out) == 1
    with pytest.raises(Exception, match="either 'clip' rows"):
        pyfunc.predict(pd.DataFrame({"view": ["A4C"]}))
    with pytest.raises(Exception, match=r"float32\[N, 1, 4, 32, 32\]"):
        pyfunc.predict(pd.DataFrame({"clip": [torch.zeros(1, 4, 16, 16).numpy()]}))

    meta["format"] = 2
    open(os.path.join(local, "artifacts/model/model.json"), "w").write(json.dumps(meta))
    with pytest.raises(ValueError, match="install the echocmr the model's requirements name"):
        read_model_dir(os.path.join(local, "artifacts/model"))


def test_a_pickled_model_where_pickle_is_disabled_says_how_to_relog(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        pass
    model_uri = log_pickled(fake_state(8), uri, run.info.run_id)
    model, _ = load_model(model_uri, tracking_uri=uri)  # pickles allowed: it still loads
    assert torch.equal(model.state_dict()["fc.weight"], fake_state(8)["model"]["fc.weight"])
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(ValueError, match="echocmr models relog"):
        load_model(model_uri, tracking_uri=uri)


def test_promote_records_who_and_why(tmp_path, monkeypatch):
    from echocmr.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    log_and_register(uri, "echo", seed=1, auc=0.70)
    log_and_register(uri, "echo", seed=2, auc=0.60)  # challenger by the val policy
    with pytest.raises(SystemExit):  # --reason is required
        main(["models", "promote", "echo", "2", "--tracking-uri", uri])
    monkeypatch.setenv("USER", "dr-reviewer")
    assert main(["models", "promote", "echo", "2", "--alias", "champion", "--reason",
                 "better calibrated on the site-B audit", "--tracking-uri", uri]) == 0
    assert str(client.get_model_version_by_alias("echo", "champion").version) == "2"
    tags = client.get_model_version("echo", "2").tags
    assert tags["promoted_by"] == "dr-reviewer" and tags["promoted_alias"] == "champion"
    assert tags["promoted_reason"] == "better calibrated on the site-B audit"
    assert tags["promoted_from_version"] == "1" and tags["promoted_at"]
    assert main(["models", "promote", "echo", "9", "--reason", "x", "--tracking-uri", uri]) == 1


def test_relog_turns_a_pickled_version_into_the_current_format(tmp_path, monkeypatch):
    from echocmr.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    with mlflow.start_run() as run:
        pass
    old_uri = log_pickled(fake_state(9), uri, run.info.run_id)
    register_model(old_uri, "echo", tracking_uri=uri, val_mean_auc=0.7, val_aucs={"wma": 0.7},
                   data_digest="d" * 64, run_id=run.info.run_id)
    client.update_model_version("echo", "1", description="the old card")
    assert main(["models", "relog", "echo", "1", "--tracking-uri", uri]) == 0
    new = client.get_model_version_by_alias("echo", "champion")
    assert str(new.version) == "2" and new.tags["relogged_from_version"] == "1"
    assert new.tags["val_auc_wma"] == "0.700000" and new.description.startswith("the old card")
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model, spec = load_model("models:/echo@champion", tracking_uri=uri)
    assert torch.equal(model.state_dict()["fc.weight"], fake_state(9)["model"]["fc.weight"])
    assert spec == InputSpec.from_dict(fake_state(9)["input_spec"])


def test_the_model_card_says_what_the_model_saw_and_how_eval_judged_it(tmp_path):
    from types import SimpleNamespace

    from echocmr.eval.record import annotate_version
    from echocmr.model.card import training_card

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    log_and_register(uri, "echo", seed=1, auc=0.70)
    split = {"clips": 40, "studies": 20, "patients": 10, "sites": ["a"],
             "prevalence": {"wma": 0.25, "lge": None, "t1": 0.5, "t2": 0.1, "ecv": 0.0}}
    card = training_card(name="echo", version="1", run_id="r" * 32, shards="/data/shards",
                         digest="d" * 64, data={"sites": ["a", "b"], "clips": 80,
                                                "splits": {"train": split, "val": split}},
                         config=TrainConfig.from_dict(tiny_config()).to_dict(), best_epoch=3,
                         val_aucs={"wma": 0.7, "lge": None}, val_mean_auc=0.7,
                         echocmr_version="0.1.0")
    assert "`" + "d" * 64 + "`" in card and "| train | 40 | 20 | 10 | 25.0% | - |" in card
    assert "best epoch 3" in card and "| WMA | 0.700 |" in card and "| LGE | none |" in card
    assert "/data" not in card and "shard set: `shards`" in card  # the set's name, not its path
    client.update_model_version("echo", "1", description=card)

    def result(auc, verdict):
        return SimpleNamespace(auc=auc, ci_low=auc - 0.1, ci_high=auc + 0.05, n_studies=30,
                               verdict=verdict)

    for auc in (0.81, 0.83):  # a second eval of the same split replaces the first's section
        annotate_version(tracking_uri=uri, model_uri="models:/echo@champion", split="test",
                         results={"wma": result(auc, "signal"), "lge": result(0.52, "no signal")},
                         eval_run="e" * 32, data_digest="f" * 64)
    mv = client.get_model_version("echo", "1")
    assert mv.tags["test_auc_wma"] == "0.830" and mv.tags["test_ci_wma"] == "0.730-0.880"
    assert mv.tags["test_verdict_lge"] == "no signal" and mv.tags["test_eval_run"] == "e" * 32
    assert mv.description.startswith("# echo version 1")
    assert mv.description.count("## Evaluation on test") == 1
    assert "| WMA | 0.830 | 0.730-0.880 | 30 | signal |" in mv.description
    assert annotate_version(tracking_uri=uri, model_uri="runs:/x/model", split="test",
                            results={}, eval_run=None, data_digest="f" * 64) is None
