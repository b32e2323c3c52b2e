"""The read path's config: what one clip fed to the network is, and how batches are made.

`DataConfig` (with its `AugmentConfig`) is ``TrainConfig.data``; `read.loader.ClipLoader` and
`read.pipeline.build_pipeline` take it. Loaded through `echocmr.config` (strict keys, did-you-mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from echocmr import config as loader
from echocmr.config import ConfigError, check_choices
from echocmr.shards.format import TARGET_VIEWS, VIEW_VOCABULARY, validate_site


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
    pad_mode: Literal["constant", "edge"] = "constant"  # short videos: "constant" (black frames, as EchoNet) or "edge"
    shuffle_buffer: int = 1024  # DALI shuffle buffer (initial_fill); >= the split = full shuffle
    num_threads: int = 2  # DALI CPU threads per worker
    prefetch: int = 2  # batches DALI prepares ahead
    # Video decoder: "mixed" (NVDEC, GPU), "cpu" (DALI CPU threads; on a GPU run the batches
    # then go through pinned host memory to the GPU), "auto" (mixed on a GPU run, else cpu).
    decoder: Literal["auto", "mixed", "cpu"] = "auto"
    # Sites whose clips this run never reads (train and val): external validation on them later
    # (`echocmr train --exclude-site`, `echocmr eval --holdout-site`; docs/evaluation.md).
    exclude_sites: tuple[str, ...] = ()
    # Views this run reads (train and val; `echocmr train --views A4C`): the study trained one
    # model per view. Default the three targets; ``other`` and ``unknown`` clips are left out and
    # counted in the run (`read.loader.view_counts`). Any name a views table gave (``PSAX``)
    # counts as ``other`` (`shards.format.view_class`).
    views: tuple[str, ...] = TARGET_VIEWS

    def __post_init__(self) -> None:
        self.exclude_sites = tuple(self.exclude_sites)
        if isinstance(self.views, str):
            self.views = (self.views,)
        self.views = tuple(str(v) for v in self.views)
        bad = [v for v in self.views if v not in VIEW_VOCABULARY]
        if bad or not self.views:
            raise ConfigError(f"data.views: {bad or 'none'}; choose among "
                              f"{', '.join(VIEW_VOCABULARY)} (at least one)")
        for site in self.exclude_sites:
            try:
                validate_site(site)
            except ValueError as exc:
                raise ConfigError(f"data.exclude_sites: {exc}") from None
        if isinstance(self.augment, dict):
            self.augment = loader.build(AugmentConfig, self.augment, where="data.augment")
        for name in ("frames", "period", "size", "batch_size", "num_threads", "prefetch",
                     "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.size % 2:
            raise ConfigError(f"data.size must be even, got {self.size}")
        check_choices(self, "data.")
