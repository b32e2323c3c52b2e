"""Validation metrics in training: per-task ROC AUC over clips, and the mean that picks the best.

A task's AUC is reported only when the val split has at least ``min_positives`` positives and as
many negatives among its known labels; otherwise it is ``None`` (an AUC over two positives says
nothing). The mean over reported tasks chooses the best checkpoint; if no task qualifies the
checkpoint score falls back to the negative val loss (the same rule every epoch of a run, since the
val split does not change). Clip-level only: study-level aggregation and confidence intervals are
``eval``'s job.

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


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties half."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based, ties share their mean rank
    rank_sum = average_rank[inverse][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mean_auc(aucs: dict[str, float | None]) -> float | None:
    """Mean over the tasks that have an AUC, ``None`` if none has."""
    values = [v for v in aucs.values() if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None


def checkpoint_score(aucs: dict[str, float | None], val_loss: float) -> float:
    """Higher is better: the mean AUC, or ``-val_loss`` when no task has an AUC."""
    m = mean_auc(aucs)
    return m if m is not None else -float(val_loss)
