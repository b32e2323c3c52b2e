"""The view classifier a CMR model expects, found where the model itself lives.

A CMR model trained on shards whose views a view classifier labelled (stats.json
``view_models``) records it: ``model.json`` holds ``views`` (``data.views``, what it read) and
``view_model`` (the exact version, ``models:/views/3``), and the logged pyfunc carries the
classifier's directory as the artifact `VIEW_ARTIFACT_KEY` (`model.publish.record_expected_views`).
`recorded_views` reads that back from a local model path (an MLflow model directory, the directory
``echocmr models pull`` writes, or an artifact directory): the classifier logged with the model
when it is there, else the recorded version from the registry, so ``echocmr predict`` filters by
view as the served model does without ``--view-model`` (which still overrides it).

A model that records no view model gives None (every file is used, as before); one whose view
model cannot be found gives the views and a warning, and is used without a filter.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from echocmr.model.artifact import is_model_dir, read_meta
from echocmr.model.pulled import MLFLOW_SUBDIR
from echocmr.model.store import mlflow_artifact_dir
from echocmr.model.view_serving import VIEW_ARTIFACT_KEY
from echocmr.model.view_store import load_view_classifier
from echocmr.model.views import ViewClassifier, read_view_model
from echocmr.shards.format import TARGET_VIEWS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordedViews:
    """What a CMR model records about views: the views it read, the view model's version
    (``source``), the classifier when it was found (else None) and where it came from
    (``"logged with the model"``, ``"registry"``)."""

    views: tuple[str, ...]
    source: str | None
    classifier: ViewClassifier | None
    found_in: str | None


def recorded_views(local: str, *, tracking_uri: str | None = None) -> RecordedViews | None:
    """`RecordedViews` of the model at the local path ``local`` (module docstring); None when the
    model records no view model."""
    mlflow_dir = _mlflow_dir(local)
    artifact = mlflow_artifact_dir(mlflow_dir) if mlflow_dir else None
    if artifact is None and os.path.isdir(local) and is_model_dir(local):
        artifact = local
    meta = read_meta(artifact) if artifact else {}
    source = meta.get("view_model")
    logged = _logged_view_dir(mlflow_dir) if mlflow_dir else None
    if not source and logged is None:
        return None
    views = tuple(meta.get("views") or TARGET_VIEWS)
    if logged is not None:
        return RecordedViews(views=views, source=source or logged, found_in="logged with the model",
                             classifier=ViewClassifier(read_view_model(logged),
                                                       source=source or logged))
    try:
        classifier = load_view_classifier(source, tracking_uri=tracking_uri)
    except Exception as exc:  # the model still predicts; it says why views are not checked
        log.warning("the model expects view model %s, which could not be loaded (%s): every "
                    "file is used whatever its view; pass --view-model to check views", source,
                    exc)
        return RecordedViews(views=views, source=source, classifier=None, found_in=None)
    return RecordedViews(views=views, source=source, classifier=classifier, found_in="registry")


def _mlflow_dir(local: str) -> str | None:
    """The MLflow model directory at ``local``: itself, or a pulled directory's copy."""
    for path in (local, os.path.join(local, MLFLOW_SUBDIR)):
        if os.path.isfile(os.path.join(path, "MLmodel")):
            return path
    return None


def _logged_view_dir(mlflow_dir: str) -> str | None:
    from mlflow.models import Model

    info = Model.load(os.path.join(mlflow_dir, "MLmodel"))
    entry = ((info.flavors.get("python_function") or {}).get("artifacts") or {}).get(
        VIEW_ARTIFACT_KEY)
    if entry is None:
        return None
    path = os.path.join(mlflow_dir, entry["path"] if isinstance(entry, dict) else entry)
    return path if os.path.isdir(path) else None
