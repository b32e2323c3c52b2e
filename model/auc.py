"""ROC AUC, the project's one implementation: per task over clips, with midranks for ties.

A task's AUC is reported only when there are at least ``min_positives`` positives and as many
negatives among its known labels; otherwise it is ``None`` (an AUC over two positives says
nothing). Training validates with `task_aucs` and `mean_auc` (`train.selection` picks the best
checkpoint from them); ``eval.metrics`` builds its intervals on `roc_auc`, `midranks` and
`check_binary`. It lives in the model package because both import it and neither imports the other.

The AUC is computed here (Mann-Whitney U with tied scores sharing their average rank) rather than
with scikit-learn, whose import costs every Ray worker seconds at each (re)start; the tests check
it against ``sklearn.metrics.roc_auc_score``.
"""

from __future__ import annotations

import math

import numpy as np

from echocmr.shards.format import TASKS


def task_aucs(labels_NK: np.ndarray, probs_NK: np.ndarray,
              min_positives: int = 5) -> dict[str, float | None]:
    """ROC AUC per task over the clips whose label is known (``None`` when too few of a class)."""
    labels_NK = np.asarray(labels_NK, dtype=np.float64)
    probs_NK = np.asarray(probs_NK, dtype=np.float64)
    if labels_NK.shape != probs_NK.shape or labels_NK.ndim != 2 or labels_NK.shape[1] != len(TASKS):
        raise ValueError(f"labels and probabilities must both be [N, {len(TASKS)}], got "
                         f"{labels_NK.shape} and {probs_NK.shape}")
    out: dict[str, float | None] = {}
    for k, task in enumerate(TASKS):
        known = ~np.isnan(labels_NK[:, k])
        y = labels_NK[known, k] > 0.5
        positives, negatives = int(y.sum()), int((~y).sum())
        if positives < max(min_positives, 1) or negatives < max(min_positives, 1):
            out[task] = None
        else:
            out[task] = roc_auc(y, probs_NK[known, k])
    return out


def midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` with tied values given the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]  # exclusive
    ranks_sorted = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    out = np.empty(x.size)
    out[order] = ranks_sorted
    return out


def grouped_midranks(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Midranks of ``x`` within each group (integer codes ``groups``): what `midranks` gives on
    ``x[groups == g]`` for every g at once, from one sort, O(N log N) however many groups.

    Ranks are half-integers, so they equal the per-group `midranks` bit for bit.
    """
    x = np.asarray(x, dtype=np.float64)
    groups = np.asarray(groups)
    if x.shape != groups.shape or x.ndim != 1:
        raise ValueError(f"values {x.shape} and groups {groups.shape} must be equal 1-d shapes")
    if not x.size:
        return np.empty(0)
    order = np.lexsort((x, groups))  # by group, then value
    xs, gs = x[order], groups[order]
    new_group = np.r_[True, gs[1:] != gs[:-1]]
    starts = np.flatnonzero(new_group | np.r_[True, xs[1:] != xs[:-1]])  # tie runs
    ends = np.r_[starts[1:], xs.size]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(xs.size), 0))[starts]
    out = np.empty(x.size)
    out[order] = np.repeat((starts + ends + 1) / 2.0 - group_start, ends - starts)
    return out


def check_binary(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as a bool array and scores as float64, refusing NaN or non-0/1 labels and
    non-finite scores (an unknown label must be dropped, never read as negative)."""
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if y.shape != scores.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {scores.shape} must be equal 1-d shapes")
    if np.isnan(y).any():
        raise ValueError("labels contain NaN: drop unknown labels before computing metrics")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return y.astype(bool), scores


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties half.

    ``y_true`` is 0/1 or bool; raises when one class is missing (there is no AUC to report).
    """
    y, s = check_binary(y_true, scores)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    ranks = midranks(s)  # 1-based, ties share their mean rank
    return float((ranks[y].sum() - m * (m + 1) / 2.0) / (m * n))


def mean_auc(aucs: dict[str, float | None]) -> float | None:
    """Mean over the tasks that have an AUC, ``None`` if none has."""
    values = [v for v in aucs.values() if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None
