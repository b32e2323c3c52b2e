"""The model artifact: a trained network as plain data that outlives the code that wrote it.

A directory holding two files, no pickled Python object in either::

    weights.pt   torch.save of a flat {parameter name: tensor} dict (torchvision r2plus1d_18
                 names), float32 on the CPU; read back with torch.load(weights_only=True)
    model.json   {"format": 1, "kind": "echocmr.R2Plus1D", "model_config": {...},
                  "input_spec": {...}, "echocmr_version": "...", "torch_version": "...",
                  "epoch": N, "val_metrics": {...}}

`read_model_dir` rebuilds `model.network.R2Plus1D` from ``model_config`` and loads the weights; it
refuses a ``format`` it does not know, saying to upgrade echocmr. This is what the logged MLflow
model carries (as its pyfunc artifact ``model``), what ``echocmr models pull`` unpacks, and what
`model.store.load_model` reads for eval and predict: one reader for all of them.
(``safetensors`` is not installed here; a weights-only ``torch.save`` of tensors is the same
plain data and loads without executing code.)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

import torch

from echocmr.model.config import ModelConfig
from echocmr.model.contract import InputSpec
from echocmr.model.network import R2Plus1D

ARTIFACT_FORMAT = 1
KIND = "echocmr.R2Plus1D"
WEIGHTS_FILE = "weights.pt"
META_FILE = "model.json"


def portable_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict as the artifacts store it: on the CPU, floating tensors as
    float32, contiguous (loads on any device, whatever precision it trained in)."""
    return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
            .contiguous() for k, v in module.state_dict().items()}


def echocmr_version() -> str:
    """The installed echocmr's version (what a logged model's requirements pin)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("echocmr")
    except PackageNotFoundError:  # a source tree on sys.path without an install
        return "0+unknown"


def torch_version() -> str:
    return torch.__version__.split("+")[0]


def model_config_dict(config: ModelConfig) -> dict[str, Any]:
    """The network's shape as plain data (``init`` left out: the weights are the artifact's)."""
    data = asdict(config)
    data.pop("init", None)
    data["layers"] = list(data["layers"])
    return data


def write_model_dir(directory: str | os.PathLike, model: R2Plus1D, spec: InputSpec, *,
                    epoch: int | None = None, val_metrics: dict | None = None) -> str:
    """Write ``model`` (echocmr's `R2Plus1D`) and ``spec`` as the artifact; return the directory."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError(f"the network is a {type(model).__name__}, not echocmr's R2Plus1D")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    torch.save(portable_weights(model), os.path.join(directory, WEIGHTS_FILE))
    meta = {"format": ARTIFACT_FORMAT, "kind": KIND, "model_config": model_config_dict(config),
            "num_outputs": int(model.fc.out_features), "input_spec": spec.to_dict(),
            "echocmr_version": echocmr_version(), "torch_version": torch_version(),
            "epoch": epoch, "val_metrics": val_metrics or {}}
    with open(os.path.join(directory, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    return directory


def is_model_dir(directory: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(directory, META_FILE))


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """``model.json``, checked: a format this echocmr does not know is refused with what to do."""
    path = os.path.join(directory, META_FILE)
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise ValueError(f"{path} is not an echocmr model description")
    if meta.get("format") != ARTIFACT_FORMAT:
        raise ValueError(
            f"{path} is model format {meta.get('format')!r}, written by echocmr "
            f"{meta.get('echocmr_version', '?')}; this echocmr ({echocmr_version()}) reads format "
            f"{ARTIFACT_FORMAT}: install the echocmr the model's requirements name "
            f"(echocmr=={meta.get('echocmr_version', '?')})")
    return meta


def read_model_dir(directory: str | os.PathLike) -> tuple[R2Plus1D, InputSpec, dict[str, Any]]:
    """``(network in eval mode on the CPU, InputSpec, model.json)`` from an artifact directory."""
    meta = read_meta(directory)
    config = ModelConfig(**{**meta["model_config"], "init": None})
    model = R2Plus1D(config, num_outputs=int(meta.get("num_outputs", 5)))
    weights = torch.load(os.path.join(directory, WEIGHTS_FILE), map_location="cpu",
                         weights_only=True)
    model.load_state_dict(weights)
    model.eval()
    return model, InputSpec.from_dict(meta["input_spec"]), meta
