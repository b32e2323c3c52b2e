"""The registered model as an MLflow pyfunc: clip tensors or one study's DICOM files in.

`EchoCMRModel` is what ``mlflow.pyfunc.load_model("models:/NAME@champion")`` and
``mlflow models serve`` run. It is logged from code (`echocmr.model.model_code`, MLflow's
models-from-code), so the logged model holds no pickled object: the network is rebuilt by
`model.artifact.read_model_dir` from the artifact ``model`` (``weights.pt`` + ``model.json``),
and the class comes from the ``echocmr`` the model's requirements pin.

One input schema, two forms (every row of a request is the same form;
`model.checkpoint.signature`):

* ``clip``: one network input per row, ``float32[C, T, S, S]`` prepared per the model's
  `InputSpec` (what `model.contract.frames_to_clip` makes). Out: a table, one row per clip, with
  ``logit_<task>`` and ``p_<task>`` (sigmoid) for the five tasks.
* ``dicom``: one DICOM file per row (bytes; base64 in JSON), all of one study, with an optional
  ``view`` per file. The files go through exactly ``echocmr predict``'s code
  (`model.predict.predict_files`: ingest's preprocessing, every window, mean per file and
  study). Out: ``{"tasks", "probabilities": {task: p} (None when no file was kept), "n_clips",
  "files": [{"index", "status": "kept"|"rejected", "reason", "detail", "view"}], "views"}``.
  Files are named by their row index only: no UID, name, date or file name is returned.
  A model logged with a view classifier (trained on shards whose views it labelled; docs/views.md)
  classifies each file's view: ``view`` and ``view_confidence`` per file, and a file whose view
  the model was not trained on is rejected (``view_not_target``, ``view_unknown``) and never
  enters the study's probability.

JSON request bodies for ``POST /invocations`` are in docs/pull-a-model.md.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import numpy as np
import pandas as pd

from echocmr.ingest.dicom_header import silence_pydicom
from echocmr.ingest.view_table import OTHER_VIEW, UNKNOWN_VIEW, VIEWS, ViewConfig, spelling
from echocmr.model.artifact import read_model_dir
from echocmr.model.predict import ViewFilter, predict_files

try:  # a base class when MLflow is installed (always, for a served model)
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - echocmr always installs mlflow
    PythonModel = object

from echocmr.model.serve_request import (
    Deadline,
    RequestTimedOut,
    ServeLimits,
    ServingError,
    check_clip_count,
    check_declared_pixels,
    dicom_bytes,
    quiet_request_names,
)
from echocmr.model.serve_response import logit_col, study_frame
from echocmr.model.store import ARTIFACT_KEY, CLIP, DICOM, VIEW
from echocmr.model.tasks import TASKS, p_col
from echocmr.model.view_serving import VIEW_ARTIFACT_KEY
from echocmr.model.views import ViewClassifier, read_view_model
from echocmr.shards.format import TARGET_VIEWS

log = logging.getLogger(__name__)


class EchoCMRModel(PythonModel):
    """The pyfunc (module docstring). ``load_context`` reads the artifact; ``predict`` serves."""

    model = None
    spec = None

    def load_context(self, context) -> None:

        self.model, self.spec, self.meta = read_model_dir(context.artifacts[ARTIFACT_KEY])
        quiet_request_names()  # the server's log: no column name a request chose,
        silence_pydicom()  # and no element value quoted by pydicom's warnings
        self.view_filter = expected_view_filter(self.meta, context.artifacts)

    def predict(self, context, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = _as_frame(model_input)
        has_clip = CLIP in frame and frame[CLIP].notna().any()
        has_dicom = DICOM in frame and frame[DICOM].notna().any()
        if has_clip == has_dicom:
            raise _bad_input("send either 'clip' rows (network inputs) or 'dicom' rows (the files "
                             "of one study) in a request, not both and not neither")
        if has_clip:
            clips = frame[CLIP].tolist()
            check_clip_count(len(clips), ServeLimits.from_env())
            return predict_clips(self.model, self.spec, clips)
        views = frame[VIEW].tolist() if VIEW in frame else [None] * len(frame)
        return serve_study(self.model, self.spec, frame[DICOM].tolist(), views,
                           view_filter=getattr(self, "view_filter", None))


def serve_study(model, spec, cells: list, views: list | None = None, *,
                limits: ServeLimits | None = None,
                view_filter: ViewFilter | None = None) -> pd.DataFrame:
    """One study's ``dicom`` cells, bounded by ``limits`` (`model.serve_request`: caps checked
    before anything is decoded, a deadline checked between files), as its one output row
    (`model.serve_response.study_frame`)."""
    limits = limits or ServeLimits.from_env()
    deadline = Deadline(limits.timeout_s)
    files = dicom_bytes(cells, limits)
    for i, data in enumerate(files):
        check_declared_pixels(data, i, limits)
    try:
        answer = predict_study(model, spec, files, views, deadline=deadline,
                               view_filter=view_filter)
    except RequestTimedOut as exc:  # the client has had its 504; say why the work stopped
        log.warning("%s", exc)
        raise
    return study_frame(answer)


def expected_view_filter(meta: dict, artifacts: dict) -> ViewFilter | None:
    """The served model's `ViewFilter`: the view classifier logged with it (artifact
    `VIEW_ARTIFACT_KEY`) and the views it was trained on (``model.json`` ``views``); None for
    models logged without one (every file is used, as before)."""
    if VIEW_ARTIFACT_KEY not in (artifacts or {}):
        return None
    classifier = ViewClassifier(read_view_model(artifacts[VIEW_ARTIFACT_KEY]))
    return ViewFilter(classifier=classifier, views=tuple(meta.get("views") or TARGET_VIEWS))


def predict_clips(model, spec, clips: list) -> pd.DataFrame:
    """Logits and probabilities for network inputs ``[C, T, S, S]`` (one per element)."""
    import torch

    expected = (spec.channels, spec.frames, spec.size, spec.size)
    try:
        x = np.stack([np.asarray(c, dtype=np.float32) for c in clips])
    except (ValueError, TypeError) as exc:
        raise _bad_input(f"clip: every row must be numbers shaped {list(expected)} "
                         f"({type(exc).__name__})") from None
    if x.shape[1:] != expected:
        raise _bad_input(f"clips must be float32[N, {', '.join(map(str, expected))}] for this "
                         f"model (its input spec), got {list(x.shape)}")
    with torch.inference_mode():
        logits = model(torch.from_numpy(x)).float().numpy()
    probs = 1.0 / (1.0 + np.exp(-logits))
    return pd.DataFrame({**{logit_col(t): logits[:, k] for k, t in enumerate(TASKS)},
                         **{p_col(t): probs[:, k] for k, t in enumerate(TASKS)}})


def predict_study(model, spec, files: list[bytes], views: list | None = None, *,
                  deadline: Deadline | None = None,
                  view_filter: ViewFilter | None = None) -> dict[str, Any]:
    """One study's DICOM files (bytes) through `model.predict.predict_files` (module docstring).

    The files are on disk only inside this call: the temporary folder goes on every exit, a
    ``deadline`` that runs out between files included. With ``view_filter`` each file's view
    comes from its classifier (a ``view`` sent with the file is reported as sent) and files of
    other views are rejected (``view_not_target``, ``view_unknown``) instead of entering the
    study's probability."""

    views = [_view(v, i) for i, v in enumerate(views or [None] * len(files))]  # before decoding
    with tempfile.TemporaryDirectory(prefix="echocmr-serve-") as tmp:
        paths = []
        for i, data in enumerate(files):
            path = os.path.join(tmp, f"{i}.dcm")
            with open(path, "wb") as f:
                f.write(data)
            paths.append(path)
        result = predict_files(paths, model, spec,
                               check=None if deadline is None else deadline.check,
                               view_filter=view_filter)
    index = {p: i for i, p in enumerate(paths)}
    if len(result.studies) > 1:
        raise _bad_input(f"the files belong to {len(result.studies)} studies; send the files of "
                         "one study per request")
    rejected = {index[r["file"]]: r for r in result.rejected}
    classified = {index[v["file"]]: v for v in result.views}
    out_files, used_views = [], []
    for i in range(len(files)):
        view = views[i]
        if view is None and i in classified:
            view = classified[i]["view"]
        if i in rejected:
            detail = rejected[i]["detail"].replace(paths[i], f"file {i}").replace(tmp, "")
            out_files.append({"index": i, "status": "rejected", "reason": rejected[i]["reason"],
                              "detail": detail, "view": view, **_confidence(classified, i)})
        else:
            out_files.append({"index": i, "status": "kept", "reason": None, "detail": None,
                              "view": view, **_confidence(classified, i)})
            used_views.append(view or "unknown")
    probabilities, n_clips = None, 0
    if len(result.studies):
        row = result.studies.iloc[0]
        probabilities = {t: float(row[p_col(t)]) for t in TASKS}
        n_clips = int(row["n_clips"])
    return {"tasks": list(TASKS), "probabilities": probabilities, "n_clips": n_clips,
            "files": out_files, "views": sorted(set(used_views))}


