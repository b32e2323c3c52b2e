"""The signal audit: permutation by patient, +1-corrected p-values, and the verdicts."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from echocmr.eval.metrics import MetricsConfig
from echocmr.eval.signal import (
    NO_SIGNAL,
    SIGNAL,
    SignalConfig,
    patient_permutations,
    permutation_test,
)
from echocmr.model.tasks import TASKS

from _eval_fixtures import study_table


def test_permutations_move_whole_patient_blocks():
    patients = np.array(["c", "a", "b", "a", "c", "d", "b", "e"])
    y = np.array([1, 0, 1, 1, 0, 0, 1, 1], dtype=float)
    perms = patient_permutations(y, patients, 200, seed=0)
    assert perms.shape == (200, y.size)
    blocks = {tuple(y[patients == p]) for p in np.unique(patients)}
    for row in perms:
        assert sorted(row) == sorted(y)  # same labels, rearranged
        for p in np.unique(patients):
            # every patient got a whole block of some patient with as many studies
            assert tuple(row[patients == p]) in blocks
    # patients d and e (one study each, labels 0 and 1) swap labels in some permutations only
    d, e = np.flatnonzero(patients == "d")[0], np.flatnonzero(patients == "e")[0]
    assert {(r[d], r[e]) for r in perms} == {(0.0, 1.0), (1.0, 0.0)}


def test_p_value_matches_reference_with_plus_one_correction():
    df = study_table(60, seed=3)
    keep = df["y_lge"].notna()
    y, p, pat = (df.loc[keep, c].to_numpy() for c in ("y_lge", "p_lge", "patient_hash"))
    cfg = SignalConfig(n_permutations=500, seed=9)
    res = permutation_test(y, p, pat, config=cfg)
    observed = roc_auc_score(y, p)
    null = [roc_auc_score(row, p) for row in patient_permutations(y, pat, 500, seed=9)]
    expected = (1 + sum(a >= observed - 1e-12 for a in null)) / (1 + 500)
    assert res.auc == pytest.approx(observed)
    assert res.p_value == pytest.approx(expected)
    assert res.p_value > 0


def test_planted_signal_is_found_and_shuffled_labels_are_not():
    df = study_table(150, seed=0)
    y, p, pat = (df[c].to_numpy() for c in ("y_wma", "p_wma", "patient_hash"))
    cfg = SignalConfig(n_permutations=1000, seed=0)
    planted = permutation_test(y, p, pat, config=cfg)
    assert planted.verdict == SIGNAL and planted.p_value == pytest.approx(1 / 1001)
    # Shuffle labels by patient: the link between labels and predictions is gone.
    shuffled = patient_permutations(y, pat, 1, seed=123)[0]
    null = permutation_test(shuffled, p, pat, config=cfg)
    assert null.verdict == NO_SIGNAL, null
    assert abs(null.null_mean - 0.5) < 0.02


def test_no_signal_task_is_mostly_not_significant():
    # A task with no signal must not come out "signal" much more than alpha of the time.
    hits = 0
    for seed in range(20):
        df = study_table(80, seed=100 + seed, unknown={})
        y, p, pat = (df[c].to_numpy() for c in ("y_t1", "p_t1", "patient_hash"))
        res = permutation_test(y, p, pat, config=SignalConfig(n_permutations=300, seed=seed))
        hits += res.verdict == SIGNAL
    assert hits <= 4


def test_refuses_nan_and_one_class():
    with pytest.raises(ValueError, match="NaN"):
        permutation_test(np.array([0, 1, np.nan]), np.zeros(3), np.arange(3))
    with pytest.raises(ValueError, match="positives and negatives"):
        permutation_test(np.zeros(4), np.arange(4.0), np.arange(4))


def test_holm_adjustment_matches_a_hand_computed_reference():
    from echocmr.eval.signal import holm_adjust

    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(1*0.04, 0.06)
    adjusted = holm_adjust({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02})
    assert holm_adjust({"x": 0.7, "y": 0.6}) == pytest.approx({"x": 1.0, "y": 1.0})  # capped
    assert holm_adjust({}) == {}
    with pytest.raises(ValueError, match="correction"):
        SignalConfig(correction="bonferoni")


def test_verdicts_are_adjusted_over_the_tasks_of_one_summary():
    """A null task that passes 5 % alone is not called "signal" once five tasks are tested."""
    from echocmr.eval.summary import SummaryConfig, summarise

    df = study_table(150, seed=0)
    alone = summarise(df, config=SummaryConfig(signal=SignalConfig(n_permutations=500,
                                                                   correction="none")))
    holm = summarise(df, config=SummaryConfig(signal=SignalConfig(n_permutations=500)))
    assert holm["wma"].verdict == SIGNAL  # the planted signal survives the adjustment
    tested = {t: r.p_value for t, r in holm.items() if r.p_value is not None}
    assert len(tested) >= 3
    for t, r in holm.items():
        assert r.p_value == alone[t].p_value  # the raw p-value is not changed
        if r.p_value is None:
            assert r.p_adjusted is None
            continue
        assert alone[t].p_adjusted == r.p_value  # "none": adjusted is the raw p
        assert r.p_adjusted >= r.p_value
        assert r.verdict == (SIGNAL if r.p_adjusted < 0.05 else NO_SIGNAL)
    # Family-wise error: over many all-null families of five tasks, "any signal" stays near 5 %
    # with Holm, and runs well above it task by task.
    rng = np.random.default_rng(0)
    any_alone = any_holm = 0
    for _ in range(300):
        p = {t: rng.uniform() for t in ("wma", "lge", "t1", "t2", "ecv")}
        any_alone += min(p.values()) < 0.05
        any_holm += min(holm_adjust_values(p)) < 0.05
    assert any_alone > 40 and any_holm < 30  # expected ~68 and ~15 of 300


def holm_adjust_values(p):
    from echocmr.eval.signal import holm_adjust

    return holm_adjust(p).values()


def _site_confounded(n_patients=200, seed=0, signal=0.0):
    """Two sites, prevalence 0.6 at A and 0.2 at B, scores that only know the site (+ ``signal``
    times the label, + noise)."""
    rng = np.random.default_rng(seed)
    site = np.where(rng.random(n_patients) < 0.5, "A", "B")
    y = (rng.random(n_patients) < np.where(site == "A", 0.6, 0.2)).astype(float)
    s = (site == "A") + signal * y + 0.3 * rng.normal(size=n_patients)
    return y, s, np.arange(n_patients).astype(str), site


def test_site_recogniser_is_signal_to_the_pooled_audit_and_not_within_site():
    from echocmr.eval.signal import within_site_auc

    cfg = SignalConfig(n_permutations=1000, seed=1)
    y, s, patients, site = _site_confounded()
    pooled = permutation_test(y, s, patients, config=cfg)
    within = permutation_test(y, s, patients, config=cfg, strata=site)
    assert pooled.auc > 0.6 and pooled.verdict == SIGNAL  # the old audit is fooled
    assert within.verdict == NO_SIGNAL and within.n_strata == 2
    assert within.auc == pytest.approx(within_site_auc(y, s, site))
    # Reference for the statistic: per-site AUCs weighted by their positive-negative pairs.
    num = sum(roc_auc_score(y[site == k], s[site == k]) * (y[site == k] == 1).sum()
              * (y[site == k] == 0).sum() for k in "AB")
    den = sum((y[site == k] == 1).sum() * (y[site == k] == 0).sum() for k in "AB")
    assert within.auc == pytest.approx(num / den)
    assert abs(within.null_mean - 0.5) < 0.02
    # A real within-site effect is still found.
    y, s, patients, site = _site_confounded(signal=0.6, seed=2)
    assert permutation_test(y, s, patients, config=cfg, strata=site).verdict == SIGNAL


def test_within_site_permutations_keep_each_sites_positives_and_patient_blocks():
    rng = np.random.default_rng(5)
    patients = np.repeat(np.arange(60), rng.integers(1, 4, size=60)).astype(str)
    site_of = np.where(np.arange(60) < 25, "A", "B")
    site = site_of[patients.astype(int)]
    y = (rng.random(patients.size) < 0.4).astype(float)
    perms = patient_permutations(y, patients, 200, seed=0, strata=site)
    for k in "AB":
        assert (perms[:, site == k].sum(axis=1) == y[site == k].sum()).all()
    # One site: exactly the unstratified test (same groups, same draws, same ranks).
    scores, cfg = rng.normal(size=y.size) + y, SignalConfig(n_permutations=300)
    a = permutation_test(y, scores, patients, strata=np.full(y.size, "A"), config=cfg)
    b = permutation_test(y, scores, patients, config=cfg)
    assert a.n_strata == 1 and (a.auc, a.p_value) == pytest.approx((b.auc, b.p_value))


def test_summary_verdict_rests_on_within_site_test_with_several_sites():
    from echocmr.eval.summary import SummaryConfig, summarise

    y, s, patients, site = _site_confounded(n_patients=240, seed=3)
    df = pd.DataFrame({"study_hash": patients, "patient_hash": patients, "site": site,
                       "split": "test", **{f"y_{t}": y for t in TASKS},
                       **{f"p_{t}": 1 / (1 + np.exp(-s)) for t in TASKS}})
    fast = SummaryConfig(metrics=MetricsConfig(n_bootstrap=1000),
                         signal=SignalConfig(n_permutations=500), positive_control=None)
    r = summarise(df, config=fast, tasks=("lge",))["lge"]
    assert r.n_sites == 2 and r.audit == "within site"
    assert r.p_value_pooled < 0.01 and r.verdict == NO_SIGNAL
    assert abs(r.auc_within_site - 0.5) < 0.06 and r.auc > 0.6
    old = SummaryConfig(metrics=fast.metrics, positive_control=None,
                        signal=SignalConfig(n_permutations=500, within_site=False))
    r_old = summarise(df, config=old, tasks=("lge",))["lge"]
    assert r_old.audit == "pooled" and r_old.verdict == SIGNAL


def test_site_recogniser_false_positive_rate_pooled_vs_within_site():
    """300 null cohorts where only the site is recognised (prevalence 0.55 vs 0.25, pooled AUC
    ~0.54, within-site 0.5): the pooled audit says "signal" about a quarter of the time, the
    within-site audit at about its nominal 5 %. Fixed seed: deterministic."""
    rng = np.random.default_rng(11)
    cfg = SignalConfig(n_permutations=200, seed=0)
    hits = np.zeros((300, 2), dtype=bool)
    n = 200
    patients = np.arange(n).astype(str)
    for r in range(hits.shape[0]):
        site = np.where(rng.random(n) < 0.5, "A", "B")
        y = (rng.random(n) < np.where(site == "A", 0.55, 0.25)).astype(float)
        s = 0.5 * (site == "A") + rng.normal(size=n)
        hits[r] = (permutation_test(y, s, patients, config=cfg).p_value < 0.05,
                   permutation_test(y, s, patients, config=cfg, strata=site).p_value < 0.05)
    pooled, within = hits.mean(axis=0)
    assert pooled > 0.2 and within < 0.09, (pooled, within)


def _frozen_cohort(seed=0, signal=4.0):
    """12 positive patients with 3 studies each, 30 negative with one (disease brings patients
    back): patient blocks of size 3 are all positive, of size 1 all negative."""
    rng = np.random.default_rng(seed)
    pat = np.r_[np.repeat(np.arange(12), 3), np.arange(12, 42)].astype(str)
    y = np.r_[np.ones(36), np.zeros(30)]
    return y, signal * y + rng.normal(size=y.size), pat


def test_frozen_blocks_fall_back_to_patient_units_and_never_say_no_signal():
    y, s, pat = _frozen_cohort()
    cfg = SignalConfig(n_permutations=500, seed=1)
    blocks = permutation_test(y, s, pat, config=cfg, fallback=False)
    assert blocks.degenerate and blocks.p_value == 1.0 and blocks.verdict != NO_SIGNAL
    res = permutation_test(y, s, pat, config=cfg)
    assert res.level == "patient" and res.n_frozen == 42
    assert res.verdict == SIGNAL and res.p_value == pytest.approx(1 / 501)
    # The fallback's p is the ordinary permutation test on patient means (reference loop).
    y, s, pat = _frozen_cohort(seed=2, signal=0.4)
    res = permutation_test(y, s, pat, config=cfg)
    means = pd.Series(s).groupby(pat).mean()
    labels = pd.Series(y).groupby(pat).first().loc[means.index].to_numpy()
    observed = roc_auc_score(labels, means)
    null = [roc_auc_score(row, means) for row in
            patient_permutations(labels, np.asarray(means.index), 500, seed=1)]
    assert res.p_value == pytest.approx((1 + sum(a >= observed - 1e-12 for a in null)) / 501)


def test_frozen_task_through_summarise_is_insufficient_only_when_nothing_can_move():
    from echocmr.eval.summary import SummaryConfig, task_result

    y, s, pat = _frozen_cohort()
    cfg = SummaryConfig(metrics=MetricsConfig(n_bootstrap=1000),
                        signal=SignalConfig(n_permutations=500))
    r = task_result("lge", y, 1 / (1 + np.exp(-s)), pat, config=cfg)
    assert r.verdict == SIGNAL and r.test_level == "patient" and r.n_frozen == 42
    # Both classes only at different sites with one study each per site sequence: within-site
    # strata hold one class each, so the within-site task is insufficient, not "no signal".
    sites = np.where(y == 1, "a", "b")
    r = task_result("lge", y, 1 / (1 + np.exp(-s)), pat, config=cfg, sites=sites)
    assert r.verdict == "insufficient data"
