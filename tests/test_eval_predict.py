"""models list/pull and predict: a registered model, pulled, used on real DICOMs with MLflow gone."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import echocmr.cli as echocmr_cli
from echocmr.model.pulled import MODEL_INFO_FILE
from echocmr.model.store import load_model
from echocmr.model.versions import list_models, pull_model
from echocmr.shards.format import TASKS

from _eval_model import register, tiny_state

STATS = {"tasks": list(TASKS), "pixel_mean": 40.0, "pixel_std": 30.0,
         "clip": {"height": 112, "width": 112, "fps": 30.0, "codec": "vp9", "pix_fmt": "yuv420p"}}


@pytest.fixture
def ybr_dicom():
    from pydicom.data import get_testdata_file

    return get_testdata_file("examples_ybr_color.dcm")


def test_list_pull_and_predict_with_the_tracking_server_gone(tmp_path, monkeypatch, capsys,
                                                             ybr_dicom):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    run1, _ = register(uri, STATS, val_mean_auc=0.60)
    run2, _ = register(uri, STATS, val_mean_auc=0.55, digest="e" * 64)  # worse: challenger

    infos = list_models(uri)
    assert [(i.version, i.aliases) for i in infos] == [("2", ["challenger"]), ("1", ["champion"])]
    assert infos[1].val_aucs["wma"] == pytest.approx(0.7) and infos[1].val_aucs["t1"] is None
    assert infos[1].val_mean_auc == pytest.approx(0.6) and infos[1].data_digest == "d" * 64
    assert infos[1].run_id == run1 and infos[0].run_id == run2
    assert echocmr_cli.main(["models", "list", "--tracking-uri", uri]) == 0
    table = capsys.readouterr().out
    assert "champion" in table and "challenger" in table and "d" * 12 in table

    pulled = tmp_path / "pulled"
    assert echocmr_cli.main(["models", "pull", "echo@champion", "--out", str(pulled),
                             "--tracking-uri", uri]) == 0
    info = json.loads((pulled / MODEL_INFO_FILE).read_text())
    assert (info["name"], info["version"], info["run_id"]) == ("echo", "1", run1)
    assert json.loads((pulled / "stats.json").read_text())["clip"]["height"] == 112

    # The server is gone: no database, no artifacts, and a tracking URI that refuses connections.
    db.unlink()
    shutil.rmtree(tmp_path / "mlruns", ignore_errors=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")

    model, spec = load_model(str(pulled))
    want = tiny_state(STATS)["model"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, want[k])

    junk = tmp_path / "notes.dcm"
    junk.write_bytes(b"this is not a DICOM file" * 10)
    copy = tmp_path / "copy_of_same_study.dcm"
    shutil.copy(ybr_dicom, copy)
    out_json = tmp_path / "pred.json"
    rc = echocmr_cli.main(["predict", "--model", str(pulled), "--out", str(out_json), ybr_dicom,
                           str(junk), str(copy)])
    assert rc == 0
    err = capsys.readouterr().err
    # a rejected file by its position, never its path (exports name files after patients)
    assert "not used: file 2 of 3: not_dicom" in err and "notes.dcm" not in err
    doc = json.loads(out_json.read_text())
    assert len(doc["studies"]) == 1  # both copies share a StudyInstanceUID
    study = doc["studies"][0]
    assert study["n_files"] == 2 and study["files"] == f"{ybr_dicom};{copy}"
    probs = [study[f"p_{t}"] for t in TASKS]
    assert len(probs) == 5 and all(0.0 < p < 1.0 for p in probs)
    assert doc["rejected"] == [{"file": str(junk), "reason": "not_dicom",
                                "detail": doc["rejected"][0]["detail"]}]
    # No identifier from the files in the output: only the paths we passed.
    import pydicom

    ds = pydicom.dcmread(ybr_dicom, stop_before_pixels=True)
    text = out_json.read_text()
    for tag in ("StudyInstanceUID", "SOPInstanceUID", "PatientName", "PatientID"):
        value = str(ds.get(tag, "") or "")
        if value:
            assert value not in text, tag

    out_csv = tmp_path / "pred.csv"
    assert echocmr_cli.main(["predict", "--model", str(pulled), "--out", str(out_csv),
                             ybr_dicom, str(junk)]) == 0
    table = pd.read_csv(out_csv)
    assert list(table["status"]) == ["ok", "rejected"]
    np.testing.assert_allclose(table.loc[0, [f"p_{t}" for t in TASKS]].astype(float), probs)


def test_predict_matches_ingest_preprocessing_and_the_training_input(tmp_path, ybr_dicom):
    from echocmr.ingest.preprocess import preprocess_dicom
    from echocmr.model.checkpoint import model_from_state
    from echocmr.model.contract import frames_to_clip
    from echocmr.model.predict import PredictConfig, predict_files, preprocess_config

    model, spec = model_from_state(tiny_state(STATS))
    result = predict_files([ybr_dicom], model, spec, config=PredictConfig(clips="centre"),
                           stats=STATS)
    frames = preprocess_dicom(ybr_dicom, preprocess_config(spec, stats=STATS)).frames_THW
    assert frames.shape[1:] == (112, 112)
    with torch.inference_mode():
        want = torch.sigmoid(model(frames_to_clip(frames, spec)[None]))[0].numpy()
    got = result.studies.loc[0, [f"p_{t}" for t in TASKS]].to_numpy(dtype=float)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert result.studies.loc[0, "n_clips"] == 1 and result.rejected == []


def test_pull_refuses_bad_reference_and_non_empty_dir_before_contacting_mlflow(tmp_path):
    uri = "http://127.0.0.1:9"  # nothing listens: the checks must come first
    with pytest.raises(ValueError, match="NAME@ALIAS"):
        pull_model("echo:champion", tmp_path / "x", tracking_uri=uri)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(FileExistsError):
        pull_model("echo@champion", tmp_path / "full", tracking_uri=uri)


def test_preprocessing_follows_the_clip_size_the_model_was_trained_on():
    from dataclasses import replace

    from echocmr.ingest.config import PreprocessConfig
    from echocmr.model.contract import InputSpec
    from echocmr.model.predict import preprocess_config

    spec = InputSpec(frames=4, period=2, size=32, fps=25.0, mean=40.0, std=30.0)
    assert preprocess_config(spec).size == PreprocessConfig().size  # nothing known: defaults
    assert preprocess_config(spec, stats={"clip": {"height": 96}}).size == 96  # older models
    pre = preprocess_config(replace(spec, clip_size=80), stats={"clip": {"height": 96}})
    assert (pre.size, pre.target_fps) == (80, 25.0)  # the model's own spec wins
