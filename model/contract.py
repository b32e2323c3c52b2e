"""The model's input contract: what a trained network expects, and how frames become its input.

`InputSpec` is stored with every checkpoint and logged MLflow model, so a model alone says how to
feed it. The network input for a window starting at frame ``s`` of a video of ``n`` frames is::

    frames s, s + P, ..., s + (T - 1) * P    (T = spec.frames, P = spec.period; past the end:
                                              black if spec.pad_mode == "constant", else the last)
    each grey level Y (0-255, as the shards' decoder gives it), resized to spec.size x spec.size,
    as (Y - spec.mean) / spec.std,  float32[spec.channels, T, size, size]

Windows: a window covers `window_span` = ``(T - 1) * P + 1`` source frames; the last full one
starts at `last_start` = ``max(n - span, 0)``. Training takes a uniformly random start in
``0..last_start``, validation the centred one (`centre_start` = ``last_start // 2``), eval and
predict `window_starts` (every ``stride`` frames plus the last, or the centred one).

Three callers, one implementation: the DALI pipeline (`read.pipeline`) computes the start per
sample with `last_start` / `centre_start` and lets the decoder pick the frames; eval cuts windows
from whole decoded videos with `window_clips`; predict feeds raw frames through `frames_to_clip`,
which first passes each grey level through the shards' exact store-and-decode round trip
(`shards.format.GREY_ROUND_TRIP`), so a model is fed identically from shards and from DICOMs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Literal, Protocol, get_args

import numpy as np

from echocmr.shards.format import GREY_ROUND_TRIP, TASKS, ClipFormat, ShardStats

if TYPE_CHECKING:
    import torch

WindowMode = Literal["all", "centre"]
WINDOW_MODES: tuple[str, ...] = get_args(WindowMode)


class ClipShape(Protocol):
    """What `InputSpec.build` reads of a data config (``read.config.DataConfig`` has it)."""

    frames: int
    period: int
    size: int
    pad_mode: str


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """What a trained model expects: stored with every checkpoint and logged MLflow model.

    Network input = ``(Y - mean) / std`` for the grey level ``Y`` (0-255, as decoded from the
    shards: within a grey level of the ingested one) of ``frames`` frames taken every ``period``
    frames of a clip at ``fps``, resized to ``size`` x ``size``, as
    ``float32[N, channels, frames, size, size]``. Output: one logit per task in
    ``tasks`` order.

    ``clip_size`` (the side of the shards' clips, before the resize to ``size``) and
    ``shard_format`` record the data the model was trained on, so a model alone says how to
    preprocess a new DICOM for it (`echocmr predict`); None in specs written before they existed.
    """

    frames: int
    period: int
    size: int
    fps: float
    mean: float
    std: float
    tasks: tuple[str, ...] = TASKS
    channels: int = 1
    pad_mode: str = "constant"
    clip_size: int | None = None
    shard_format: int | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "tasks": list(self.tasks)}

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:  # a spec from a newer echocmr: say so rather than fail on a keyword
            raise ValueError(f"input spec has fields this echocmr does not know ({', '.join(unknown)})"
                             "; upgrade echocmr to load this model")
        return cls(**{**data, "tasks": tuple(data["tasks"])})

    @classmethod
    def build(cls, config: ClipShape, stats: ShardStats, channels: int = 1) -> InputSpec:
        """The spec of a run: clip shape from ``config`` (the read path's ``DataConfig``), fps
        and pixel statistics from stats."""
        mean, std = stats.pixel_mean, stats.pixel_std
        if mean is None or not std:
            raise ValueError("stats.json has no train pixel_mean/pixel_std (is the train split "
                             "empty?); training needs them to normalise clips")
        clip = ClipFormat.of_stats(stats)
        return cls(frames=config.frames, period=config.period, size=config.size,
                   fps=clip.fps, mean=float(mean), std=float(std),
                   tasks=tuple(stats.tasks), channels=channels,
                   pad_mode=config.pad_mode, clip_size=clip.square_size,
                   shard_format=stats.format_version)


# -- windows ----------------------------------------------------------------------------------


def window_span(spec: InputSpec) -> int:
    """Source frames one window covers: (T - 1) * P + 1."""
    return (spec.frames - 1) * spec.period + 1


def last_start(n_frames: int, spec: InputSpec) -> int:
    """The start of the last full window of a video of ``n_frames`` (0 if none is full)."""
    return max(int(n_frames) - window_span(spec), 0)


def centre_start(n_frames: int, spec: InputSpec) -> int:
    """The start of the centred window: the clip validation (and ``clips: centre``) uses."""
    return last_start(n_frames, spec) // 2


def window_starts(n_frames: int, spec: InputSpec, *, mode: str = "all",
                  stride: int | None = None) -> list[int]:
    """First frame of each window of a video of ``n_frames`` frames.

    ``all``: starts 0, stride, 2*stride, ... up to the last full window, plus the last full window
    itself so the tail is covered (``stride`` defaults to half a window's span; 1 is every
    possible window). ``centre``: the centred window alone. A video shorter than one window gives
    one padded window at 0.
    """
    if n_frames < 1:
        raise ValueError("a video needs at least one frame")
    last = last_start(n_frames, spec)
    if mode == "centre":
        return [centre_start(n_frames, spec)]
    if mode != "all":
        raise ValueError(f"mode={mode!r}: choose 'all' or 'centre'")
    starts = list(range(0, last + 1, stride or max(1, window_span(spec) // 2)))
    if starts[-1] != last:
        starts.append(last)
    return starts


def _pick(frames_FHW: np.ndarray, spec: InputSpec, starts) -> np.ndarray:
    """``float32[W, T, H, W]``: the frames of each window, padded as ``spec.pad_mode`` says."""
    n = frames_FHW.shape[0]
    idx_WT = np.asarray(starts)[:, None] + spec.period * np.arange(spec.frames)[None, :]
    picked = frames_FHW[np.minimum(idx_WT, n - 1)].astype(np.float32)
    if spec.pad_mode == "constant":
        picked[idx_WT >= n] = 0.0  # black past the end (the DALI decoder's fill_value=0)
    return picked


def _normalise(x, spec: InputSpec):
    """``(Y - mean) / std`` (numpy or torch, elementwise in float32)."""
    return (x - spec.mean) / spec.std


def window_clips(frames_FHW: np.ndarray, spec: InputSpec, starts: list[int]) -> np.ndarray:
    """Decoded frames (uint8 grey 0-255 as DALI gives them, already at the network size) to
    network inputs ``float32[W, C, T, S, S]``, one window per start (module docstring)."""
    frames = np.asarray(frames_FHW)
    if frames.ndim != 3 or frames.shape[1:] != (spec.size, spec.size):
        raise ValueError(f"expected [F, {spec.size}, {spec.size}] frames, got {frames.shape}")
    picked = _normalise(_pick(frames, spec, starts), spec)  # [W, T, S, S]
    return np.repeat(picked[:, None], spec.channels, axis=1)  # [W, C, T, S, S], writable


def frames_to_clip(frames_THW: np.ndarray, spec: InputSpec,
                   start: int | None = None) -> torch.Tensor:
    """Grey frames ``uint8[T, H, W]`` (0-255) to one network input ``float32[C, T', S, S]``.

    What the training pipeline does for validation, for callers holding raw frames (predict): the
    centred window (or the one at ``start``), padded as ``spec.pad_mode``, each grey level passed
    through the shards' exact round trip (limited-range store, decoder expansion: at most one
    level off, nothing clipped), resized, normalised. It equals the pipeline on the shard of the
    same frames up to VP9's codec error; frames already decoded (`ingest.encode.decode_webm`)
    pass through the round trip unchanged, so for them it equals the pipeline exactly.
    """
    import torch  # here, not at import: eval and the CLI import this module without torch

    frames = np.asarray(frames_THW)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8[T, H, W] frames, got {frames.dtype}{frames.shape}")
    if start is None:
        start = centre_start(len(frames), spec)
    picked = _pick(decoder_values(frames), spec, [start])  # [1, T, H, W]
    clip = torch.from_numpy(picked)
    if clip.shape[-2:] != (spec.size, spec.size):
        clip = torch.nn.functional.interpolate(clip, size=(spec.size, spec.size), mode="bilinear",
                                               antialias=True, align_corners=False)
    clip = _normalise(clip, spec)
    return clip.expand(spec.channels, -1, -1, -1).contiguous()


def decoder_values(frames: np.ndarray) -> np.ndarray:
    """The 0-255 values DALI's decoder gives for grey ``frames`` stored by ingest, without codec
    error: ``Y -> Y' = 16 + round(Y * 219/255) -> clip(round((Y' - 16) * 255/219), 0, 255)``."""
    return GREY_ROUND_TRIP[frames]
