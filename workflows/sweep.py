"""A seed sweep: each task's AUC spread over training seeds, beside its sampling CI.

Train k times with ``echocmr train --seed s`` (everything else the same), evaluate each model on
the same split, then ``echocmr sweep DIR...`` over the k eval output directories. The bootstrap CI
of one evaluation is the *sampling* uncertainty (another test set of this size); the spread over
seeds is the *training* variance (another training run of this recipe) — a single run's AUC
carries both, and the CI shows only the first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from echocmr.eval.job import EvalConfig, run_eval
from echocmr.eval.signal import INSUFFICIENT
from echocmr.model.tracking import resolve_tracking_uri
from echocmr.workflows.runs import train_or_reuse


def seed_spread(evaluations: dict[str, dict]) -> dict[str, dict]:
    """``{task: {n_runs, mean, sd, min, max, mean_ci_width, aucs}}`` from ``{label: metrics.json}``.

    ``sd`` is the sample SD (ddof 1) of the runs' AUCs, null with one run; ``mean_ci_width`` the
    mean width of their bootstrap CIs. A run whose verdict for the task is "insufficient data"
    (too few patients or positives: an AUC may be defined, but is not an answer) is left out
    and counted in ``n_insufficient``.
    """
    tasks: list[str] = []
    for m in evaluations.values():
        tasks += [t for t in m if t not in tasks]
    out = {}
    for t in tasks:
        short = [k for k, m in evaluations.items()
                 if t in m and m[t].get("verdict") == INSUFFICIENT]
        aucs = {k: m[t]["auc"] for k, m in evaluations.items()
                if t in m and m[t].get("auc") is not None and k not in short}
        widths = [m[t]["ci_high"] - m[t]["ci_low"] for k, m in evaluations.items()
                  if k not in short and t in m and m[t].get("ci_low") is not None and m[t].get("ci_high") is not None]
        v = np.array(list(aucs.values()), dtype=float)
        out[t] = {
            "n_runs": int(v.size),
            "n_insufficient": len(short),
            "mean": float(v.mean()) if v.size else None,
            "sd": float(v.std(ddof=1)) if v.size > 1 else None,
            "min": float(v.min()) if v.size else None,
            "max": float(v.max()) if v.size else None,
            "mean_ci_width": float(np.mean(widths)) if widths else None,
            "aucs": aucs,
        }
    return out


def read_evaluations(dirs: list[str]) -> dict[str, dict]:
    """``{directory: its metrics.json}``."""
    return {str(d): json.loads((Path(d) / "metrics.json").read_text()) for d in dirs}


def spread_table(spread: dict[str, dict]) -> str:
    def f(x):
        return "—" if x is None else f"{x:.3f}"

    def runs(s):
        short = s.get("n_insufficient", 0)
        return f"{s['n_runs']} (+{short} insufficient data)" if short else str(s["n_runs"])

    head = ("task", "runs", "mean AUC", "SD over seeds", "range", "mean 95% CI width (sampling)")
    rows = [head] + [(t.upper(), runs(s), f(s["mean"]), f(s["sd"]),
                      f"{f(s['min'])}–{f(s['max'])}" if s["n_runs"] else "—",
                      f(s["mean_ci_width"]))
                     for t, s in spread.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_seed_sweep(shards: str, train_config, seeds: list[int], out: str | Path, *,
                   eval_config=None, tracking_uri: str | None = None,
                   address: str | None = None, prefix: str = "sweep") -> dict:
    """Train ``train_config`` once per seed of ``seeds`` (``data.seed``; a finished run of the
    same recipe and seed is reused, `workflows.runs.train_or_reuse`), evaluate each model on the same
    split (and ``evaluation.holdout_site``, if set) into ``OUT/seed-<s>/``, and write the spread
    (`seed_spread`) to ``OUT/sweep.json`` and ``OUT/sweep.md``. Returns the JSON written."""
    from dataclasses import replace


    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if len(seeds) < 2:
        raise ValueError(f"--seeds {' '.join(map(str, seeds))}: a spread needs two seeds or more")
    tracking_uri = resolve_tracking_uri(tracking_uri)
    eval_config = eval_config or EvalConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, dirs = [], []
    for seed in seeds:
        config = replace(train_config, data=replace(train_config.data, seed=seed))
        model = train_or_reuse(config, shards, prefix=f"{prefix}-seed{seed}",
                               tracking_uri=tracking_uri, address=address)
        d = out / f"seed-{seed}"
        outcome = run_eval(shards, model.model_uri, d, config=eval_config,
                           tracking_uri=tracking_uri, address=address)
        dirs.append(str(d))
        runs.append({"seed": seed, "run_id": model.run_id, "run_name": model.run_name,
                     "model_uri": model.model_uri, "reused": model.reused, "eval_dir": str(d),
                     "eval_run_id": outcome.run_id})
    spread = seed_spread(read_evaluations(dirs))
    holdout = eval_config.evaluation.holdout_site
    judged = f"site {holdout} (external)" if holdout else f"{eval_config.split} split"
    doc = {"seeds": seeds, "judged": judged, "runs": runs, "spread": spread}
    (out / "sweep.json").write_text(json.dumps(doc, indent=2))
    (out / "sweep.md").write_text(
        f"# Seed sweep: {len(seeds)} training seeds ({', '.join(map(str, seeds))}), {judged}\n\n"
        "SD over seeds: training variance (another run of this recipe). Mean CI width: sampling "
        "uncertainty of one evaluation (another test set of this size).\n\n```\n"
        f"{spread_table(spread)}\n```\n")
    return doc
