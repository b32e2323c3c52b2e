"""The view classifier: vocabulary, artifact, calibration, training through the real CLI, the read
path's view selection, and how ingest labels a clip.

One small four-view shard set (`_views_fixtures.make_view_set`: the cohort's phantom in A4C, A2C,
PLAX and the non-target PSAX, some clips stored as ``unknown``) is written per module; `echocmr
views train` runs on it in a subprocess with its own MLflow sqlite store, as a user runs it.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _views_fixtures import make_view_set

from echocmr.config import ConfigError
from echocmr.ingest.synth.small import small_clip
from echocmr.ingest.views import ViewMix, disagrees, label_view
from echocmr.model.contract import frames_to_clip
from echocmr.model.views import (
    VIEW_CLASSES,
    ViewClassifier,
    fit_temperature,
    read_view_model,
)
from echocmr.read.config import DataConfig
from echocmr.read.loader import split_files, view_counts
from echocmr.shards.format import SampleMeta, view_class
from echocmr.shards.reader import read_manifest


@pytest.fixture(scope="module")
def view_set(tmp_path_factory) -> str:
    return make_view_set(str(tmp_path_factory.mktemp("views") / "set"), n_patients=20, seed=3,
                         unknown_every=7)


@pytest.fixture(scope="module")
def trained(view_set, tmp_path_factory):
    """``echocmr views train`` in a subprocess: (completed process, model dir, tracking URI)."""
    root = tmp_path_factory.mktemp("vtrain")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "HOME": str(root), "TMPDIR": str(root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "echocmr", "views", "train", "--shards", view_set, "--epochs", "3", "--min-steps", "0",
         "--batch-size", "16", "--register", "views", "--out", str(root / "vm"),
         "--tracking-uri", uri], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    return proc, root / "vm", uri


def test_vocabulary_maps_any_table_name_to_a_class():
    assert [view_class(v) for v in ("A4C", "a2c", " PLAX ", "PSAX", "A5C", "other")] == [
        "A4C", "A2C", "PLAX", "other", "other", "other"]
    assert {view_class(v) for v in (None, "", "unknown", "nan", "None")} == {"unknown"}


def test_view_fields_round_trip_and_samples_without_them_keep_their_bytes():
    base = dict(key="s-0123456789abcdef", site="s", split="train", patient_hash="p",
                study_hash="q", view="A4C", fps=30.0, n_frames=10)
    plain = SampleMeta(**base)
    assert b"view_" not in plain.to_json()
    labelled = SampleMeta(**base, view_source="model", view_confidence=0.9731)
    back = SampleMeta.from_json(labelled.to_json())
    assert back == labelled and back.view_confidence == pytest.approx(0.9731)
    with pytest.raises(ValueError, match="does not know"):
        SampleMeta.from_dict({**base, "view_score": 1.0})


def test_temperature_scaling_cools_overconfident_logits():
    rng = np.random.default_rng(0)
    target = torch.tensor(rng.integers(0, 4, 400))
    logits = torch.randn(400, 4) * 0.5
    right = rng.random(400) < 0.7  # 70 % right, each call scored as if certain
    logits[torch.arange(400), torch.where(torch.tensor(right), target, (target + 1) % 4)] += 8.0
    t = fit_temperature(logits, target)
    nll = torch.nn.functional.cross_entropy
    assert t > 2.0
    assert float(nll(logits / t, target)) < float(nll(logits, target))
    assert fit_temperature(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long)) == 1.0
    # A val set the network gets all right would push T to 0 (every call certain): bounded.
    right_logits = torch.nn.functional.one_hot(target[:3], 4).float() * 3.0
    assert fit_temperature(right_logits, target[:3]) == pytest.approx(0.5)


def test_read_path_selects_views_and_counts_the_rest(view_set, tmp_path):
    manifest = read_manifest(view_set)
    train = manifest[manifest["split"] == "train"]
    _, _, counts = split_files(view_set, "train", views=("A4C",), index_dir=str(tmp_path))
    assert sum(counts) == int((train["view"] == "A4C").sum()) > 0
    _, _, every = split_files(view_set, "train", views=("A4C", "A2C", "PLAX", "other",
                                                        "unknown"), index_dir=str(tmp_path))
    assert sum(every) == len(train)
    c = view_counts(view_set, ("A4C", "A2C", "PLAX"))
    assert set(c["read"]) == {"A4C", "A2C", "PLAX"}
    assert set(c["left_out"]) == {"other", "unknown"}  # PSAX is other; stored unknowns
    fit = manifest[manifest["split"].isin(["train", "val"])]
    assert sum(c["read"].values()) + sum(c["left_out"].values()) == len(fit)
    assert DataConfig().views == ("A4C", "A2C", "PLAX")
    with pytest.raises(ConfigError, match="data.views"):
        DataConfig(views=("PSAX",))
    with pytest.raises(ConfigError, match="data.views"):
        DataConfig(views=())


def test_views_train_through_the_cli_registers_a_model_with_its_card(trained):
    proc, model_dir, uri = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "true \\ pred" in out and "registered views version 1 as champion" in out
    for name in VIEW_CLASSES:
        assert f"\n{name}" in out  # a confusion row per class
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["kind"] == "echocmr.ViewNet" and meta["format"] == 1
    assert meta["classes"] == list(VIEW_CLASSES) and meta["train_sites"] == ["site_a"]
    assert meta["temperature"] > 0 and np.asarray(meta["val"]["confusion"]).shape == (4, 5)
    torch.load(model_dir / "weights.pt", weights_only=True)  # plain tensors, no pickled class
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("views", "champion")
    card = version.description
    assert "view classifier" in card and "trained on sites: site_a" in card
    assert "| other |" in card and "true \\ pred" in card
    run = client.get_run(version.run_id)
    assert run.data.tags["echocmr.kind"] == "view_classifier"
    assert "unknown=" in run.data.tags["echocmr.views_train"]  # left out, and counted


def test_a_registered_view_model_loads_by_alias_and_is_pinned(trained):
    proc, _, uri = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    from echocmr.model.view_store import load_view_classifier

    classifier = load_view_classifier("models:/views@champion", tracking_uri=uri)
    assert classifier.source == "models:/views/1"
    frames = small_clip(16, 64, 64, seed=5, view="PSAX", overlays=False).frames
    call = classifier(frames)
    assert call.best in VIEW_CLASSES and 0.0 < call.confidence <= 1.0
    assert call.view == (call.best if call.confidence >= classifier.threshold else "unknown")
    again = pickle.loads(pickle.dumps(classifier))  # what a pool worker receives
    assert again(frames) == call
    cmr_model = Path(__file__).parent / "data" / "model_0_2_0"  # a CMR model, not a view model
    with pytest.raises(ValueError, match="is not a view classifier"):
        load_view_classifier(str(cmr_model), tracking_uri=uri)
    with pytest.raises(ValueError, match="neither a view-model directory"):
        load_view_classifier(str(cmr_model.parent), tracking_uri=uri)


def test_threshold_decides_unknown(trained):
    proc, model_dir, _ = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = read_view_model(model_dir)
    frames = small_clip(16, 64, 64, seed=9, view="A4C", overlays=False).frames
    assert ViewClassifier(model, threshold=1.0)(frames).view == "unknown"
    assert ViewClassifier(model, threshold=0.0)(frames).view in VIEW_CLASSES
    with pytest.raises(ValueError, match="threshold"):
        ViewClassifier(model, threshold=1.5)


def _call(view, conf):
    return lambda frames: SimpleNamespace(view=view, confidence=conf, best=view)


def test_ingest_labels_a_clip_table_first_and_counts_disagreements():
    frames = np.zeros((4, 8, 8), np.uint8)
    none = label_view(None, None, frames)
    assert (none.view, none.source, none.confidence) == ("unknown", None, None)
    by_model = label_view(None, _call("other", 0.97), frames)
    assert (by_model.view, by_model.source, by_model.confidence) == ("other", "model", 0.97)
    table = label_view("PSAX", _call("other", 0.97), frames)
    assert table.view == "PSAX" and table.source == "table" and not disagrees(table)
    clash = label_view("A4C", _call("A2C", 0.99), frames)
    assert clash.view == "A4C" and disagrees(clash)
    unsure = label_view("A4C", _call("unknown", 0.4), frames)
    assert not disagrees(unsure)  # an unsure model is no disagreement
    mix = ViewMix()
    mix.add({"view": "A4C", "view_source": "table", "view_confidence": 0.99}, disagreement=True)
    mix.add({"view": "PSAX", "view_source": "table", "view_confidence": 0.97})
    mix.add({"view": "unknown"})
    text = mix.describe()
    assert "A4C 1" in text and "other 1" in text and "unknown 1" in text
    assert "disagrees with the views table on 1 of 2 clips" in text


CMR_STATS = {"tasks": ["wma", "lge", "t1", "t2", "ecv"], "pixel_mean": 40.0, "pixel_std": 30.0,
             "clip": {"height": 112, "width": 112, "fps": 30.0, "codec": "vp9",
                      "pix_fmt": "yuv420p"}}


def _ybr() -> str:
    from pydicom.data import get_testdata_file

    return get_testdata_file("examples_ybr_color.dcm")


def test_served_model_reports_views_and_leaves_other_views_out(trained, tmp_path):
    """A CMR model logged with the view classifier: the DICOM pyfunc reports each file's view
    and confidence, and a file of a view the model was not trained on is rejected with a reason
    and does not enter the study's probability (pyfunc, and `echocmr predict` in a subprocess)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from echocmr.model.publish import ExpectedViews, log_model
    from echocmr.model.view_serving import classify_file

    from _eval_model import make_checkpoint, tiny_state

    proc, model_dir, _ = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    ybr = _ybr()
    call = classify_file(ViewClassifier(read_view_model(model_dir)), ybr)
    assert call["status"] == "kept"
    seen = call["view"]  # what the classifier says this real clip is
    others = tuple(v for v in ("A4C", "A2C", "PLAX", "other") if v != seen)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("echocmr")).info.run_id
    model_uri = log_model(tiny_state(CMR_STATS), tracking_uri=uri, run_id=run,
                          views=ExpectedViews(views=(seen,), source=str(model_dir),
                                              view_model_dir=str(model_dir)))
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(model_uri)
    data = Path(ybr).read_bytes()
    out = served.predict(pd_frame({"dicom": [data]}))
    (row,) = out.to_dict("records")  # one row per study (model.serve_response)
    (f,) = row["files"]
    assert f["status"] == "kept" and f["view"] == seen
    assert f["view_confidence"] == pytest.approx(call["confidence"], abs=1e-4)
    assert row["status"] == "ok" and row["p_wma"] is not None and list(row["views"]) == [seen]

    # The same file for a model trained on the other views: reported, never averaged in.
    from echocmr.model.checkpoint import model_from_state
    from echocmr.model.predict import ViewFilter
    from echocmr.model.serving import predict_study

    net, spec = model_from_state(tiny_state(CMR_STATS))
    refused = predict_study(net, spec, [data], view_filter=ViewFilter(
        classifier=ViewClassifier(read_view_model(model_dir)), views=others))
    (g,) = refused["files"]
    assert g["status"] == "rejected" and g["view"] == seen
    assert g["reason"] == ("view_unknown" if seen == "unknown" else "view_not_target")
    assert refused["probabilities"] is None and refused["n_clips"] == 0

    checkpoint = make_checkpoint(str(tmp_path / "ckpt"), CMR_STATS)
    env = {**os.environ, "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    outs = {}
    for name, views in (("kept", [seen]), ("left_out", list(others))):
        out_json = tmp_path / f"{name}.json"
        argv = [sys.executable, "-m", "echocmr", "predict", "--model", checkpoint, "--out",
                str(out_json), "--view-model", str(model_dir), ybr]
        for v in views:
            argv += ["--views", v]
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        outs[name] = (p, json.loads(out_json.read_text()))
    p, doc = outs["kept"]
    assert p.returncode == 0, p.stderr[-2000:]
    assert len(doc["studies"]) == 1 and doc["views"][0]["view"] == seen
    p, doc = outs["left_out"]
    assert p.returncode == 1 and doc["studies"] == []
    assert doc["rejected"][0]["reason"] in ("view_not_target", "view_unknown")
    assert doc["rejected"][0]["view"] == seen


def pd_frame(columns: dict):
    import pandas as pd

    return pd.DataFrame(columns)


def test_predict_uses_the_view_model_the_cmr_model_records(trained, tmp_path):
    """A CMR model records the view model that labelled its training set: ``echocmr predict``
    (a subprocess, no ``--view-model``) classifies each file with it, from the registered model
    (logged with it), from the pulled directory, and from a bare artifact directory through the
    registry; a file of a view the model was not trained on stays out of the study's
    probability. ``--no-view-model`` turns it off; ``--view-model`` overrides it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from echocmr.model.artifact import read_meta
    from echocmr.model.publish import ExpectedViews, log_model
    from echocmr.model.registry import register_model
    from echocmr.model.store import mlflow_artifact_dir
    from echocmr.model.view_serving import classify_file

    from _eval_model import tiny_state

    proc, model_dir, uri = trained  # registered as models:/views/1 in ``uri``
    assert proc.returncode == 0, proc.stderr[-3000:]
    ybr = _ybr()
    seen = classify_file(ViewClassifier(read_view_model(model_dir)), ybr)["view"]
    others = tuple(v for v in ("A4C", "A2C", "PLAX", "other") if v != seen)
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("echocmr")
    run = client.create_run(exp.experiment_id if exp else client.create_experiment("echocmr"))
    model_uri = log_model(tiny_state(CMR_STATS), tracking_uri=uri, run_id=run.info.run_id,
                          views=ExpectedViews(views=others, source="models:/views/1",
                                              view_model_dir=str(model_dir)))
    mlflow.set_tracking_uri(uri)
    reg = register_model(model_uri, "echo", tracking_uri=uri, val_mean_auc=0.6,
                         val_aucs={"wma": 0.6}, data_digest="d" * 64, run_id=run.info.run_id)
    assert reg.alias == "champion", reg
    assert MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("echo", "champion")
    # An artifact directory that names the view model but does not carry it: the registry has it.
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri,
                                                dst_path=str(tmp_path / "dl"))
    bare = mlflow_artifact_dir(local)
    assert read_meta(bare)["view_model"] == "models:/views/1"

    env = {**os.environ, "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)

    def predict(model: str, *extra: str):
        out = tmp_path / f"p{len(list(tmp_path.glob('p*.json')))}.json"
        p = subprocess.run([sys.executable, "-m", "echocmr", "predict", "--model", model,
                            "--out", str(out), "--tracking-uri", uri, *extra, ybr], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
        return p, json.loads(out.read_text())

    pulled = tmp_path / "pulled"
    p = subprocess.run([sys.executable, "-m", "echocmr", "models", "pull", "echo@champion",
                        "--out", str(pulled), "--tracking-uri", uri], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    for model, found_in in (("models:/echo@champion", "logged with the model"),
                            (str(pulled), "logged with the model"), (bare, "registry")):
        p, doc = predict(model)
        assert p.returncode == 1 and doc["studies"] == [], (model, p.stderr[-2000:])
        (rejected,) = doc["rejected"]
        assert rejected["view"] == seen, model
        assert rejected["reason"] == ("view_unknown" if seen == "unknown" else "view_not_target")
        assert f"({found_in})" in p.stderr and "models:/views/1" in p.stderr
    p, doc = predict("models:/echo@champion", "--no-view-model")
    assert p.returncode == 0 and len(doc["studies"]) == 1 and "views" not in doc
    p, doc = predict("models:/echo@champion", "--view-model", str(model_dir), "--views", seen)
    assert p.returncode == 0 and len(doc["studies"]) == 1, p.stderr[-2000:]
    assert doc["views"][0]["view"] == seen and "logged with the model" not in p.stderr


def test_the_cmr_model_card_names_the_view_model_of_its_training_set(tmp_path):
    """stats.json ``view_models`` (what ingest --view-model records) reaches the CMR model's
    card through `model.card.data_summary`, with the views the model read; a set without one
    says so."""
    from echocmr.model.card import data_summary, training_card
    from echocmr.train.config import TrainConfig

    from _eval_model import TINY

    labelled = make_view_set(str(tmp_path / "a"), n_patients=5, seed=1, site="far",
                             view_models={"far": "models:/views/4"})
    plain = make_view_set(str(tmp_path / "b"), n_patients=5, seed=1)
    config = TrainConfig.from_dict({**TINY, "data": {**TINY.get("data", {}),
                                                     "views": ["A4C", "PLAX"]}}).to_dict()

    def card(shards):
        return training_card(name="echo", version="1", run_id="r" * 32, shards=shards,
                             digest="d" * 64, data=data_summary(shards), config=config,
                             best_epoch=0, val_aucs={}, val_mean_auc=None,
                             echocmr_version="0")

    assert data_summary(labelled)["view_models"] == {"far": "models:/views/4"}
    text = card(labelled)
    assert "- view model `models:/views/4` labelled the views of far" in text
    assert "- views read: A4C, PLAX" in text
    assert "view model: none" in card(plain)


def test_the_numpy_twin_calls_what_the_torch_classifier_calls(trained, tmp_path):
    """What ingest's workers run (`ViewClassifier.portable`, numpy) gives the torch classifier's
    probabilities on clips of every view, sizes that need a resize down, up and none, and clips
    shorter than a window; unpickled in a fresh Python it imports no torch."""
    proc, model_dir, _ = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    classifier = ViewClassifier(read_view_model(model_dir), source="here", threshold=0.6)
    twin = classifier.portable()
    assert (twin.source, twin.threshold, twin.version) == ("here", 0.6, classifier.version)
    rng = np.random.default_rng(4)
    for i, (view, size, n) in enumerate([("A4C", 112, 40), ("A2C", 128, 30), ("PLAX", 64, 16),
                                         ("PSAX", 48, 3), ("A4C", 97, 60)]):
        frames = small_clip(n, size, size, seed=i, view=view, overlays=False).frames
        if i == 4:  # noise the phantom never makes
            frames = rng.integers(0, 256, frames.shape, dtype=np.uint8)
        want = classifier.model.probabilities(
            frames_to_clip(frames, classifier.model.spec)[None]).numpy()[0]
        got = twin.probabilities([frames])[0]
        np.testing.assert_allclose(got, want, atol=2e-5)
        a, b = classifier(frames), twin(frames)
        assert (a.view, a.best) == (b.view, b.best) and a.confidence == pytest.approx(
            b.confidence, abs=2e-5)
    path = tmp_path / "twin.pkl"
    path.write_bytes(pickle.dumps(twin))
    frames = small_clip(16, 64, 64, seed=2, view="PLAX", overlays=False).frames
    np.save(tmp_path / "frames.npy", frames)
    code = ("import pickle, sys, numpy as np; c = pickle.loads(open(sys.argv[1], 'rb').read()); "
            "call = c(np.load(sys.argv[2])); assert 'torch' not in sys.modules, 'torch loaded'; "
            "print(call.view, call.confidence)")
    p = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "frames.npy")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    view, conf = p.stdout.split()
    assert view == classifier(frames).view and float(conf) == pytest.approx(
        classifier(frames).confidence, abs=2e-5)
