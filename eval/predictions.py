"""``echocmr eval --predictions FILE``: judge any model's per-study predictions.

The statistics, verdicts and report of ``echocmr eval`` do not depend on our network: they start
from study probabilities. This module reads a table of predictions made anywhere — the study's
released weights, a peer's model, a model trained elsewhere — and hands it to the same code path
that eval's inference feeds (`eval.evaluate.evaluate_clips`: aggregation, metrics with both CIs,
the signal audit, value over WMA, operating point, breakdowns, reports), so a verdict printed for
a table means exactly what it means for shards.

The table (Parquet, or CSV by the ``.csv`` extension) has one row per study, or one per study and
view when ``view`` is given:

* ``patient``, ``study`` (required): identifiers; a study belongs to one patient (and one site);
* ``site`` (optional, default one site ``site``), ``view`` (optional), ``split`` (optional, default
  ``test``; rows of ``val`` then choose the operating threshold as on shards);
* per task ``y_<task>`` (0/1, empty or NaN when unknown) and ``p_<task>`` (a probability) for
  ``wma lge t1 t2 ecv``. A task without either column is unknown throughout ("insufficient data");
  a label column without its probability (or the reverse) is an error.

Each row becomes one "video" of one clip; the study probability is the mean over its rows (its
views), exactly as eval averages videos. The identifiers are written to ``predictions.parquet``
as given (``patient_hash``, ``study_hash``): hash them first if they are not pseudonymous.
Nothing is logged to MLflow (there is no model to attach the run to).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from echocmr.config import resolve_for_command
from echocmr.eval.evaluate import Evaluation, evaluate_clips
from echocmr.eval.job import load_config
from echocmr.eval.outputs import CLIP_COLUMNS
from echocmr.eval.report import auc_table_text, external_table_text
from echocmr.model.tasks import TASKS, p_col, y_col
from echocmr.shards.format import VIEW_VOCABULARY

REQUIRED = ("patient", "study")


def read_table(path: str | Path) -> pd.DataFrame:
    """The predictions table at ``path`` (``.csv``: CSV, else Parquet), checked; see the module
    docstring for its columns. Raises ValueError saying what to fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--predictions {path}: no such file")
    if path.suffix.lower() == ".csv":
        table = pd.read_csv(path, dtype={"patient": str, "study": str, "site": str,
                                         "view": str, "split": str})
    else:
        try:
            table = pd.read_parquet(path)
        except Exception as exc:  # pyarrow's errors name the format, not the fix
            raise ValueError(f"--predictions {path}: not a Parquet file ({exc}); give a .parquet "
                             "or a .csv file") from exc
    return check_table(table, str(path))


