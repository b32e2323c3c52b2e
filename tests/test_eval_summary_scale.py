"""The primary table's inner loops, rewritten for 10^6 studies, give the old code's numbers.

`eval.signal.permutation_rank_sums` now shuffles the patients' label blocks (or a code per
distinct block) with the generator instead of their indices, and `eval.metrics.resampled_aucs`
sums integer cumulative weights of the negatives instead of the float tie-group passes. Both must
give, resample by resample and permutation by permutation, what the pre-rewrite code
(``tests/_eval_reference``, main 464e404) gives with its whole (B, N) matrices — on cohorts the
code was not written for: groups whose every label block is alike between groups that are not
(the stream must still advance through them), patients of up to six studies, studies holding
both classes, one-class strata, heavy ties, resamples with one class only, blocks of one row, and
the bootstrap's row-by-row path for large N.
`summary` reuses a task's result for a breakdown group whose studies are the primary table's;
that too is checked against a fresh computation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _eval_reference import metrics as old_metrics
from _eval_reference import signal as old_signal

from echocmr.eval import metrics, signal, summary
from echocmr.model.auc import grouped_midranks, midranks


@pytest.fixture(params=["default blocks", "tiny blocks", "row by row", "row by row, wide"])
def blocks(request, monkeypatch):
    """Shipped block sizes; blocks of one row or a few cells; the bootstrap's row-wise path
    (taken from ``_ROW_WISE`` studies on) at the shipped block size; and that path with its byte
    multiplicities overflowing at 2 instead of 256 (``_NARROW_MAX``), so that resamples in which
    a patient is drawn more often than a byte holds take the int64 way, beside others that
    do not."""
    if request.param == "tiny blocks":
        monkeypatch.setattr(metrics, "_CELLS", 29)
        monkeypatch.setattr(signal, "_CELLS", 3)
    if request.param.startswith("row by row"):
        monkeypatch.setattr(metrics, "_ROW_WISE", 0)
    if request.param == "row by row, wide":
        monkeypatch.setattr(metrics, "_NARROW_MAX", 1)
    return request.param


def _cohort(rng, n: int, *, most: int, decimals: int, per_patient: bool):
    sizes = rng.integers(1, most + 1, size=n)
    pat = np.repeat(np.arange(n), sizes)[:n]
    rng.shuffle(pat)
    if per_patient:  # every block of a patient alike: whole groups of one label block
        y = (rng.random(n) < 0.4).astype(float)[pat]
    else:
        y = (rng.random(n) < 0.4).astype(float)
    s = np.round(y + rng.normal(size=n), decimals)
    ids = np.array([f"q{(31 * k) % 1009:04d}" for k in pat])
    return y, s, ids


@pytest.mark.parametrize("most, decimals, per_patient",
                         [(1, 1, False), (3, 0, False), (6, 2, False), (4, 1, True)])
def test_permutation_rank_sums_are_the_old_label_matrix_times_the_ranks(
        blocks, most, decimals, per_patient):
    rng = np.random.default_rng(most * 10 + decimals)
    for n in (15, 120, 700):
        y, s, ids = _cohort(rng, n, most=most, decimals=decimals, per_patient=per_patient)
        sites = np.array(["a", "b", "c"])[rng.integers(0, 3, size=n)]
        sites[y == 1] = np.where(sites[y == 1] == "c", "a", sites[y == 1])  # c: negatives only
        for strata in (None, sites):
            if strata is None:
                ranks = midranks(s)
            else:
                ranks = grouped_midranks(s, np.unique(strata, return_inverse=True)[1])
            for seed in (0, 7):
                want = old_signal.patient_permutations(y, ids, 150, seed, strata=strata) @ ranks
                got = signal.permutation_rank_sums(y, ranks, ids, 150, seed, strata=strata)
                np.testing.assert_array_equal(got, want)


def test_a_group_of_one_label_block_between_others_still_advances_the_stream():
    """Patients of two studies all hold (1, 0); patients of one and of three studies vary: the
    three-study group comes after the frozen one in the stream and must see the old draws."""
    rng = np.random.default_rng(4)
    y, ids = [], []
    for k in range(60):
        size = (1, 2, 3)[k % 3]
        ids += [f"p{k:03d}"] * size
        y += [1.0, 0.0] if size == 2 else list((rng.random(size) < 0.5).astype(float))
    y, ids = np.array(y), np.array(ids)
    ranks = midranks(rng.normal(size=y.size).round(1))
    want = old_signal.patient_permutations(y, ids, 300, 3) @ ranks
    np.testing.assert_array_equal(signal.permutation_rank_sums(y, ranks, ids, 300, 3), want)
    assert np.ptp(want) > 0


@pytest.mark.parametrize("decimals", [0, 1, 3, 12])
def test_resampled_aucs_are_the_old_weighted_aucs_of_the_same_resamples(blocks, decimals):
    rng = np.random.default_rng(decimals)
    for n, most in ((6, 3), (40, 2), (500, 6)):
        y, s, ids = _cohort(rng, n, most=most, decimals=decimals, per_patient=False)
        if not 0 < y.sum() < n:
            continue
        uniq, inverse = np.unique(ids, return_inverse=True)
        draws = old_metrics.patient_resamples(uniq.size, 400, seed=n)
        weights = np.stack([np.bincount(row, minlength=uniq.size)[inverse] for row in draws])
        want = old_metrics.weighted_auc(y, s, weights)
        got = metrics.resampled_aucs(y.astype(bool), s, inverse, uniq.size, 400, seed=n)
        np.testing.assert_array_equal(got, want)
        if n == 6:
            assert np.isnan(want).any()  # resamples of one class: NaN in both


def _studies(n: int, sites: int) -> pd.DataFrame:
    from _bench_fixtures import load_bench

    table = load_bench("bench_eval_scale").predictions_table(n, seed=3, n_sites=sites)
    return table.rename(columns={"patient": "patient_hash", "study": "study_hash"})


def _config() -> summary.SummaryConfig:
    return summary.SummaryConfig(metrics=metrics.MetricsConfig(n_bootstrap=1000),
                                 signal=signal.SignalConfig(n_permutations=200))


def test_a_breakdown_group_with_the_primary_tables_studies_reuses_its_results():
    """One site: the site breakdown's one group is the primary table's studies again; the cached
    rows equal a fresh breakdown's, field by field, and the primary table keeps its own verdicts
    (Holm, value over WMA) while the breakdown rows stay exploratory."""
    studies = _studies(800, sites=1)
    cache = summary.ResultCache()
    primary = summary.summarise(studies, config=_config(), cache=cache)
    cached = summary.breakdown(studies, "site", config=_config(), cache=cache)
    assert cache.hits == len(primary)
    fresh = summary.breakdown(studies, "site", config=_config())
    assert {k: summary.detail_json(v) for k, v in cached.items()} == \
        {k: summary.detail_json(v) for k, v in fresh.items()}
    assert primary == summary.summarise(studies, config=_config())  # not altered by the reuse
    assert {r.verdict for r in cached["site_a"].values()} <= {"exploratory", "insufficient data"}
    assert any(r.control is not None for r in primary.values())


def test_different_studies_or_settings_are_never_served_from_the_cache():
    studies = _studies(800, sites=2)
    cache = summary.ResultCache()
    summary.summarise(studies, config=_config(), cache=cache)
    summary.breakdown(studies, "site", config=_config(), cache=cache)  # each site: a subset
    assert cache.hits == 0
    moved = studies.copy()
    moved.loc[moved.index[0], "p_wma"] += 1e-9  # one score
    relabelled = studies.copy()
    relabelled["patient_hash"] = relabelled["patient_hash"].str.replace("p", "q")
    other_seed = _config()
    other_seed.metrics.seed = 1
    for table, config in ((moved, _config()), (relabelled, _config()), (studies, other_seed)):
        summary.summarise(table, config=config, tasks=("wma",), cache=cache)
    assert cache.hits == 0
    summary.summarise(studies, config=_config(), tasks=("wma",), cache=cache)
    assert cache.hits == 1


@pytest.mark.parametrize("ids", ["str dtype", "object", "int"])
def test_ids_converted_once_per_table_give_the_per_task_arrays_numbers(ids):
    """`summarise` turns the patient and site columns into numpy text once per table; every
    task's result must equal `task_result` on the column's own values (Python strings, or
    integers, which keep their numeric order: 10 after 9, not before it as text)."""
    studies = _studies(600, sites=3)
    number = studies["patient_hash"].str[1:].astype(int).to_numpy()
    if ids == "int":
        studies["patient_hash"] = number * 7 % 601  # ascending as integers, not as text
    elif ids == "object":
        studies["patient_hash"] = pd.Series(studies["patient_hash"].tolist(), dtype=object)
        studies["site"] = pd.Series(studies["site"].tolist(), dtype=object)
    config = _config()
    got = summary.summarise(studies, config=config, tasks=("wma", "lge"), primary=False)
    for task, result in got.items():
        want = summary.task_result(
            task, studies[f"y_{task}"].to_numpy(), studies[f"p_{task}"].to_numpy(),
            np.asarray(studies["patient_hash"].tolist(), dtype=object), config=config,
            sites=np.asarray(studies["site"].tolist(), dtype=object))
        want.primary, want.verdict = False, "exploratory" if want.p_value is not None \
            else want.verdict
        assert summary.detail_json({task: result}) == summary.detail_json({task: want})
    if ids == "int":  # as text the bootstrap's patient order differs, and so does its interval
        text = summary.summarise(studies.assign(patient_hash=studies["patient_hash"].astype(str)),
                                 config=config, tasks=("wma",), primary=False)
        assert text["wma"].ci_low != got["wma"].ci_low
