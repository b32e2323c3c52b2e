"""Value over the positive control: does a task's score say more than the WMA score already does?

In the study's cohort (and the synthetic one, by design) LGE is far more common in patients with a
wall-motion abnormality. A model whose LGE head merely echoes its WMA head then has an LGE AUC well
above 0.5 and passes the signal audit, yet tells a clinician nothing WMA does not. For every task
but the control (``wma`` by default) two numbers answer that:

* **AUC within control-negative studies** (``auc_control_negative``): the task's AUC over the
  studies whose WMA label is negative, with its own permutation p (patient blocks, within site as
  in `eval.signal`). Where there is no WMA the task's score cannot be riding on it.
* **Gain over the control score** (``gain_auc``, ``p_gain``): a logistic model of the task label
  on (logit WMA score, logit task score) against one on the logit WMA score alone, both fitted on
  the split: the difference of their AUCs, and the likelihood-ratio test of the task score's
  coefficient (chi-square, 1 df; it treats studies as independent, so read it beside the
  subgroup test, which does not).

The verdict is refined from the (Holm-adjusted) audit: a task with "signal" keeps it when either
test is significant at ``alpha``, and becomes "only through WMA" when neither is (a fixed-sequence
procedure: these tests are only consulted after the audit rejected, so the family-wise level holds).
"insufficient data" and "no detectable signal" are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from echocmr.eval.metrics import _logistic_fit, counts
from echocmr.eval.signal import SIGNAL, SignalConfig, permutation_test
from echocmr.model.auc import roc_auc

ONLY_THROUGH = "only through {control}"


@dataclass(kw_only=True)
class ControlResult:
    control: str
    n_control_negative: int  # studies with both labels known and a negative control label
    auc_control_negative: float | None = None
    p_control_negative: float | None = None
    gain_auc: float | None = None  # AUC(control + task model) - AUC(control model)
    p_gain: float | None = None  # likelihood-ratio test of the task score's coefficient
    n_gain: int = 0  # studies with both labels and both scores known
    reason: str | None = None  # why a part could not be computed


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _loglik(x: np.ndarray, y: np.ndarray, beta: np.ndarray) -> float:
    eta = np.clip(x @ beta, -30, 30)
    return float((y * eta - np.logaddexp(0.0, eta)).sum())


def logistic_gain(y: np.ndarray, control_p: np.ndarray,
                  task_p: np.ndarray) -> tuple[float, float] | None:
    """(AUC gain, LR-test p) of adding logit(task_p) to a logistic model on logit(control_p)."""
    from scipy.stats import chi2

    y = np.asarray(y, dtype=np.float64)
    ones = np.ones((y.size, 1))
    x0 = np.c_[ones, _logit(control_p)]
    x1 = np.c_[x0, _logit(task_p)]
    b0 = _logistic_fit(x0, y, np.zeros(y.size))
    b1 = _logistic_fit(x1, y, np.zeros(y.size))
    if b0 is None or b1 is None:
        return None
    lr = max(2.0 * (_loglik(x1, y, b1) - _loglik(x0, y, b0)), 0.0)
    gain = roc_auc(y, x1 @ b1) - roc_auc(y, x0 @ b0)
    return float(gain), float(chi2.sf(lr, 1))


def control_result(
    y: np.ndarray, p: np.ndarray, y_control: np.ndarray, p_control: np.ndarray,
    patients: np.ndarray, *, control: str, signal: SignalConfig, min_positives: int,
    min_patients: int, sites: np.ndarray | None = None,
) -> ControlResult:
    """Both value-over-control numbers for one task (NaN labels dropped here)."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    yc, pc = np.asarray(y_control, np.float64), np.asarray(p_control, np.float64)
    patients = np.asarray(patients)
    both = ~np.isnan(y) & ~np.isnan(yc)
    neg = both & (yc == 0)
    out = ControlResult(control=control, n_control_negative=int(neg.sum()))
    reasons = []
    c = counts(y[neg], patients[neg])
    if (min(c.n_pos, c.n_neg) >= min_positives
            and min(c.n_pos_patients, c.n_neg_patients) >= min_patients):
        strata = None
        if sites is not None and signal.within_site:
            site_neg = np.asarray(sites).astype(str)[neg]
            strata = site_neg if np.unique(site_neg).size > 1 else None
        try:
            sig = permutation_test(y[neg], p[neg], patients[neg], config=signal, strata=strata)
            out.auc_control_negative = roc_auc(y[neg], p[neg])
            out.p_control_negative = sig.p_value
        except ValueError as exc:
            reasons.append(f"{control}-negative test: {exc}")
    else:
        reasons.append(f"{control}-negative studies: {c.n_pos} positive ({c.n_pos_patients} "
                       f"patients) and {c.n_neg} negative ({c.n_neg_patients} patients)")
    ok = both & ~np.isnan(pc)
    out.n_gain = int(ok.sum())
    if ok.any() and 0 < y[ok].sum() < ok.sum():
        gain = logistic_gain(y[ok], pc[ok], p[ok])
        if gain is None:
            reasons.append("logistic model did not converge")
        else:
            out.gain_auc, out.p_gain = gain
    else:
        reasons.append(f"no studies with both labels of both classes for the {control} model")
    out.reason = "; ".join(reasons) or None
    return out


def refine_verdict(verdict: str, ctrl: ControlResult, alpha: float) -> str:
    """'signal' stays only when the task adds to the control (see the module docstring)."""
    if verdict != SIGNAL:
        return verdict
    ps = [q for q in (ctrl.p_control_negative, ctrl.p_gain) if q is not None]
    if not ps:
        return verdict  # nothing to judge it by; the reason says so
    return SIGNAL if min(ps) < alpha else ONLY_THROUGH.format(control=ctrl.control.upper())
