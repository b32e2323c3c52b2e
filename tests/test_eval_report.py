"""The eval outputs from a clip table: file schemas, metrics.json against sklearn, the reports."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from echocmr.eval.evaluate import EvaluationConfig, evaluate_clips
from echocmr.eval.metrics import MetricsConfig
from echocmr.eval.published import PUBLISHED
from echocmr.eval.signal import INSUFFICIENT, NO_SIGNAL, SIGNAL, SignalConfig
from echocmr.eval.summary import METRICS_KEYS, SummaryConfig, summarise
from echocmr.eval.tasks import TASKS

from _eval_fixtures import clip_table, study_table

FAST = SummaryConfig(
    metrics=MetricsConfig(n_bootstrap=1000, seed=0), signal=SignalConfig(n_permutations=1000)
)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    clips = clip_table(120, seed=21)
    # Unknown labels in a third of the studies for T1, none positive for ECV in a few.
    unknown = clips["study_hash"].isin(clips["study_hash"].unique()[::3])
    clips.loc[unknown, "y_t1"] = np.nan
    clips["site"] = np.where(clips["study_hash"].str[-1].isin(list("01234")), "site_a", "site_b")
    ev = evaluate_clips(clips, out, config=EvaluationConfig(summary=FAST),
                        context={"model": "models:/m@champion", "split": "test"})
    return ev, out, clips


def test_metrics_json_aucs_equal_sklearn_on_predictions_parquet(evaluated):
    _, out, _ = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    preds = pd.read_parquet(out / "predictions.parquet")
    assert set(metrics) == set(TASKS)
    for task, m in metrics.items():
        assert tuple(m) == METRICS_KEYS  # exactly the keys, in its order
        known = preds[f"y_{task}"].notna()
        assert m["n_studies"] == int(known.sum())
        assert m["n_patients"] == preds.loc[known, "patient_hash"].nunique()
        assert m["n_pos"] == int((preds.loc[known, f"y_{task}"] == 1).sum())
        ref = roc_auc_score(preds.loc[known, f"y_{task}"], preds.loc[known, f"p_{task}"])
        assert m["auc"] == pytest.approx(ref, abs=1e-12)
        assert m["ci_low"] <= m["auc"] <= m["ci_high"]
        assert m["delong_low"] <= m["auc"] <= m["delong_high"]
        assert 0 < m["p_value"] <= 1 and m["verdict"] in (SIGNAL, NO_SIGNAL)
    assert metrics["wma"]["verdict"] == SIGNAL


def test_predictions_parquet_schema_and_nulls(evaluated):
    ev, out, clips = evaluated
    table = pq.read_table(out / "predictions.parquet")
    assert table.column_names == ["study_hash", "patient_hash", "site", "split",
                                  *(f"y_{t}" for t in TASKS), *(f"p_{t}" for t in TASKS)]
    assert table.num_rows == clips["study_hash"].nunique()
    assert table.column("y_t1").null_count == clips[clips["y_t1"].isna()]["study_hash"].nunique()
    assert table.column("y_wma").null_count == 0
    clip_t = pq.read_table(out / "clip_predictions.parquet")
    assert clip_t.num_rows == len(clips) and "start_frame" in clip_t.column_names


def test_reports_show_published_table_rocs_and_breakdowns(evaluated):
    ev, out, _ = evaluated
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for t in TASKS:
        assert (out / f"roc_{t}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](roc_{t}.png)" in md
        assert PUBLISHED[t].text() in md and PUBLISHED[t].text() in page
    assert page.count("data:image/png;base64,") == len(TASKS) + 1
    assert "### view A4C" in md and "### site site_b" in md and "## Calibration" in md
    assert "2.5th and 97.5th percentiles" in md
    detail = json.loads((out / "metrics_detail.json").read_text())
    assert set(detail["by_view"]) == {"A2C", "A4C", "PLAX"}
    assert set(detail["by_site"]) == {"site_a", "site_b"}
    # A4C alone carries the WMA signal in the fixture.
    assert ev.by_view["A4C"]["wma"].auc > ev.by_view["PLAX"]["wma"].auc
    assert detail["tasks"]["wma"]["calibration"]["brier"] is not None


def test_unknown_labels_are_excluded_not_coerced():
    df = study_table(100, seed=4)
    assert df["y_t2"].isna().any()
    res = summarise(df, config=FAST)["t2"]
    known = df.dropna(subset=["y_t2"])
    assert res.n_studies == len(known) and res.n_unknown == df["y_t2"].isna().sum()
    assert res.auc == pytest.approx(roc_auc_score(known["y_t2"], known["p_t2"]))
    coerced = roc_auc_score(df["y_t2"].fillna(0), df["p_t2"])
    assert res.auc != pytest.approx(coerced)


def test_too_few_positives_or_negatives_is_insufficient_not_a_crash():
    df = study_table(40, seed=5)
    df["y_lge"] = 0.0
    df.loc[df.index[:3], "y_lge"] = 1.0  # three positives
    df["y_ecv"] = np.nan  # no known label at all
    df["y_t2"] = 1.0  # no negatives
    res = summarise(df, config=FAST)
    assert res["lge"].verdict == INSUFFICIENT and res["lge"].auc is not None
    assert res["lge"].ci_low is None and res["lge"].p_value is None
    assert "3 positive" in res["lge"].reason
    assert res["ecv"].verdict == INSUFFICIENT and res["ecv"].auc is None
    assert res["ecv"].n_studies == 0
    assert res["t2"].verdict == INSUFFICIENT and res["t2"].auc is None
    assert res["wma"].verdict == SIGNAL
    j = res["ecv"].metrics_json()
    assert j["auc"] is None and j["verdict"] == INSUFFICIENT
    json.dumps(j, allow_nan=False)
