"""Leave-one-site-out: per site, a model trained without it, evaluated on it as external.

For each site (default: every site in the shard set's manifest) `run_loso`

1. takes the training config with ``data.exclude_sites = [site]`` and finds a finished MLflow run
   of it, or trains it (`workflows.runs.train_or_reuse`: same data digest, same left-out site, same
   recipe — a re-run reuses, a crashed one resumes);
2. evaluates that model with ``evaluation.holdout_site = site`` (`eval.job.run_eval`, into
   ``OUT/<site>/``): the site's studies are external, the other sites' studies of the split
   internal;
3. collects both columns into one table, ``OUT/loso.md`` and ``OUT/loso.json``.

**One verdict per task** (`combined_external`): every left-out site's studies, each scored by its
own left-out model, judged together by `eval.summary.summarise` with the audit within site — the
site-stratified permutation test (labels move only between patients of the same site, so each
site's model is compared only with itself) on the **pooled within-site AUC** (same-site pairs
only, so the models' different score scales never meet), Holm over the tasks, and value over WMA
given the WMA label and site. Its interval is the clustered DeLong one of that statistic
(`eval.metrics.within_site_delong_ci`: sites independent, logit scale). The per-site rows show
each site's AUC and unadjusted p, exploratory: k sites each with its own verdict would be k
families, and a small site's verdict one draw.

The mean line per task is the **unweighted mean of the per-site external AUCs** over the sites
where that task had enough data, with their SD and range over sites: a description of how the
recipe transfers to "another site", *not* an AUC over pooled patients, with no CI.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from echocmr.eval.job import EvalConfig, run_eval
from echocmr.eval.metrics import within_site_delong_ci
from echocmr.eval.signal import INSUFFICIENT
from echocmr.eval.summary import SummaryConfig, TaskResult, summarise
from echocmr.model.tasks import p_col, y_col
from echocmr.model.tracking import resolve_tracking_uri
from echocmr.shards.reader import read_manifest
from echocmr.train.config import TrainConfig
from echocmr.workflows.runs import train_or_reuse

log = logging.getLogger(__name__)

INSUFFICIENT_TEXT = "insufficient data"


@dataclass
class SiteResult:
    site: str
    run_id: str
    run_name: str
    model_uri: str
    reused: bool
    eval_dir: str
    external_splits: list[str]
    internal: dict[str, dict]  # task -> cell (see _cell)
    external: dict[str, dict]
    eval_run_id: str | None = None


@dataclass
class LosoResult:
    sites: list[SiteResult] = field(default_factory=list)
    pooled: dict[str, dict] = field(default_factory=dict)
    combined: dict[str, dict] = field(default_factory=dict)  # the one test (combined_external)

    def to_dict(self) -> dict:
        return {"sites": [s.__dict__ for s in self.sites], "pooled": self.pooled,
                "pooled_is": POOLED_IS, "combined": self.combined, "combined_is": COMBINED_IS}


POOLED_IS = ("unweighted mean, SD (ddof 1) and range of the per-site external AUCs over the "
             "sites where the task had enough data; not an AUC over pooled patients, no CI")


COMBINED_IS = ("every left-out site's studies scored by its own left-out model; pooled "
               "within-site AUC (same-site pairs) with a clustered-DeLong 95% CI (logit scale); "
               "site-stratified permutation p by patient, Holm over the tasks; value over WMA "
               "given the WMA label and site")


def manifest_sites(shards: str) -> list[str]:
    """The sites of the shard set's manifest, sorted."""

    return sorted(set(read_manifest(shards)["site"].astype(str)))


def _cell(r: TaskResult | None) -> dict:
    """What the table shows of one task's result; ``auc`` None when there was too little data."""
    if r is None:
        return {"auc": None, "ci_low": None, "ci_high": None, "n_patients": 0, "n_studies": 0,
                "n_pos_patients": 0, "n_neg_patients": 0, "verdict": INSUFFICIENT_TEXT}
    enough = r.verdict != INSUFFICIENT
    return {"auc": r.auc if enough else None,
            "ci_low": r.ci_low if enough else None, "ci_high": r.ci_high if enough else None,
            "n_patients": r.n_patients, "n_studies": r.n_studies,
            "n_pos_patients": r.n_pos_patients, "n_neg_patients": r.n_neg_patients,
            "p_value": r.p_value if enough else None,  # unadjusted: one site, exploratory
            "verdict": r.verdict, "reason": r.reason}


