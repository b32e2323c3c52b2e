"""Inference over real shards: the training pipeline's decode, windows, the eval job end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from echocmr.eval.infer import InferConfig, decode_videos, infer_split
from echocmr.model.contract import InputSpec, window_clips, window_starts
from echocmr.model.store import load_model
from echocmr.read.config import AugmentConfig, DataConfig
from echocmr.read.loader import ClipLoader, split_files
from echocmr.shards.reader import read_manifest, read_stats

from _eval_model import make_checkpoint
from _shards_fixtures import make_shard_set


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_infer")
    shards = make_shard_set(str(root / "shards"), n_patients=12, clips_per_patient=2,
                            n_frames=40, samples_per_shard=3)
    ckpt = make_checkpoint(str(root / "ckpt"), read_stats(shards))
    return shards, ckpt


def test_window_starts():
    spec = InputSpec(frames=8, period=2, size=32, fps=30.0, mean=50.0, std=40.0)  # span 15
    assert window_starts(40, spec) == [0, 7, 14, 21, 25]  # stride span//2, then the last window
    assert window_starts(40, spec, stride=10) == [0, 10, 20, 25]
    assert window_starts(40, spec, stride=1) == list(range(26))
    assert window_starts(40, spec, mode="centre") == [12]
    assert window_starts(10, spec) == [0] and window_starts(10, spec, mode="centre") == [0]


def test_short_video_is_padded_like_training():
    spec = InputSpec(frames=8, period=2, size=4, fps=30.0, mean=20.0, std=4.0)
    frames = np.full((5, 4, 4), 100, dtype=np.uint8)
    clip = window_clips(frames, spec, [0])[0, 0]  # [T, S, S]
    # Decoded grey is the ingested grey: normalised with the spec's mean/std as they are.
    assert np.allclose(clip[:3], (100.0 - 20.0) / 4.0)  # frames 0, 2, 4
    assert np.allclose(clip[3:], (0.0 - 20.0) / 4.0)  # past the end: fill 0


def test_centre_window_equals_training_loader_validation_clip(shard_set):
    shards, _ = shard_set
    stats = read_stats(shards)
    data = DataConfig(frames=8, period=2, size=32, batch_size=4,
                      augment=AugmentConfig(enabled=False))
    spec = InputSpec.build(data, stats)
    ref = {}
    for batch in ClipLoader(shards, "train", data, spec=spec, train=False, stats=stats).epoch(0):
        for i, key in enumerate(batch.keys):
            if batch.valid[i]:
                ref[key] = batch.clips[i].numpy()
    tars, indexes, _ = split_files(shards, "train")
    got = {}
    for key, _, _, frames in decode_videos(tars, indexes, spec, stored_size=(112, 112),
                                           config=InferConfig(), device=torch.device("cpu")):
        got[key] = window_clips(frames, spec, window_starts(len(frames), spec, mode="centre"))[0]
    assert set(got) == set(ref) and len(got) > 4
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], atol=1e-5)


def test_clip_table_covers_every_clip_with_labels_and_metadata(shard_set):
    shards, ckpt = shard_set
    clips, spec = infer_split(shards, "train", ckpt, config=InferConfig(stride=7))
    manifest = read_manifest(shards)
    train = manifest[manifest["split"] == "train"].set_index("key")
    assert set(clips["key"]) == set(train.index)
    assert (clips.groupby("key").size() == 5).all()  # 40 frames: starts 0, 7, 14, 21, 25
    video = clips.groupby("key").first()
    for task in ("wma", "lge", "t1", "t2", "ecv"):
        a, b = video[f"y_{task}"], train.loc[video.index, task].astype(float)
        assert ((a == b) | (a.isna() & b.isna())).all()  # NaN stays NaN
    assert (video["study_hash"] == train.loc[video.index, "study_hash"]).all()
    assert clips[[f"p_{t}" for t in ("wma", "lge")]].stack().between(0, 1).all()
    # Probabilities are the model's on those windows.
    model, spec = load_model(ckpt)
    key = clips["key"].iloc[0]
    tars, indexes, _ = split_files(shards, "train")
    for k, _, _, frames in decode_videos(tars, indexes, spec, stored_size=(112, 112),
                                         config=InferConfig(), device=torch.device("cpu")):
        if k == key:
            x = torch.from_numpy(window_clips(frames, spec, [0, 7, 14, 21, 25]))
            with torch.inference_mode():
                want = torch.sigmoid(model(x)).numpy()
            got = clips[clips["key"] == key].sort_values("clip_index")
            np.testing.assert_allclose(got[["p_wma", "p_lge", "p_t1", "p_t2", "p_ecv"]], want,
                                       atol=1e-5)


def test_eval_command_writes_outputs_and_logs_to_mlflow(shard_set, tmp_path, capsys):
    import echocmr.cli as echocmr_cli

    shards, ckpt = shard_set
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "out"
    rc = echocmr_cli.main(["eval", "--shards", shards, "--model", ckpt, "--split", "train",
                           "--out", str(out), "--clips", "centre", "--bootstrap", "1000",
                           "--permutations", "500", "--min-positives", "2", "--min-patients", "2",
                           "--tracking-uri", uri])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "WMA" in printed and "0.873 (0.816–0.922)" in printed  # ours beside the study's
    metrics = json.loads((out / "metrics.json").read_text())
    preds = pd.read_parquet(out / "predictions.parquet")
    manifest = read_manifest(shards)
    assert len(preds) == manifest[manifest["split"] == "train"]["study_hash"].nunique()
    wma = metrics["wma"]
    assert wma["auc"] == pytest.approx(roc_auc_score(preds["y_wma"], preds["p_wma"]))
    assert wma["n_studies"] == len(preds) and wma["ci_low"] is not None
    assert (out / "report.html").exists() and (out / "clip_predictions.parquet").exists()
    report = (out / "report.md").read_text()
    assert "evaluations of this train split for this model: 1 (this one included)" in report

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("echocmr-eval")  # a checkpoint names no training run
    (run,) = client.search_runs([exp.experiment_id], "tags.`echocmr.kind` = 'eval'")
    assert run.info.status == "FINISHED" and run.data.tags["split"] == "train"
    assert run.data.metrics["train/auc_wma"] == pytest.approx(wma["auc"])
    assert run.data.params["infer.clips"] == "centre"  # the config, flattened (echocmr.config.flat)
    assert run.data.params["evaluation.summary.metrics.n_bootstrap"] == "1000"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "eval_train")}
    assert {"eval_train/metrics.json", "eval_train/report.md",
            "eval_train/predictions.parquet"} <= logged
    assert f"MLflow eval run {run.info.run_id}" in printed


@pytest.mark.slow  # ~50 s on 2 busy cores: Ray start-up and two model loads
def test_ray_workers_give_the_same_clip_table(shard_set):
    import ray

    shards, ckpt = shard_set
    single, _ = infer_split(shards, "train", ckpt, config=InferConfig(clips="centre"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spread, _ = infer_split(shards, "train", ckpt,
                                config=InferConfig(clips="centre", workers=2))
    finally:
        ray.shutdown()
    pd.testing.assert_frame_equal(spread, single, atol=1e-6, check_exact=False)


def test_predictions_of_a_shard_eval_judged_with_eval_predictions_give_the_same_verdicts(
        shard_set, tmp_path, capsys):
    """`eval --predictions` shares eval's code path after inference: the per-study table a shard
    evaluation wrote, fed back as a user's predictions file, gives the same metrics.json."""
    import echocmr.cli as echocmr_cli

    shards, ckpt = shard_set
    flags = ["--split", "train", "--bootstrap", "1000", "--permutations", "500",
             "--min-positives", "2", "--min-patients", "2"]
    assert echocmr_cli.main(["eval", "--shards", shards, "--model", ckpt, "--clips", "centre",
                             "--out", str(tmp_path / "shards"), "--no-track", *flags]) == 0
    preds = pd.read_parquet(tmp_path / "shards" / "predictions.parquet")
    table = preds.rename(columns={"patient_hash": "patient", "study_hash": "study"})
    table.to_csv(tmp_path / "preds.csv", index=False)
    assert echocmr_cli.main(["eval", "--predictions", str(tmp_path / "preds.csv"),
                             "--out", str(tmp_path / "table"), *flags]) == 0
    on_shards = json.loads((tmp_path / "shards" / "metrics.json").read_text())
    on_table = json.loads((tmp_path / "table" / "metrics.json").read_text())
    assert on_table == on_shards
    detail = json.loads((tmp_path / "shards" / "metrics_detail.json").read_text())
    assert detail["settings"]["summary"]["metrics"]["ci_method"] == "bca"
    for view in detail["by_view"].values():  # breakdowns: no verdict words
        assert {r["verdict"] for r in view.values()} <= {"exploratory", "insufficient data"}
    capsys.readouterr()
