"""Value over the positive control: does a task's score say more than the WMA *label* already does?

In the study's cohort (and the synthetic one, by design) LGE is far more common in patients with a
wall-motion abnormality. A model whose LGE head merely re-reads the WMA evidence then has an LGE
AUC well above 0.5 and passes the signal audit, yet tells a clinician nothing WMA does not.

**The test** (``p_given_control``) judges the task conditionally on the control label: the
permutation test of `eval.signal`, stratified by WMA label (and by site when the audit is within
site), with patient blocks (and its patient-level fallback when blocks freeze), on the **pooled
within-stratum AUC** (``auc_given_control``): the share of positive-negative pairs *with the same
WMA label (and site)* that the score orders correctly. A head that only knows WMA — a noisy copy of
the WMA score, an independent re-read of the WMA evidence, a monotone transform of it — scores 0.5
on it in expectation, however well the WMA score itself predicts the task. Testing against the WMA
*score* instead (a likelihood-ratio test of logit(task) over logit(WMA score), the old rule) lets a
head that re-reads the WMA evidence with its own noise through 42–79 % of the time, because the
WMA score is a noisy measure of the WMA label it is being compared with.

**Negative control** (``auc_control_label``): the AUC of the WMA label itself against the task
label in the evaluated split — what a head that reads WMA perfectly and nothing else would score
on the plain audit. A null task with this far from 0.5 holds a chance alignment with WMA in this
split (the synthetic demo's external site once had ECV 0.679), which the test given WMA discounts
and the plain AUC does not.

Two descriptions stay beside it and decide nothing: the AUC among WMA-negative studies
(``auc_control_negative``) and the logistic gain over the WMA score (``gain_auc``, ``p_gain``:
likelihood-ratio test, studies treated as independent).

The verdict is refined from the (Holm-adjusted) audit, a fixed sequence, so the family-wise level
holds: "signal" stays when the conditional test rejects at ``alpha``, becomes "only through WMA"
when it does not, and becomes "signal; value over WMA not testable" when the test cannot be run
(too few studies of both classes sharing a WMA label, or a degenerate permutation null) — never a
bare "signal". "insufficient data" and "no detectable signal" are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from echocmr.eval.metrics import _logistic_fit, counts
from echocmr.eval.signal import SIGNAL, SignalConfig, permutation_test, within_site_auc
from echocmr.model.auc import roc_auc

ONLY_THROUGH = "only through {control}"
UNTESTED = "signal; value over {control} not testable"


@dataclass(kw_only=True)
class ControlResult:
    control: str
    n_control_negative: int  # studies with both labels known and a negative control label
    auc_control_negative: float | None = None  # description only
    # Negative control: the control *label* itself as the score (what a head that knows WMA
    # perfectly and nothing else would reach); far from 0.5, the split holds a chance alignment.
    auc_control_label: float | None = None
    auc_given_control: float | None = None  # pooled AUC within control label (x site) strata
    p_given_control: float | None = None  # its permutation p: the value-over-control test
    n_given_control: int = 0  # studies with both labels known
    n_frozen: int = 0  # patients the block permutation froze (then the patient-level test ran)
    level: str | None = None  # "study" (patient blocks) or "patient" (fallback)
    gain_auc: float | None = None  # AUC(control + task model) - AUC(control model); description
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
    min_patients: int, sites: np.ndarray | None = None, test: bool = True,
) -> ControlResult:
    """The value-over-control test and its descriptions for one task (NaN labels dropped).

    ``test=False``: the descriptions only (``auc_given_control`` included, no p): the test is
    consulted only after the audit rejected, so a p for a task it did not reject would be a claim
    outside the family."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    yc, pc = np.asarray(y_control, np.float64), np.asarray(p_control, np.float64)
    patients = np.asarray(patients)
    both = ~np.isnan(y) & ~np.isnan(yc)
    neg = both & (yc == 0)
    out = ControlResult(control=control, n_control_negative=int(neg.sum()),
                        n_given_control=int(both.sum()))
    reasons = []
    if 0 < y[neg].sum() < neg.sum():
        out.auc_control_negative = roc_auc(y[neg], p[neg])
    if 0 < y[both].sum() < both.sum():
        out.auc_control_label = roc_auc(y[both], yc[both])
    strata = yc[both].astype(int).astype(str)
    if sites is not None and signal.within_site:
        site = np.asarray(sites).astype(str)[both]
        if np.unique(site).size > 1:
            strata = np.char.add(np.char.add(site, "\x1f"), strata)
    yb, pb, pat = y[both], p[both], patients[both]
    # studies in strata that hold both classes (one pass over the studies, however many strata)
    _, level_of = np.unique(strata, return_inverse=True)
    pos_in = np.bincount(level_of, weights=yb)
    informative = ((pos_in > 0) & (pos_in < np.bincount(level_of)))[level_of]
    c = counts(yb[informative], pat[informative])
    if (min(c.n_pos, c.n_neg) >= min_positives
            and min(c.n_pos_patients, c.n_neg_patients) >= min_patients):
        out.auc_given_control = within_site_auc(yb, pb, strata)
        if test:
            sig = permutation_test(yb[informative], pb[informative], pat[informative],
                                   config=signal, strata=strata[informative])
            out.n_frozen, out.level = sig.n_frozen, sig.level
            if sig.degenerate:
                reasons.append(f"test given {control}: every permutation gives the same "
                               "statistic")
            else:
                out.p_given_control = sig.p_value
    else:
        reasons.append(f"test given {control}: studies sharing a {control} label with both "
                       f"classes: {c.n_pos} positive ({c.n_pos_patients} patients) and {c.n_neg} "
                       f"negative ({c.n_neg_patients} patients); need >= {min_positives} "
                       f"studies and >= {min_patients} patients of each")
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
    """'signal' stays only when the task adds to the control label (see the module docstring)."""
    if verdict != SIGNAL:
        return verdict
    name = ctrl.control.upper()
    if ctrl.p_given_control is None:
        return UNTESTED.format(control=name)
    return SIGNAL if ctrl.p_given_control < alpha else ONLY_THROUGH.format(control=name)