def run_loso(shards: str, train_config: TrainConfig, out: str | Path, *,
             eval_config: EvalConfig | None = None, sites: list[str] | None = None,
             tracking_uri: str | None = None, address: str | None = None,
             prefix: str = "loso") -> LosoResult:
    """Every site of ``sites`` (default all) left out in turn (module docstring)."""

    tracking_uri = resolve_tracking_uri(tracking_uri)
    eval_config = eval_config or EvalConfig()
    known = manifest_sites(shards)
    sites = list(dict.fromkeys(sites or known))
    unknown = [s for s in sites if s not in known]
    if unknown:
        raise ValueError(f"--sites {', '.join(unknown)}: no such site in {shards}; its sites "
                         f"are {', '.join(known)}")
    if len(known) < 2:
        raise ValueError(f"{shards} has one site ({', '.join(known)}): leaving it out leaves "
                         "nothing to train on")
    if train_config.data.exclude_sites:
        raise ValueError("leave-one-site-out sets data.exclude_sites itself, one site at a "
                         f"time; the config already excludes {list(train_config.data.exclude_sites)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = LosoResult()
    external_tables = []
    for site in sites:
        config = replace(train_config, data=replace(train_config.data, exclude_sites=(site,)))
        model = train_or_reuse(config, shards, prefix=f"{prefix}-{site}",
                               tracking_uri=tracking_uri, address=address)
        ecfg = replace(eval_config,
                       evaluation=replace(eval_config.evaluation, holdout_site=site))
        site_dir = out / site
        outcome = run_eval(shards, model.model_uri, site_dir, config=ecfg,
                           tracking_uri=tracking_uri, address=address)
        ev = outcome.evaluation
        internal = ev.internal or {}
        external_tables.append(ev.studies[ev.studies["site"].astype(str) == site])
        result.sites.append(SiteResult(
            site=site, run_id=model.run_id, run_name=model.run_name, model_uri=model.model_uri,
            reused=model.reused, eval_dir=str(site_dir),
            external_splits=list(ev.external_splits or []),
            internal={t: _cell(internal.get(t)) for t in ev.results},
            external={t: _cell(r) for t, r in ev.results.items()},
            eval_run_id=outcome.run_id))
        log.info("site %s: model %s (%s), eval in %s", site, model.model_uri,
                 "reused" if model.reused else "trained", site_dir)
    result.pooled = pooled_external(result.sites)
    result.combined = combined_external(external_tables, eval_config.evaluation.summary)
    (out / "loso.json").write_text(json.dumps(result.to_dict(), indent=2))
    (out / "loso.md").write_text(loso_markdown(result, split=eval_config.split))
    return result


def combined_external(tables: list[pd.DataFrame], summary: SummaryConfig) -> dict[str, dict]:
    """The one test per task over every left-out site (module docstring; `COMBINED_IS`).

    ``tables``: per left-out site, its studies (``STUDY_COLUMNS``) scored by the model that never
    saw it.
    """
    table = pd.concat(tables, ignore_index=True)
    config = replace(summary, signal=replace(summary.signal, within_site=True))
    out = {}
    for t, r in summarise(table, config=config).items():
        enough = r.verdict != INSUFFICIENT
        ci = None
        if enough:
            known = table[y_col(t)].notna()
            ci = within_site_delong_ci(
                table.loc[known, y_col(t)].to_numpy(float),
                table.loc[known, p_col(t)].to_numpy(float),
                table.loc[known, "patient_hash"].to_numpy(), table.loc[known, "site"].to_numpy(),
                level=summary.metrics.level)
        auc = r.auc_within_site if r.n_sites > 1 else r.auc
        out[t] = {"auc_within_site": auc if enough else None,
                  "ci_low": ci.low if ci else None, "ci_high": ci.high if ci else None,
                  "p_value": r.p_value, "p_adjusted": r.p_adjusted, "verdict": r.verdict,
                  "n_sites": r.n_sites, "n_patients": r.n_patients, "n_studies": r.n_studies,
                  "n_pos_patients": r.n_pos_patients, "n_neg_patients": r.n_neg_patients,
                  "test_level": r.test_level, "reason": r.reason,
                  "p_given_control": r.control.p_given_control if r.control else None}
    return out


def pooled_external(sites: list[SiteResult]) -> dict[str, dict]:
    """Per task: the external AUCs' unweighted mean, SD and range over sites (`POOLED_IS`)."""
    tasks: list[str] = []
    for s in sites:
        tasks += [t for t in s.external if t not in tasks]
    out = {}
    for t in tasks:
        aucs = {s.site: s.external[t]["auc"] for s in sites
                if t in s.external and s.external[t]["auc"] is not None}
        v = np.array(list(aucs.values()), dtype=float)
        out[t] = {"n_sites": int(v.size), "n_sites_total": len(sites),
                  "mean": float(v.mean()) if v.size else None,
                  "sd": float(v.std(ddof=1)) if v.size > 1 else None,
                  "min": float(v.min()) if v.size else None,
                  "max": float(v.max()) if v.size else None, "aucs": aucs}
    return out


def _auc_ci(c: dict) -> str:
    if c["auc"] is None:
        return INSUFFICIENT_TEXT
    ci = (f" [{c['ci_low']:.3f}–{c['ci_high']:.3f}]" if c["ci_low"] is not None
          and c["ci_high"] is not None else "")
    return f"{c['auc']:.3f}{ci}"


def _counts(c: dict) -> str:
    return f"{c['n_patients']}/{c['n_studies']}"


def _range(p: dict) -> str:
    return f"{_f(p['min'])}–{_f(p['max'])}" if p["n_sites"] else "—"


def _pf(p) -> str:
    return "—" if p is None else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")


def _p_cell(c: dict) -> str:
    if c["auc"] is None:
        return INSUFFICIENT_TEXT
    return _pf(c.get("p_value"))


def _f(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def loso_markdown(result: LosoResult, *, split: str = "test") -> str:
    """The combined table: per site and task, internal beside external, then the pooled line."""
    lines = [
        "# Leave-one-site-out",
        "",
        f"Each row: the model trained without the site, evaluated on it. *Internal* is the "
        f"other sites' {split} studies; *external* every study of the left-out site (the splits "
        "listed). AUC [95% patient-bootstrap CI]; patients/studies; the permutation p of the "
        "external studies, unadjusted and exploratory — the verdicts are the combined test's "
        "below.",
        "",
        "| site | task | internal AUC [CI] | internal pts/studies | external AUC [CI] | "
        "external pts/studies | external p (exploratory) | model |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in result.sites:
        for t, e in s.external.items():
            i = s.internal.get(t) or _cell(None)
            how = "reused" if s.reused else "trained"
            lines.append(f"| {s.site} | {t.upper()} | {_auc_ci(i)} | {_counts(i)} | "
                         f"{_auc_ci(e)} | {_counts(e)} | {_p_cell(e)} | "
                         f"{s.run_name} ({how}) |")
    if result.combined:
        lines += ["", "## Combined over the left-out sites: the verdicts", "",
                  f"{COMBINED_IS[0].upper()}{COMBINED_IS[1:]}.", "",
                  "| task | sites | patients (pos/neg) | pooled within-site AUC [95% CI] | p | "
                  "p adjusted | verdict |", "|---|---|---|---|---|---|---|"]
        for t, c in result.combined.items():
            auc = (INSUFFICIENT_TEXT if c["auc_within_site"] is None else
                   f"{c['auc_within_site']:.3f}" + (
                       f" [{c['ci_low']:.3f}–{c['ci_high']:.3f}]" if c["ci_low"] is not None
                       else ""))
            lines.append(f"| {t.upper()} | {c['n_sites']} | {c['n_patients']} "
                         f"({c['n_pos_patients']}/{c['n_neg_patients']}) | {auc} | "
                         f"{_pf(c['p_value'])} | {_pf(c['p_adjusted'])} | {c['verdict']} |")
    lines += ["", "## Pooled over sites: mean of the per-site AUCs (a description)", "",
              f"{POOLED_IS[0].upper()}{POOLED_IS[1:]}. Few sites make this figure itself noisy.",
              "", "| task | sites with data | mean external AUC | SD over sites | range |",
              "|---|---|---|---|---|"]
    for t, p in result.pooled.items():
        mean = _f(p["mean"]) if p["n_sites"] else INSUFFICIENT_TEXT
        lines.append(f"| {t.upper()} | {p['n_sites']} of {p['n_sites_total']} | {mean} | "
                     f"{_f(p['sd'])} | {_range(p)} |")
    external = ", ".join(f"{s.site}: {', '.join(s.external_splits)}" for s in result.sites)
    lines += ["", f"External splits judged — {external}.", ""]
    return "\n".join(lines)
