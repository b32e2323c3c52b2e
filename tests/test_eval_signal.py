"""The signal audit: permutation by patient, +1-corrected p-values, and the verdicts."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from echocmr.eval.signal import (
    NO_SIGNAL,
    SIGNAL,
    SignalConfig,
    patient_permutations,
    permutation_test,
)

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
