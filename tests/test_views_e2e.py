"""The view journey of docs/views.md through the real command line, in subprocesses with their own
HOME, TMPDIR and MLflow store: a synthetic cohort; one site ingested with its views table; a view
classifier trained and registered on it; another site ingested with ``--view-model`` and no table;
its stored views compared with the views the generator planted.

Slow (a cohort rendered and two sites ingested on CPU): marked ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from echocmr.shards.format import view_class
from echocmr.shards.reader import iter_samples, read_manifest

pytestmark = pytest.mark.slow

TRAIN_SITE, OTHER_SITE = "northfield", "riverside"


def _echocmr(*args: str, cwd: Path, timeout: int = 3000) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(cwd), "TMPDIR": str(cwd)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "echocmr", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"echocmr {' '.join(args)}\n{proc.stderr[-4000:]}"
    return proc


def test_train_on_one_site_label_another(tmp_path, split_key):
    # A site's own key (inherited by the commands), as a site sets it: the split is a function
    # of the key, and with 24 patients the public demo key leaves the training site no val
    # patient, which `views train` needs to calibrate on.
    cohort = tmp_path / "cohort"
    _echocmr("synth", "--out", str(cohort), "--patients", "24", "--seed", "37", "--workers", "2",
             cwd=tmp_path)
    labels = str(cohort / "cmr_labels.parquet")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _echocmr("ingest", "--dicom", str(cohort / "dicom" / TRAIN_SITE), "--labels", labels,
             "--views", str(cohort / "views.csv"), "--site", TRAIN_SITE, "--workers", "2",
             "--out", str(tmp_path / "a"), "--no-progress", cwd=tmp_path)
    trained = _echocmr("views", "train", "--shards", str(tmp_path / "a"), "--epochs", "30",
                       "--batch-size", "16", "--register", "views", "--tracking-uri", uri,
                       cwd=tmp_path)
    assert "registered views version 1 as champion" in trained.stdout

    ingested = _echocmr("ingest", "--dicom", str(cohort / "dicom" / OTHER_SITE), "--labels",
                        labels, "--view-model", "models:/views@champion", "--tracking-uri", uri,
                        "--site", OTHER_SITE, "--workers", "2", "--out", str(tmp_path / "b"),
                        "--no-progress", cwd=tmp_path)
    assert "views: " in ingested.stdout and "from model" in ingested.stdout
    out = tmp_path / "b"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["view_models"] == {OTHER_SITE: "models:/views/1"}  # pinned, not the alias

    truth = pd.read_parquet(cohort / "synth_truth.parquet")
    planted = {r.sop_uid: view_class(r.view) for r in truth.itertuples() if r.view}
    report = pd.read_parquet(out / "ingest_report.parquet")
    kept = report[report["status"] == "kept"]
    assert len(kept) > 20
    assert (kept["view_source"] == "model").all()
    assert kept["view_confidence"].between(0.0, 1.0).all()
    assert set(kept["view"]) <= {"A4C", "A2C", "PLAX", "other", "unknown"}
    manifest = read_manifest(str(out)).set_index("key")
    samples = {s.key: s.meta for s in iter_samples(str(out))}
    by_source = dict(zip(truth["source"].str.split("/", n=1).str[1], truth["sop_uid"],
                         strict=True))
    right = called = 0
    for row in kept.itertuples():
        meta = samples[row.key]
        assert meta.view == row.view == manifest.loc[row.key, "view"]
        assert meta.view_source == "model"
        assert meta.view_confidence == pytest.approx(manifest.loc[row.key, "view_confidence"],
                                                     abs=1e-4)
        want = planted[by_source[row.source]]
        if row.view != "unknown":
            called += 1
            right += row.view == want
    assert called > 0
    # Twice the 25 % of guessing among four classes, on a site the model never saw. A bar, not
    # the target: on a 30-patient cohort, 22 training clips got PLAX, A2C and the non-target
    # PSAX right on st_elsewhere but called every A4C A2C (docs/benchmarks.md, "View
    # classifier"); the >= 98 % target is the benchmark's to measure at scale.
    assert right / called >= 0.5, (right, called)

    shown = _echocmr("shards", "stats", str(out), cwd=tmp_path).stdout
    assert f"views at {OTHER_SITE}:" in shown and "view model median confidence" in shown
    assert f"view models (per site): {OTHER_SITE} models:/views/1" in shown