def check_table(table: pd.DataFrame, name: str = "predictions") -> pd.DataFrame:
    """The table with defaults filled in (site, split, missing tasks) and types normalised."""
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"{name}: lacks columns {missing}; it needs patient, study, and "
                         "y_<task>/p_<task> for the tasks it has (docs/evaluation.md)")
    if table.empty:
        raise ValueError(f"{name}: no rows")
    out = pd.DataFrame({c: table[c].astype(str) for c in REQUIRED})
    for c in REQUIRED:
        if table[c].isna().any():
            raise ValueError(f"{name}: {int(table[c].isna().sum())} rows without a {c}")
    out["site"] = table["site"].astype(str) if "site" in table.columns else "site"
    out["split"] = table["split"].astype(str) if "split" in table.columns else "test"
    out["view"] = table["view"].astype(str) if "view" in table.columns else "all"
    out.attrs["views"] = "view" in table.columns
    present = []
    for t in TASKS:
        has_y, has_p = y_col(t) in table.columns, p_col(t) in table.columns
        if has_y != has_p:
            raise ValueError(f"{name}: {y_col(t) if has_y else p_col(t)} without "
                             f"{p_col(t) if has_y else y_col(t)}; give both or neither")
        if not has_y:
            out[y_col(t)] = np.nan
            out[p_col(t)] = np.nan
            continue
        present.append(t)
        y = pd.to_numeric(table[y_col(t)], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isnan(y) & (y != 0) & (y != 1)
        if bad.any() or (table[y_col(t)].notna() & np.isnan(y)).any():
            raise ValueError(f"{name}: {y_col(t)} must be 0, 1 or empty (unknown)")
        p = pd.to_numeric(table[p_col(t)], errors="coerce").to_numpy(dtype=np.float64)
        if ((p < 0) | (p > 1)).any():
            raise ValueError(f"{name}: {p_col(t)} must be probabilities in [0, 1]")
        if (~np.isnan(y) & np.isnan(p)).any():
            raise ValueError(f"{name}: {int((~np.isnan(y) & np.isnan(p)).sum())} rows with a "
                             f"known {y_col(t)} have no {p_col(t)}")
        out[y_col(t)], out[p_col(t)] = y, p
    if not present:
        raise ValueError(f"{name}: no task columns; give y_<task> and p_<task> for some of "
                         f"{', '.join(TASKS)}")
    if out.duplicated(["study", "view"]).any():
        dup = out.loc[out.duplicated(["study", "view"]), "study"].iloc[0]
        raise ValueError(f"{name}: study {dup} has more than one row"
                         + (" for one view" if "view" in table.columns else
                            "; give one row per study (or a view column)"))
    for c in ("patient", "site", "split"):
        spans = out.groupby("study")[c].nunique()
        if (spans > 1).any():
            raise ValueError(f"{name}: study {spans.index[spans > 1][0]} has more than one {c}")
    return out


def as_clips(table: pd.DataFrame) -> pd.DataFrame:
    """The checked table as eval's clip table: each row one video of one clip."""
    clips = table.rename(columns={"patient": "patient_hash", "study": "study_hash"})
    clips["key"] = clips["study_hash"] + "\x1f" + clips["view"]
    clips["clip_index"] = 0
    clips["start_frame"] = 0
    return clips[CLIP_COLUMNS].sort_values("key", ignore_index=True)


def evaluate_predictions(path: str | Path, out: str | Path, *, config) -> Evaluation:
    """Every eval output for the predictions at ``path`` under ``config`` (an `EvalConfig`)."""
    table = read_table(path)
    clips = as_clips(table)
    split = config.split
    judged = clips[clips["split"] == split]
    if judged.empty:
        raise ValueError(f"--predictions {path}: no rows of split {split!r} (its splits: "
                         f"{sorted(set(clips['split']))}); add a split column or pick --split")
    val = clips[clips["split"] == "val"] if split != "val" else None
    ev = config.evaluation
    if table.attrs.get("views") is False:  # no view column: a per-view table would be the main one
        # and there is no view to select by: every row is the study's prediction
        ev = replace(ev, breakdowns=tuple(b for b in ev.breakdowns if b != "view"),
                     views=VIEW_VOCABULARY)
    if ev.aggregation == "stacker" and (val is None or val.empty):
        raise ValueError("--aggregation stacker is fitted on val rows: the table has none")
    context = {"predictions": str(path), "split": split,
               "aggregation": "mean of the table's rows per study (one row per view)"}
    if ev.holdout_site is not None:
        context["training sites"] = (
            f"The table does not record which sites its model trained on: that it never saw "
            f"site {ev.holdout_site} is NOT verified, and only site {ev.holdout_site}'s "
            f"{split} rows are used.")
    return evaluate_clips(judged, Path(out), config=ev,
                          val_clips=val if val is not None and not val.empty else None,
                          context=context, title=f"echocmr evaluation of {Path(path).name} — "
                                                 f"{split} split")


def run_predictions_cmd(args: argparse.Namespace, *, overrides: dict) -> int:
    """``echocmr eval --predictions FILE --out DIR [statistics flags]``; ``overrides``: the
    flags as a nested `EvalConfig` dict (`eval.cli.eval_overrides`)."""
    if args.shards or args.model:
        print("echocmr eval: --predictions replaces --shards and --model; give one or the other",
              file=sys.stderr)
        return 2
    config, done = resolve_for_command(
        "eval", lambda: load_config(args.config, overrides=overrides),
        print_config=args.print_config, required={"--out": args.out})
    if done is not None:
        return done
    try:
        ev = evaluate_predictions(args.predictions, args.out, config=config)
    except (FileNotFoundError, ValueError) as exc:
        print(f"echocmr eval: {exc}", file=sys.stderr)
        return 1
    holdout = config.evaluation.holdout_site
    if holdout is not None and ev.internal is not None:
        print(f"study-level AUCs, internal (other sites) beside external (site {holdout}):")
        print(external_table_text(ev.results, ev.internal))
        print()
    print(f"study-level AUCs, {f'site {holdout}, ' if holdout else ''}{config.split} split "
          "(published study beside):")
    print(auc_table_text(ev.results))
    print(f"outputs in {args.out}: predictions.parquet, metrics.json, report.md, report.html "
          "(not logged to MLflow: no model)")
    return 0
