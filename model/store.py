"""Where a trained model lives, and how it is logged there and loaded from anywhere.

The logged MLflow model is a pyfunc from code (MLflow models-from-code): the network as plain
tensors and JSON (`model.artifact`, no pickle), and the file of `echocmr.model.model_code` that
names the class serving it (`model.serving`). Its signature takes ``clip``, ``dicom`` and
``view`` columns; its MLmodel metadata holds ``input_spec``.

`load_model(uri)` is what eval and predict use: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``runs:/RUN/model``, a local MLflow model directory, an artifact directory, a checkpoint directory
or a ``checkpoint.pt`` file -> ``(model in eval mode on CPU, InputSpec)``. Networks pickled by
older echocmr versions load through `model.legacy`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

from echocmr.model.artifact import is_model_dir, read_model_dir
from echocmr.model.checkpoint import model_from_state, read_checkpoint
from echocmr.model.contract import InputSpec
from echocmr.model.legacy import load_pickled
from echocmr.model.tracking import resolve_tracking_uri
from echocmr.shards.format import FORMAT_VERSION, clip_encoding

log = logging.getLogger(__name__)

# The pyfunc's artifact key and input columns (`model.serving` serves them).
ARTIFACT_KEY = "model"
CLIP, DICOM, VIEW = "clip", "dicom", "view"
def load_model(uri: str, *, tracking_uri: str | None = None) -> tuple[torch.nn.Module, InputSpec]:
    """A trained model (eval mode, CPU) and its `InputSpec`, from any place a model lives.

    ``uri``: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model``, another
    MLflow model URI, a local MLflow model directory (with ``MLmodel``), a `model.artifact`
    directory (``model.json`` + ``weights.pt``), a checkpoint directory or a ``checkpoint.pt``
    file. MLflow URIs use ``tracking_uri`` (else ``MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db``); the model is downloaded and read as a local directory.
    """
    with opened_model(uri, tracking_uri=tracking_uri) as local:
        return load_local(local, uri)


@contextlib.contextmanager
def opened_model(uri: str, *, tracking_uri: str | None = None) -> Iterator[str]:
    """The local path of the model at ``uri`` while the block runs: the path itself when it is
    local, else the MLflow model downloaded into a temporary directory (removed afterwards), so
    a caller reads the network and what was logged beside it from one download."""
    local = os.path.expanduser(uri)
    if os.path.exists(local):
        yield local
        return
    if "://" in uri or uri.startswith(("models:/", "runs:/")):
        import tempfile

        import mlflow

        tracking_uri = resolve_tracking_uri(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)
        with tempfile.TemporaryDirectory(prefix="echocmr-model-") as tmp:
            yield mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp,
                                                      tracking_uri=tracking_uri)
        return
    raise FileNotFoundError(f"model {uri!r} is neither an MLflow URI (models:/NAME@ALIAS, "
                            "runs:/...) nor an existing checkpoint or model directory")


def load_local(local: str, uri: str) -> tuple[torch.nn.Module, InputSpec]:
    """The network and spec of a local path `opened_model` gave for ``uri``."""
    if os.path.isdir(local) and os.path.isfile(os.path.join(local, "MLmodel")):
        model, spec = _load_mlflow_dir(local, uri)
    elif os.path.isdir(local) and is_model_dir(local):
        model, spec = read_model_dir(local)[:2]
    else:
        model, spec = model_from_state(read_checkpoint(local))
    _check_shard_format(spec, uri)
    return model, spec


def _check_shard_format(spec: InputSpec, uri: str) -> None:
    """Warn when the model was trained on shards whose clips were encoded otherwise (another
    clip encoding, `shards.format.clip_encoding`): its inputs then differ."""
    if (spec.shard_format is not None
            and clip_encoding(spec.shard_format) != clip_encoding(FORMAT_VERSION)):
        log.warning("%s was trained on shard format %d; this echocmr feeds format %d inputs "
                    "(docs/formats.md says what changed): retrain it on re-ingested shards",
                    uri, spec.shard_format, FORMAT_VERSION)


def mlflow_artifact_dir(local: str) -> str | None:
    """The `model.artifact` directory inside a local MLflow model directory, None for models
    logged before it existed (pickled networks). Reads ``MLmodel`` only: no tracking server."""
    from mlflow.models import Model

    info = Model.load(os.path.join(local, "MLmodel"))
    artifacts = (info.flavors.get("python_function") or {}).get("artifacts") or {}
    entry = artifacts.get(ARTIFACT_KEY)
    if entry is None:
        return None
    return os.path.join(local, entry["path"] if isinstance(entry, dict) else entry)


def _load_mlflow_dir(local: str, uri: str) -> tuple[torch.nn.Module, InputSpec]:
    from mlflow.models import Model

    artifact = mlflow_artifact_dir(local)
    if artifact is not None:
        return read_model_dir(artifact)[:2]
    info = Model.load(os.path.join(local, "MLmodel"))
    spec = (info.metadata or {}).get("input_spec")
    if "pytorch" not in info.flavors or spec is None:
        raise ValueError(f"{uri} is not a model logged by echocmr train (no echocmr artifact, "
                         "no input_spec in its MLmodel metadata)")
    return load_pickled(local, uri), InputSpec.from_dict(spec)
