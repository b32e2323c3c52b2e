"""The view classifier as an MLflow pyfunc (`model.view_store.log_view_model` logs it from code).

Request: a DataFrame with a ``dicom`` column (each row one DICOM file's bytes). Response: one
row per file: ``status`` (``kept`` or ``rejected``), ``reason`` and ``detail`` (ingest's reason
codes when the file cannot be used), ``view`` (a target view, ``other``, or ``unknown`` below the
model's threshold), ``confidence`` (calibrated) and ``best`` (the class it would pick anyway).
Files go through ingest's preprocessing (`ingest.preprocess.preprocess_dicom`) with the clip size
and frame rate of the shards the classifier was trained on.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pandas as pd

from echocmr.ingest.config import PreprocessConfig
from echocmr.ingest.dicom_io import RejectedInput
from echocmr.ingest.preprocess import preprocess_dicom
from echocmr.model.views import ViewClassifier, read_view_model

try:  # a base class when MLflow is installed (always, for a served model)
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - echocmr always installs mlflow
    PythonModel = object

VIEW_ARTIFACT_KEY = "view_model"
DICOM = "dicom"


def preprocess_for(classifier: ViewClassifier) -> PreprocessConfig:
    """Ingest's preprocessing at the classifier's stored clip size and frame rate."""
    spec = classifier.model.spec
    config = PreprocessConfig()
    config.size = int(spec.clip_size or config.size)
    config.target_fps = float(spec.fps or config.target_fps)
    return config


def classify_file(classifier: ViewClassifier, path: str,
                  config: PreprocessConfig | None = None) -> dict[str, Any]:
    """One file's view (the response row of the module docstring); a rejected file says why."""
    try:
        clip = preprocess_dicom(path, config or preprocess_for(classifier))
    except RejectedInput as exc:
        return {"status": "rejected", "reason": exc.reason, "detail": exc.detail, "view": None,
                "confidence": None, "best": None}
    call = classifier(clip.frames_THW)
    return {"status": "kept", "reason": None, "detail": None, "view": call.view,
            "confidence": call.confidence, "best": call.best}


class ViewPyfunc(PythonModel):
    """The served view classifier (module docstring)."""

    def load_context(self, context) -> None:
        model = read_view_model(context.artifacts[VIEW_ARTIFACT_KEY])
        self.classifier = ViewClassifier(model)
        self.preprocess = preprocess_for(self.classifier)

    def predict(self, context, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if DICOM not in model_input:
            raise ValueError(f"a view request has a {DICOM!r} column of DICOM bytes")
        rows = []
        for data in model_input[DICOM].tolist():
            with tempfile.NamedTemporaryFile(suffix=".dcm", delete=False) as f:
                f.write(bytes(data))
            try:
                rows.append(classify_file(self.classifier, f.name, self.preprocess))
            finally:
                os.unlink(f.name)
        return pd.DataFrame(rows, columns=["status", "reason", "detail", "view", "confidence",
                                           "best"])
