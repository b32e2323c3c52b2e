"""PR-AUC against sklearn; the operating point's threshold comes from val and is applied unchanged."""

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_curve

from echocmr.eval.evaluate import EvaluationConfig, evaluate_clips
from echocmr.eval.metrics import MetricsConfig, average_precision
from echocmr.eval.operating import choose_threshold, operating_point, wilson
from echocmr.eval.signal import SignalConfig
from echocmr.eval.summary import SummaryConfig

from _eval_fixtures import clip_table


def _data(n, seed, shift=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    return y, np.round(1 / (1 + np.exp(-(rng.normal(size=n) + shift * y))), 2)  # with ties


def test_average_precision_equals_sklearn_with_ties():
    for seed in range(5):
        y, p = _data(200, seed)
        assert average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_youden_and_target_sensitivity_thresholds():
    y, p = _data(300, 1, shift=1.5)
    t = choose_threshold(y, p, rule="youden")
    fpr, tpr, thr = roc_curve(y, p)
    best = np.max(tpr - fpr)
    sens, spec = (p[y == 1] >= t).mean(), (p[y == 0] < t).mean()
    assert sens + spec - 1 == pytest.approx(best)
    t90 = choose_threshold(y, p, rule="sensitivity", target_sensitivity=0.9)
    assert (p[y == 1] >= t90).mean() >= 0.9
    higher = np.unique(p)[np.unique(p) > t90]
    assert all((p[y == 1] >= h).mean() < 0.9 for h in higher)  # the highest such threshold


def test_operating_point_uses_the_val_threshold_on_test():
    yv, pv = _data(300, 2, shift=1.5)
    y, p = _data(200, 3, shift=1.5)
    op = operating_point(yv, pv, y, p, rule="youden")
    assert op.threshold == choose_threshold(yv, pv)  # from val, not from test
    call = p >= op.threshold
    assert op.tp == int((call & (y == 1)).sum()) and op.fn == int((~call & (y == 1)).sum())
    assert op.sensitivity == pytest.approx(op.tp / (op.tp + op.fn))
    assert op.ppv == pytest.approx(op.tp / (op.tp + op.fp))
    lo, hi = wilson(op.tp, op.tp + op.fn)
    assert lo < op.sensitivity < hi
    assert wilson(0, 0) == (None, None)


def test_evaluate_clips_reports_operating_points_from_val(tmp_path):
    fast = SummaryConfig(metrics=MetricsConfig(n_bootstrap=1000, min_positive_patients=5,
                                               min_negative_patients=5),
                         signal=SignalConfig(n_permutations=200))
    test, val = clip_table(60, seed=1), clip_table(60, seed=2, split="val")
    ev = evaluate_clips(test, tmp_path, config=EvaluationConfig(summary=fast), val_clips=val)
    wma = ev.results["wma"]
    assert wma.operating is not None and wma.pr_auc is not None
    detail = json.loads((tmp_path / "metrics_detail.json").read_text())
    assert detail["tasks"]["wma"]["operating"]["rule"] == "youden"
    assert json.loads((tmp_path / "metrics.json").read_text())["wma"]["pr_auc"] == pytest.approx(
        wma.pr_auc)
    md = (tmp_path / "report.md").read_text()
    assert "PR-AUC and an operating point chosen on val" in md
    assert "## Label missingness per task and split" in md
    assert set(detail["label_missingness"]["wma"]) == {"test", "val"}
    ev = evaluate_clips(test, tmp_path / "noval", config=EvaluationConfig(summary=fast))
    assert ev.results["wma"].operating is None
    assert "no val predictions" in ev.results["wma"].operating_reason


def test_label_missingness_per_task_and_split():
    import pandas as pd

    from echocmr.eval.missingness import label_missingness, studies_from_manifest

    rows = []
    for i in range(40):
        split = "test" if i < 20 else "val"
        wma = float(i % 2)
        t1 = np.nan if (i % 4 == 1) else 0.0  # unknown only in WMA-positive studies
        for clip in range(2):
            rows.append({"key": f"k{i}{clip}", "study_hash": f"s{i:02d}", "split": split,
                         "site": "a" if i % 3 else "b", "wma": wma, "lge": 0.0, "t1": t1,
                         "t2": 0.0, "ecv": 0.0})
    studies = studies_from_manifest(pd.DataFrame(rows))
    assert len(studies) == 40 and "y_t1" in studies.columns
    miss = label_missingness(studies)
    t1 = miss["t1"]["test"]
    assert (t1["n_studies"], t1["n_unknown"], t1["frac_unknown"]) == (20, 5, 0.25)
    assert t1["control_rate_unlabelled"] == 1.0 and t1["control_rate_labelled"] == pytest.approx(
        5 / 15)
    assert set(miss["t1"]) == {"test", "val"} and miss["wma"]["val"]["n_unknown"] == 0
    assert "control_rate_labelled" not in miss["wma"]["val"]
    assert abs(sum(t1["site_share_labelled"].values()) - 1) < 1e-12


def test_reevaluations_of_a_test_split_are_counted(tmp_path):
    from mlflow.tracking import MlflowClient

    from echocmr.eval.record import log_evaluation, previous_evaluations
    from echocmr.eval.summary import summarise

    from _eval_fixtures import study_table

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    results = summarise(study_table(60, seed=1), config=SummaryConfig(
        metrics=MetricsConfig(n_bootstrap=1000), signal=SignalConfig(n_permutations=100)))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text("{}")
    kw = dict(tracking_uri=uri, model_uri=str(tmp_path / "ckpt"), split="test",
              data_digest="d1")
    assert previous_evaluations(**kw) == 0
    for i in (1, 2):
        run = log_evaluation(**kw, results=results, out_dir=tmp_path / "out", params={},
                             eval_count=previous_evaluations(**kw) + 1)
        assert MlflowClient(uri).get_run(run).data.tags["echocmr.eval_count"] == str(i)
    assert previous_evaluations(**kw) == 2
    assert previous_evaluations(**{**kw, "split": "val"}) == 0  # another split
    assert previous_evaluations(**{**kw, "data_digest": "d2"}) == 0  # another shard set
    assert previous_evaluations(**{**kw, "model_uri": "other"}) == 0  # another model


def test_holdout_site_puts_external_beside_internal(tmp_path):
    fast = SummaryConfig(metrics=MetricsConfig(n_bootstrap=1000, min_positive_patients=5,
                                               min_negative_patients=5),
                         signal=SignalConfig(n_permutations=200))
    clips = clip_table(90, seed=4)
    ext = clips["study_hash"].str[-1].isin(list("012"))
    clips.loc[ext, "site"] = "site_x"
    clips.loc[ext, "key"] = "site_x-" + clips.loc[ext, "key"]
    val = clip_table(60, seed=5, split="val")
    ev = evaluate_clips(clips, tmp_path, val_clips=val,
                        config=EvaluationConfig(summary=fast, holdout_site="site_x"))
    n_ext = clips.loc[ext, "study_hash"].nunique()
    assert ev.results["wma"].n_studies == n_ext
    detail = json.loads((tmp_path / "metrics_detail.json").read_text())
    assert detail["holdout_site"] == "site_x"
    assert detail["internal"]["wma"]["n_studies"] == clips["study_hash"].nunique() - n_ext
    md = (tmp_path / "report.md").read_text()
    assert "## External validation: site site_x against the other sites" in md
    assert "external − internal" in md
    with pytest.raises(ValueError, match="sites are"):
        evaluate_clips(clips, tmp_path / "x",
                       config=EvaluationConfig(summary=fast, holdout_site="nowhere"))
