"""Value over the positive control: a planted LGE-through-WMA head is 'only through WMA'."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from echocmr.eval.control import logistic_gain
from echocmr.eval.metrics import MetricsConfig
from echocmr.eval.signal import SIGNAL, SignalConfig
from echocmr.eval.summary import SummaryConfig, summarise

FAST = SummaryConfig(metrics=MetricsConfig(n_bootstrap=1000),
                     signal=SignalConfig(n_permutations=1000))


def _cohort(n=400, seed=0, lge_own=0.0):
    """LGE is common with WMA (0.7 vs 0.2, as in the synthetic cohort). The LGE head sees WMA
    through the WMA head's score (plus noise) and, with ``lge_own`` > 0, LGE itself."""
    rng = np.random.default_rng(seed)
    wma = (rng.random(n) < 0.35).astype(float)
    lge = (rng.random(n) < np.where(wma == 1, 0.7, 0.2)).astype(float)
    z_wma = 2.5 * wma + rng.normal(size=n)
    z_lge = z_wma + lge_own * lge + 0.5 * rng.normal(size=n)
    sig = lambda z: 1 / (1 + np.exp(-(z - 1)))  # noqa: E731
    ids = [f"p{i:04d}" for i in range(n)]
    return pd.DataFrame({
        "study_hash": ids, "patient_hash": ids, "site": "a", "split": "test",
        "y_wma": wma, "p_wma": sig(z_wma), "y_lge": lge, "p_lge": sig(z_lge),
    })


def test_lge_through_wma_is_only_through_wma_and_real_lge_is_signal():
    r = summarise(_cohort(), config=FAST, tasks=("wma", "lge"))
    assert r["wma"].verdict == SIGNAL and r["wma"].control is None
    lge = r["lge"]
    assert lge.p_adjusted < 0.05  # the plain audit calls it signal ...
    assert lge.verdict == "only through WMA"  # ... but it adds nothing to WMA
    c = lge.control
    assert abs(c.auc_control_negative - 0.5) < 0.1 and c.p_given_control > 0.05
    assert abs(c.auc_given_control - 0.5) < 0.1 and c.level == "study"
    own = summarise(_cohort(lge_own=1.5, seed=1), config=FAST, tasks=("wma", "lge"))["lge"]
    assert own.verdict == SIGNAL
    assert own.control.auc_control_negative > 0.65 and own.control.p_given_control < 0.01
    assert own.control.p_gain < 1e-4 and own.control.gain_auc > 0.02


def test_logistic_gain_matches_sklearn_and_the_lr_test():
    df = _cohort(n=300, seed=2, lge_own=0.8)
    y, pc, pt = df["y_lge"].to_numpy(), df["p_wma"].to_numpy(), df["p_lge"].to_numpy()
    gain, p = logistic_gain(y, pc, pt)
    lg = lambda q: np.log(q / (1 - q))  # noqa: E731
    x0, x1 = lg(pc)[:, None], np.c_[lg(pc), lg(pt)]
    m0 = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x0, y)
    m1 = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x1, y)
    ll = lambda m, x: -len(y) * log_loss(y, m.predict_proba(x)[:, 1])  # noqa: E731
    assert p == pytest.approx(chi2.sf(2 * (ll(m1, x1) - ll(m0, x0)), 1), rel=1e-4)
    ref = (roc_auc_score(y, m1.decision_function(x1)) - roc_auc_score(y, m0.decision_function(x0)))
    assert gain == pytest.approx(ref, abs=1e-9)


def test_untestable_value_over_control_is_never_a_bare_signal():
    df = _cohort(n=400, seed=3, lge_own=1.5)
    # LGE labelled only where WMA is positive and there all positive but a handful of patients:
    # no stratum of one WMA label holds enough of both classes.
    df.loc[df["y_wma"] == 0, "y_lge"] = np.nan
    pos = df.index[(df["y_wma"] == 1)]
    df.loc[pos, "y_lge"] = 1.0
    df.loc[pos[:6], "y_lge"] = 0.0
    extra = _cohort(n=60, seed=9, lge_own=1.5).assign(y_wma=np.nan)  # LGE known, WMA unknown
    extra["patient_hash"] = extra["study_hash"] = "x" + extra["study_hash"]
    r = summarise(pd.concat([df, extra], ignore_index=True), config=FAST,
                  tasks=("wma", "lge"))["lge"]
    assert r.control.auc_control_negative is None and r.control.p_given_control is None
    assert "test given wma" in r.control.reason
    assert r.p_adjusted < 0.05  # the audit rejects (the extra patients carry real LGE) ...
    assert r.verdict == "signal; value over WMA not testable"  # ... and the verdict says what
    assert r.control.p_gain is not None  # the description still runs
    j = r.detail_json()
    assert j["control"]["n_control_negative"] == 0
