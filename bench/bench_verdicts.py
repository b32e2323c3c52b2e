"""Verdict calibration: how often each verdict of ``echocmr eval`` is wrong, by simulation.

Every replicate draws a cohort of study predictions with a planted truth and judges it with
`eval.summary.summarise` — the code path ``echocmr eval`` runs after inference (and ``eval
--predictions`` runs on a table): metrics, both intervals, the Holm-adjusted audit, the test of
value over WMA given the WMA label, the frozen-strata fallback. Two shapes:

* ``demo``: the demo's external site, 54 patients with 1–3 studies each;
* ``study``: the study, 1,453 patients with 2,556 studies (1–3 each, 1.76 on average).

Scenarios (each a rate over replicates, with its Monte Carlo standard error):

* ``null_family``: WMA real, T1/T2/ECV null with heads that share the WMA head's features; the
  rate of any "signal" among T1/T2/ECV (family-wise false claim; target <= 5 %).
* ``riding_copy``, ``riding_reread``, ``riding_monotone``: LGE depends on the WMA label only
  (P 0.7 vs 0.2) and its head is a noisy copy of the WMA score, an independent re-read of the WMA
  evidence, or a monotone transform of the WMA score; the rate of "signal" for LGE (false value
  over WMA; target <= 5 %).
* ``power_65``, ``power_75``: T1 with its own effect (study-level AUC 0.65 / 0.75, independent of
  WMA); the rate of "signal".
* ``coverage_60``, ``coverage_75``, ``coverage_87``: the share of replicates whose printed 95 %
  intervals (bootstrap column, DeLong column) cover the true AUC; positives' scores spread twice
  as wide as the negatives' (unequal-variance binormal, where intervals at high AUC run short);
  ``coverage_87_equal`` with equal spread. Demo shape: 13–19 positive patients. Target >= 0.93.
  ``before_*``: on the same cohorts, the intervals eval printed before (percentile bootstrap, BCa
  without the small-sample expansion, the clustered DeLong on the linear scale).
* ``frozen``: positives with 3 studies, negatives with 1 (disease brings patients back), a head of
  AUC 0.75: the rate of "signal", and of "no detectable signal" for a near-perfect head
  (must be 0).
* ``site_recogniser``: two sites with prevalence 0.6 and 0.2 and a head that knows only the site;
  the rate of "signal" (target <= 5 %).

Run (replicates per scenario; a 2-core machine does the demo shape at ~2 replicates/s)::

    python bench/bench_verdicts.py --shape demo --reps 200
    python bench/bench_verdicts.py --shape study --reps 40 --scenarios null_family riding_reread

The default test suite runs a small deterministic version of each scenario
(tests/test_eval_verdicts.py).
"""

from __future__ import annotations

import argparse
import math
import time
from statistics import NormalDist

import numpy as np
import pandas as pd

from echocmr.eval.aggregate import STUDY_COLUMNS
from echocmr.eval.metrics import MetricsConfig, bootstrap_auc_ci, clustered_delong_ci
from echocmr.eval.signal import SignalConfig
from echocmr.eval.summary import SummaryConfig, summarise
from echocmr.model.tasks import TASKS, p_col, y_col

SHAPES = {"demo": (54, 3), "study": (1453, 3)}  # patients, most studies per patient
SD_PATIENT = 1.0  # patient random effect on a head's logit, as large as the study noise
WMA_EFFECT = 2.6  # WMA head: study-level AUC ~0.87
POSITIVE_SPREAD = 2.0  # coverage scenarios: positives' scores spread twice as wide (the hard case)


def shift_for_auc(auc: float, spread: float = 1.0) -> float:
    """Logit shift d whose study-level AUC (pairs of different patients) is ``auc`` when a
    head's logit is d*y + (patient effect + study noise), the bracket ``spread`` times wider for
    positives (unequal-variance binormal)."""
    return (math.sqrt((1 + SD_PATIENT**2) * (1 + spread**2))
            * NormalDist().inv_cdf(auc))


def _study_counts(rng, n_patients: int, most: int) -> np.ndarray:
    if most == 3 and n_patients > 1000:  # the study: 2,556 studies of 1,453 patients
        return rng.choice([1, 2, 3], size=n_patients, p=[0.45, 0.34, 0.21])
    return rng.integers(1, most + 1, size=n_patients)


