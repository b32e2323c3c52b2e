"""Configuration of the ingest job: one small ``kw_only`` dataclass per component.

Every option has a documented default (``docs/ingest.md`` lists them all), so ``echocmr ingest``
runs without a config file. A YAML file given with ``--config FILE`` overrides any subset, nested
the same way as the dataclasses::

    site: hospital_a
    preprocess:
      size: 144
      target_fps: 30
      read: {min_frames: 16, doppler_chroma_threshold: 40}
    labels:
      t1_cutoff_ms: {1.5: 1050, 3.0: 1250}
    encoder: {crf: 20}

Unknown keys are errors (a typo must not silently fall back to a default), and so are values of
the wrong type. Loading needs only PyYAML; nothing heavy is imported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echocmr.ingest.encode import EncoderConfig
from echocmr.shards.format import DEFAULT_CLIP_SIZE, SPLITS, TASKS


@dataclass(kw_only=True)
class ReadConfig:
    """What counts as an echo cine loop (`ingest.dicom_io`)."""

    min_frames: int = 16  # fewer source frames: rejected `too_few_frames` (1 frame: `single_frame`)
    modalities: tuple[str, ...] = ("US",)  # other Modality values: rejected `other_modality`
    # Colour Doppler: a sector pixel is "coloured" when its chroma magnitude
    # sqrt((Cb-128)^2 + (Cr-128)^2) on the 0-255 scale exceeds this in any sampled frame...
    doppler_chroma_threshold: float = 40.0
    # ...and the clip is rejected `colour_doppler` when that holds for this fraction of the sector.
    doppler_min_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.min_frames < 2:
            raise ValueError(f"read.min_frames must be >= 2 (cine loops only), got {self.min_frames}")
        if not 0 < self.doppler_min_fraction <= 1:
            raise ValueError("read.doppler_min_fraction must be in (0, 1]")
        self.modalities = tuple(m.upper() for m in self.modalities)


@dataclass(kw_only=True)
class SectorConfig:
    """How the ultrasound sector is found and what is masked (`ingest.sector`)."""

    use_region_sequence: bool = True  # crop to SequenceOfUltrasoundRegions when it fits the image
    motion_threshold: float = 0.5  # temporal std (grey levels, 5x5 mean) above which pixels "move"
    min_sector_fraction: float = 0.05  # moving area below this fraction of the crop: no sector mask
    mask_static_overlays: bool = True  # blank static bright pixels inside the sector (text, markers)
    overlay_max_std: float = 1.0  # "static": temporal std at most this (grey levels)
    overlay_min_level: int = 40  # "bright": mean grey level at least this
    stats_frames: int = 64  # frames sampled (evenly) for the motion statistics

    def __post_init__(self) -> None:
        if not 0 <= self.min_sector_fraction < 1:
            raise ValueError("sector.min_sector_fraction must be in [0, 1)")
        if self.stats_frames < 2:
            raise ValueError("sector.stats_frames must be >= 2")


@dataclass(kw_only=True)
class PreprocessConfig:
    """Clip geometry and timing (`ingest.preprocess`)."""

    # Stored clips are size x size (`echocmr ingest --clip-size`). The default 144 is at or above
    # NVDEC's minimum (VP9 128x128), so the GPU decoder takes the clips; the model's input size
    # is train's data.size, resized in the pipeline (shards.format.NVDEC_MIN_SIZE).
    size: int = DEFAULT_CLIP_SIZE
    target_fps: float = 30.0  # every clip is resampled to this frame rate
    max_frames: int = 128  # clips are cut to at most this many frames (after resampling)
    read: ReadConfig = field(default_factory=ReadConfig)
    sector: SectorConfig = field(default_factory=SectorConfig)

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 2:
            raise ValueError(f"preprocess.size must be even and >= 16 (yuv420p), got {self.size}")
        if not self.target_fps > 0:
            raise ValueError(f"preprocess.target_fps must be positive, got {self.target_fps}")
        if self.max_frames < 1:
            raise ValueError(f"preprocess.max_frames must be >= 1, got {self.max_frames}")


@dataclass(kw_only=True)
class LabelConfig:
    """Columns of the CMR table and the cut-offs that turn raw values into labels (`ingest.labels`).

    A task's binary column (0/1) wins when present and known; otherwise its raw column is compared
    with the cut-off (abnormal when strictly greater). T1 and T2 cut-offs depend on the field
    strength: keys are tesla, matched within ``field_strength_tolerance_t``; an unknown or unmatched
    field strength leaves T1/T2 unknown (NaN), never normal.
    """

    patient_id_column: str = "patient_id"
    date_column: str = "cmr_date"
    field_strength_column: str = "field_strength_t"
    binary_columns: dict[str, str] = field(
        default_factory=lambda: {task: task for task in TASKS}
    )
    t1_column: str = "t1_native_ms"
    t2_column: str = "t2_ms"
    ecv_column: str = "ecv_pct"
    t1_cutoff_ms: dict[float, float] = field(default_factory=lambda: {1.5: 1050.0, 3.0: 1250.0})
    t2_cutoff_ms: dict[float, float] = field(default_factory=lambda: {1.5: 55.0, 3.0: 50.0})
    ecv_cutoff_pct: float = 30.0
    field_strength_tolerance_t: float = 0.25


@dataclass(kw_only=True)
class PairingConfig:
    """Echo-CMR pairing (`ingest.pairing`)."""

    window_days: int = 30  # nearest CMR of the same patient within +-window_days of the echo

    def __post_init__(self) -> None:
        if self.window_days < 0:
            raise ValueError(f"pairing.window_days must be >= 0, got {self.window_days}")


@dataclass(kw_only=True)
class SplitConfig:
    """Patient-level splits by keyed hash (`ingest.splits`).

    ``split_key`` is the HMAC key; when unset, the environment variable ``ECHOCMR_SPLIT_KEY`` is
    used, and failing that a public demo key (with a warning): fine for synthetic data, wrong for
    patients, since anyone could recompute the hashes of known IDs.
    """

    split_key: str | None = None
    fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2}
    )

    def __post_init__(self) -> None:
        if set(self.fractions) != set(SPLITS):
            raise ValueError(f"splits.fractions needs exactly {SPLITS}, got {sorted(self.fractions)}")
        if any(v < 0 for v in self.fractions.values()):
            raise ValueError("splits.fractions must be non-negative")
        if abs(sum(self.fractions.values()) - 1.0) > 1e-6:
            raise ValueError(f"splits.fractions must sum to 1, got {self.fractions}")


@dataclass(kw_only=True)
class ShardConfig:
    """How clips are cut into shards (passed to `shards.writer.WriterConfig`)."""

    samples_per_shard: int = 256
    shard_mb: float | None = None


@dataclass(kw_only=True)
class IngestConfig:
    """Everything the ingest job needs besides its input and output paths."""

    site: str = "site"  # lower-case [a-z0-9_]+; the key prefix of every clip
    workers: int | None = None  # processes; None = every core
    keep_work_cache: bool = False  # keep OUT/.work (per-file results and clips) after success
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    pairing: PairingConfig = field(default_factory=PairingConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def fingerprint(self) -> str:
        """A hash of every setting that changes the output (the split key itself excluded)."""
        data = to_dict(self)
        for volatile in ("workers", "keep_work_cache"):
            data.pop(volatile)
        data["splits"].pop("split_key")
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def to_dict(config: Any) -> dict:
    """A plain nested dict of a config dataclass (tuples as lists): what `load_config` reads."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> IngestConfig:
    """Defaults, overridden by the YAML file at ``path``, overridden by non-None ``overrides``.

    ``overrides`` are top-level fields (``site=...``, ``workers=...``) as the CLI passes them.
    """
    data: dict = {}
    if path is not None:
        import yaml

        text = Path(path).read_text()
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"config {path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config {path}: expected a mapping of keys at the top level")
        data = loaded
    data = dict(data)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return from_dict(IngestConfig, data)
    except ValueError as exc:
        raise ValueError(f"config {path}: {exc}" if path is not None else str(exc)) from None


def from_dict(cls: type, data: dict, *, where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types.

    ``where`` is the dotted key path of ``data`` (for error messages).
    """
    section = f"'{where}'" if where else "the top level"
    if not isinstance(data, dict):
        raise ValueError(f"{section}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {section}; valid keys: {sorted(known)}")
    prefix = f"{where}." if where else ""
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check/convert one YAML value against a type hint (the few shapes our configs use)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        key_t, val_t = args
        return {_coerce(key_t, k, where): _coerce(val_t, v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value
