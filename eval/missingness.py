"""Label missingness per task and split, and how the labelled studies differ from the rest.

T1, T2 and ECV need mapping sequences that not every CMR ran, so their labels are missing for a
large share of exams (28–39 % in the study). A task's AUC is over its labelled studies only; if
those differ from the unlabelled ones (sicker, from one site), the AUC describes that subset.
``label_missingness`` counts, per task and split, studies with and without a label, and compares
the two groups on what is known for both: the WMA label (the control, known for almost every
exam) and the site mix. Age and sex are not in the shards, so they cannot be compared here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from echocmr.model.tasks import TASKS, y_col


def studies_from_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per study (split, site, ``y_<task>``) from a shard manifest (one row per clip)."""
    cols = {t: y_col(t) for t in TASKS if t in manifest.columns}
    first = manifest.groupby("study_hash", sort=True).first()
    out = first[["split", "site", *cols]].rename(columns=cols).reset_index()
    return out


def _rate(x: pd.Series) -> float | None:
    x = x.dropna()
    return float(x.mean()) if len(x) else None


def label_missingness(studies: pd.DataFrame, *, control: str = "wma") -> dict:
    """``{task: {split: {n_studies, n_labelled, n_unknown, frac_unknown, control_rate_labelled,
    control_rate_unlabelled, site_share_labelled, site_share_unlabelled}}}``."""
    out: dict = {}
    has_site = "site" in studies.columns
    for task in TASKS:
        col = y_col(task)
        if col not in studies.columns:
            continue
        per_split = {}
        for split, g in studies.groupby("split", sort=True):
            known = g[col].notna()
            entry = {
                "n_studies": int(len(g)), "n_labelled": int(known.sum()),
                "n_unknown": int((~known).sum()),
                "frac_unknown": float((~known).mean()) if len(g) else None,
            }
            if task != control and y_col(control) in g.columns:
                entry["control_rate_labelled"] = _rate(g.loc[known, y_col(control)])
                entry["control_rate_unlabelled"] = _rate(g.loc[~known, y_col(control)])
            if has_site:
                for name, sel in (("labelled", known), ("unlabelled", ~known)):
                    share = g.loc[sel, "site"].astype(str).value_counts(normalize=True)
                    entry[f"site_share_{name}"] = {k: float(v) for k, v in
                                                   share.sort_index().items()}
            per_split[str(split)] = entry
        out[task] = per_split
    return out


def missingness_rows(miss: dict, control: str = "wma") -> tuple[list[str], list[list[str]]]:
    """The report's table: one row per task and split."""
    def f(x):
        return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"

    head = ["task", "split", "studies", "labelled", "unknown", "share unknown",
            f"{control.upper()} rate, labelled", f"{control.upper()} rate, unlabelled"]
    rows = []
    for task, splits in miss.items():
        for split, e in splits.items():
            rows.append([task.upper(), split, str(e["n_studies"]), str(e["n_labelled"]),
                         str(e["n_unknown"]), f(e["frac_unknown"]),
                         f(e.get("control_rate_labelled")), f(e.get("control_rate_unlabelled"))])
    return head, rows
