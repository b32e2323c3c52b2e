"""Training configuration: one small typed config per component, loaded from YAML with strict keys.

``TrainConfig`` holds ``model`` (`ModelConfig`), ``data`` (`DataConfig`, which holds
`AugmentConfig`) and ``optim`` (`OptimConfig`) plus the run's own settings. Runtime facts (rank,
world size, device) are never stored here; they are passed to the components that need them.

A YAML file mirrors the dataclasses::

    epochs: 4
    workers: 2
    model: {width: 16}
    data: {frames: 16, size: 64, augment: {pad: 4}}

Loading is `echocmr.config`'s (one loader for every command): layers merge deeply, unknown keys
raise `ConfigError` naming the key, the file and the closest match, so a typo never silently
trains the default. ``PRESETS`` holds named starting points (``cpu-small`` is the width-16
R(2+1)D on 16x64x64 clips that trains in minutes on two CPU cores; ``demo`` is what
``echocmr demo`` trains).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from echocmr import config as loader
from echocmr.config import ConfigError, check_choices, read_yaml
from echocmr.model.config import ModelConfig
from echocmr.read.config import DataConfig
from echocmr.shards.format import TASKS

__all__ = ["PRESETS", "ConfigError", "OptimConfig",
           "SelectionConfig", "TrainConfig", "dump_yaml", "flat_params", "load_config", "read_yaml"]


@dataclass(kw_only=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (per-step cosine after a linear warm-up)."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3  # for the global batch; not rescaled with the number of workers
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 0.5
    schedule: Literal["cosine", "constant"] = "cosine"  # per step, after the warm-up
    grad_clip: float | None = 5.0  # max global grad norm; None disables

    def __post_init__(self) -> None:
        check_choices(self, "optim.")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")


@dataclass(kw_only=True)
class SelectionConfig:
    """How the best checkpoint is chosen, fixed before training (recorded on the run).

    ``metric: auc``: the mean clip-level val AUC over ``tasks`` (weighted by ``weights`` when
    given), falling back to -val loss in an epoch where none of them has an AUC; ``metric: loss``:
    -val loss (the task-weighted BCE of all tasks). The default, WMA's val AUC, is the one label
    with a strong expected signal (the positive control); averaging in the tasks that are null by
    design mostly adds noise to the choice (docs/evaluation.md, "Model selection").
    """

    metric: Literal["auc", "loss"] = "auc"
    tasks: tuple[str, ...] = ("wma",)
    weights: dict[str, float] | None = None  # per task in ``tasks``; None = equal

    def __post_init__(self) -> None:
        check_choices(self, "selection.")
        self.tasks = tuple(self.tasks)
        unknown = set(self.tasks) - set(TASKS)
        if unknown or not self.tasks:
            raise ConfigError(f"selection.tasks must be a non-empty list of {TASKS}, got "
                              f"{list(self.tasks)}")
        if self.weights is not None:
            extra = set(self.weights) - set(self.tasks)
            if extra or any(w < 0 for w in self.weights.values()) or not any(
                    self.weights.get(t, 0.0) for t in self.tasks):
                raise ConfigError(f"selection.weights must give tasks of selection.tasks "
                                  f"weights >= 0, one > 0; got {self.weights}")

    def describe(self) -> str:
        """e.g. ``val AUC (wma)`` or ``val loss``: what the run's best epoch was chosen on."""
        if self.metric == "loss":
            return "val loss"
        w = self.weights
        parts = [f"{w.get(t, 0.0):g}*{t}" if w else t for t in self.tasks]
        return f"val AUC ({' + '.join(parts)})"


