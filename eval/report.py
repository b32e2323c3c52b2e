"""report.md and report.html: our AUCs beside the published ones, ROC curves, breakdowns.

Both files are rendered from one list of blocks (headings, paragraphs, tables, images), so they
always say the same thing. ROC curves are PNGs written next to the reports with matplotlib's Agg
backend (no display needed); the HTML embeds them as data URIs so it is one self-contained file.
``auc_table_text`` is the plain-text table the CLI prints at the end of ``eval``.
"""

from __future__ import annotations

import base64
import html
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echocmr.eval.missingness import missingness_rows
from echocmr.eval.published import PUBLISHED, PUBLISHED_SOURCE
from echocmr.eval.summary import SummaryConfig, TaskResult
from echocmr.model.tasks import TASK_TITLES, TASKS, p_col, y_col


@dataclass(kw_only=True)
class ReportInputs:
    """Everything a report shows. ``context``: label -> value lines (model, split, method...)."""

    studies: pd.DataFrame
    results: dict[str, TaskResult]
    by_view: dict[str, dict[str, TaskResult]] = field(default_factory=dict)
    by_site: dict[str, dict[str, TaskResult]] = field(default_factory=dict)
    context: dict[str, str] = field(default_factory=dict)
    config: SummaryConfig = field(default_factory=SummaryConfig)
    title: str = "echocmr evaluation"
    missingness: dict = field(default_factory=dict)  # eval.missingness.label_missingness
    internal: dict[str, TaskResult] | None = None  # with holdout_site: the other sites' results
    holdout_site: str | None = None
    internal_splits: list[str] | None = None  # the splits the internal / external studies are of
    external_splits: list[str] | None = None


