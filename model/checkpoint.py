"""Checkpoints (save / read / restore) and the trained model as MLflow logs and loads it.

A checkpoint is a directory holding ``checkpoint.pt`` (``torch.save`` of a dict): ``model``
(CPU state dict, torchvision names), ``optimizer``, ``scheduler``, ``position`` (reader epoch and
batch), ``global_step``, ``world`` (workers that wrote it), ``steps_per_epoch``, ``rng`` (every
rank's generator states), ``progress`` (per rank: None at an epoch boundary, else what it trained
of the epoch so far: step losses, per-task loss sums as a tensor, batch keys, clips, seconds),
``epoch`` (last completed), ``metrics`` (that epoch's), ``config`` (the resolved `TrainConfig` as
a dict) and ``input_spec`` (`train.contract.InputSpec` as a dict). Ray Train stores one per epoch
(``epoch_NNNN``) and, with ``checkpoint_every_steps``, one per N steps (``step_NNNNNNNN``) under its
run directory, each with a small ``resume.json`` beside it (`train.loop`). ``world``,
``steps_per_epoch`` and ``progress`` are newer than format 1's first files; a checkpoint without
them reads as one written by ``len(rng)`` workers at an epoch boundary.
`save_model` writes the same layout for a trained network alone (weights, model config, input
spec; no optimiser or reader position): what ``echocmr models pull`` stores, and all that
`model_from_state` needs.

The logged MLflow model is the network pickled on the CPU in float32 (MLflow's ``pickle``
serialisation, not the ``pt2`` default: ``torch.export`` needs a batch >= 2 example and ties the
graph to the exporting device). It reloads on a CPU-only machine with
``mlflow.pytorch.load_model(uri)`` wherever ``echocmr`` is installed (the class is
``echocmr.model.network.R2Plus1D``; models logged before the ``echocmr.*`` namespace name
``train.model.R2Plus1D`` and load through `_legacy_module_names`). Its signature is ``float32[-1, C, T, S, S] -> float32[-1, 5]`` and its
MLmodel metadata holds ``input_spec``.

`load_model(uri)` is what eval and predict use: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``runs:/RUN/model``, a local MLflow model directory, a checkpoint directory or a
``checkpoint.pt`` file -> ``(model in eval mode on CPU, InputSpec)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict
from typing import Any

import torch

from echocmr.model.config import ModelConfig
from echocmr.model.contract import InputSpec
from echocmr.model.network import R2Plus1D

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def save_checkpoint(directory: str, state: dict[str, Any]) -> str:
    """Write ``state`` to ``directory/checkpoint.pt`` (atomically) and return that path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CHECKPOINT_FILE)
    tmp = path + ".tmp"
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str) -> dict[str, Any]:
    """The state dict of a checkpoint directory or ``checkpoint.pt`` file (loaded on the CPU)."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    # Our own files: they hold RNG states (numpy arrays, tuples), so not weights_only.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an echocmr training checkpoint")
    return state


def save_model(directory: str, model: torch.nn.Module, spec: InputSpec, *,
               epoch: int | None = None, metrics: dict | None = None, **extra: Any) -> str:
    """Write a trained network as a checkpoint `load_model` reads without MLflow; return its path.

    ``model`` must be echocmr's `R2Plus1D` (its config is what rebuilds it); ``extra`` entries are
    stored beside the layout's own (``registered``: where a pulled model came from).
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError(f"the network is a {type(model).__name__}, not echocmr's R2Plus1D; it "
                         "cannot be stored as an echocmr checkpoint")
    return save_checkpoint(directory, {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": {"model": _plain(asdict(config))},
        "input_spec": spec.to_dict(),
        "epoch": epoch,
        "metrics": metrics or {},
        **extra,
    })


