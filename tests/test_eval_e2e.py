"""End to end (slow): train on shards with a visible WMA pattern, register into a real MLflow
server, ``echocmr eval`` the test split, list and pull the model, stop the server, then
``predict`` on pydicom's ultrasound clip and ``eval`` from the pulled directory."""

import json

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import echocmr.cli as echocmr_cli
from echocmr.shards.format import TASKS

from _eval_model import LocalMlflowServer
from _shards_fixtures import make_shard_set

# Tuned on 2 CPU cores: val WMA AUC 1.0 in ~60 s of training (the fixture's WMA-negative heart
# beats, the positive one stands still; 8 frames every 3rd frame see most of a beat).
TRAIN = {
    "epochs": 8, "workers": 1,
    "model": {"width": 8, "layers": [1, 1, 1, 1]},
    "data": {"frames": 8, "period": 3, "size": 32, "batch_size": 8, "num_threads": 1,
             "prefetch": 1, "augment": {"enabled": False}},
    "optim": {"lr": 3e-3, "warmup_epochs": 0.0},
    "min_positives": 2,
}


PLANTED_FOLDER = "SMITH^JOHN MRN4711"


def _records_holding(root, needle: bytes) -> list[str]:
    """The files of the MLflow server's store (its sqlite backend and artifact tree) whose bytes
    contain ``needle``."""
    import os

    found = []
    for top in (root / "server.db", root / "artifacts"):
        paths = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        found += [os.path.relpath(p, root) for p in paths if needle in p.read_bytes()]
    return found


@pytest.mark.slow
def test_train_eval_pull_predict_with_server_stopped(tmp_path, monkeypatch, capsys):
    import ray
    import yaml
    from pydicom.data import get_testdata_file

    monkeypatch.setenv("RAY_raylet_start_wait_time_s", "120")  # a busy 2-core machine
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    server = LocalMlflowServer(str(tmp_path))
    try:
        # A site that names its folders after a patient (and puts spaces in them): no MLflow
        # record may carry the folder's name (checked at the end, in the server's own files).
        site_dir = tmp_path / PLANTED_FOLDER
        shards = make_shard_set(str(site_dir / "shards"), n_patients=100, clips_per_patient=3,
                                n_frames=32, size=32, samples_per_shard=16)
        config = tmp_path / "train.yaml"
        config.write_text(yaml.safe_dump(TRAIN))
        url = server.wait()
        try:
            assert echocmr_cli.main([
                "train", "--shards", shards, "--config", str(config), "--tracking-uri", url,
                "--register", "echo", "--run-name", "e2e", "--storage", str(site_dir / "runs"),
            ]) == 0
        finally:
            ray.shutdown()
        capsys.readouterr()

        out = tmp_path / "eval"
        assert echocmr_cli.main([
            "eval", "--shards", shards, "--model", "models:/echo@champion", "--out", str(out),
            "--tracking-uri", url, "--bootstrap", "1000", "--permutations", "1000",
        ]) == 0
        printed = capsys.readouterr().out
        assert "published AUC" in printed and "0.873 (0.816–0.922)" in printed and "MLflow" in printed
        metrics = json.loads((out / "metrics.json").read_text())
        preds = pd.read_parquet(out / "predictions.parquet")
        assert metrics["wma"]["auc"] == pytest.approx(
            roc_auc_score(preds["y_wma"], preds["p_wma"]))
        assert metrics["wma"]["auc"] > 0.8 and metrics["wma"]["verdict"] == "signal", metrics
        for task in ("t1", "t2", "ecv"):  # random labels in the fixture
            assert metrics[task]["verdict"] != "signal", metrics[task]

        assert echocmr_cli.main(["models", "list", "--tracking-uri", url]) == 0
        assert "champion" in capsys.readouterr().out
        pulled = tmp_path / "pulled"
        assert echocmr_cli.main(["models", "pull", "echo@champion", "--out", str(pulled),
                                 "--tracking-uri", url]) == 0
        # stderr is not a terminal here: no library's progress bar fills it (MLflow's download
        # bar is one line of a hundred carriage-return updates in a log)
        assert "Downloading artifacts" not in capsys.readouterr().err
        # Every run, param, tag, description and artifact the server holds: no folder name.
        assert _records_holding(tmp_path, PLANTED_FOLDER.encode()) == []
        assert _records_holding(tmp_path, b"MRN4711") == []
    finally:
        server.stop()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)  # still set, but nobody answers
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 300)
    pred = tmp_path / "pred.csv"
    ybr = get_testdata_file("examples_ybr_color.dcm")
    assert echocmr_cli.main(["predict", "--model", str(pulled), "--out", str(pred), ybr,
                             str(junk)]) == 0
    table = pd.read_csv(pred)
    ok = table[table["status"] == "ok"]
    assert len(ok) == 1 and ok[[f"p_{t}" for t in TASKS]].notna().all(axis=None)
    assert table.loc[table["status"] == "rejected", "files"].tolist() == [str(junk)]

    again = tmp_path / "eval_pulled"
    assert echocmr_cli.main(["eval", "--shards", shards, "--model", str(pulled), "--out",
                             str(again), "--no-track", "--clips", "centre"]) == 0
    assert json.loads((again / "metrics.json").read_text())["wma"]["n_studies"] == len(preds)