@dataclass(kw_only=True)
class TrainConfig:
    """One training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 10
    workers: int = 1  # data-parallel Ray workers
    gpu: bool = False  # one GPU per worker, DALI "mixed" decode, NCCL
    bf16: bool = True  # bf16 autocast (GPU only)
    channels_last: bool = True  # channels-last-3d memory format (GPU only)
    compile: bool = False  # torch.compile the model (GPU only)
    cpus_per_worker: int = 1
    task_weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TASKS, 1.0))
    pos_weight: bool = False  # weight positives by train negatives/positives (stats.json)
    min_positives: int = 5  # a task enters the val mean AUC with >= this many positives & negatives
    max_steps_per_epoch: int | None = None  # cap (quick runs, tests); None = the whole split
    run_name: str | None = None  # Ray run + MLflow run name; reuse it to resume
    storage: str | None = None  # Ray checkpoint storage (shared by all nodes); default ./train_runs
    # Node-local directory for a copy of a shard set at a URL (s3://, gs://), which DALI needs;
    # default $ECHOCMR_CACHE, else ~/.cache/echocmr/shards, on each node (shards.stage).
    cache_dir: str | None = None
    experiment: str = "echocmr"  # MLflow experiment
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    # Checkpoints kept: the N best by val score plus the latest (so the best is always kept and a
    # resume always has its epoch); a full R(2+1)D-18 one is ~400 MB. None keeps every epoch's.
    keep_checkpoints: int | None = 3
    # Also checkpoint every N optimiser steps inside an epoch (a restart then resumes at the
    # last of them, not at the epoch's start); None: at the end of each epoch only.
    checkpoint_every_steps: int | None = None
    register: str | None = None  # MLflow registered model name
    selection: SelectionConfig = field(default_factory=SelectionConfig)  # best-checkpoint rule

    def __post_init__(self) -> None:
        for name, cls in (("model", ModelConfig), ("data", DataConfig), ("optim", OptimConfig),
                          ("selection", SelectionConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, loader.build(cls, getattr(self, name), where=name))
        if self.epochs < 1 or self.workers < 1 or self.cpus_per_worker < 1:
            raise ConfigError("epochs, workers and cpus_per_worker must be >= 1")
        unknown = set(self.task_weights) - set(TASKS)
        if unknown:
            raise ConfigError(
                f"task_weights has unknown tasks {sorted(unknown)}; tasks are {TASKS}")
        self.task_weights = {t: float(self.task_weights.get(t, 1.0)) for t in TASKS}
        if any(w < 0 for w in self.task_weights.values()) or not any(self.task_weights.values()):
            raise ConfigError(f"task_weights must be >= 0 with one > 0, got {self.task_weights}")
        if self.data.decoder == "mixed" and not self.gpu:
            raise ConfigError("data.decoder: mixed decodes on the GPU and needs gpu: true "
                              "(--gpu); use auto or cpu for a CPU run")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1 (the best is always kept) or null "
                              f"(keep all), got {self.keep_checkpoints}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            raise ConfigError(f"checkpoint_every_steps must be >= 1 or null (epoch checkpoints "
                              f"only), got {self.checkpoint_every_steps}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError("max_steps_per_epoch must be >= 1 or null")
        if self.cache_dir is not None and "://" in self.cache_dir:
            raise ConfigError(f"cache_dir must be a local directory on each node (DALI reads "
                              f"local files), got {self.cache_dir!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe; tuples become lists)."""
        return loader.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | None = None) -> TrainConfig:
        """Build from a nested dict, rejecting unknown keys (see `echocmr.config.build`)."""
        return loader.build(cls, data, source=source)


# Measured on 2 CPU cores: ~18 clips/s; learns the phantom WMA pattern in a few epochs.
_CPU_SMALL: dict[str, Any] = {
    "epochs": 4,
    "model": {"width": 16},
    "data": {"frames": 16, "period": 2, "size": 64, "batch_size": 8, "augment": {"pad": 4}},
    "optim": {"lr": 3e-3, "warmup_epochs": 0.25},
    "min_positives": 3,
}

# Named starting points; a YAML file and command-line flags apply on top.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu-small": _CPU_SMALL,
    # torchvision r2plus1d_18 at 32x112x112 on GPUs, bf16.
    "gpu": {"gpu": True, "epochs": 45, "data": {"batch_size": 16, "num_threads": 4}},
    # What `echocmr demo` trains: cpu-small for eight epochs of batches of 4 per worker (the
    # demo's 2 workers make the global batch of 8 that the measured probe learned WMA with, in
    # twice the optimizer steps of batches of 8: six epochs of those left WMA under-trained,
    # docs/benchmarks.md), keeping the two best checkpoints. On GPUs the demo trains the same
    # small model, so its figures compare between machines.
    "demo": loader.merge(_CPU_SMALL, {"epochs": 8, "data": {"batch_size": 4},
                                      "keep_checkpoints": 2}),
}


def preset_layer(name: str) -> loader.Layer:
    """``PRESETS[name]`` as a config layer; an unknown name is a `ConfigError` listing them."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
    return loader.Layer(PRESETS[name], f"preset {name!r}")


def load_config(path: str | Path | None = None, *, preset: str | None = None,
                overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Resolve a config: defaults <- ``preset`` <- YAML ``path`` <- ``overrides`` (nested dicts,
    the command-line flags)."""
    layers = []
    if preset is not None:
        layers.append(preset_layer(preset))
    if path is not None:
        layers.append(loader.file_layer(path))
    if overrides:
        layers.append(loader.Layer(overrides, loader.FLAGS))
    return loader.load(TrainConfig, *layers)


def dump_yaml(config: TrainConfig) -> str:
    """The resolved config as YAML (what MLflow stores as the run's ``config.yaml``)."""
    return loader.dump_yaml(config)


def flat_params(config: TrainConfig) -> dict[str, str]:
    """``{"data.frames": "32", ...}``: the resolved config as MLflow params."""
    return loader.flat(config)
