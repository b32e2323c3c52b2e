"""Training configuration: one small typed config per component, loaded from YAML with strict keys.

``TrainConfig`` holds ``model`` (`ModelConfig`), ``data`` (`DataConfig`, which holds
`AugmentConfig`) and ``optim`` (`OptimConfig`) plus the run's own settings. Runtime facts (rank,
world size, device) are never stored here; they are passed to the components that need them.

A YAML file mirrors the dataclasses::

    epochs: 4
    workers: 2
    model: {width: 16}
    data: {frames: 16, size: 64, augment: {pad: 4}}

Unknown keys raise `ConfigError` naming the key, the allowed keys and the closest match, so a typo
never silently trains the default. ``PRESETS`` holds named starting points (``cpu-small`` is the
width-16 R(2+1)D on 16x64x64 clips that trains in minutes on two CPU cores).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from echocmr.shards.format import TASKS


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message says which and what to write instead."""


@dataclass(kw_only=True)
class ModelConfig:
    """R(2+1)D shape. Defaults are torchvision's ``r2plus1d_18`` (33 M parameters)."""

    width: int = 64  # channels of layer1 (layer2..4: 2x, 4x, 8x); torchvision: 64
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)  # BasicBlocks per stage; torchvision: 2,2,2,2
    in_channels: int = 1  # grey echo; 3-channel published weights are summed into 1 on load
    init: str | None = None  # a published state dict file (Kinetics / EchoNet) to start from

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        if self.width < 1:
            raise ConfigError(f"model.width must be >= 1, got {self.width}")
        if len(self.layers) != 4 or any(n < 1 for n in self.layers):
            raise ConfigError(f"model.layers must be four counts >= 1, got {self.layers}")
        if self.in_channels not in (1, 3):
            raise ConfigError(f"model.in_channels must be 1 (grey) or 3, got {self.in_channels}")


@dataclass(kw_only=True)
class AugmentConfig:
    """Training-only augmentation: random pad-and-crop and a mild per-clip intensity change."""

    enabled: bool = True
    pad: int = 8  # pixels of black border (at the output size) the random crop may shift into
    contrast: float = 0.1  # multiply the normalised clip by U(1 - c, 1 + c)
    brightness: float = 0.1  # then add U(-b, b), in units of the train pixel std

    def __post_init__(self) -> None:
        if self.pad < 0 or self.contrast < 0 or self.brightness < 0:
            raise ConfigError("data.augment.pad, contrast and brightness must be >= 0")
        if self.contrast >= 1:
            raise ConfigError(f"data.augment.contrast must be < 1, got {self.contrast}")


DECODERS = ("auto", "mixed", "cpu")  # data.decoder


