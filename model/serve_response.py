"""What the served model answers: one row per study for DICOM input, one per clip for clips.

The signature's output schema (`output_schema`) is the union of the two forms' columns; a form
fills its own and leaves the others out:

* ``dicom`` form, one row (a request is one study): ``study`` (``study-1``), ``status`` (``ok``,
  or ``no_usable_file`` when every file was rejected), ``message`` (why, when not ok),
  ``n_files`` (files used), ``n_clips`` (windows averaged), ``p_<task>`` (null when not ok),
  ``files`` (one object per request row: ``index``, ``status`` ``kept``/``rejected``,
  ``reason`` (ingest's code), ``detail``, ``view``) and ``views`` (the views used);
* ``clip`` form, one row per clip: ``logit_<task>`` and ``p_<task>``.

Over HTTP that is ``{"predictions": [{...}, ...]}`` either way. Nothing from the files (UIDs,
names, dates, paths) is returned: files are named by their row index.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from echocmr.model.tasks import TASKS, p_col

OK, NO_USABLE_FILE = "ok", "no_usable_file"
STUDY_COLUMNS = ("study", "status", "message", "n_files", "n_clips",
                 *(p_col(t) for t in TASKS), "files", "views")


def logit_col(task: str) -> str:
    return f"logit_{task}"


def study_frame(answer: dict[str, Any]) -> pd.DataFrame:
    """One study's answer (`model.serving.predict_study`'s dict) as its one output row."""
    files = answer["files"]
    probabilities = answer.get("probabilities")
    status, message = OK, None
    if probabilities is None:
        reasons = Counter(f.get("reason") or "unknown" for f in files if f["status"] != "kept")
        status = NO_USABLE_FILE
        message = (f"no file of the study could be used: {len(files)} rejected ("
                   + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
                   + "); see files for each one's reason")
    row = {"study": "study-1", "status": status, "message": message,
           "n_files": sum(f["status"] == "kept" for f in files), "n_clips": answer["n_clips"],
           **{p_col(t): (None if probabilities is None else probabilities[t]) for t in TASKS},
           "files": files, "views": answer.get("views", [])}
    return pd.DataFrame([row], columns=list(STUDY_COLUMNS)).astype({"message": object})


def output_schema():
    """The union of both forms' columns (module docstring); form-specific ones are optional."""
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array, Object, Property

    file_object = Object([
        Property("index", DataType.long), Property("status", DataType.string),
        Property("reason", DataType.string, required=False),
        Property("detail", DataType.string, required=False),
        Property("view", DataType.string, required=False)])
    return Schema([
        ColSpec(DataType.string, "study", required=False),
        ColSpec(DataType.string, "status", required=False),
        ColSpec(DataType.string, "message", required=False),
        ColSpec(DataType.long, "n_files", required=False),
        ColSpec(DataType.long, "n_clips", required=False),
        *(ColSpec(DataType.double, logit_col(t), required=False) for t in TASKS),
        *(ColSpec(DataType.double, p_col(t), required=False) for t in TASKS),
        ColSpec(Array(file_object), "files", required=False),
        ColSpec(Array(DataType.string), "views", required=False),
    ])
