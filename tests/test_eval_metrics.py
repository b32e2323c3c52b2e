"""eval.metrics against reference implementations: sklearn, a plain bootstrap loop, O(m*n) DeLong."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from echocmr.eval.metrics import (
    MetricsConfig,
    bootstrap_auc_ci,
    calibration_summary,
    counts,
    delong_auc_variance,
    delong_ci,
    delong_placements,
    weighted_auc,
)
from echocmr.train.metrics import roc_auc


def _data(n=150, seed=1, ties=True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(float)
    s = rng.normal(size=n) + 1.2 * y
    if ties:
        s = np.round(s, 1)  # many tied scores
    patients = rng.integers(0, n // 2, size=n)  # ~2 studies per patient
    return y, s, patients


def test_auc_equals_sklearn_with_ties():
    y, s, _ = _data()
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    with pytest.raises(ValueError, match="one positive and one negative"):
        roc_auc(np.zeros(5), np.arange(5.0))


def test_weighted_auc_equals_sklearn_on_repeated_rows():
    y, s, _ = _data(n=60)
    rng = np.random.default_rng(3)
    w = rng.integers(0, 4, size=(7, y.size))
    got = weighted_auc(y, s, w)
    for row, g in zip(w, got, strict=True):
        idx = np.repeat(np.arange(y.size), row)
        assert g == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_patient_bootstrap_ci_matches_reference_loop():
    y, s, patients = _data(n=120, seed=5)
    n_resamples, seed = 1000, 11
    got = bootstrap_auc_ci(y, s, patients, n_resamples=n_resamples, seed=seed)

    # Reference: draw patients with replacement, gather all their studies, sklearn AUC, percentiles.
    uniq = np.unique(patients)
    rng = np.random.default_rng(seed)
    ref = []
    for _ in range(n_resamples):
        chosen = uniq[rng.integers(0, uniq.size, size=uniq.size)]
        idx = np.concatenate([np.flatnonzero(patients == p) for p in chosen])
        if len(np.unique(y[idx])) == 2:
            ref.append(roc_auc_score(y[idx], s[idx]))
    low, high = np.percentile(ref, [2.5, 97.5])
    assert got.n_valid == len(ref)
    assert got.low == pytest.approx(low, abs=1e-12)
    assert got.high == pytest.approx(high, abs=1e-12)
    assert got.auc == pytest.approx(roc_auc_score(y, s))
    # A 95% interval, not the 5th/95th-percentile (90%) one that echo code often ships.
    low90, high90 = np.percentile(ref, [5, 95])
    assert got.low < low90 and got.high > high90


def test_bootstrap_is_seeded():
    y, s, patients = _data(n=80, seed=2)
    a = bootstrap_auc_ci(y, s, patients, n_resamples=1000, seed=4)
    b = bootstrap_auc_ci(y, s, patients, n_resamples=1000, seed=4)
    c = bootstrap_auc_ci(y, s, patients, n_resamples=1000, seed=5)
    assert (a.low, a.high) == (b.low, b.high)
    assert (a.low, a.high) != (c.low, c.high)


def test_delong_matches_explicit_placement_formula():
    y, s, _ = _data(n=90, seed=8)
    x, z = s[y == 1], s[y == 0]
    m, n = x.size, z.size
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])  # m x n kernel
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    s10 = ((v10 - psi.mean()) ** 2).sum() / (m - 1)
    s01 = ((v01 - psi.mean()) ** 2).sum() / (n - 1)
    got10, got01 = delong_placements(y, s)
    np.testing.assert_allclose(got10, v10, atol=1e-12)
    np.testing.assert_allclose(got01, v01, atol=1e-12)
    auc, var = delong_auc_variance(y, s)
    assert auc == pytest.approx(psi.mean(), abs=1e-12)
    assert var == pytest.approx(s10 / m + s01 / n, rel=1e-12)
    ci = delong_ci(y, s)
    half = norm.ppf(0.975) * np.sqrt(var)
    assert (ci.low, ci.high) == pytest.approx((auc - half, auc + half))


def test_delong_and_bootstrap_agree_roughly_without_clustering():
    y, s, _ = _data(n=400, seed=9, ties=False)
    one_each = np.arange(y.size)  # one study per patient: both estimate the same variance
    boot = bootstrap_auc_ci(y, s, one_each, n_resamples=2000, seed=0)
    dl = delong_ci(y, s)
    assert abs((boot.high - boot.low) - (dl.high - dl.low)) < 0.2 * (dl.high - dl.low)


def test_nan_labels_are_rejected_not_coerced():
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(np.array([0, 1, np.nan]), np.array([0.1, 0.9, 0.5]))
    c = counts(np.array([0, 1, np.nan, 1]), np.array(["a", "b", "c", "b"]))
    assert (c.n_studies, c.n_patients, c.n_pos, c.n_neg) == (3, 2, 2, 1)


def test_calibration_summary_against_references():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, size=4000)
    y = (rng.random(p.size) < p).astype(float)  # perfectly calibrated by construction
    cal = calibration_summary(y, p)
    assert cal.brier == pytest.approx(np.mean((p - y) ** 2))
    lp = np.log(p / (1 - p))
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(lp[:, None], y)
    assert cal.slope == pytest.approx(ref.coef_[0, 0], abs=1e-4)
    assert abs(cal.slope - 1) < 0.15 and abs(cal.intercept) < 0.15 and cal.ece < 0.05
    # Over-confident predictions: slope well below 1, ECE up.
    over = 1 / (1 + np.exp(-3 * lp))
    cal_over = calibration_summary(y, over)
    assert cal_over.slope < 0.5 and cal_over.ece > cal.ece
    # ECE by hand for 10 equal-width bins.
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum((bins == b).mean() * abs(y[bins == b].mean() - p[bins == b].mean())
              for b in np.unique(bins))
    assert cal.ece == pytest.approx(ece)


def test_config_refuses_too_few_resamples():
    with pytest.raises(ValueError, match="1000"):
        MetricsConfig(n_bootstrap=200)


def test_midranks_equal_scipy():
    from scipy.stats import rankdata

    from echocmr.train.metrics import midranks

    x = np.round(np.random.default_rng(0).normal(size=300), 1)
    np.testing.assert_allclose(midranks(x), rankdata(x))