def _confidence(classified: dict, i: int) -> dict:
    """A file's ``view_confidence`` when the view classifier saw it (else nothing)."""
    return {"view_confidence": classified[i]["view_confidence"]} if i in classified else {}


def _as_frame(model_input) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        return _columns_as_rows(model_input)
    if isinstance(model_input, dict):
        return pd.DataFrame({k: list(v) for k, v in model_input.items()})
    if isinstance(model_input, list):
        return pd.DataFrame(model_input)
    raise _bad_input(f"expected a table with 'clip' or 'dicom' columns, got "
                     f"{type(model_input).__name__}")


def _columns_as_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """A ``{"inputs": {"dicom": [...], "view": [...]}}`` request reaches the model as one row
    whose cells hold whole columns (MLflow's dict-to-frame step): give each file (or clip) its
    own row again. Any other frame is returned as it is."""
    if len(frame) != 1:
        return frame
    first = {c: frame[c].iloc[0] for c in frame.columns}
    stacked = ((isinstance(first.get(DICOM), np.ndarray | list)
                and np.ndim(first[DICOM]) == 1)
               or (isinstance(first.get(CLIP), np.ndarray | list) and np.ndim(first[CLIP]) == 5))
    if not stacked:
        return frame
    columns = {c: list(v) if isinstance(v, np.ndarray | list) else [v] for c, v in first.items()}
    if len({len(v) for v in columns.values()}) != 1:
        raise _bad_input("inputs: every column must have one value per row "
                         f"({', '.join(f'{c}: {len(v)}' for c, v in columns.items())})")
    return pd.DataFrame(columns)


def _view(value, row: int) -> str | None:
    """A request's ``view`` cell as a name of the vocabulary (ingest's spellings understood:
    ``ap4`` is ``A4C``); a cell that names no view is a 400 that does not repeat it, because
    the answer returns a file's view and a view cell can hold anything."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    if text.lower() in ("", "nan", "none", "null"):  # a JSON null, as MLflow may pass it on
        return None
    view = ViewConfig().lookup().get(spelling(text))
    if view is None:
        raise _bad_input(f"view: row {row} names no view (the cell is not shown: it may hold "
                         f"patient text); send one of {', '.join(VIEWS)}, '{OTHER_VIEW}' or "
                         f"'{UNKNOWN_VIEW}', or no view")
    return view


def _bad_input(message: str) -> Exception:
    """An error the scoring server answers with 400 and ``message`` alone (never the data)."""
    return ServingError(message)
