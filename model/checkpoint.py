"""Checkpoints: the training state on disk, and the trained network rebuilt from one.

A checkpoint is a directory holding ``checkpoint.pt`` (``torch.save`` of a dict with a
``format`` field; docs/formats.md lists its keys and their history). `save_model` writes the same
layout for a trained network alone (weights, model config, input spec; no optimiser or reader
position): what ``echocmr models pull`` stores, and all that `model_from_state` needs.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import torch

from echocmr.model.config import ModelConfig
from echocmr.model.contract import InputSpec
from echocmr.model.network import R2Plus1D

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