def cohort(rng: np.random.Generator, shape: str = "demo", *, scenario: str = "null_family",
           ) -> pd.DataFrame:
    """One cohort of studies (``STUDY_COLUMNS``) with the scenario's planted truth."""
    n_pat, most = SHAPES[shape]
    n_st = _study_counts(rng, n_pat, most)
    site_p = np.where(rng.random(n_pat) < 0.5, "a", "b") if scenario == "site_recogniser" \
        else np.full(n_pat, "a")
    wma_p = (rng.random(n_pat) < 0.35).astype(float)
    lge_p = (rng.random(n_pat) < np.where(wma_p == 1, 0.7, 0.2)).astype(float)
    null_p = {t: (rng.random(n_pat) < 0.3).astype(float) for t in ("t1", "t2", "ecv")}
    if scenario == "site_recogniser":  # T2 prevalence differs by site, no pixel signal at all
        null_p["t2"] = (rng.random(n_pat) < np.where(site_p == "a", 0.6, 0.2)).astype(float)
    if scenario == "frozen":  # positives come back for more echoes
        n_st = np.where(null_p["t1"] == 1, 3, 1)
    idx = np.repeat(np.arange(n_pat), n_st)
    n = idx.size

    def head(shift, y_pat, spread=1.0):  # d*y + patient effect + study noise, per study
        scale = np.where(y_pat[idx] == 1, spread, 1.0)
        return shift * y_pat[idx] + scale * (SD_PATIENT * rng.normal(size=n_pat)[idx]
                                             + rng.normal(size=n))

    z_wma = head(WMA_EFFECT, wma_p)
    logits = {"wma": z_wma - 1.0}
    if scenario == "riding_copy":
        logits["lge"] = z_wma + 0.5 * rng.normal(size=n)
    elif scenario == "riding_monotone":
        logits["lge"] = 0.4 * z_wma + 0.05 * z_wma**3
    else:  # an independent re-read of the WMA evidence with its own noise
        logits["lge"] = head(WMA_EFFECT, wma_p)
    shared = 0.5 * z_wma  # null heads share the WMA head's features
    t1_shift = {"power_65": shift_for_auc(0.65), "power_75": shift_for_auc(0.75),
                "frozen": shift_for_auc(0.75), "coverage_87_equal": shift_for_auc(0.87)}
    spread = 1.0
    if scenario in COVERAGE_AUC and not scenario.endswith("equal"):
        spread = POSITIVE_SPREAD
        t1_shift[scenario] = shift_for_auc(COVERAGE_AUC[scenario], spread)
    logits["t1"] = head(t1_shift.get(scenario, 0.0), null_p["t1"], spread)
    if not scenario.startswith(("coverage", "frozen", "power")):
        logits["t1"] = logits["t1"] + shared
    if scenario == "site_recogniser":
        logits["t2"] = np.where(site_p[idx] == "a", 1.0, -1.0) + rng.normal(size=n)
    else:
        logits["t2"] = head(0.0, null_p["t2"]) + shared
    logits["ecv"] = head(0.0, null_p["ecv"]) + shared
    labels = {"wma": wma_p, "lge": lge_p, **null_p}
    table = pd.DataFrame({"study_hash": [f"s{i:05d}" for i in range(n)],
                          "patient_hash": [f"p{j:05d}" for j in idx],
                          "site": site_p[idx], "split": "test"})
    for t in TASKS:
        y = labels[t][idx].copy()
        if t in ("t1", "t2", "ecv") and not scenario.startswith(("coverage", "frozen")):
            y[rng.random(n_pat)[idx] < 0.3] = np.nan  # mapping sequences not always run
        table[y_col(t)] = y
        table[p_col(t)] = 1 / (1 + np.exp(-logits[t]))
    return table[STUDY_COLUMNS]