def _plain(value):
    """Tuples as lists, as `TrainConfig.to_dict` writes them (checkpoints hold plain data)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def model_from_state(state: dict[str, Any]) -> tuple[R2Plus1D, InputSpec]:
    """The trained network (eval mode, CPU, float32) and its input spec from a checkpoint state."""
    model_cfg = dict(state["config"]["model"])
    model_cfg["init"] = None  # the weights come from the checkpoint, not the --init file
    model = R2Plus1D(ModelConfig(**model_cfg))
    model.load_state_dict(state["model"])
    model.eval()
    return model, InputSpec.from_dict(state["input_spec"])


# The pyfunc's artifact key and input columns (`echocmr.eval.serving` serves them).
ARTIFACT_KEY = "model"
CLIP, DICOM, VIEW = "clip", "dicom", "view"
MODEL_CODE_MODULE = "echocmr.eval.model_code"  # the models-from-code script; logged as a file
RELOG_HINT = ("re-log it in the current format with `echocmr models relog NAME VERSION` (from its "
              "run's checkpoint, docs/pull-a-model.md)")


def signature(spec: InputSpec):
    """The pyfunc's input schema: optional columns ``clip`` (``float32[C, T, S, S]`` per row, see
    ``spec``), ``dicom`` (a DICOM file's bytes) and ``view`` (its view, optional). Each request
    uses one form; outputs differ by form (`echocmr.eval.serving`), so they are left open."""
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
              name: str = "model") -> str:
    """Log the checkpoint's network into run ``run_id`` as echocmr's pyfunc; return its model URI
    (``models:/m-...``). No pickle: the artifact is `train.artifact`'s, the code a file.

    Logs into the active run when it is ``run_id`` (the driver's ``with mlflow.start_run``);
    otherwise it opens the run for this call, which marks it ``FINISHED`` when done.
    """
    import tempfile
    from importlib.util import find_spec

    import mlflow

    from echocmr.model.artifact import echocmr_version, torch_version, write_model_dir

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
        info = mlflow.pyfunc.log_model(
            name=name, python_model=find_spec(MODEL_CODE_MODULE).origin,
            artifacts={ARTIFACT_KEY: artifact}, signature=signature(spec),
            input_example=input_example(spec), metadata=metadata,
            pip_requirements=[f"echocmr=={echocmr_version()}", f"torch=={torch_version()}"])
    return info.model_uri


def load_model(uri: str, *, tracking_uri: str | None = None) -> tuple[torch.nn.Module, InputSpec]:
    """A trained model (eval mode, CPU) and its `InputSpec`, from any place a model lives.

    ``uri``: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model``, another
    MLflow model URI, a local MLflow model directory (with ``MLmodel``), a `train.artifact`
    directory (``model.json`` + ``weights.pt``), a checkpoint directory or a ``checkpoint.pt``
    file. MLflow URIs use ``tracking_uri`` (else ``MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db``); the model is downloaded and read as a local directory.
    """
    model, spec = _load_any(uri, tracking_uri)
    _check_shard_format(spec, uri)
    return model, spec


def _load_any(uri: str, tracking_uri: str | None) -> tuple[torch.nn.Module, InputSpec]:
    from echocmr.model.artifact import is_model_dir, read_model_dir

    local = os.path.expanduser(uri)
    if os.path.exists(local):
        if os.path.isdir(local) and os.path.isfile(os.path.join(local, "MLmodel")):
            return _load_mlflow_dir(local, uri)
        if os.path.isdir(local) and is_model_dir(local):
            return read_model_dir(local)[:2]
        return model_from_state(read_checkpoint(local))
    if "://" in uri or uri.startswith(("models:/", "runs:/")):
        import tempfile

        import mlflow

        from echocmr.train.tracking import resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)
        with tempfile.TemporaryDirectory(prefix="echocmr-model-") as tmp:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp,
                                                       tracking_uri=tracking_uri)
            return _load_mlflow_dir(path, uri)
    raise FileNotFoundError(f"model {uri!r} is neither an MLflow URI (models:/NAME@ALIAS, "
                            "runs:/...) nor an existing checkpoint or model directory")


def _check_shard_format(spec: InputSpec, uri: str) -> None:
    """Warn when the model was trained on shards of another format: its inputs then differ."""
    from echocmr.shards.format import FORMAT_VERSION

    if spec.shard_format is not None and spec.shard_format != FORMAT_VERSION:
        log.warning("%s was trained on shard format %d; this echocmr feeds format %d inputs "
                    "(docs/formats.md says what changed): retrain it on re-ingested shards",
                    uri, spec.shard_format, FORMAT_VERSION)


def mlflow_artifact_dir(local: str) -> str | None:
    """The `train.artifact` directory inside a local MLflow model directory, None for models
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

    from echocmr.model.artifact import read_model_dir

    artifact = mlflow_artifact_dir(local)
    if artifact is not None:
        return read_model_dir(artifact)[:2]
    info = Model.load(os.path.join(local, "MLmodel"))
    spec = (info.metadata or {}).get("input_spec")
    if "pytorch" not in info.flavors or spec is None:
        raise ValueError(f"{uri} is not a model logged by echocmr train (no echocmr artifact, "
                         "no input_spec in its MLmodel metadata)")
    return _load_pickled(local, uri), InputSpec.from_dict(spec)


def _load_pickled(local: str, uri: str) -> torch.nn.Module:
    """A network pickled by ``mlflow.pytorch`` (echocmr before the pyfunc artifact)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    log.warning("%s is a pickled network (logged by an older echocmr); %s", uri, RELOG_HINT)
    try:
        try:
            model = mlflow.pytorch.load_model(local, map_location="cpu")
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in LEGACY_PACKAGES:
                raise
            # Logged by echocmr before the `echocmr.*` namespace: its pickle names `train.model`.
            log.info("%s names the old module %r; loading it through the old module names",
                     uri, exc.name)
            with _legacy_module_names():
                model = mlflow.pytorch.load_model(local, map_location="cpu")
    except MlflowException as exc:  # e.g. MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
        raise ValueError(f"{uri} is a pickled network and cannot be loaded here ({exc}); "
                         f"{RELOG_HINT}") from None
    model.eval()
    return model


# Top-level packages of echocmr 0.1, before everything moved under `echocmr.`. A model pickled
# then names its classes by them (`train.model.R2Plus1D`, `train.config.ModelConfig`).
LEGACY_PACKAGES = ("train", "shards", "ingest", "eval", "cluster")
# Modules that moved since (0.3: the model package); everything else is `echocmr.<old name>`.
MOVED_MODULES = {"train.model": "echocmr.model.network", "train.contract": "echocmr.model.contract"}


def current_module_name(legacy: str) -> str:
    """Where a module an old pickle names lives now (`train.model` -> `echocmr.model.network`)."""
    return MOVED_MODULES.get(legacy, f"echocmr.{legacy}")


class _LegacyAliasFinder:
    """Resolves `train.x` to the module that holds its classes now (same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        import importlib
        import importlib.util

        if fullname.split(".")[0] not in LEGACY_PACKAGES:
            return None
        module = importlib.import_module(current_module_name(fullname))
        return importlib.util.spec_from_loader(fullname, _AliasLoader(module))


class _AliasLoader:
    def __init__(self, module) -> None:
        self.module = module

    def create_module(self, spec):
        return self.module

    def exec_module(self, module) -> None:
        pass


@contextlib.contextmanager
def _legacy_module_names():
    """Let an old pickle find `train.model` as `echocmr.model.network`, for one load only: nothing
    named `train` stays in `sys.modules` to shadow (or be shadowed by) somebody else's package."""
    import sys

    taken = [name for name in LEGACY_PACKAGES if name in sys.modules]
    if taken:
        raise RuntimeError(
            f"this model was logged by echocmr 0.1 and names module {taken[0]!r}, but another "
            f"package of that name is loaded in this Python; load it in a fresh process, or "
            f"{RELOG_HINT}")
    finder = _LegacyAliasFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.split(".")[0] in LEGACY_PACKAGES]:
            del sys.modules[name]


def _finite(metrics: dict) -> dict:
    import math

    return {k: v for k, v in metrics.items()
            if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))}
