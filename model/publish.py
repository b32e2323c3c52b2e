"""Log a trained network to MLflow as echocmr's pyfunc (MLflow models-from-code).

The artifact is the network as plain tensors and JSON (`model.artifact`, no pickle); the code is
the file of `MODEL_CODE_MODULE`, which names the class serving it (`model.serving`). The
signature takes ``clip``, ``dicom`` and ``view`` columns; the MLmodel metadata holds
``input_spec``, the epoch and the val metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any

from echocmr.model.artifact import META_FILE, echocmr_version, torch_version, write_model_dir
from echocmr.model.checkpoint import model_from_state
from echocmr.model.contract import InputSpec
from echocmr.model.store import ARTIFACT_KEY, CLIP, DICOM, VIEW
from echocmr.model.view_serving import VIEW_ARTIFACT_KEY

MODEL_CODE_MODULE = "echocmr.model.model_code"  # the models-from-code script; logged as a file

def signature(spec: InputSpec):
    """The pyfunc's input schema: optional columns ``clip`` (``float32[C, T, S, S]`` per row, see
    ``spec``), ``dicom`` (a DICOM file's bytes) and ``view`` (its view, optional). Each request
    uses one form; outputs differ by form (`echocmr.model.serving`), so they are left open."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    # double, not float: JSON numbers parse as float64, which MLflow will not narrow to float32;
    # the pyfunc casts each clip to float32 itself.
    clip_type = Array(Array(Array(Array(DataType.double))))
    return ModelSignature(inputs=Schema([
        ColSpec(clip_type, CLIP, required=False),
        ColSpec(DataType.binary, DICOM, required=False),
        ColSpec(DataType.string, VIEW, required=False),
    ]))


def input_example(spec: InputSpec):
    """A request in the ``clip`` form: one clip at the training pixel mean (all zeros after
    normalisation, which keeps the stored example small); the ``dicom`` form is shown in
    docs/pull-a-model.md (MLflow keeps one example)."""
    import pandas as pd

    clip = [[[[0.0] * spec.size for _ in range(spec.size)] for _ in range(spec.frames)]
            for _ in range(spec.channels)]
    return pd.DataFrame({CLIP: [clip]})


def log_model(state: dict[str, Any], *, tracking_uri: str, run_id: str,
              name: str = "model", views: ExpectedViews | None = None) -> str:
    """Log the checkpoint's network into run ``run_id`` as echocmr's pyfunc; return its model URI
    (``models:/m-...``). No pickle: the artifact is `model.artifact`'s, the code a file.

    Logs into the active run when it is ``run_id`` (the driver's ``with mlflow.start_run``);
    otherwise it opens the run for this call, which marks it ``FINISHED`` when done.
    """
    import tempfile
    from importlib.util import find_spec

    import mlflow


    model, spec = model_from_state(state)
    mlflow.set_tracking_uri(tracking_uri)
    val_metrics = _finite(state.get("metrics", {}))
    metadata = {"input_spec": spec.to_dict(), "epoch": state.get("epoch"),
                "val_metrics": val_metrics, "echocmr_artifact": ARTIFACT_KEY}
    active = mlflow.active_run()
    with tempfile.TemporaryDirectory() as tmp, \
            (contextlib.nullcontext() if active and active.info.run_id == run_id
             else mlflow.start_run(run_id=run_id)):
        artifact = write_model_dir(os.path.join(tmp, ARTIFACT_KEY), model, spec,
                                   epoch=state.get("epoch"), val_metrics=val_metrics)
        artifacts = {ARTIFACT_KEY: artifact}
        if views is not None:
            artifacts |= record_expected_views(artifact, views)
            metadata |= {"views": list(views.views), "view_model": views.source}
        info = mlflow.pyfunc.log_model(
            name=name, python_model=find_spec(MODEL_CODE_MODULE).origin,
            artifacts=artifacts, signature=signature(spec),
            input_example=input_example(spec), metadata=metadata,
            pip_requirements=[f"echocmr=={echocmr_version()}", f"torch=={torch_version()}"])
    return info.model_uri


def _finite(metrics: dict) -> dict:
    import math

    return {k: v for k, v in metrics.items()
            if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))}


@dataclass(frozen=True)
class ExpectedViews:
    """The views a CMR model was trained on (``data.views``) and the view classifier that
    labelled its data (``source``, e.g. ``models:/views/3``; its directory ``view_model_dir``,
    or None when only the views are known)."""

    views: tuple[str, ...]
    source: str | None = None
    view_model_dir: str | None = None


def record_expected_views(artifact_dir: str, views: ExpectedViews) -> dict[str, str]:
    """Write ``views`` and ``view_model`` into the artifact's ``model.json`` (readers of format 1
    ignore keys they do not use) and return the extra pyfunc artifacts: the view classifier's
    directory under `VIEW_ARTIFACT_KEY`, so the served model classifies each file's view."""
    path = os.path.join(artifact_dir, META_FILE)
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    meta["views"], meta["view_model"] = list(views.views), views.source
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    return {VIEW_ARTIFACT_KEY: views.view_model_dir} if views.view_model_dir else {}
