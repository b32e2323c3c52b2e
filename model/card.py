"""The model card: the description echocmr writes on every registered version.

``training_card`` (written by ``echocmr train --register``) says what the model saw and how it
did on val: the shard set (digest, source, sites; clips, studies, patients and label prevalence
per split, from its ``manifest.parquet`` through `shards.stats.split_summary`), the training
config, the best epoch and the val AUC per task. The set is named by `model.tracking.set_name`
and its digest, never by its path (a card outlives the machine it was written on). ``with_eval_section`` adds (or replaces) one
section per evaluated split when ``echocmr eval`` runs against the version: study-level AUC with
its bootstrap CI and the signal verdict per task, beside the tags eval writes
(``<split>_auc_<task>``, ``<split>_ci_<task>``, ``<split>_verdict_<task>``).

Everything here is aggregate: counts and rates, never a key, patient or study hash.
"""

from __future__ import annotations

import math
from typing import Any

from echocmr.model.tracking import set_name
from echocmr.shards.format import SPLITS, TASKS
from echocmr.shards.reader import read_manifest, read_stats
from echocmr.shards.stats import split_summary

EVAL_BEGIN = "<!-- echocmr eval {split} -->"
EVAL_END = "<!-- /echocmr eval {split} -->"


def data_summary(shards: str, *, exclude_sites=(), train_sites=None) -> dict[str, Any]:
    """Per split counts and prevalence of a shard set without ``exclude_sites`` (what training
    read), its sites, the sites left out and those trained on, and the view classifier that
    labelled each site's views (stats.json ``view_models``, site -> exact version; plain data)."""

    manifest = read_manifest(shards)
    manifest = manifest[~manifest["site"].astype(str).isin(list(exclude_sites))]
    splits = {s: split_summary(manifest[manifest["split"] == s]) for s in SPLITS
              if (manifest["split"] == s).any()}
    sites = sorted(str(s) for s in manifest["site"].unique())
    view_models = {site: source for site, source in
                   sorted((read_stats(shards).view_models or {}).items()) if site in sites}
    return {"sites": sites, "clips": len(manifest),
            "splits": splits, "excluded_sites": sorted(exclude_sites),
            "train_sites": None if train_sites is None else list(train_sites),
            "view_models": view_models}


def training_card(*, name: str, version: str, run_id: str, shards: str, digest: str,
                  data: dict[str, Any], config: dict[str, Any], best_epoch: int,
                  val_aucs: dict[str, float | None], val_mean_auc: float | None,
                  echocmr_version: str) -> str:
    """The version's description as Markdown (module docstring)."""
    lines = [f"# {name} version {version}", "",
             f"R(2+1)D trained by echocmr {echocmr_version} (run `{run_id}`), best epoch "
             f"{best_epoch}. Load: `mlflow.pyfunc.load_model(\"models:/{name}/{version}\")`; "
             "inputs and outputs: docs/pull-a-model.md.", "",
             "## Data", "",
             f"- shard set digest (sha256 of manifest.parquet): `{digest}`",
             f"- shard set: `{set_name(shards)}` (its name; the digest names the data)",
             f"- sites: {', '.join(data['sites']) or '-'}",
             *([f"- trained on sites (train and val): {', '.join(data['train_sites'])}"]
               if data.get("train_sites") is not None else []),
             *([f"- **left out of training** (`--exclude-site`, for external validation): "
                f"{', '.join(data['excluded_sites'])}; the table counts the other sites only"]
               if data.get("excluded_sites") else []),
             *_view_model_lines(data.get("view_models") or {}, config), "",
             "| split | clips | studies | patients | "
             + " | ".join(f"{t.upper()} prevalence" for t in TASKS) + " |",
             "|---|---|---|---|" + "---|" * len(TASKS)]
    for split, s in data["splits"].items():
        prev = [_pct(s["prevalence"].get(t)) for t in TASKS]
        lines.append(f"| {split} | {s['clips']} | {s['studies']} | {s['patients']} | "
                     + " | ".join(prev) + " |")
    model, d = config.get("model", {}), config.get("data", {})
    lines += ["", "## Training", "",
              f"- model: width {model.get('width')}, layers {model.get('layers')}, "
              f"in_channels {model.get('in_channels')}, init `{model.get('init') or 'none'}`",
              f"- clips: {d.get('frames')} frames every {d.get('period')}, "
              f"{d.get('size')}x{d.get('size')}",
              f"- epochs {config.get('epochs')}, workers {config.get('workers')}, "
              f"gpu {config.get('gpu')}, optimiser {config.get('optim', {}).get('name')} "
              f"lr {config.get('optim', {}).get('lr')}",
              "- the full config is the run's `config.yaml`", "",
              "## Validation (clip level, best epoch)", "",
              "| task | val AUC |", "|---|---|"]
    lines += [f"| {t.upper()} | {_auc(val_aucs.get(t))} |" for t in TASKS]
    lines += [f"| mean | {_auc(val_mean_auc)} |", ""]
    return "\n".join(lines)


def _view_model_lines(view_models: dict[str, str], config: dict[str, Any]) -> list[str]:
    """Which views the model read (``data.views``) and which view classifier labelled them:
    the model expects the same classifier at predict and serving time (docs/views.md)."""
    views = (config.get("data") or {}).get("views")
    lines = [f"- views read: {', '.join(views)}"] if views else []
    by_model: dict[str, list[str]] = {}
    for site, source in view_models.items():
        by_model.setdefault(source, []).append(site)
    lines += [f"- view model `{source}` labelled the views of {', '.join(sites)}"
              for source, sites in sorted(by_model.items())]
    if not by_model:
        lines.append("- view model: none (views came from a views table, or are unknown)")
    return lines


def eval_tags(split: str, results: dict) -> dict[str, str]:
    """Version tags for an evaluation's `eval.summary.TaskResult` per task."""
    tags = {}
    for task, r in results.items():
        tags[f"{split}_auc_{task}"] = _auc(r.auc)
        tags[f"{split}_ci_{task}"] = (f"{_auc(r.ci_low)}-{_auc(r.ci_high)}"
                                      if _finite(r.ci_low) and _finite(r.ci_high) else "none")
        tags[f"{split}_verdict_{task}"] = str(r.verdict)
    return tags


def with_eval_section(description: str | None, split: str, results: dict, *, eval_run: str | None,
                      digest: str) -> str:
    """``description`` with its ``split`` evaluation section added or replaced."""
    begin, end = EVAL_BEGIN.format(split=split), EVAL_END.format(split=split)
    text = description or ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head.rstrip("\n") + "\n" + rest.split(end, 1)[1].lstrip("\n")
    rows = [f"| {t.upper()} | {_auc(r.auc)} | {_ci(r)} | {r.n_studies} | {r.verdict} |"
            for t, r in results.items()]
    section = [begin, f"## Evaluation on {split} (study level, `echocmr eval`)", "",
               f"Shard set digest `{digest}`" + (f", eval run `{eval_run}`" if eval_run else "")
               + ".", "",
               "| task | AUC | 95% CI (bootstrap) | studies | verdict |", "|---|---|---|---|---|",
               *rows, end]
    return text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _auc(x) -> str:
    return f"{x:.3f}" if _finite(x) else "none"


def _ci(r) -> str:
    return f"{r.ci_low:.3f}-{r.ci_high:.3f}" if _finite(r.ci_low) and _finite(r.ci_high) else "-"


def _pct(x) -> str:
    return f"{100 * x:.1f}%" if _finite(x) else "-"
