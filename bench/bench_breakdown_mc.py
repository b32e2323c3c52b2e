"""Benchmark: the Monte Carlo error of fewer resamples in eval's breakdown rows.

The breakdown rows (per view, per site) run at ``SummaryConfig.breakdown_bootstrap`` resamples
and ``breakdown_permutations`` permutations (1000 each by default) where the primary table runs
at 2000. For one fixed study table (``bench_eval_scale.predictions_table``: N studies, patients
of 1-4 studies, ties), this reruns the two resampled statistics over many seeds and prints how
much their results move from seed to seed — the error that the resample count adds on top of the
sampling error the interval describes:

- the patient bootstrap's 95 % limits (BCa with the small-sample expansion, the default) of the
  WMA AUC: mean and SD over seeds of each limit, at each count;
- the permutation test's p-value for a score built to sit near p = 0.05 on this table (a weak
  signal ``y * delta + noise``, ``delta`` chosen on a grid so that the p at 2000 permutations,
  seed 0, is the nearest to 0.05): mean and SD over seeds, the binomial SD ``sqrt(p (1 - p) /
  B)`` beside it, and the share of seeds with p < 0.05 (how often the row would read "below
  0.05" at that count).

Run: ``.venv/bin/python -m bench.bench_breakdown_mc [--studies 2000] [--seeds 40]
[--counts 1000 2000]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _table(n: int):
    from bench.bench_eval_scale import predictions_table
    return predictions_table(n, seed=0)


def weak_score(y: np.ndarray, patients: np.ndarray, target: float = 0.05) -> tuple[np.ndarray,
                                                                                    float, float]:
    """A score ``y * delta + noise`` whose permutation p (2000 permutations, seed 0) is the
    nearest to ``target`` on a grid of ``delta``; returns (score, delta, that p)."""
    from echocmr.eval.signal import SignalConfig, permutation_test

    noise = np.random.default_rng(12345).normal(size=y.size)
    best = None
    for delta in np.linspace(0.0, 0.4, 81):
        s = y * delta + noise
        p = permutation_test(y, s, patients,
                             config=SignalConfig(n_permutations=2000, seed=0)).p_value
        if best is None or abs(p - target) < abs(best[2] - target):
            best = (s, float(delta), p)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 2000])
    args = ap.parse_args(argv)
    from echocmr.eval.metrics import bootstrap_auc_ci
    from echocmr.eval.signal import SignalConfig, permutation_test

    t0 = time.perf_counter()
    table = _table(args.studies)
    y = table["y_wma"].to_numpy(dtype=float)
    p = table["p_wma"].to_numpy(dtype=float)
    patients = table["patient"].to_numpy().astype(str)
    weak, delta, p0 = weak_score(y, patients)
    print(f"table: {args.studies} studies, {np.unique(patients).size} patients, "
          f"{int(y.sum())} WMA-positive; {args.seeds} seeds per count")
    print(f"weak score: delta {delta:.3f}, p {p0:.4f} at 2000 permutations, seed 0")
    head = (f"{'count B':>7}  {'AUC':>6}  {'low mean':>8}  {'low SD':>7}  {'high mean':>9}  "
            f"{'high SD':>7}  {'p mean':>7}  {'p SD':>7}  {'binom SD':>8}  {'p<0.05':>6}")
    print(head)
    print("-" * len(head))
    for b in args.counts:
        lows, highs, ps = [], [], []
        auc = None
        for seed in range(args.seeds):
            ci = bootstrap_auc_ci(y, p, patients, n_resamples=b, seed=seed, level=0.95,
                                  method="bca", expand_small=True)
            auc = ci.auc
            lows.append(ci.low)
            highs.append(ci.high)
            ps.append(permutation_test(y, weak, patients,
                                       config=SignalConfig(n_permutations=b, seed=seed)).p_value)
        lows, highs, ps = np.array(lows), np.array(highs), np.array(ps)
        pm = ps.mean()
        print(f"{b:>7}  {auc:>6.4f}  {lows.mean():>8.4f}  {lows.std(ddof=1):>7.4f}  "
              f"{highs.mean():>9.4f}  {highs.std(ddof=1):>7.4f}  {pm:>7.4f}  "
              f"{ps.std(ddof=1):>7.4f}  {np.sqrt(pm * (1 - pm) / b):>8.4f}  "
              f"{(ps < 0.05).mean():>6.2f}", flush=True)
    print(f"({time.perf_counter() - t0:.0f} s wall)")


if __name__ == "__main__":
    main()
