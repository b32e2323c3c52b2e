"""The CMR label table: read it (Parquet or CSV) and turn each row into five labels.

Tasks, in shard order: WMA, LGE, T1, T2, ECV (`shards.format.TASKS`). Every task ends as 1.0
(abnormal), 0.0 (normal) or NaN (unknown); unknown is never coerced to normal.

* A task's binary column (``labels.binary_columns``, default the task name) is used where it holds
  0/1 (or true/false, yes/no).
* Otherwise T1, T2 and ECV come from raw columns and cut-offs, abnormal when strictly above:
  native T1 > 1050 ms at 1.5 T / > 1250 ms at 3 T; T2 > 55 ms at 1.5 T / > 50 ms at 3 T;
  ECV > 30 % (the defaults). The T1/T2 cut-offs are chosen by the row's field strength (nearest
  configured key within ``field_strength_tolerance_t``) and, with ``labels.cutoff_rules``, by the
  row's mapping sequence (``t1_sequence`` / ``t2_sequence`` columns) and the ingest's site, one-
  or two-sided (`ingest.cutoffs` has the precedence). A row without a cut-off (unknown field
  strength, a sequence without one) stays unknown and is counted.

Patient IDs are read as text (a CSV reader would turn ``00123`` into ``123`` and break pairing)
and stripped; CMR dates are parsed to dates.

The table is read strictly, and what reading did is reported. Errors name the file, the column
and the first offending rows (1-based data rows: row 1 is the first line after a CSV header):

* a patient-ID column stored as numbers (Parquet ints/floats: leading zeros are gone, so
  ``00123`` never pairs) unless ``numeric_patient_ids: strip_leading_zeros``;
* a date that is not ISO 8601 (``08/05/2023`` is day-first in Europe, month-first in the US)
  unless ``date_format`` says how to read it; a date that does not parse; a date in the future;
* text in a numeric column (``high``, ``1.5T``, ``3 T``; ``31,5`` unless ``decimal_comma``);
* rows of one patient and date whose labels disagree, unless ``conflicting_duplicates: drop``;
* a sequence cell that names no known sequence, for a task with sequence rules, unless
  ``unknown_sequences: warn``.

No error quotes a cell: the table is keyed by patient ID and can carry free text, so a bad cell
is shown by its row and its shape (`cell_shape`: ``99/99/9999`` for ``08/05/2023``, ``Aaaaa`` for
``Molly``), which says what is wrong with it and nothing of what it says.

Counted warnings (``.attrs[WARNINGS_ATTR]``, printed in the ingest summary): rows without a date
or patient ID (ignored), identical duplicate rows (merged), conflicting duplicates dropped, a task
with no column at all (unknown for every row; an error with ``missing_task_columns: error``),
T1/T2 values without a cut-off (unknown). ``.attrs[RULES_ATTR]`` counts the rows each cut-off
labelled (also printed).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from datetime import date
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from echocmr.ingest.config import LabelConfig
from echocmr.ingest.cutoffs import RuleSet
from echocmr.ingest.pairing import STRIP_ZEROS_ATTR
from echocmr.shards.format import TASKS

log = logging.getLogger(__name__)

_TRUE = {"1", "1.0", "true", "yes", "y", "t", "positive", "abnormal"}
_FALSE = {"0", "0.0", "false", "no", "n", "f", "negative", "normal"}


WARNINGS_ATTR = "label_warnings"  # DataFrame.attrs key: counted warnings of the reading
RULES_ATTR = "label_rules"  # DataFrame.attrs key: cut-off rule description -> rows it labelled
RULES_FINGERPRINT_ATTR = "label_rules_fingerprint"  # DataFrame.attrs key: `RuleSet.fingerprint`
_NO_CUTOFF = "\0"  # prefix of a per-row "rule" that is the reason there was none
_SHOW_ROWS = 5


def strip_zeros(patient_id: str) -> str:
    """``"00123"`` -> ``"123"`` (``"000"`` -> ``"0"``), for `numeric_patient_ids` tables."""
    return patient_id.lstrip("0") or ("0" if patient_id else "")


def read_table(path: str | PathLike, config: LabelConfig | None = None, *,
               site: str | None = None) -> pd.DataFrame:
    """Read the CMR table and return it with ``patient_id`` (str), ``cmr_date`` (date),
    ``field_strength_t`` (float) and the five task columns (float: 1, 0 or NaN).

    ``site`` is the ingest's ``--site``: the cut-off rules of that site apply (`ingest.cutoffs`).
    ``.attrs[WARNINGS_ATTR]`` holds the counted warnings (what -> rows), ``.attrs[RULES_ATTR]``
    how many rows each cut-off labelled and ``.attrs[RULES_FINGERPRINT_ATTR]`` the hash of the
    cut-offs in effect (`RuleSet.fingerprint`)."""
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
    return normalise_table(raw, config, where=str(path), site=site)


def normalise_table(raw: pd.DataFrame, config: LabelConfig, *, where: str = "CMR table",
                    site: str | None = None) -> pd.DataFrame:
    """Validate a raw CMR table and compute the five labels (see the module docstring)."""
    warnings: Counter[str] = Counter()
    for column in (config.patient_id_column, config.date_column):
        if column not in raw.columns:
            raise ValueError(
                f"{where}: missing column {column!r} (columns: {list(raw.columns)}); "
                "set labels.patient_id_column / labels.date_column in the config"
            )
    raw = raw.reset_index(drop=True)
    ids = raw[config.patient_id_column]
    strip = False
    if pd.api.types.is_numeric_dtype(ids.dtype):
        if config.numeric_patient_ids == "error":
            raise ValueError(
                f"{where}: column {config.patient_id_column!r} holds numbers ({ids.dtype}), so "
                "IDs with leading zeros ('00123') have lost them and will never pair with the "
                "DICOMs' Patient ID. Store the column as text, or set "
                "labels.numeric_patient_ids: strip_leading_zeros to compare IDs without them")
        strip = True
    out = pd.DataFrame({"patient_id": ids.map(_id_text)})
    if strip:
        out["patient_id"] = out["patient_id"].map(strip_zeros)
    out["cmr_date"] = _dates(raw[config.date_column], config, where, warnings)
    if config.field_strength_column in raw.columns:
        out["field_strength_t"] = _numbers(raw[config.field_strength_column], config, where)
    else:
        out["field_strength_t"] = np.nan
    missing_ids = int((out["patient_id"] == "").sum())
    if missing_ids:
        warnings["rows without a patient ID (ignored)"] += missing_ids

    field = out["field_strength_t"].to_numpy(dtype=np.float64)
    rules = RuleSet(config, site)
    raw_columns = {"t1": config.t1_column, "t2": config.t2_column, "ecv": config.ecv_column}
    applied: dict[str, np.ndarray] = {}  # task -> per row: the rule's description, or ""
    for task in TASKS:
        values = np.full(len(raw), np.nan)
        binary = config.binary_columns.get(task)
        if binary and binary in raw.columns:
            values = np.array([_binary(v, f"{where}: column {binary!r}: row {i}")
                               for i, v in enumerate(raw[binary], start=1)])
        column = raw_columns.get(task)
        has_raw = column is not None and column in raw.columns
        if has_raw:
            measured = _numbers(raw[column], config, where).to_numpy(dtype=np.float64)
            derived, used = _derive(task, measured, field, raw, rules, config, where, warnings)
            use = np.isnan(values) & ~np.isnan(measured)
            applied[task] = np.where(use, used, "")
            values = np.where(np.isnan(values), derived, values)
        out[task] = values.astype(np.float64)
        if not (binary and binary in raw.columns) and not has_raw:
            columns = [c for c in (binary, column) if c]
            if config.missing_task_columns == "error":
                raise ValueError(f"{where}: no column for task {task!r} (looked for "
                                 f"{columns}); set labels.missing_task_columns: warn to leave "
                                 "it unknown")
            warnings[f"task {task}: no column {columns} (unknown for every row)"] += len(raw)
    for task, used in applied.items():
        out[f"_rule_{task}"] = used
    out["_row"] = np.arange(1, len(raw) + 1)
    keep = out["cmr_date"].notna() & (out["patient_id"] != "")
    out = _duplicates(out[keep], config, where, warnings)
    rule_counts: Counter[str] = Counter()
    for task in applied:
        for used, n in Counter(out.pop(f"_rule_{task}")).items():
            if used.startswith(_NO_CUTOFF):
                warnings[f"{task}: {used[len(_NO_CUTOFF):]} (unknown)"] += n
            elif used:
                rule_counts[used] += n
    out = out.drop(columns="_row").reset_index(drop=True)
    for what, n in warnings.items():
        log.warning("%s: %s: %d", where, what, n)
    out.attrs[WARNINGS_ATTR] = dict(warnings)
    out.attrs[RULES_ATTR] = dict(sorted(rule_counts.items()))
    out.attrs[RULES_FINGERPRINT_ATTR] = rules.fingerprint
    out.attrs[STRIP_ZEROS_ATTR] = strip
    return out


def cell_shape(value, limit: int = 24) -> str:
    """A cell as its shape, quoted: every letter ``A``/``a``, every digit ``9``, other characters
    kept, at most ``limit`` characters (``'99/99/9999'`` for ``08/05/2023``). Enough to see a
    day-first date, a unit or a decimal comma; nothing of a name or an ID."""
    text = str(value)
    shape = "".join("9" if c.isdigit() else ("A" if c.isupper() else "a") if c.isalpha() else c
                    for c in text[:limit])
    return repr(shape + ("…" if len(text) > limit else ""))


def _rows(mask: np.ndarray) -> str:
    rows = (np.flatnonzero(mask) + 1).tolist()
    shown = ", ".join(map(str, rows[:_SHOW_ROWS]))
    return f"row{'s' if len(rows) > 1 else ''} {shown}" + (f" (+{len(rows) - _SHOW_ROWS} more)"
                                                          if len(rows) > _SHOW_ROWS else "")


def _dates(column: pd.Series, config: LabelConfig, where: str, warnings: Counter) -> pd.Series:
    """CMR dates, strictly: ISO 8601 (or ``date_format``); none in the future."""
    name = column.name
    empty = column.isna() | column.astype(str).str.strip().isin(["", "NaT", "nan", "None"])
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        parsed = pd.to_datetime(column)
    elif column.map(lambda v: isinstance(v, date)).all() or column.map(
            lambda v: isinstance(v, date) or v is None).all():
        parsed = pd.to_datetime(column)
    else:
        text = column.astype(str).str.strip()
        fmt = config.date_format or "ISO8601"
        parsed = pd.to_datetime(text.where(~empty), format=fmt, errors="coerce")
        bad = (parsed.isna() & ~empty).to_numpy()
        if bad.any():
            first = cell_shape(text[bad].iloc[0])
            hint = ("" if config.date_format else
                    "; dates must be ISO 8601 (2023-05-08): a date such as 08/05/2023 is "
                    "day-first in some places and month-first in others, so set "
                    "labels.date_format (e.g. '%d/%m/%Y') to say which")
            raise ValueError(f"{where}: column {name!r}: {_rows(bad)} hold dates that do not "
                             f"parse (the first is shaped {first}){hint}")
    future = (parsed.dt.date > date.today()).fillna(False).to_numpy(dtype=bool)
    if future.any():
        raise ValueError(f"{where}: column {name!r}: {_rows(future)} hold dates in the future")
    missing = int(parsed.isna().sum())
    if missing:
        warnings["rows without a CMR date (ignored)"] += missing
    return parsed.dt.date


def _numbers(column: pd.Series, config: LabelConfig, where: str) -> pd.Series:
    """A numeric column, strictly: a cell that is not empty and not a number is an error."""
    if pd.api.types.is_numeric_dtype(column.dtype):
        return column.astype(np.float64)
    text = column.astype(str).str.strip()
    empty = column.isna() | text.str.lower().isin(["", "nan", "na", "n/a", "none"])
    if config.decimal_comma:
        text = text.str.replace(",", ".", regex=False)
    parsed = pd.to_numeric(text.where(~empty), errors="coerce")
    bad = (parsed.isna() & ~empty).to_numpy()
    if bad.any():
        first = column[bad].iloc[0]
        hint = (" (a decimal comma? set labels.decimal_comma: true)"
                if "," in str(first) and not config.decimal_comma else
                " (numbers only: no units such as 'T' or 'ms', no words)")
        raise ValueError(f"{where}: column {column.name!r}: {_rows(bad)} hold text where a "
                         f"number belongs (the first is shaped {cell_shape(first)}){hint}")
    return parsed.astype(np.float64)


def _duplicates(out: pd.DataFrame, config: LabelConfig, where: str,
                warnings: Counter) -> pd.DataFrame:
    """Rows of one patient and date: identical ones merged, conflicting ones an error (or
    dropped, per ``conflicting_duplicates``)."""
    values = ["field_strength_t", *TASKS]
    key = ["patient_id", "cmr_date"]
    dup = out.duplicated(key, keep=False)
    if not dup.any():
        return out
    groups = out[dup].fillna({c: -1e300 for c in values}).groupby(key)[values].nunique()
    conflicting = groups[(groups > 1).any(axis=1)].index
    is_conflict = out.set_index(key).index.isin(conflicting)
    if len(conflicting):
        if config.conflicting_duplicates == "error":
            rows = out.loc[is_conflict, "_row"].tolist()
            shown = ", ".join(map(str, rows[:_SHOW_ROWS]))
            raise ValueError(f"{where}: rows {shown} give one patient and CMR date different "
                             "labels; fix the table or set labels.conflicting_duplicates: drop")
        warnings["conflicting duplicate rows (dropped)"] += int(is_conflict.sum())
        out = out[~is_conflict]
    identical = out.duplicated(key, keep="first")
    if identical.any():
        warnings["identical duplicate rows (merged)"] += int(identical.sum())
        out = out[~identical]
    return out


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
        raise ValueError(f"{where}: binary label must be 0 or 1 (or empty), got a number "
                         "that is neither")
    text = str(value).strip().lower()
    if text in ("", "nan", "na", "n/a", "none", "unknown", "?"):
        return math.nan
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    raise ValueError(f"{where}: binary label must be 0/1, true/false or yes/no (the cell is "
                     f"shaped {cell_shape(value)})")


def _derive(task: str, measured: np.ndarray, field: np.ndarray, raw: pd.DataFrame,
            rules: RuleSet, config: LabelConfig, where: str,
            warnings: Counter) -> tuple[np.ndarray, np.ndarray]:
    """Labels of a task from its measured values, and per row the rule used (its description)
    or why there was none (prefixed `_NO_CUTOFF`; empty when nothing was measured)."""
    n = len(measured)
    sequences: list[str | None] = [None] * n
    if task == "ecv":
        return (np.array([rules.ecv.label(v) for v in measured]),
                np.full(n, rules.ecv.describe(), dtype=object))
    column = {"t1": config.t1_sequence_column, "t2": config.t2_sequence_column}[task]
    unknown = np.zeros(n, dtype=bool)
    if column in raw.columns:
        if rules.has_sequence_rules(task):
            sequences = [rules.normalise(v, task) for v in raw[column]]
            known = rules.known_sequences(task)
            unknown = np.array([s is not None and s not in known for s in sequences])
            if unknown.any():
                first = cell_shape(raw[column][unknown].iloc[0])
                if config.unknown_sequences == "error":
                    raise ValueError(
                        f"{where}: column {column!r}: {_rows(unknown)} name no known {task} "
                        f"sequence (the first is shaped {first}; known: {', '.join(sorted(known))}). "
                        "Map the spelling to a name in labels.sequence_aliases, or set "
                        f"labels.unknown_sequences: warn to leave those rows' {task} unknown")
        else:
            log.info("%s: column %r is not used: no cut-off rule names a %s sequence",
                     where, column, task)
    labels, used = np.full(n, np.nan), np.full(n, "", dtype=object)
    for i in range(n):
        if math.isnan(measured[i]):
            continue
        if unknown[i]:
            used[i] = (f"{_NO_CUTOFF}column {column!r}: unknown sequence shaped "
                       f"{cell_shape(raw[column].iloc[i])}")
            continue
        found, why = rules.resolve(task, field[i], sequences[i])
        if found is None:
            used[i] = _NO_CUTOFF + why
        else:
            labels[i], used[i] = found.label(measured[i]), found.describe()
    return labels, used


def label_vector(row) -> np.ndarray:
    """float32[5] in task order from a normalised table row (NaN unknown)."""
    return np.array([row[task] for task in TASKS], dtype=np.float32)
