"""Where a view classifier lives: logged to MLflow, registered with its card, loaded from a URI.

`log_view_model` logs an artifact directory (`model.views`) as a pyfunc from code
(`model.view_code` -> `model.view_serving.ViewPyfunc`), no pickle. `register_view_model` makes it
a version of a registered model, writes the card (classes, per-class accuracy and confusion on
val, training sites) as the version's description, and points ``champion`` at it when it is the
first version or beats the champion's val accuracy on the same shard set (else ``challenger``).
`load_view_classifier` reads one back from ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``runs:/...``, a local MLflow model directory or an artifact directory, and names the exact
version it resolved (``models:/NAME/3``) for lineage.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from echocmr.model.artifact import echocmr_version, torch_version
from echocmr.model.registry import parse_reference
from echocmr.model.tracking import resolve_tracking_uri, set_name
from echocmr.model.view_serving import DICOM, VIEW_ARTIFACT_KEY
from echocmr.model.views import (
    VIEW_CLASSES,
    ViewClassifier,
    format_confusion,
    is_view_model_dir,
    read_view_model,
)

VIEW_MODEL_CODE_MODULE = "echocmr.model.view_code"  # logged as a file (models-from-code)
VIEW_KIND_TAG = "echocmr.kind"  # "view_classifier" on the run, the logged model and versions


def log_view_model(artifact_dir: str, *, tracking_uri: str, run_id: str) -> str:
    """Log the classifier in ``artifact_dir`` into run ``run_id``; return its model URI."""
    from importlib.util import find_spec

    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    mlflow.set_tracking_uri(tracking_uri)
    meta = read_view_model(artifact_dir).meta
    signature = ModelSignature(inputs=Schema([ColSpec(DataType.binary, DICOM)]))
    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        raise ValueError(f"log_view_model: run {run_id} is not the active run")
    info = mlflow.pyfunc.log_model(
        name="view_model", python_model=find_spec(VIEW_MODEL_CODE_MODULE).origin,
        artifacts={VIEW_ARTIFACT_KEY: artifact_dir}, signature=signature,
        input_example=pd.DataFrame({DICOM: [b""]}).iloc[:0],
        metadata={"kind": "view_classifier", "classes": list(VIEW_CLASSES),
                  "input_spec": meta["input_spec"], "threshold": meta["threshold"]},
        pip_requirements=[f"echocmr=={echocmr_version()}", f"torch=={torch_version()}"])
    return info.model_uri


@dataclass
class ViewRegistration:
    name: str
    version: str
    alias: str  # champion or challenger
    decision: str


def register_view_model(model_uri: str, name: str, *, tracking_uri: str, run_id: str,
                        val: dict, data_digest: str, train_sites: list[str],
                        shards: str) -> ViewRegistration:
    """Register ``model_uri`` as a version of ``name`` with its card (module docstring)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    accuracy = float(val["accuracy"])
    tags = {VIEW_KIND_TAG: "view_classifier", "run_id": run_id, "data_digest": data_digest,
            "val_accuracy": f"{accuracy:.4f}", "train_sites": ",".join(train_sites)}
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    if champion is None:
        alias, decision = "champion", "first version"
    elif champion.tags.get("data_digest") != data_digest:
        alias, decision = "challenger", (f"champion v{champion.version} was validated on another "
                                         "shard set: compare both on a held-out site "
                                         "(docs/views.md) and promote by hand")
    elif accuracy > float(champion.tags.get("val_accuracy", "nan") or "nan"):
        alias, decision = "champion", (f"val accuracy {accuracy:.4f} beats v{champion.version}'s "
                                       f"{champion.tags.get('val_accuracy')}")
    else:
        alias, decision = "challenger", (f"val accuracy {accuracy:.4f} does not beat "
                                         f"v{champion.version}'s {champion.tags.get('val_accuracy')}")
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "champion_decision", decision)
    client.update_model_version(name, version, description=view_card(
        name=name, version=version, run_id=run_id, val=val, train_sites=train_sites,
        shards=shards, digest=data_digest))
    return ViewRegistration(name=name, version=version, alias=alias, decision=decision)


