"""Benchmark: eval's statistics at archive size, the pre-issue-26 code against the current one.

Times each statistic ``echocmr eval`` computes per task on one synthetic study table of N studies
(``predictions_table``: patients of 1-4 studies whose labels may differ between their studies,
four sites, NaN labels, scores on a 10^-3 grid below a share of exact ties), at the default
``MetricsConfig``/``SignalConfig`` (2,000 resamples, 2,000 permutations):

- ``threshold``: `eval.operating.choose_threshold` (Youden) on N val studies, continuous scores
  (the old code is quadratic here: run it to 3·10^4 with ``--ops threshold --old-max 30000``);
- ``bootstrap_bca``: `eval.metrics.bootstrap_auc_ci` (patient bootstrap + BCa jackknife);
- ``jackknife``: `eval.metrics.jackknife_patient_aucs` alone;
- ``delong``: `eval.metrics.clustered_delong_ci`;
- ``permutation``: `eval.signal.permutation_test`, pooled;
- ``permutation_site``: the same within site (four strata);
- ``summarise``: `eval.summary.summarise` over the five tasks (everything above, plus the
  value-over-WMA test and calibration): the primary table;
- ``breakdown_site``: `eval.summary.breakdown` by site (four exploratory tables);
- ``breakdown_view``: `eval.summary.breakdown` by view on the table `views_table` gives (what
  ``echocmr eval`` breaks down by view: one row per study and view; A4C for every study, PLAX for
  every third, 1.33 N rows in two exploratory tables);
- ``breakdown_site_cached``, ``breakdown_view_cached``: the same breakdowns as ``echocmr eval``
  runs them, after the primary table and sharing its `ResultCache` (the primary table is
  computed before the clock starts; the cell's ``hits`` says how many (group, task) results came
  from it). Here the view breakdown's A4C group is the primary table's studies with the primary
  table's scores (``views_table`` gives A4C the study probabilities), so it is served from the
  cache; in an archive where some studies hold other views too, a study's probability is the
  mean over its views and no view group equals the primary table: read the uncached cells there.

After the table, the breakdowns' CPU time as a share of the primary table's at each N where both
ran (``echocmr eval`` runs both breakdowns after the primary table).

The breakdowns run at ``SummaryConfig``'s breakdown counts (``breakdown_bootstrap``,
``breakdown_permutations``: 1000 each by default); ``--breakdown 2000x2000 1000x1000`` runs each
breakdown cell once per setting ``<resamples>x<permutations>`` (2000x2000: the primary table's
counts, the breakdowns before they had their own), and prints each one's share of the primary.

For the last two the old way imports `eval.summary` (and `eval.control`) with the old
``metrics``/``signal``/``operating`` modules in their place.

The old code is the verbatim copy of ``eval/{metrics,signal,operating}.py`` before the rewrite
(``tests/_eval_reference``); the old way runs only where it fits (``--old-max``, default 10^5:
its bootstrap draws a B x P matrix, 16 GB at 10^6 patients, and its threshold is O(N^2)). Each
cell runs in a fresh process so peak RSS (``VmHWM`` minus the baseline after imports) is that
statistic's own (the peak is reset after the table is built). The table prints CPU seconds (user + system of the process: on a shared machine
wall time is not comparable between cells; the new code's wall time is printed beside) and MB
per cell, the old/new ratio of CPU time where both ran, and the growth exponent ``log(t2/t1) / log(N2/N1)`` between the two largest sizes (1.0 is
linear, 2.0 quadratic).

Run: ``.venv/bin/python -m bench.bench_eval_scale [--sizes 10000 100000 1000000]
[--old-max 100000] [--ops ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_NAMES = ("wma", "lge", "t1", "t2", "ecv")
OPS = ("threshold", "bootstrap_bca", "jackknife", "delong", "permutation", "permutation_site",
       "summarise", "breakdown_site", "breakdown_view", "breakdown_site_cached",
       "breakdown_view_cached")
TABLE_OPS = ("summarise", "breakdown_site", "breakdown_view", "breakdown_site_cached",
             "breakdown_view_cached")


def predictions_table(n_studies: int, seed: int = 0, *, n_sites: int = 4, val_share: float = 0.2,
                      grid: float = 1e-3, tie_share: float = 0.5,
                      ids: str = "str") -> pd.DataFrame:
    """A study table of ``n_studies`` rows with ``echocmr eval --predictions`` columns.

    Patients have 1-4 studies (45/30/15/10 %) at one site; a patient's studies draw their labels
    separately around a patient effect (so some patients hold both classes); WMA is visible, LGE
    rides on WMA, T1/T2/ECV are null with 30 % unknown labels. ``tie_share`` of the scores are
    rounded to ``grid`` (ties), the rest are continuous. ``ids="int"`` gives integer patient ids
    (cheap at 10^7) instead of ``p00000012`` strings. ``split`` is ``val`` for ``val_share`` of
    the patients, else ``test``.
    """
    rng = np.random.default_rng(seed)
    n_pat = int(n_studies / 1.9) + 8
    sizes = rng.choice([1, 2, 3, 4], size=n_pat, p=[0.45, 0.30, 0.15, 0.10])
    while sizes.sum() < n_studies:  # rare; drawn only then, so smaller tables keep their stream
        sizes = np.r_[sizes, rng.choice([1, 2, 3, 4], size=64, p=[0.45, 0.30, 0.15, 0.10])]
    idx = np.repeat(np.arange(sizes.size), sizes)[:n_studies]
    n_pat = int(idx[-1]) + 1
    n = idx.size
    effect = rng.normal(size=n_pat)
    site = rng.integers(0, n_sites, size=n_pat)
    out = {
        "patient": idx if ids == "int" else np.char.add("p", np.char.zfill(idx.astype(str), 8)),
        "study": np.arange(n) if ids == "int" else np.char.add(
            "s", np.char.zfill(np.arange(n).astype(str), 9)),
        "site": np.array([f"site_{chr(97 + k)}" for k in range(n_sites)])[site[idx]],
        "split": np.where(rng.random(n_pat) < val_share, "val", "test")[idx],
    }
    prevalence = {"wma": -0.6, "lge": -1.0, "t1": -0.8, "t2": -0.8, "ecv": -0.8}
    z_wma = None
    for t in TASK_NAMES:
        y = (rng.random(n) < 1 / (1 + np.exp(-(prevalence[t] + effect[idx])))).astype(float)
        if t == "wma":
            z = 2.0 * y + 0.7 * rng.normal(size=n_pat)[idx] + rng.normal(size=n)
            z_wma = z
        elif t == "lge":
            z = 0.8 * z_wma + rng.normal(size=n)
        else:
            z = 0.3 * z_wma + rng.normal(size=n)
            y[rng.random(n) < 0.3] = np.nan
        p = 1 / (1 + np.exp(-z))
        tied = rng.random(n) < tie_share
        p[tied] = np.round(p[tied] / grid) * grid
        out[f"y_{t}"] = y
        out[f"p_{t}"] = p
    return pd.DataFrame(out)


def views_table(studies: pd.DataFrame) -> pd.DataFrame:
    """One row per (study, view), as `eval.aggregate.views_to_studies` gives ``echocmr eval``'s
    per-view breakdown: A4C for every study (its probabilities), PLAX for every third study (its
    probabilities squeezed towards 0.5 and rounded to 10^-3: a weaker, tie-heavy view)."""
    a4c = studies.assign(view="A4C")
    plax = studies[np.arange(len(studies)) % 3 == 0].assign(view="PLAX")
    for t in TASK_NAMES:
        plax[f"p_{t}"] = (0.5 * plax[f"p_{t}"] + 0.25).round(3)
    return pd.concat([a4c, plax], ignore_index=True)


def _arrays(n: int, seed: int = 0):
    table = predictions_table(n, seed, ids="int")
    y, p = table["y_wma"].to_numpy(), table["p_wma"].to_numpy()
    return table, y, p, table["patient"].to_numpy(), table["site"].to_numpy()


def _modules(way: str):
    if way == "old":
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from _eval_reference import metrics, operating, signal
        # summary and control then import the old statistics under their usual names
        sys.modules.update({"echocmr.eval.metrics": metrics, "echocmr.eval.signal": signal,
                            "echocmr.eval.operating": operating})
        return metrics, signal, operating
    from echocmr.eval import metrics, operating, signal
    return metrics, signal, operating


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _counts(setting: str | None):
    """``"<resamples>x<permutations>"`` as a SummaryConfig with those breakdown counts."""
    from echocmr.eval.summary import SummaryConfig
    if setting is None:
        return SummaryConfig()
    b, p = (int(x) for x in setting.split("x"))
    return SummaryConfig(breakdown_bootstrap=b, breakdown_permutations=p)


def cell(op: str, n: int, way: str, tasks: tuple[str, ...] = TASK_NAMES,
         setting: str | None = None) -> dict:
    """Run one statistic once in this process; seconds and peak RSS above the baseline."""
    metrics, signal, operating = _modules(way)
    table, y, p, patients, sites = _arrays(n)
    studies, cache = None, None
    if op in TABLE_OPS:  # built before the clock starts
        studies = table.rename(columns={"patient": "patient_hash", "study": "study_hash"})
        studies["patient_hash"] = studies["patient_hash"].astype(str)
        del table
        from echocmr.eval.summary import (  # the old modules with way=old
            ResultCache,
            breakdown,
            summarise,
        )
        if op.endswith("_cached"):  # the primary table first, as echocmr eval: not timed
            cache = ResultCache()
            summarise(studies, tasks=tasks, cache=cache)
        if op.startswith("breakdown_view"):
            studies = views_table(studies)
    import scipy.stats  # noqa: F401  (imported on first use by the intervals: not a cost of N)
    try:  # reset the peak to the current RSS (Linux >= 4.0), so the peak is the statistic's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = _rss_kb()
    t0, c0 = time.perf_counter(), time.process_time()
    if op == "threshold":
        rng = np.random.default_rng(1)
        operating.choose_threshold(y, rng.random(y.size), rule="youden")
    elif op == "bootstrap_bca":
        metrics.bootstrap_auc_ci(y, p, patients, n_resamples=2000, method="bca",
                                 expand_small=True)
    elif op == "jackknife":
        metrics.jackknife_patient_aucs(y, p, patients)
    elif op == "delong":
        metrics.clustered_delong_ci(y, p, patients)
    elif op == "permutation":
        signal.permutation_test(y, p, patients)
    elif op == "permutation_site":
        signal.permutation_test(y, p, patients, strata=sites)
    elif op == "summarise":
        summarise(studies, tasks=tasks)
    elif op in TABLE_OPS:
        breakdown(studies, op.removeprefix("breakdown_").removesuffix("_cached"), tasks=tasks,
                  cache=cache, config=_counts(setting))
    else:
        raise ValueError(op)
    out = {"wall": time.perf_counter() - t0, "s": time.process_time() - c0,
           "mb": max(0, _rss_kb() - base) / 1024, "peak_mb": _rss_kb() / 1024}
    if cache is not None:
        out["hits"] = cache.hits
    return out


def _spawn(op: str, n: int, way: str, timeout: float,
           tasks: tuple[str, ...] = TASK_NAMES, setting: str | None = None) -> dict | None:
    cmd = [sys.executable, "-m", "bench.bench_eval_scale", "--cell", op, str(n), way,
           "--tasks", *tasks, *(["--breakdown", setting] if setting else [])]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if run.returncode:
        print(run.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--old-max", type=int, default=100_000,
                    help="run the old code only up to this N (it is quadratic / B x N in memory)")
    ap.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per cell")
    ap.add_argument("--tasks", nargs="+", choices=TASK_NAMES, default=list(TASK_NAMES),
                    help="tasks of the summarise/breakdown cells (wma alone: the whole path of "
                         "one task, its value-over-WMA test excepted)")
    ap.add_argument("--breakdown", nargs="+", metavar="BxP", default=None,
                    help="breakdown counts <resamples>x<permutations>, one run of each breakdown "
                         "cell per setting (default: SummaryConfig's, 1000x1000)")
    ap.add_argument("--cell", nargs=3, metavar=("OP", "N", "WAY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cell:
        op, n, way = args.cell
        print(json.dumps(cell(op, int(n), way, tuple(args.tasks),
                              args.breakdown[0] if args.breakdown else None)))
        return
    sizes = sorted(args.sizes)
    head = f"{'statistic':<26} {'N':>9} {'old CPU s':>9} {'old MB':>8} {'new CPU s':>9} " \
           f"{'new MB':>8} {'old/new':>8} {'new wall s':>10}"
    print(head)
    print("-" * len(head))
    seen: dict[tuple[str, str, int], float] = {}  # (name, way, N) -> CPU s
    settings = args.breakdown or [None]
    runs = [(f"{op}@{st}" if st else op, op, st)
            for op in args.ops for st in (settings if op in TABLE_OPS[1:] else [None])]
    for name, op, setting in runs:
        times: dict[str, dict[int, float]] = {"old": {}, "new": {}}
        for n in sizes:
            res = {}
            for way in ("old", "new"):
                if way == "old" and n > args.old_max:
                    continue
                r = _spawn(op, n, way, args.timeout, tuple(args.tasks), setting)
                if r is not None:
                    res[way] = r
                    times[way][n] = r["s"]
                    seen[name, way, n] = r["s"]
                    if op in TABLE_OPS:
                        print(f"  ({name} {way} N={n}: whole-process peak RSS "
                              f"{r['peak_mb']:.0f} MB)", flush=True)

            def fmt(way, key, spec, res=res):
                return format(res[way][key], spec) if way in res else "-"
            ratio = (f"{res['old']['s'] / res['new']['s']:.1f}x"
                     if "old" in res and "new" in res else "-")
            print(f"{name:<26} {n:>9} {fmt('old', 's', '9.2f'):>9} {fmt('old', 'mb', '8.0f'):>8} "
                  f"{fmt('new', 's', '9.2f'):>9} {fmt('new', 'mb', '8.0f'):>8} {ratio:>8} "
                  f"{fmt('new', 'wall', '10.2f'):>10}",
                  flush=True)
        for way in ("old", "new"):
            ns = sorted(times[way])
            if len(ns) >= 2:
                (n1, n2) = ns[-2:]
                t1, t2 = times[way][n1], times[way][n2]
                print(f"{'':<26} growth exponent ({way}, {n1}->{n2}): "
                      f"{math.log(t2 / t1) / math.log(n2 / n1):.2f}", flush=True)
    for way in ("old", "new"):
        for n in sizes:
            if ("summarise", way, n) not in seen:
                continue
            primary = seen["summarise", way, n]
            for setting in settings:
                tail = f"@{setting}" if setting else ""
                parts = {op: seen[op + tail, way, n] for op in TABLE_OPS[1:]
                         if (op + tail, way, n) in seen}
                if not parts:
                    continue
                shares = ", ".join(f"{op} {t / primary:.2f}" for op, t in parts.items())
                for kind in ("", "_cached"):  # both breakdowns, uncached and cached
                    pair = [f"breakdown_{by}{kind}" for by in ("site", "view")]
                    if all(op in parts for op in pair):
                        shares += (f"; both{kind.replace('_', ' ')} "
                                   f"{sum(parts[op] for op in pair) / primary:.2f}")
                print(f"breakdowns{' at ' + setting if setting else ''} / primary table CPU "
                      f"({way}, N={n}): {shares}", flush=True)


if __name__ == "__main__":
    main()
