"""Small synthetic study and clip tables for the eval tests (no model, no shards).

Labels are drawn per patient, so a patient's studies are correlated as in real cohorts; a task's
probabilities carry ``signal`` (a log-odds shift for positives) or none at all.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from echocmr.eval.aggregate import STUDY_COLUMNS
from echocmr.model.tasks import TASKS, p_col, y_col

SIGNALS = {"wma": 2.5, "lge": 1.0, "t1": 0.0, "t2": 0.0, "ecv": 0.0}
UNKNOWN = {"wma": 0.0, "lge": 0.05, "t1": 0.35, "t2": 0.35, "ecv": 0.35}


def study_table(
    n_patients: int = 120,
    *,
    seed: int = 0,
    signals: dict[str, float] | None = None,
    unknown: dict[str, float] | None = None,
    prevalence: float = 0.3,
    max_studies: int = 3,
    split: str = "test",
) -> pd.DataFrame:
    """One row per study with ``STUDY_COLUMNS``; 1..max_studies studies per patient."""
    rng = np.random.default_rng(seed)
    signals = SIGNALS if signals is None else signals
    unknown = UNKNOWN if unknown is None else unknown
    rows = []
    n_studies = rng.integers(1, max_studies + 1, size=n_patients)
    site = rng.choice(["site_a", "site_b"], size=n_patients)
    for i in range(n_patients):
        patient_y = {t: float(rng.random() < prevalence) for t in TASKS}
        for j in range(n_studies[i]):
            row = {
                "study_hash": f"s{i:04d}{j}",
                "patient_hash": f"p{i:04d}",
                "site": site[i],
                "split": split,
            }
            for t in TASKS:
                y = patient_y[t]
                logit = signals.get(t, 0.0) * (y - 0.5) * 2 + rng.normal(0, 1.0) - 0.8
                row[y_col(t)] = np.nan if rng.random() < unknown.get(t, 0.0) else y
                row[p_col(t)] = 1.0 / (1.0 + np.exp(-logit))
            rows.append(row)
    return pd.DataFrame(rows)[STUDY_COLUMNS]


def clip_table(n_patients: int = 40, *, seed: int = 0, split: str = "test",
               views: tuple[str, ...] = ("A4C", "A2C", "PLAX")) -> pd.DataFrame:
    """One row per clip: studies have 1-3 videos in random views, videos have 1-4 clips.

    Only A4C videos carry the WMA signal, so a per-view stacker has something to learn.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_patients):
        ys = {t: float(rng.random() < 0.35) for t in TASKS}
        for v in range(rng.integers(1, 4)):
            view = views[rng.integers(len(views))]
            for c in range(rng.integers(1, 5)):
                row = {
                    "key": f"site_a-{s:04d}{v:02d}", "study_hash": f"st{s:04d}",
                    "patient_hash": f"pt{s:04d}", "site": "site_a", "split": split, "view": view,
                    "clip_index": c, "start_frame": 16 * c,
                }
                for t in TASKS:
                    shift = 3.0 * (ys[t] - 0.5) if (t == "wma" and view == "A4C") else 0.0
                    row[y_col(t)] = ys[t]
                    row[p_col(t)] = 1.0 / (1.0 + np.exp(-(shift + rng.normal(0, 1.0))))
                rows.append(row)
    return pd.DataFrame(rows)
