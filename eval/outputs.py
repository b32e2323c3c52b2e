"""The files ``echocmr eval`` writes, and their exact schemas.

* ``predictions.parquet``: one row per study — ``study_hash, patient_hash, site, split``, then
  ``y_wma … y_ecv`` (float, **null** where unknown) and ``p_wma … p_ecv``.
* ``clip_predictions.parquet``: one row per clip (window) — ``key, study_hash, patient_hash, site,
  split, view, clip_index, start_frame``, labels and probabilities as above.
* ``metrics.json``: ``{task: {auc, ci_low, ci_high, delong_low, delong_high, pr_auc, n_studies,
  n_patients, n_pos, n_pos_patients, n_neg_patients, p_value, verdict}}`` and nothing else, null
  where not computable (``delong_*`` is the clustered-by-patient DeLong interval).
* ``metrics_detail.json``: the same tasks with every number behind them (negatives, unknowns,
  DeLong SE, valid resamples, calibration, the resample and permutation counts of each row:
  ``n_bootstrap``, ``n_permutations``), the per-view and per-site breakdowns (exploratory, at the
  breakdown counts), the stacker's coefficients and the settings — what the report is made from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from echocmr.eval.aggregate import P_COLS, STUDY_COLUMNS, Y_COLS
from echocmr.eval.summary import TaskResult, detail_json, metrics_json

CLIP_COLUMNS = [
    "key", "study_hash", "patient_hash", "site", "split", "view", "clip_index", "start_frame",
    *Y_COLS, *P_COLS,
]


def _schema(columns: list[str], ints: tuple[str, ...] = ()) -> pa.Schema:
    fields = []
    for c in columns:
        if c in ints:
            fields.append(pa.field(c, pa.int32()))
        elif c.startswith(("y_", "p_")):
            fields.append(pa.field(c, pa.float64()))
        else:
            fields.append(pa.field(c, pa.string()))
    return pa.schema(fields)


def _write(df: pd.DataFrame, columns: list[str], path: Path, ints: tuple[str, ...] = ()) -> Path:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"cannot write {path.name}: missing columns {missing}")
    # from_pandas turns NaN into null, which is what "null for unknown" means in Parquet.
    table = pa.Table.from_pandas(df[columns], schema=_schema(columns, ints), preserve_index=False)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def write_predictions(studies: pd.DataFrame, path: Path) -> Path:
    return _write(studies, STUDY_COLUMNS, path)


def write_clip_predictions(clips: pd.DataFrame, path: Path) -> Path:
    return _write(clips, CLIP_COLUMNS, path, ints=("clip_index", "start_frame"))


def read_predictions(path: Path) -> pd.DataFrame:
    """``predictions.parquet`` as a DataFrame (nulls become NaN)."""
    return pd.read_parquet(path)


def _dump(obj: dict, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def write_metrics(results: dict[str, TaskResult], path: Path) -> Path:
    return _dump(metrics_json(results), path)


def write_detail(
    results: dict[str, TaskResult],
    path: Path,
    *,
    by_view: dict[str, dict[str, TaskResult]] | None = None,
    by_site: dict[str, dict[str, TaskResult]] | None = None,
    extra: dict | None = None,
) -> Path:
    obj = {
        "tasks": detail_json(results),
        "by_view": {v: detail_json(r) for v, r in (by_view or {}).items()},
        "by_site": {s: detail_json(r) for s, r in (by_site or {}).items()},
        **(extra or {}),
    }
    return _dump(obj, path)