def view_card(*, name: str, version: str, run_id: str, val: dict, train_sites: list[str],
              shards: str, digest: str) -> str:
    """The version's description as Markdown: classes, val accuracy per class, confusion."""
    import numpy as np

    matrix = np.asarray(val["confusion"])
    lines = [f"# {name} version {version}: view classifier", "",
             f"Trained by echocmr {echocmr_version()} (run `{run_id}`). Use at ingest: "
             f"`echocmr ingest --view-model models:/{name}/{version} ...` (docs/views.md).", "",
             f"- classes: {', '.join(VIEW_CLASSES)} (below confidence {val['threshold']:.2f}: "
             "unknown)",
             f"- trained on sites: {', '.join(train_sites) or '-'}",
             f"- shard set: `{set_name(shards)}` (its name; manifest sha256 `{digest}`)",
             f"- val clips: {int(matrix.sum())}; accuracy {100 * val['accuracy']:.1f} %; "
             f"temperature {val['temperature']:.3f}", "",
             "| class | val clips | accuracy |", "|---|---|---|"]
    for k, c in enumerate(VIEW_CLASSES):
        n = int(matrix[k].sum())
        acc = f"{100 * matrix[k, k] / n:.1f} %" if n else "-"
        lines.append(f"| {c} | {n} | {acc} |")
    lines += ["", "Confusion on val (rows: true view; columns: predicted, `unknown` last):", "",
              "```", format_confusion(matrix), "```", ""]
    return "\n".join(lines)


def load_view_classifier(uri: str, *, tracking_uri: str | None = None,
                         threshold: float | None = None) -> ViewClassifier:
    """A `ViewClassifier` from any place a view model lives (module docstring); its ``source``
    is the exact registered version when ``uri`` names an alias."""
    local = os.path.expanduser(uri)
    if os.path.isdir(local):
        if is_view_model_dir(local):
            return ViewClassifier(read_view_model(local), source=os.path.abspath(local),
                                  threshold=threshold)
        if os.path.isfile(os.path.join(local, "MLmodel")):
            return ViewClassifier(read_view_model(_artifact_in(local, uri)),
                                  source=os.path.abspath(local), threshold=threshold)
        raise ValueError(f"{uri} is neither a view-model directory nor an MLflow model")
    if not uri.startswith(("models:/", "runs:/")) and "://" not in uri:
        raise FileNotFoundError(f"view model {uri!r}: no such directory, and not an MLflow URI "
                                "(models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...)")
    import mlflow

    tracking_uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    source = uri
    if uri.startswith("models:/"):
        source = _pinned(uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="echocmr-view-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp,
                                                   tracking_uri=tracking_uri)
        model = read_view_model(_artifact_in(path, uri))
    return ViewClassifier(model, source=source, threshold=threshold)


def fetch_view_model(uri: str, *, tracking_uri: str | None, dst: str) -> str:
    """The artifact directory of the view model at ``uri``, downloaded into ``dst`` (a local
    directory is returned as it is)."""
    local = os.path.expanduser(uri)
    if os.path.isdir(local):
        return local if is_view_model_dir(local) else _artifact_in(local, uri)
    import mlflow

    tracking_uri = resolve_tracking_uri(tracking_uri)
    path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst,
                                               tracking_uri=tracking_uri)
    return _artifact_in(path, uri)


def _pinned(uri: str, tracking_uri: str) -> str:
    """``models:/NAME/VERSION`` for ``models:/NAME@ALIAS`` (the version the alias points at)."""
    from mlflow.tracking import MlflowClient

    name, alias, version = parse_reference(uri)
    if alias is not None:
        version = MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).version
    return f"models:/{name}/{version}"


def _artifact_in(local: str, uri: str) -> str:
    from mlflow.models import Model

    info = Model.load(os.path.join(local, "MLmodel"))
    artifacts = (info.flavors.get("python_function") or {}).get("artifacts") or {}
    entry = artifacts.get(VIEW_ARTIFACT_KEY)
    if entry is None:
        raise ValueError(f"{uri} is not a view classifier (no {VIEW_ARTIFACT_KEY!r} artifact); "
                         "a CMR model goes to --model")
    return os.path.join(local, entry["path"] if isinstance(entry, dict) else entry)