def near_perfect(table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The frozen case's second head: T1 scored almost perfectly."""
    y = table[y_col("t1")].to_numpy()
    table[p_col("t1")] = 1 / (1 + np.exp(-(6.0 * (y - 0.5) + 0.3 * rng.normal(size=y.size))))
    return table


def config(seed: int, fast: bool = True) -> SummaryConfig:
    n = 1000 if fast else 2000
    return SummaryConfig(metrics=MetricsConfig(n_bootstrap=n, seed=seed),
                         signal=SignalConfig(n_permutations=n, seed=seed))


COVERAGE_AUC = {"coverage_60": 0.60, "coverage_75": 0.75, "coverage_87": 0.87,
                "coverage_87_equal": 0.87}


def replicate(scenario: str, shape: str, seed: int) -> dict[str, float]:
    """One replicate: the scenario's indicator(s) as {name: 0/1 or NaN}."""
    rng = np.random.default_rng([seed, sum(map(ord, scenario)), sum(map(ord, shape))])
    table = cohort(rng, shape, scenario=scenario)
    cfg = config(seed)
    if scenario.startswith("coverage"):
        r = summarise(table, config=cfg, tasks=("t1",))["t1"]
        truth = COVERAGE_AUC[scenario]
        cover = lambda lo, hi: (float(lo <= truth <= hi)  # noqa: E731
                                if lo is not None else float("nan"))
        out = {"bootstrap": cover(r.ci_low, r.ci_high),
               "delong": cover(r.delong_low, r.delong_high)}
        if r.ci_low is not None:  # the intervals printed before, on the same cohort
            known = table["y_t1"].notna()
            y, p = table.loc[known, "y_t1"].to_numpy(), table.loc[known, "p_t1"].to_numpy()
            pat = table.loc[known, "patient_hash"].to_numpy()
            mc = cfg.metrics
            for name, kw in (("before_percentile", {"method": "percentile"}),
                             ("before_bca_plain", {"method": "bca"})):
                b = bootstrap_auc_ci(y, p, pat, n_resamples=mc.n_bootstrap, seed=mc.seed, **kw)
                out[name] = cover(b.low, b.high)
            d = clustered_delong_ci(y, p, pat, scale="linear")
            out["before_delong_linear"] = cover(d.low, d.high)
        out["pos_patients"] = float(r.n_pos_patients)
        return out
    if scenario == "frozen":
        r = summarise(table, config=cfg, tasks=("wma", "t1"))["t1"]
        perfect = summarise(near_perfect(table, rng), config=cfg, tasks=("wma", "t1"))["t1"]
        return {"signal": float(r.verdict == "signal"),
                "perfect_no_signal": float(perfect.verdict.startswith("no detectable")),
                "perfect_signal": float(perfect.verdict == "signal")}
    res = summarise(table, config=cfg)
    if scenario in ("null_family", "site_recogniser"):
        nulls = ("t1", "t2", "ecv") if scenario == "null_family" else ("t2",)
        return {"any_false_signal": float(any(res[t].verdict.startswith("signal")
                                              for t in nulls))}
    if scenario.startswith("riding"):
        return {"false_signal": float(res["lge"].verdict == "signal"),
                "audit_rejects": float(res["lge"].p_adjusted is not None
                                       and res["lge"].p_adjusted < 0.05)}
    if scenario.startswith("power"):
        return {"signal": float(res["t1"].verdict == "signal")}
    raise ValueError(f"unknown scenario {scenario!r}")


SCENARIOS = ("null_family", "riding_copy", "riding_reread", "riding_monotone", "power_65",
             "power_75", "coverage_60", "coverage_75", "coverage_87", "coverage_87_equal",
             "frozen",
             "site_recogniser")


def run(scenario: str, shape: str, reps: int, start: int = 0) -> dict[str, tuple[float, float, int]]:
    """{indicator: (rate, Monte Carlo SE, replicates with a value)} over ``reps`` replicates."""
    rows = [replicate(scenario, shape, seed) for seed in range(start, start + reps)]
    out = {}
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for key in keys:
        v = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        v = v[~np.isnan(v)]
        rate = float(v.mean()) if v.size else float("nan")
        se = float(np.sqrt(rate * (1 - rate) / v.size)) if v.size and key != "pos_patients" \
            else float("nan")
        out[key] = (rate, se, int(v.size))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=tuple(SHAPES), default="demo")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--start", type=int, default=0,
                    help="first replicate seed (extend an earlier run with --start <its reps>)")
    args = ap.parse_args(argv)
    print(f"| scenario ({args.shape}, {args.reps} replicates from seed {args.start}) | indicator "
          "| rate | MC SE | n |")
    print("|---|---|---|---|---|")
    for sc in args.scenarios:
        t0 = time.perf_counter()
        for key, (rate, se, n) in run(sc, args.shape, args.reps, args.start).items():
            se_text = "—" if math.isnan(se) else f"{se:.3f}"
            print(f"| {sc} | {key} | {rate:.3f} | {se_text} | {n} |", flush=True)
        print(f"<!-- {sc}: {time.perf_counter() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
