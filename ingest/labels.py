"""The CMR label table: read it (Parquet or CSV) and turn each row into five labels.

Tasks, in shard order: WMA, LGE, T1, T2, ECV (`shards.format.TASKS`). Every task ends as 1.0
(abnormal), 0.0 (normal) or NaN (unknown); unknown is never coerced to normal.

* A task's binary column (``labels.binary_columns``, default the task name) is used where it holds
  0/1 (or true/false, yes/no).
* Otherwise T1, T2 and ECV come from raw columns and cut-offs, abnormal when strictly above:
  native T1 > 1050 ms at 1.5 T / > 1250 ms at 3 T; T2 > 55 ms at 1.5 T / > 50 ms at 3 T;
  ECV > 30 %. The T1/T2 cut-offs are chosen by the row's field strength (nearest configured key
  within ``field_strength_tolerance_t``); an unknown field strength leaves T1/T2 unknown.

Patient IDs are read as text (a CSV reader would turn ``00123`` into ``123`` and break pairing)
and stripped; CMR dates are parsed to dates.
"""

from __future__ import annotations

import logging
import math
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from echocmr.ingest.config import LabelConfig
from echocmr.shards.format import TASKS

log = logging.getLogger(__name__)

_TRUE = {"1", "1.0", "true", "yes", "y", "t", "positive", "abnormal"}
_FALSE = {"0", "0.0", "false", "no", "n", "f", "negative", "normal"}


def read_table(path: str | PathLike, config: LabelConfig | None = None) -> pd.DataFrame:
    """Read the CMR table and return it with ``patient_id`` (str), ``cmr_date`` (date),
    ``field_strength_t`` (float) and the five task columns (float: 1, 0 or NaN)."""
    config = config or LabelConfig()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CMR label table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        raw = pd.read_parquet(path)
    elif suffix in (".csv", ".txt"):
        raw = pd.read_csv(path, dtype={config.patient_id_column: str}, keep_default_na=True)
    else:
        raise ValueError(f"CMR label table {path}: use a .parquet or .csv file")
    return normalise_table(raw, config, where=str(path))


def normalise_table(raw: pd.DataFrame, config: LabelConfig, *, where: str = "CMR table") -> pd.DataFrame:
    """Validate a raw CMR table and compute the five labels (see the module docstring)."""
    for column in (config.patient_id_column, config.date_column):
        if column not in raw.columns:
            raise ValueError(
                f"{where}: missing column {column!r} (columns: {list(raw.columns)}); "
                "set labels.patient_id_column / labels.date_column in the config"
            )
    ids = raw[config.patient_id_column]
    out = pd.DataFrame({"patient_id": ids.map(_id_text)})
    dates = pd.to_datetime(raw[config.date_column], errors="coerce")
    out["cmr_date"] = dates.dt.date
    if config.field_strength_column in raw.columns:
        out["field_strength_t"] = pd.to_numeric(raw[config.field_strength_column], errors="coerce")
    else:
        out["field_strength_t"] = np.nan
    bad_dates = int(dates.isna().sum())
    if bad_dates:
        log.warning("%s: %d row(s) without a valid CMR date are ignored", where, bad_dates)
    missing_ids = int((out["patient_id"] == "").sum())
    if missing_ids:
        log.warning("%s: %d row(s) without a patient id are ignored", where, missing_ids)

    field = out["field_strength_t"].to_numpy(dtype=np.float64)
    raw_sources = {
        "t1": (config.t1_column, lambda v, f: _above(v, _cutoff(config.t1_cutoff_ms, f, config))),
        "t2": (config.t2_column, lambda v, f: _above(v, _cutoff(config.t2_cutoff_ms, f, config))),
        "ecv": (config.ecv_column, lambda v, f: _above(v, config.ecv_cutoff_pct)),
    }
    for task in TASKS:
        values = np.full(len(raw), np.nan)
        binary = config.binary_columns.get(task)
        if binary and binary in raw.columns:
            values = np.array([_binary(v, f"{where} column {binary!r}") for v in raw[binary]])
        if task in raw_sources:
            column, rule = raw_sources[task]
            if column in raw.columns:
                measured = pd.to_numeric(raw[column], errors="coerce").to_numpy(dtype=np.float64)
                derived = np.array([rule(v, f) for v, f in zip(measured, field, strict=True)])
                values = np.where(np.isnan(values), derived, values)
        out[task] = values.astype(np.float64)
    keep = out["cmr_date"].notna() & (out["patient_id"] != "")
    return out[keep].reset_index(drop=True)


def _id_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a numeric Parquet column: 123.0 -> "123"
    return str(value).strip()


def _binary(value, where: str) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        if value in (0, 1):
            return float(value)
        raise ValueError(f"{where}: binary label must be 0 or 1 (or empty), got {value!r}")
    text = str(value).strip().lower()
    if text in ("", "nan", "na", "n/a", "none", "unknown", "?"):
        return math.nan
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    raise ValueError(f"{where}: binary label must be 0/1, true/false or yes/no, got {value!r}")


def _cutoff(cutoffs: dict[float, float], field_t: float, config: LabelConfig) -> float:
    """The cut-off of the configured field strength nearest to ``field_t`` (NaN: none close)."""
    if math.isnan(field_t) or not cutoffs:
        return math.nan
    nearest = min(cutoffs, key=lambda f: (abs(f - field_t), f))
    if abs(nearest - field_t) > config.field_strength_tolerance_t:
        return math.nan
    return float(cutoffs[nearest])


def _above(value: float, cutoff: float) -> float:
    if math.isnan(value) or math.isnan(cutoff):
        return math.nan
    return 1.0 if value > cutoff else 0.0


def label_vector(row) -> np.ndarray:
    """float32[5] in task order from a normalised table row (NaN unknown)."""
    return np.array([row[task] for task in TASKS], dtype=np.float32)
