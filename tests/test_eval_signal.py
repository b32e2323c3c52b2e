"""The signal audit: permutation by patient, +1-corrected p-values, and the verdicts."""

import numpy as np
import pytest
from _eval_fixtures import study_table
from sklearn.metrics import roc_auc_score

from eval.signal import (
    NO_SIGNAL,
    SIGNAL,
    SignalConfig,
    patient_permutations,
    permutation_test,
)


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
