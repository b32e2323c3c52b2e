"""Log a trained network to MLflow as echocmr's pyfunc (MLflow models-from-code).

The artifact is the network as plain tensors and JSON (`model.artifact`, no pickle); the code is
the file of `MODEL_CODE_MODULE`, which names the class serving it (`model.serving`). The
signature takes ``clip``, ``dicom`` and ``view`` columns; the MLmodel metadata holds
``input_spec``, the epoch and the val metrics.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

import echocmr
from echocmr.model.artifact import META_FILE, write_model_dir
from echocmr.model.checkpoint import model_from_state
from echocmr.model.contract import InputSpec
from echocmr.model.example import example_dicom
from echocmr.model.serve_response import output_schema
from echocmr.model.store import ARTIFACT_KEY, CLIP, DICOM, VIEW
from echocmr.model.view_serving import VIEW_ARTIFACT_KEY

MODEL_CODE_MODULE = "echocmr.model.model_code"  # the models-from-code script; logged as a file
# What the served model imports (`echocmr.model.serving` and, through `model.predict`, ingest's
# DICOM reading): carried in the model as code (``code_paths``), so it installs without echocmr.
SERVING_PACKAGES = ("model", "ingest", "shards")
# ... and the distributions it needs (tests/test_serve_install.py checks the list against what a
# served prediction imports): no Ray, DALI, webdataset, PyAV, OCR or training stack.
SERVING_DISTRIBUTIONS = ("mlflow", "torch", "numpy", "pandas", "pyarrow", "pyyaml", "fsspec",
                         "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg",
                         "pylibjpeg-rle", "pyjpegls", "pillow", "simplejpeg", "scipy")

def signature(spec: InputSpec):
    """The pyfunc's signature. Inputs: optional columns ``clip`` (``float32[C, T, S, S]`` per
    row, see ``spec``), ``dicom`` (a DICOM file's bytes) and ``view`` (its view, optional); a
    request uses one form. Outputs: one row per study for ``dicom``, one per clip for ``clip``
    (`model.serve_response.output_schema`)."""
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
    ]), outputs=output_schema())


def input_example():
    """A ``dicom`` request of one small synthetic cine (`model.example`); the clip form is shown
    in docs/pull-a-model.md (MLflow keeps one example)."""
    import pandas as pd

    return pd.DataFrame({DICOM: [example_dicom()], VIEW: ["A4C"]})


def serving_requirements() -> list[str]:
    """The served model's pip requirements: `SERVING_DISTRIBUTIONS` at the versions installed
    where it is logged (no echocmr: the model carries its code, `serving_code`)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in SERVING_DISTRIBUTIONS:
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")  # no local tag (+cpu)
        except PackageNotFoundError:
            out.append(dist)
    return out


def serving_code(directory: str) -> str:
    """Copy the ``echocmr`` packages the served model imports (`SERVING_PACKAGES`, their Python
    files only) into ``directory/echocmr``; returns that path, for ``code_paths``."""
    root = os.path.join(directory, "echocmr")
    os.makedirs(root)
    top = os.path.dirname(echocmr.__file__)
    # the namespace's foundation (configs, errors, progress), not its command line
    for name in sorted(os.listdir(top)):
        if name.endswith(".py") and name not in ("cli.py", "demo.py", "__main__.py"):
            shutil.copy2(os.path.join(top, name), os.path.join(root, name))
    for package in SERVING_PACKAGES:
        source = importlib.import_module(f"echocmr.{package}").__path__[0]
        shutil.copytree(source, os.path.join(root, package),
                        ignore=lambda d, names: [n for n in names if n == "__pycache__"
                                                 or (not n.endswith(".py")
                                                     and not os.path.isdir(os.path.join(d, n)))])
    return root


def log_model(state: dict[str, Any], *, tracking_uri: str, run_id: str,
              name: str = "model", views: ExpectedViews | None = None) -> str:
    """Log the checkpoint's network into run ``run_id`` as echocmr's pyfunc; return its model URI
    (``models:/m-...``). No pickle: the artifact is `model.artifact`'s, the code a file.

    Logs into the active run when it is ``run_id`` (the driver's ``with mlflow.start_run``);
    otherwise it opens the run for this call, which marks it ``FINISHED`` when done.
    """
    import tempfile

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
            name=name, python_model=_model_code_copy(tmp),
            artifacts=artifacts, signature=signature(spec),
            input_example=input_example(), metadata=metadata,
            code_paths=[serving_code(tmp)], pip_requirements=serving_requirements())
    return info.model_uri


def _model_code_copy(directory: str) -> str:
    """The model-code file copied out of the checkout: MLflow writes the path it is given into
    ``MLmodel`` (``model_code_path``), which then names a temporary file, not this machine's
    folders."""
    from importlib.util import find_spec

    path = os.path.join(directory, "model_code.py")
    shutil.copy2(find_spec(MODEL_CODE_MODULE).origin, path)
    return path


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
