# Verbatim copy of eval/operating.py at main 464e404 (before issue 26's O(N log N) rewrite): the
# reference the rewritten statistics are tested against (tests/test_eval_scale.py). Do not edit.
"""An operating point: a threshold chosen on val, applied unchanged to the split evaluated.

An AUC says how well a score ranks; a clinic uses a threshold. Choosing the threshold on the split
that is then reported flatters it, so the threshold is chosen on the **val** studies and the test
split's sensitivity, specificity, PPV and NPV are read at that threshold:

* ``youden``: the threshold maximising sensitivity + specificity − 1 on val;
* ``sensitivity``: the highest threshold whose val sensitivity is at least ``target_sensitivity``
  (a screening rule: miss at most 1 − target of the positives).

A study is called positive when its probability is >= the threshold. Each proportion has a 95 %
Wilson interval over studies (it treats studies as independent; with several studies per patient
read it as a little narrow). PPV and NPV depend on the split's prevalence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Literal, get_args

import numpy as np

from echocmr.model.auc import check_binary

ThresholdRule = Literal["youden", "sensitivity", "none"]
THRESHOLD_RULES = get_args(ThresholdRule)


def choose_threshold(y_true: np.ndarray, probs: np.ndarray, *, rule: str = "youden",
                     target_sensitivity: float = 0.9) -> float:
    """The threshold (a probability; positive means >=) that ``rule`` picks on these studies."""
    y, p = check_binary(y_true, probs)
    if not y.any() or y.all():
        raise ValueError("choosing a threshold needs positives and negatives")
    cuts = np.unique(p)[::-1]  # candidate thresholds, high to low
    pos_ge = np.array([(p[y] >= c).sum() for c in cuts]) / y.sum()
    neg_lt = np.array([(p[~y] < c).sum() for c in cuts]) / (~y).sum()
    if rule == "youden":
        return float(cuts[int(np.argmax(pos_ge + neg_lt - 1.0))])  # ties: the highest threshold
    if rule == "sensitivity":
        if not 0.0 < target_sensitivity <= 1.0:
            raise ValueError(f"target_sensitivity={target_sensitivity}: a fraction in (0, 1]")
        return float(cuts[int(np.flatnonzero(pos_ge >= target_sensitivity - 1e-12)[0])])
    raise ValueError(f"threshold rule {rule!r}: choose one of {THRESHOLD_RULES}")


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    if n == 0:
        return None, None
    z = NormalDist().inv_cdf(0.5 + level / 2)
    phat = k / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


@dataclass(kw_only=True)
class OperatingPoint:
    rule: str
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    sensitivity_ci: tuple[float | None, float | None]
    specificity_ci: tuple[float | None, float | None]
    ppv_ci: tuple[float | None, float | None]
    npv_ci: tuple[float | None, float | None]
    val_sensitivity: float
    val_specificity: float

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("sensitivity_ci", "specificity_ci", "ppv_ci", "npv_ci"):
            d[k] = list(d[k])
        return d


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def operating_point(y_val: np.ndarray, p_val: np.ndarray, y: np.ndarray, p: np.ndarray, *,
                    rule: str = "youden", target_sensitivity: float = 0.9) -> OperatingPoint:
    """Threshold from (``y_val``, ``p_val``) by ``rule``, applied to (``y``, ``p``)."""
    t = choose_threshold(y_val, p_val, rule=rule, target_sensitivity=target_sensitivity)
    yv, pv = check_binary(y_val, p_val)
    yy, pp = check_binary(y, p)
    call = pp >= t
    tp, fp = int((call & yy).sum()), int((call & ~yy).sum())
    tn, fn = int((~call & ~yy).sum()), int((~call & yy).sum())
    return OperatingPoint(
        rule=rule, threshold=t, tp=tp, fp=fp, tn=tn, fn=fn,
        sensitivity=_rate(tp, tp + fn), specificity=_rate(tn, tn + fp),
        ppv=_rate(tp, tp + fp), npv=_rate(tn, tn + fn),
        sensitivity_ci=wilson(tp, tp + fn), specificity_ci=wilson(tn, tn + fp),
        ppv_ci=wilson(tp, tp + fp), npv_ci=wilson(tn, tn + fn),
        val_sensitivity=float((pv[yv] >= t).mean()), val_specificity=float((pv[~yv] < t).mean()),
    )
