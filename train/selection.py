"""The pre-specified selection score that picks the best checkpoint (``TrainConfig.selection``).

Built on the per-task validation AUCs of `model.auc`; higher is better. If none of the selected
tasks has an AUC (too few positives in val), the score falls back to the negative val loss: the
same rule every epoch of a run, since the val split does not change.
"""

from __future__ import annotations

import math

import numpy as np


def checkpoint_score(aucs: dict[str, float | None], val_loss: float, *,
                     metric: str = "auc", tasks: tuple[str, ...] | None = None,
                     weights: dict[str, float] | None = None) -> float:
    """Higher is better (``TrainConfig.selection``).

    ``metric="auc"``: the (``weights``-weighted) mean AUC over ``tasks`` (None: every task) that
    have one, or ``-val_loss`` when none has; ``metric="loss"``: ``-val_loss``.
    """
    if metric == "loss":
        return -float(val_loss)
    if metric != "auc":
        raise ValueError(f"selection metric {metric!r}: auc or loss")
    chosen = aucs if tasks is None else {t: aucs.get(t) for t in tasks}
    have = {t: v for t, v in chosen.items() if v is not None and not math.isnan(v)}
    if weights is not None:
        have = {t: v for t, v in have.items() if weights.get(t, 0.0) > 0}
    if not have:
        return -float(val_loss)
    w = np.array([1.0 if weights is None else weights[t] for t in have])
    return float(np.dot(w, list(have.values())) / w.sum())


def scored_on(description: str, aucs: dict[str, float | None], *, metric: str = "auc",
              tasks: tuple[str, ...] | None = None,
              weights: dict[str, float] | None = None) -> str:
    """What a checkpoint's score is, in words: ``description`` (the rule,
    ``SelectionConfig.describe``), or, when the rule is AUC and none of its tasks had a val AUC
    (too few val positives: `checkpoint_score` fell back to -val loss), ``val loss (no val AUC
    (wma))``, so a listed score is never a negative loss under an AUC's name."""
    if metric != "auc":
        return description
    chosen = aucs if tasks is None else {t: aucs.get(t) for t in tasks}
    have = [t for t, v in chosen.items() if v is not None and not math.isnan(v)
            and (weights is None or weights.get(t, 0.0) > 0)]
    return description if have else f"val loss (no {description})"