@dataclass(kw_only=True)
class DataConfig:
    """What one clip fed to the network is, and how batches are made (per worker)."""

    frames: int = 32  # T: frames per clip
    period: int = 2  # P: take every P-th frame (T=32, P=2 spans 64 frames, ~2 s at 30 fps)
    size: int = 112  # model input height = width; the stored clips are resized to it in DALI
    batch_size: int = 8  # clips per worker per step
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0  # reader shuffle, clip starts and augmentation derive from (seed, epoch, rank)
    pad_mode: str = "constant"  # short videos: "constant" (black frames, as EchoNet) or "edge"
    shuffle_buffer: int = 1024  # DALI shuffle buffer (initial_fill); >= the split = full shuffle
    num_threads: int = 2  # DALI CPU threads per worker
    prefetch: int = 2  # batches DALI prepares ahead
    # Video decoder: "mixed" (NVDEC, GPU), "cpu" (DALI CPU threads; on a GPU run the batches
    # then go through pinned host memory to the GPU), "auto" (mixed on a GPU run, else cpu).
    decoder: Literal["auto", "mixed", "cpu"] = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = _build(AugmentConfig, self.augment, "data.augment")
        for name in ("frames", "period", "size", "batch_size", "num_threads", "prefetch",
                     "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.size % 2:
            raise ConfigError(f"data.size must be even, got {self.size}")
        if self.pad_mode not in ("constant", "edge"):
            raise ConfigError(f"data.pad_mode must be 'constant' or 'edge', got {self.pad_mode!r}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"data.decoder must be one of {', '.join(map(repr, DECODERS))}, "
                              f"got {self.decoder!r}")


@dataclass(kw_only=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (per-step cosine after a linear warm-up)."""

    name: str = "adamw"  # "adamw" or "sgd"
    lr: float = 1e-3  # for the global batch; not rescaled with the number of workers
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 0.5
    schedule: str = "cosine"  # "cosine" or "constant"
    grad_clip: float | None = 5.0  # max global grad norm; None disables

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "sgd"):
            raise ConfigError(f"optim.name must be 'adamw' or 'sgd', got {self.name!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(
                f"optim.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")


@dataclass(kw_only=True)
class FaultConfig:
    """Test hook: worker ``rank`` exits hard once at global step ``step`` (``marker`` remembers).

    ``delay_s`` waits before the exit: Ray Train V2's controller collects reports by polling the
    workers (every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s by default), and a report still
    unpolled when a worker dies is lost, so a crash right after a report restarts one epoch earlier.
    """

    rank: int
    step: int
    marker: str  # file created just before the exit; while it exists the fault is spent
    delay_s: float = 0.0


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
    keep_checkpoints: int | None = None  # None keeps every epoch's checkpoint
    register: str | None = None  # MLflow registered model name
    fault: FaultConfig | None = None  # test hook, see FaultConfig

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = _build(ModelConfig, self.model, "model")
        if isinstance(self.data, dict):
            self.data = _build(DataConfig, self.data, "data")
        if isinstance(self.optim, dict):
            self.optim = _build(OptimConfig, self.optim, "optim")
        if isinstance(self.fault, dict):
            self.fault = _build(FaultConfig, self.fault, "fault")
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
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError("max_steps_per_epoch must be >= 1 or null")
        if self.cache_dir is not None and "://" in self.cache_dir:
            raise ConfigError(f"cache_dir must be a local directory on each node (DALI reads "
                              f"local files), got {self.cache_dir!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe; tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a nested dict, rejecting unknown keys (see module docstring)."""
        return _build(cls, data, "")


# Named starting points; a YAML file and command-line flags apply on top.
PRESETS: dict[str, dict[str, Any]] = {
    # Measured on 2 CPU cores: ~18 clips/s; learns the phantom WMA pattern in a few epochs.
    "cpu-small": {
        "epochs": 4,
        "model": {"width": 16},
        "data": {"frames": 16, "period": 2, "size": 64, "batch_size": 8, "augment": {"pad": 4}},
        "optim": {"lr": 3e-3, "warmup_epochs": 0.25},
        "min_positives": 3,
    },
    # torchvision r2plus1d_18 at 32x112x112 on GPUs, bf16.
    "gpu": {"gpu": True, "epochs": 45, "data": {"batch_size": 16, "num_threads": 4}},
}


def load_config(path: str | None = None, *, preset: str | None = None,
                overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Resolve a config: defaults <- ``preset`` <- YAML ``path`` <- ``overrides`` (nested dicts)."""
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; presets are {sorted(PRESETS)}")
        merged = _merge(merged, PRESETS[preset])
    if path is not None:
        merged = _merge(merged, read_yaml(path))
    if overrides:
        merged = _merge(merged, overrides)
    try:
        return TrainConfig.from_dict(merged)
    except ConfigError as exc:
        where = f" (config file {path})" if path else ""
        raise ConfigError(f"{exc}{where}") from None


def read_yaml(path: str) -> dict[str, Any]:
    """The mapping in a YAML file; a clear error if it is missing or not a mapping."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def dump_yaml(config: TrainConfig) -> str:
    """The resolved config as YAML (what MLflow stores as the run's ``config.yaml``)."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def flat_params(config: TrainConfig) -> dict[str, str]:
    """``{"data.frames": "32", ...}``: the resolved config as MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = str(value)

    walk("", config.to_dict())
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "task_weights":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, data: Any, where: str) -> Any:
    """``cls(**data)`` with unknown keys and wrong types reported by their dotted path."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {path!r}.{hint} Allowed here: {sorted(fields)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing (FaultConfig)
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], path) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{path}.{k}") for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
