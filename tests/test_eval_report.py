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
from echocmr.model.tasks import TASKS

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
    # ROCs, all ROCs, forest, calibration
    assert page.count("data:image/png;base64,") == len(TASKS) + 3
    # the combined ROC under its own heading, the calibration plot under "Calibration"
    assert md.index("## ROC curves of all tasks") < md.index("](roc_all.png)") \
        < md.index("## ROC curve per task")
    assert md.index("## Calibration") < md.index("](calibration.png)")
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The forest plot leads: right after the title and context, before the AUC table.
    assert md.index("](forest.png)") < md.index("## AUC per task")
    assert (out / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "forest.png" in ev.files
    assert "### view A4C" in md and "### site site_b" in md and "## Calibration" in md
    assert "BCa limits" in md  # the default interval (percentile under-covers at high AUC)
    assert "Exploratory: p-values unadjusted" in md
    assert ev.by_view["A4C"]["wma"].verdict == "exploratory"
    assert "AUC within site" in md and "rest on the **within-site** permutation test" in md
    assert "## Value over the positive control (WMA)" in md and "AUC within WMA-negative" in md
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
    df = study_table(80, seed=5)
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


def test_insufficient_data_is_decided_on_patients_not_studies():
    """The audit's case: two positive patients with three studies each pass a 5-study rule, give a
    narrow bootstrap CI away from 0.5 and a permutation p of 1.0. On patients they are two."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        pos = i < 2
        for j in range(3 if pos else 1):
            rows.append({"study_hash": f"s{i}{j}", "patient_hash": f"p{i:02d}", "site": "a",
                         "split": "test", **{f"y_{t}": float(pos) for t in TASKS},
                         **{f"p_{t}": (0.9 if pos else rng.uniform(0, 0.95)) for t in TASKS}})
    df = pd.DataFrame(rows)
    res = summarise(df, config=FAST, tasks=("lge",))["lge"]
    assert (res.n_pos, res.n_pos_patients, res.n_neg_patients) == (6, 2, 38)
    assert res.verdict == INSUFFICIENT and res.ci_low is None and res.p_value is None
    assert "2 patients with a positive" in res.reason
    loose = SummaryConfig(metrics=MetricsConfig(n_bootstrap=1000, min_positive_patients=2),
                          signal=SignalConfig(n_permutations=1000))
    res = summarise(df, config=loose, tasks=("lge",))["lge"]
    assert res.verdict != INSUFFICIENT and res.few_patients
    j = res.metrics_json()
    assert (j["n_pos_patients"], j["n_neg_patients"]) == (2, 38)


def test_report_labels_clustered_delong_and_flags_few_patient_rows(tmp_path):
    from echocmr.eval.report import ReportInputs, auc_table_text, write_report

    df = study_table(60, seed=3)
    res = summarise(df, config=FAST)
    assert any(r.few_patients for r in res.values())
    write_report(tmp_path, ReportInputs(studies=df, results=res, config=FAST))
    md = (tmp_path / "report.md").read_text()
    assert "DeLong, clustered by patient" in md and "positive patients" in md
    assert "† " in md and "under-cover" in md
    text = auc_table_text(res)
    assert "pos pts" in text and "DeLong (clustered)" in text
    r = res["wma"]
    assert r.delong_indep_low is not None and r.delong_indep_se <= r.delong_se * 1.5


def test_eval_flags_for_patients_bca_and_pooled_sites():
    from echocmr.cli import build_parser
    from echocmr.eval.cli import eval_overrides
    from echocmr.eval.job import load_config

    args = build_parser().parse_args(["eval", "--shards", "s", "--model", "m", "--out", "o",
                                      "--min-patients", "4", "--ci-method", "bca",
                                      "--pooled-sites"])
    cfg = load_config(overrides=eval_overrides(args))
    mc, sc = cfg.evaluation.summary.metrics, cfg.evaluation.summary.signal
    assert (mc.min_positive_patients, mc.min_negative_patients, mc.ci_method) == (4, 4, "bca")
    assert sc.within_site is False
    assert load_config().evaluation.summary.signal.within_site is True


def test_one_site_gets_no_per_site_section_that_repeats_the_main_table(tmp_path):
    clips = clip_table(60, seed=5)
    clips["site"] = "site_a"
    evaluate_clips(clips, tmp_path, config=EvaluationConfig(summary=FAST),
                   context={"model": "m", "split": "test"})
    md = (tmp_path / "report.md").read_text()
    assert "## Per site" not in md and "### site site_a" not in md
    assert "## Per view" in md  # several views: the breakdown stays


def test_clips_of_non_target_views_stay_out_of_the_study_probability(tmp_path):
    """A study's PSAX clip (view class `other`) is left out by default and counted; selecting
    `other` takes it in."""
    clips = clip_table(60, seed=7)
    psax = clips.index[::5]
    clips.loc[psax, "view"] = "PSAX"
    clips.loc[psax, "p_wma"] = 0.999  # a view the model never saw: nonsense scores
    ev = evaluate_clips(clips, tmp_path / "a", config=EvaluationConfig(summary=FAST),
                        context={"model": "m"})
    kept = clips.drop(index=psax)
    want = evaluate_clips(kept, tmp_path / "b", config=EvaluationConfig(summary=FAST),
                          context={"model": "m"})
    assert ev.results["wma"].auc == want.results["wma"].auc
    assert f"other {len(psax)}" in (tmp_path / "a" / "report.md").read_text()
    every = evaluate_clips(clips, tmp_path / "c",
                           config=EvaluationConfig(summary=FAST,
                                                   views=("A4C", "A2C", "PLAX", "other")),
                           context={"model": "m"})
    assert every.results["wma"].auc != want.results["wma"].auc
