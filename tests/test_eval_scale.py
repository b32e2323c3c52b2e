"""Eval's statistics at archive size give the numbers they gave before the rewrite (issue 26).

The reference is the verbatim pre-rewrite code (``tests/_eval_reference``: ``eval/metrics.py``,
``signal.py``, ``operating.py`` at main 464e404). Each rewritten statistic is compared with it on
seeded inputs it was not written for: tied scores, patients of unequal study counts, patients who
hold both classes, one-class sites, resamples with one class, frozen exchange groups. The block
sizes are forced down (``_CELLS``) so that the streamed paths run many blocks, including blocks of
one row. Memory is checked with tracemalloc (numpy reports its buffers to it): the old code held a
B x N matrix, the new one must not. The whole ``echocmr eval --predictions`` run is compared with a
result pinned from the old code (``tests/data/eval_scale_pinned.json``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _bench_fixtures import load_bench
from _eval_reference import metrics as old_metrics
from _eval_reference import operating as old_operating
from _eval_reference import signal as old_signal

from echocmr.eval import metrics, operating, signal
from echocmr.model.auc import grouped_midranks, midranks

REPO = Path(__file__).resolve().parents[1]


def _bench():
    return load_bench("bench_eval_scale")


def _same(a, b) -> None:
    """Two result dataclasses (old and new classes) hold the same numbers, NaN equal to NaN."""
    da, db = asdict(a), asdict(b)
    assert da.keys() == db.keys()
    for k in da:
        x, y = da[k], db[k]
        if isinstance(x, float) and np.isnan(x):
            assert isinstance(y, float) and np.isnan(y), (k, x, y)
        else:
            assert x == y, (k, x, y)


def _cohort(rng: np.random.Generator, n: int, *, decimals: int, most: int = 6,
            mixed: bool = True):
    """Studies of patients with 1..``most`` studies (unequal clusters), labels drawn per study
    (``mixed``: some patients hold both classes) or per patient, scores rounded to ``decimals``
    (0: heavy ties), patient ids as strings in no particular order."""
    sizes = rng.integers(1, most + 1, size=n)
    pat = np.repeat(np.arange(n), sizes)[:n]
    rng.shuffle(pat)
    effect = rng.normal(size=n)[pat]
    if mixed:
        y = (rng.random(n) < 1 / (1 + np.exp(-(effect - 0.5)))).astype(float)
    else:
        y = (rng.random(n) < 0.35).astype(float)[pat]
    s = np.round(y + effect + rng.normal(size=n), decimals)
    ids = np.array([f"h{(7919 * k) % 10007:05d}" for k in pat])
    return y, s, ids


@pytest.fixture(params=["default blocks", "tiny blocks"])
def blocks(request, monkeypatch):
    """Run once at the shipped block size and once with blocks of a row or a few cells."""
    if request.param == "tiny blocks":
        monkeypatch.setattr(metrics, "_CELLS", 37)
        monkeypatch.setattr(signal, "_CELLS", 5)
    return request.param


def test_grouped_midranks_are_midranks_within_each_group():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 200))
        x = np.round(rng.normal(size=n), int(rng.integers(0, 3)))
        g = rng.integers(0, int(rng.integers(1, 9)), size=n)
        got = grouped_midranks(x, g)
        for level in np.unique(g):
            np.testing.assert_array_equal(got[g == level], midranks(x[g == level]))
    assert grouped_midranks(np.empty(0), np.empty(0, dtype=int)).size == 0
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        grouped_midranks(np.ones(3), np.ones(2))


def test_threshold_is_the_one_the_pairwise_scan_chose():
    rng = np.random.default_rng(1)
    cases = [(np.array([0, 1.0]), np.array([0.5, 0.5])),  # every score tied
             (np.array([1, 0, 0, 0.0]), np.array([0.2, 0.9, 0.9, 0.1])),  # one positive, low
             (np.array([1, 1, 0, 1.0]), np.array([0.3, 0.3, 0.3, 0.7]))]
    for _ in range(150):
        n = int(rng.integers(2, 400))
        y = (rng.random(n) < rng.uniform(0.02, 0.95)).astype(float)
        if 0 < y.sum() < n:
            cases.append((y, np.round(rng.random(n), int(rng.integers(0, 4)))))
    for y, p in cases:
        for rule, target in (("youden", 0.9), ("sensitivity", 0.9), ("sensitivity", 1.0),
                             ("sensitivity", float(rng.uniform(0.01, 1.0)))):
            assert operating.choose_threshold(y, p, rule=rule, target_sensitivity=target) == \
                old_operating.choose_threshold(y, p, rule=rule, target_sensitivity=target)
        _same(operating.operating_point(y, p, y[::-1], p, rule="youden"),
              old_operating.operating_point(y, p, y[::-1], p, rule="youden"))


@pytest.mark.parametrize("decimals, mixed", [(0, True), (1, True), (2, False), (12, True)])
def test_bootstrap_bca_and_jackknife_equal_the_old_code(blocks, decimals, mixed):
    rng = np.random.default_rng(decimals)
    for n in (12, 60, 400):
        y, s, ids = _cohort(rng, n, decimals=decimals, mixed=mixed)
        if not 0 < y.sum() < n:
            continue
        for method in ("bca", "percentile"):
            kw = dict(n_resamples=1000, seed=n, method=method, expand_small=method == "bca")
            _same(metrics.bootstrap_auc_ci(y, s, ids, **kw),
                  old_metrics.bootstrap_auc_ci(y, s, ids, **kw))
        np.testing.assert_array_equal(metrics.jackknife_patient_aucs(y, s, ids),
                                      old_metrics.jackknife_patient_aucs(y, s, ids))
        w = rng.integers(0, 3, size=(7, n))
        np.testing.assert_array_equal(metrics.weighted_auc(y, s, w),
                                      old_metrics.weighted_auc(y, s, w))


def test_jackknife_with_a_patient_holding_every_study_of_a_class():
    """Leaving that patient out empties the class: NaN there, as before."""
    y = np.array([1, 1, 0, 0, 0, 1.0])
    s = np.array([0.9, 0.9, 0.1, 0.9, 0.4, 0.2])
    ids = np.array(["a", "a", "a", "b", "c", "a"])
    got = metrics.jackknife_patient_aucs(y, s, ids)
    np.testing.assert_array_equal(got, old_metrics.jackknife_patient_aucs(y, s, ids))
    assert np.isnan(got[0]) and not np.isnan(got[1:]).any()


def _sites(rng, ids, n_sites, one_class_site: bool, y):
    uniq, inverse = np.unique(ids, return_inverse=True)
    site = np.array([f"site{k}" for k in range(n_sites)])[rng.integers(0, n_sites, uniq.size)]
    out = site[inverse]
    if one_class_site:  # a site of negatives only: no within-site pairs there
        out = np.where(y == 0, out, np.where(out == "site0", "site1", out))
    return out


@pytest.mark.parametrize("decimals, mixed", [(0, True), (2, False), (12, True)])
def test_permutation_test_equals_the_old_code(blocks, decimals, mixed):
    rng = np.random.default_rng(10 + decimals)
    new_cfg = signal.SignalConfig(n_permutations=300, seed=5)
    old_cfg = old_signal.SignalConfig(n_permutations=300, seed=5)
    fell_back = block_level = 0
    for n in (20, 90, 500):
        y, s, ids = _cohort(rng, n, decimals=decimals, mixed=mixed, most=3)
        if not 0 < y.sum() < n:
            continue
        for strata in (None, _sites(rng, ids, 3, False, y), _sites(rng, ids, 2, True, y)):
            for fallback in (True, False):
                kw = dict(strata=strata, fallback=fallback)
                new = signal.permutation_test(y, s, ids, config=new_cfg, **kw)
                _same(new, old_signal.permutation_test(y, s, ids, config=old_cfg, **kw))
                fell_back += new.level == "patient"
                block_level += new.level == "study"
            np.testing.assert_array_equal(
                signal.patient_permutations(y, ids, 40, 3, strata=strata),
                old_signal.patient_permutations(y, ids, 40, 3, strata=strata))
            assert signal.frozen_patients(y, ids, strata) == \
                old_signal.frozen_patients(y, ids, strata)
            if strata is not None:
                new_w, old_w = signal.within_site_auc(y, s, strata), \
                    old_signal.within_site_auc(y, s, strata)
                assert new_w == old_w or (np.isnan(new_w) and np.isnan(old_w))
    assert fell_back and block_level  # both levels of the test were compared


def test_within_site_auc_without_a_site_of_both_classes_is_nan():
    y = np.array([1, 1, 0, 0.0])
    sites = np.array(["a", "a", "b", "b"])
    assert np.isnan(signal.within_site_auc(y, np.arange(4.0), sites))
    assert np.isnan(old_signal.within_site_auc(y, np.arange(4.0), sites))


def test_memory_does_not_grow_with_resamples_times_studies():
    """20,000 studies x 2,000 resamples: the old code's label matrix alone was 320 MB; the
    streamed permutation test and bootstrap stay within a few blocks of ~16 MB."""
    rng = np.random.default_rng(3)
    y, s, ids = _cohort(rng, 20_000, decimals=3, most=3)
    for run in (lambda: signal.permutation_test(y, s, ids, fallback=False),
                lambda: metrics.bootstrap_auc_ci(y, s, ids, n_resamples=2000, method="bca")):
        tracemalloc.start()
        try:
            run()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 120e6, peak  # B x N float64 = 320e6


# --- through the CLI: the same verdicts and numbers as the old code ------------------------

def _cli_table(n: int = 3000) -> pd.DataFrame:
    """The pinned run's table: bench_eval_scale.predictions_table(3000, seed=0), one A4C row per
    study and a PLAX row (its WMA probability squeezed) for every third study."""
    table = _bench().predictions_table(n, seed=0)
    table["view"] = "A4C"
    second = table[np.arange(len(table)) % 3 == 0].assign(view="PLAX")
    second["p_wma"] = (0.5 * second["p_wma"] + 0.25).round(3)
    return pd.concat([table, second], ignore_index=True)


def _assert_close(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for k in want:
            _assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        # bit-identical here; the tolerance covers another machine's BLAS in calibration fits
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where


def test_eval_predictions_gives_the_old_codes_verdicts_and_numbers(tmp_path):
    path = tmp_path / "preds.csv"
    _cli_table().to_csv(path, index=False)
    # A user's shell: its own HOME and TMPDIR, none of our MLflow or echocmr settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW", "ECHOCMR"))}
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    env.update(HOME=str(home), TMPDIR=str(home / "tmp"))
    run = subprocess.run([sys.executable, "-m", "echocmr", "eval", "--predictions", str(path),
                          "--out", str(tmp_path / "out"), "--bootstrap", "1000",
                          "--permutations", "1000"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr
    got = json.loads((tmp_path / "out" / "metrics_detail.json").read_text())
    want = json.loads((REPO / "tests" / "data" / "eval_scale_pinned.json").read_text())
    verdicts = {t: r["verdict"] for t, r in want["tasks"].items()}
    assert {"signal", "only through WMA", "no detectable signal at this sample size"} <= \
        set(verdicts.values())  # the pinned run exercises every verdict path that matters here
    for part in ("tasks", "by_view", "by_site"):
        _assert_close(got[part], want[part], part)