def _f(x: float | None, nd: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def _ci(lo: float | None, hi: float | None) -> str:
    return "—" if lo is None or hi is None else f"{lo:.3f}–{hi:.3f}"


def _p(p: float | None) -> str:
    return "—" if p is None else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")


def _boot_ci(r: TaskResult) -> str:
    """The bootstrap CI, with † when few patients make a percentile interval under-cover."""
    text = _ci(r.ci_low, r.ci_high)
    return f"{text} †" if r.few_patients and r.ci_low is not None else text


def auc_table_text(results: dict[str, TaskResult]) -> str:
    """Fixed-width table: our AUC, both CIs, verdict, and the published AUC per task."""
    head = ("task", "studies", "pos", "pos pts", "neg pts", "AUC", "95% CI boot",
            "95% CI DeLong (clustered)", "p", "p adj", "verdict", "published AUC (95% CI)")
    rows = [head]
    for t, r in results.items():
        pub = PUBLISHED.get(t)
        rows.append((
            t.upper(), str(r.n_studies), str(r.n_pos), str(r.n_pos_patients),
            str(r.n_neg_patients), _f(r.auc), _boot_ci(r),
            _ci(r.delong_low, r.delong_high), _p(r.p_value), _p(r.p_adjusted), r.verdict,
            pub.text() if pub else "—",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def external_table_text(external: dict[str, TaskResult],
                        internal: dict[str, TaskResult]) -> str:
    """Fixed-width table: internal and external AUC with bootstrap CI and patients per task."""
    head = ("task", "internal AUC", "95% CI", "pos/neg pts", "external AUC", "95% CI",
            "pos/neg pts", "ext − int", "external verdict")
    rows = [head]
    for t, e in external.items():
        i = internal.get(t)
        diff = (f"{e.auc - i.auc:+.3f}" if i is not None and e.auc is not None
                and i.auc is not None else "—")
        rows.append((t.upper(), _f(i.auc) if i else "—", _boot_ci(i) if i else "—",
                     f"{i.n_pos_patients}/{i.n_neg_patients}" if i else "—", _f(e.auc),
                     _boot_ci(e), f"{e.n_pos_patients}/{e.n_neg_patients}", diff, e.verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_rocs(studies: pd.DataFrame, results: dict[str, TaskResult], out_dir: Path) -> dict:
    """``roc_<task>.png`` per task with an AUC, and ``roc_all.png``; returns {name: path}."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    curves = {}
    for t, r in results.items():
        if r.auc is None:
            continue
        known = studies[y_col(t)].notna()
        fpr, tpr, _ = roc_curve(studies.loc[known, y_col(t)].astype(int),
                                studies.loc[known, p_col(t)])
        curves[t] = (fpr, tpr)
        fig, ax = plt.subplots(figsize=(4.2, 4.2))
        ci = f" (95% CI {_ci(r.ci_low, r.ci_high)})" if r.ci_low is not None else ""
        ax.plot(fpr, tpr, lw=2, label=f"AUC {r.auc:.3f}{ci}")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
        if t in PUBLISHED:
            ax.plot([], [], " ", label=f"published {PUBLISHED[t].text()}")
        ax.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
               title=f"{t.upper()}: {r.n_pos} positive / {r.n_neg} negative studies")
        ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        paths[t] = out_dir / f"roc_{t}.png"
        fig.savefig(paths[t], dpi=110)
        plt.close(fig)
    if curves:
        fig, ax = plt.subplots(figsize=(5, 5))
        for t, (fpr, tpr) in curves.items():
            ax.plot(fpr, tpr, lw=1.8, label=f"{t.upper()} {results[t].auc:.3f}")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ax.set(xlabel="1 − specificity", ylabel="sensitivity", title="Study-level ROC")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        paths["all"] = out_dir / "roc_all.png"
        fig.savefig(paths["all"], dpi=110)
        plt.close(fig)
    return paths


def plot_forest(results: dict[str, TaskResult], out_dir: Path) -> Path | None:
    """``forest.png``: per task our AUC with its bootstrap CI beside the published one, the
    verdict as a label; None when no task has an AUC."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    tasks = [t for t, r in results.items() if r.auc is not None or t in PUBLISHED]
    if not any(results[t].auc is not None for t in tasks):
        return None
    height = 0.75 * len(tasks) + 1.4
    fig, ax = plt.subplots(figsize=(9.0, height))
    for i, t in enumerate(tasks):
        y = len(tasks) - 1 - i
        r = results[t]
        if r.auc is not None:
            lo = r.ci_low if r.ci_low is not None else r.auc
            hi = r.ci_high if r.ci_high is not None else r.auc
            ax.errorbar(r.auc, y + 0.13, xerr=[[r.auc - lo], [hi - r.auc]], fmt="o",
                        color="tab:blue", capsize=3, label="this evaluation" if i == 0 else None)
        pub = PUBLISHED.get(t)
        if pub is not None:
            ax.errorbar(pub.auc, y - 0.13, xerr=[[pub.auc - pub.low], [pub.high - pub.auc]],
                        fmt="s", color="grey", capsize=3, label="published" if i == 0 else None)
        ours = (f"{r.auc:.3f} ({_ci(r.ci_low, r.ci_high)})" if r.auc is not None
                else "no AUC")
        ax.text(1.03, y + 0.13, ours, va="center", fontsize=9, transform=ax.get_yaxis_transform())
        if pub is not None:
            ax.text(1.03, y - 0.13, f"published {pub.auc:.3f}", va="center", fontsize=8,
                    color="grey", transform=ax.get_yaxis_transform())
        ax.text(1.36, y, textwrap.fill(r.verdict, 28), va="center", fontsize=9,
                transform=ax.get_yaxis_transform())
    ax.axvline(0.5, ls="--", color="grey", lw=1)
    ax.set_yticks(range(len(tasks)), [t.upper() for t in reversed(tasks)], fontsize=10)
    ax.grid(axis="x", color="0.9")
    lows = [r.ci_low for r in results.values() if r.ci_low is not None]
    ax.set(xlim=(min([0.3, *lows]) - 0.02, 1.02), ylim=(-0.6, len(tasks) - 0.4),
           xlabel="study-level AUC (95% CI: patient bootstrap)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, ncol=2, frameon=False)
    fig.subplots_adjust(left=0.08, right=0.5, top=1 - 0.4 / height, bottom=0.7 / height)
    path = Path(out_dir) / "forest.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_calibration(studies: pd.DataFrame, results: dict[str, TaskResult], out_dir: Path,
                     n_bins: int = 10) -> Path | None:
    """``calibration.png``: a reliability diagram per task with a calibration summary — the
    observed positive rate against the mean predicted probability in equal-width bins (marker
    area by studies in the bin), the diagonal for perfect calibration. None when no task has one.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    tasks = [t for t, r in results.items() if r.calibration is not None]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.9 * len(tasks), 3.2), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        known = studies[y_col(t)].notna()
        y = studies.loc[known, y_col(t)].to_numpy(dtype=float)
        p = studies.loc[known, p_col(t)].to_numpy(dtype=float)
        bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
        xs, ys, ns = [], [], []
        for b in np.unique(bins):
            sel = bins == b
            xs.append(p[sel].mean())
            ys.append(y[sel].mean())
            ns.append(int(sel.sum()))
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ax.scatter(xs, ys, s=[12 + 4 * n for n in ns], alpha=0.7)
        ax.plot(xs, ys, lw=1)
        c = results[t].calibration
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="mean predicted",
               title=f"{t.upper()}: ECE {c.ece:.3f}, Brier {c.brier:.3f}")
        ax.title.set_fontsize(9)
    axes[0][0].set_ylabel("observed rate")
    fig.tight_layout()
    path = Path(out_dir) / "calibration.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _task_rows(results: dict[str, TaskResult], published: bool) -> tuple[list, list]:
    head = ["task", "studies", "patients", "positive studies", "positive patients",
            "negative patients", "AUC", "95% CI (patient bootstrap)",
            "95% CI (DeLong, clustered by patient, logit scale)", "p (permutation)", "p adjusted", "verdict"]
    sites = any(r.n_sites > 1 for r in results.values())
    if sites:
        head[7:7] = ["AUC within site", "test on"]
    if published:
        head.append("published AUC (95% CI)")
    rows = []
    for t, r in results.items():
        row = [t.upper(), str(r.n_studies), str(r.n_patients), str(r.n_pos),
               str(r.n_pos_patients), str(r.n_neg_patients), _f(r.auc),
               _boot_ci(r), _ci(r.delong_low, r.delong_high), _p(r.p_value),
               _p(r.p_adjusted), r.verdict]
        if sites:
            row[7:7] = [_f(r.auc_within_site), r.audit]
        if published:
            row.append(PUBLISHED[t].text() if t in PUBLISHED else "—")
        rows.append(row)
    return head, rows


def _few_patients_notes(results: dict[str, TaskResult], mc) -> list[tuple]:
    flagged = [t.upper() for t, r in results.items() if r.few_patients and r.ci_low is not None]
    if not flagged:
        return []
    return [("p", f"† {', '.join(flagged)}: fewer than {mc.few_patients} patients in a class, "
                  f"or fewer than {2 * mc.few_patients} at an AUC of {mc.high_auc} or more. "
                  "Bootstrap intervals under-cover there (percentile 0.86–0.90, plain BCa 0.90 "
                  "instead of 0.95 in simulation; the default expanded BCa and the logit-scale "
                  "DeLong column held 0.94 in the bench's hardest case): compare the two "
                  "columns (docs/evaluation.md).")]


def _pct_ci(x: float | None, ci) -> str:
    if x is None:
        return "—"
    lo, hi = ci
    return f"{x:.2f} ({lo:.2f}–{hi:.2f})" if lo is not None else f"{x:.2f}"


def _operating_blocks(results: dict[str, TaskResult]) -> list[tuple]:
    head = ["task", "PR-AUC", "prevalence", "rule", "threshold (from val)", "sensitivity",
            "specificity", "PPV", "NPV", "TP/FP/TN/FN"]
    rows, notes = [], []
    for t, r in results.items():
        op = r.operating
        if op is None:
            rows.append([t.upper(), _f(r.pr_auc), _f(r.prevalence), "—", "—", "—", "—", "—", "—",
                         "—"])
            if r.operating_reason:
                notes.append(f"{t.upper()}: {r.operating_reason}")
            continue
        rows.append([t.upper(), _f(r.pr_auc), _f(r.prevalence), op.rule, f"{op.threshold:.3f}",
                     _pct_ci(op.sensitivity, op.sensitivity_ci),
                     _pct_ci(op.specificity, op.specificity_ci), _pct_ci(op.ppv, op.ppv_ci),
                     _pct_ci(op.npv, op.npv_ci), f"{op.tp}/{op.fp}/{op.tn}/{op.fn}"])
    out = [("h", 2, "PR-AUC and an operating point chosen on val"),
           ("p", "PR-AUC is average precision; its chance level is the prevalence, not 0.5. The "
                 "threshold is chosen on the val split's studies (youden: max sensitivity + "
                 "specificity − 1; sensitivity: the highest threshold reaching the target) and "
                 "applied unchanged here; 95% Wilson intervals over studies."),
           ("table", head, rows)]
    if notes:
        out.append(("p", "No operating point — " + "; ".join(notes) + "."))
    return out


def _external_blocks(external: dict[str, TaskResult], internal: dict[str, TaskResult],
                     site: str | None, internal_splits: list[str] | None = None,
                     external_splits: list[str] | None = None,
                     record: str | None = None) -> list[tuple]:
    head = ["task", "internal AUC (95% CI)", "internal studies / patients",
            f"external AUC (95% CI), site {site}", "external studies / patients",
            "external − internal", "external verdict"]
    rows = []
    for t, e in external.items():
        i = internal.get(t)

        def cell(r):
            return "—" if r is None or r.auc is None else f"{r.auc:.3f} ({_ci(r.ci_low, r.ci_high)})"

        diff = (f"{e.auc - i.auc:+.3f}" if i is not None and e.auc is not None
                and i.auc is not None else "—")
        rows.append([t.upper(), cell(i), f"{i.n_studies} / {i.n_patients}" if i else "—",
                     cell(e), f"{e.n_studies} / {e.n_patients}", diff, e.verdict])

    def splits(names: list[str] | None) -> str:
        return f" ({', '.join(names)} split{'s' if len(names) > 1 else ''})" if names else ""

    return [("h", 2, f"External validation: site {site} against the other sites"),
            ("p", f"Internal: the other sites' studies{splits(internal_splits)}, sites the model "
                  f"trained on; external: site {site}'s{splits(external_splits)}. "
                  + (record or f"The claim is external only when the model never trained on "
                                f"site {site} (`echocmr train --exclude-site {site}`).")
                  + " Thresholds (and a stacker) come from the training sites' val studies "
                    "only. The tables below are the external site's; a difference within the "
                    "CIs is no evidence of a drop (docs/evaluation.md)."),
            ("table", head, rows)]


def _control_blocks(results: dict[str, TaskResult]) -> list[tuple]:
    rows = [(t, r.control) for t, r in results.items() if r.control is not None]
    if not rows:
        return []
    ctrl = rows[0][1].control.upper()
    head = ["task", "studies with both labels", f"AUC within {ctrl} label",
            f"p given {ctrl} (permutation)", f"AUC of the {ctrl} label (negative control)",
            f"AUC within {ctrl}-negative",
            f"AUC gain over {ctrl} score", "p (likelihood ratio)", "verdict"]
    body = [[t.upper(), str(c.n_given_control), _f(c.auc_given_control),
             _p(c.p_given_control) + (" ‡" if c.level == "patient" else ""),
             _f(c.auc_control_label), _f(c.auc_control_negative), _f(c.gain_auc), _p(c.p_gain), results[t].verdict]
            for t, c in rows]
    out = [("h", 2, f"Value over the positive control ({ctrl})"),
           ("p", f"A task's score can rank its label above chance only because the label goes "
                 f"with {ctrl}. The test judges the task given the {ctrl} label: labels "
                 f"permuted by patient only among studies with the same {ctrl} label (and site), "
                 f"statistic the AUC over positive-negative pairs that share a {ctrl} label. A "
                 f"'signal' it does not confirm becomes 'only through {ctrl}'; where it cannot "
                 f"run, 'signal; value over {ctrl} not testable'. Its p is computed only for "
                 "tasks the audit called signal (a fixed sequence). Negative control: the AUC of "
                 f"the {ctrl} label itself against the task's, what a head reading only {ctrl} "
                 "would score on the plain audit; far from 0.5 on a task without its own "
                 f"signal, this split holds a chance alignment. The {ctrl}-negative AUC and the "
                 f"gain of a logistic model on ({ctrl} score, task score) over the {ctrl} score "
                 "alone (studies treated as independent) are descriptions; they decide nothing."),
           ("table", head, body)]
    if any(c.level == "patient" for _, c in rows):
        out.append(("p", "‡ label blocks of patients with unequal study counts could not be "
                         "exchanged, so the test ran on patient units (docs/evaluation.md)."))
    out += [("p", f"{t.upper()}: {c.reason}.") for t, c in rows if c.reason]
    return out


def _frozen_note(results: dict[str, TaskResult]) -> list[tuple]:
    frozen = {t: r for t, r in results.items() if r.test_level == "patient"}
    if not frozen:
        return []
    return [("p", "Patient-level test: " + "; ".join(
        f"{t.upper()} ({r.n_frozen} patients' label blocks could not move between patients of "
        "the same study count and sites)" for t, r in frozen.items())
        + ". Each patient's studies of one label (and site) became one unit scored by their "
          "mean, and unit labels were permuted within site.")]


def _site_note(results: dict[str, TaskResult]) -> list[tuple]:
    multi = {t: r for t, r in results.items() if r.n_sites > 1}
    if not multi:
        return []
    within = [t.upper() for t, r in multi.items() if r.audit == "within site"]
    n = max(r.n_sites for r in multi.values())
    if not within:
        return [("p", f"{n} sites, pooled permutation test (within_site: false): a model that "
                      "only recognises the site can pass it where prevalence differs by site.")]
    pooled = "; ".join(f"{t.upper()} {_p(r.p_value_pooled)}" for t, r in multi.items()
                       if r.p_value_pooled is not None)
    return [("p", f"{n} sites: the verdicts of {', '.join(within)} rest on the **within-site** "
                  "permutation test (labels permuted only among patients of the same site, "
                  "statistic the pooled within-site AUC — same-site positive-negative pairs "
                  "only), so a model that only recognises the site is not called signal. "
                  f"p of the pooled test, for comparison: {pooled}. Per-site AUCs with their "
                  "CIs are under 'Per site'.")]


def _breakdown_counts(config: SummaryConfig) -> str:
    """The sentence that says how many resamples the breakdown rows were computed with."""
    bc, mc, sc = config.breakdown_config(), config.metrics, config.signal
    main = ("as many as the main table" if (bc.metrics.n_bootstrap, bc.signal.n_permutations)
            == (mc.n_bootstrap, sc.n_permutations) else
            f"the main table: {mc.n_bootstrap} and {sc.n_permutations}")
    return (f"Its rows are computed with {bc.metrics.n_bootstrap} bootstrap resamples and "
            f"{bc.signal.n_permutations} permutations ({main}; evaluation.summary."
            "breakdown_bootstrap and breakdown_permutations), so their interval limits and "
            "p-values carry more Monte Carlo error (docs/evaluation.md).")


def _reused_counts(results: dict[str, TaskResult], config: SummaryConfig) -> list[tuple]:
    """A note under a breakdown table whose rows have other counts than the breakdown's: a group
    with the main table's studies, shown with the main table's (more precise) results."""
    bc = config.breakdown_config()
    usual = (bc.metrics.n_bootstrap, bc.signal.n_permutations)
    other: dict[tuple[int, int], list[str]] = {}
    for t, r in results.items():
        if r.n_bootstrap is not None and (r.n_bootstrap, r.n_permutations) != usual:
            other.setdefault((r.n_bootstrap, r.n_permutations), []).append(t.upper())
    return [("p", f"{', '.join(tasks)}: the main table's studies, shown with its results "
                  f"({b} bootstrap resamples, {p} permutations).")
            for (b, p), tasks in sorted(other.items())]


def _adjustment(sc) -> str:
    if sc.correction == "holm":
        return (f"verdict 'signal' when the Holm-adjusted p < {sc.alpha}, adjusting over the tasks "
                "of the table (the chance of any false 'signal' among them stays at "
                f"{sc.alpha}).")
    return f"verdict 'signal' when p < {sc.alpha}, each task on its own (no adjustment)."


def build_blocks(inp: ReportInputs, images: dict[str, Path]) -> list[tuple]:
    """The report as blocks: ("h", level, text), ("p", text), ("table", head, rows), ("img", ...)."""
    mc, sc = inp.config.metrics, inp.config.signal
    b: list[tuple] = [("h", 1, inp.title)]
    b += [("p", "; ".join(f"{k}: {v}" for k, v in inp.context.items()))] if inp.context else []
    if "forest" in images:
        b.append(("img", images["forest"], "AUC per task with 95% CI beside the published study, "
                                           "verdict on the right"))
    if inp.internal is not None:
        b += _external_blocks(inp.results, inp.internal, inp.holdout_site, inp.internal_splits,
                              inp.external_splits, inp.context.get("training sites"))
    b.append(("h", 2, "AUC per task, beside the published study"
                      + (f" (external: site {inp.holdout_site})" if inp.holdout_site else "")))
    b.append(("table", *_task_rows(inp.results, published=True)))
    b.append(("p", f"Published column: {PUBLISHED_SOURCE}."))
    insufficient = [r for r in inp.results.values() if r.reason]
    for r in insufficient:
        b.append(("p", f"{r.task.upper()}: insufficient data — {r.reason}."))
    b += _few_patients_notes(inp.results, mc)
    b += _frozen_note(inp.results)
    b += _site_note(inp.results)
    b += _control_blocks(inp.results)
    b += _operating_blocks(inp.results)
    if "all" in images:
        b.append(("h", 2, "ROC curves of all tasks"))
        b.append(("img", images["all"], "ROC curves of all tasks"))
    b.append(("h", 2, "ROC curve per task"))
    b += [("img", images[t], f"ROC {t.upper()}") for t in TASKS if t in images]
    if inp.missingness:

        b.append(("h", 2, "Label missingness per task and split"))
        b.append(("p", "Each AUC is over the studies whose label is known. Where many are unknown, "
                       "compare the labelled studies with the rest on what is known for both (the "
                       "WMA rate here; the site mix is in metrics_detail.json). Age and sex are "
                       "not in the shards."))
        b.append(("table", *missingness_rows(inp.missingness)))
    b.append(("h", 2, "Calibration"))
    head = ["task", "Brier", "slope", "intercept", "ECE", "mean p", "observed rate"]
    rows = [[t.upper(), _f(c.brier), _f(c.slope, 2), _f(c.intercept, 2), _f(c.ece),
             _f(c.mean_predicted), _f(c.observed_rate)]
            for t, r in inp.results.items() if (c := r.calibration) is not None]
    b.append(("table", head, rows) if rows else ("p", "No task had enough labels."))
    if "calibration" in images:
        b.append(("img", images["calibration"], "Reliability: observed rate against mean "
                                                "predicted probability, per bin"))
    for name, groups in (("view", inp.by_view), ("site", inp.by_site)):
        if not groups or len(groups) < 2:  # one group is the main table again
            continue
        b.append(("h", 2, f"Per {name}"))
        b.append(("p", "Exploratory: p-values unadjusted, and no verdicts — the claims are the "
                       "main table's. A breakdown that looks significant is a question for "
                       "the next study, not an answer. " + _breakdown_counts(inp.config)))
        if name == "view":
            b.append(("p", "Each study's prediction from that view's videos alone, over the studies "
                           "that have the view."))
        for value, res in groups.items():
            b.append(("h", 3, f"{name} {value}"))
            b.append(("table", *_task_rows(res, published=False)))
            b += _reused_counts(res, inp.config)
    b.append(("h", 2, "Method"))
    interval = (f"{100 * (1 - mc.level) / 2:g}th and {100 - 100 * (1 - mc.level) / 2:g}th "
                "percentiles" if mc.ci_method == "percentile" else
                "BCa limits (bias correction from the resamples, acceleration from the "
                "leave-one-patient-out jackknife"
                + (", at the small-sample-expanded level for the fewer patients of a class)"
                   if mc.expand_small else ")"))
    b.append(("p", (
        f"Bootstrap: {mc.n_bootstrap} resamples of patients (all of a patient's studies together), "
        f"seed {mc.seed}, {interval}; resamples with one class only are left out. DeLong: "
        "variance from the structural components (placement values) summed per patient "
        "(clustered DeLong, Obuchowski 1997), normal interval for logit(AUC) mapped back; the "
        "plain DeLong interval that "
        "treats studies as independent is in metrics_detail.json (delong_indep_*). "
        f"Permutation test of AUC > 0.5: {sc.n_permutations} permutations of labels "
        f"by patient within the split, seed {sc.seed}, p = (1 + #perm AUC ≥ observed) / "
        f"(1 + permutations); {_adjustment(sc)} Tasks with fewer than "
        f"{mc.min_positives} positive or {mc.min_negatives} negative studies, or fewer than "
        f"{mc.min_positive_patients} patients with a positive or {mc.min_negative_patients} with "
        "a negative study, are 'insufficient data'. Unknown labels are left out per task, never "
        "counted as negative."
    )))
    b.append(("p", "Tasks: " + "; ".join(TASK_TITLES[t] for t in inp.results if t in TASK_TITLES)))
    return b


def render_markdown(blocks: list[tuple], out_dir: Path) -> str:
    out = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            out.append(f"{'#' * blk[1]} {blk[2]}\n")
        elif kind == "p":
            out.append(f"{blk[1]}\n")
        elif kind == "table":
            head, rows = blk[1], blk[2]
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            out += ["| " + " | ".join(row) + " |" for row in rows]
            out.append("")
        elif kind == "img":
            out.append(f"![{blk[2]}]({Path(blk[1]).relative_to(out_dir).as_posix()})\n")
    return "\n".join(out)


def render_html(blocks: list[tuple], title: str) -> str:
    e = html.escape
    body = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            body.append(f"<h{blk[1]}>{e(blk[2])}</h{blk[1]}>")
        elif kind == "p":
            body.append(f"<p>{e(blk[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in blk[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                           for row in blk[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(blk[1]).read_bytes()).decode("ascii")
            body.append(f'<img alt="{e(blk[2])}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
             "padding:.2em .5em;text-align:left}th{background:#f4f4f4}img{max-width:32em}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(out_dir: Path, inp: ReportInputs) -> dict[str, Path]:
    """Write the ROC, forest and calibration PNGs, report.md and report.html into ``out_dir``;
    returns {name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = plot_rocs(inp.studies, inp.results, out_dir)
    forest = plot_forest(inp.results, out_dir)
    if forest is not None:
        images["forest"] = forest
    reliability = plot_calibration(inp.studies, inp.results, out_dir)
    if reliability is not None:
        images["calibration"] = reliability
    blocks = build_blocks(inp, images)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(render_markdown(blocks, out_dir), encoding="utf-8")
    page.write_text(render_html(blocks, inp.title), encoding="utf-8")
    return {"report.md": md, "report.html": page,
            **{(f"{k}.png" if k in ("forest", "calibration") else f"roc_{k}.png"): v
               for k, v in images.items()}}
