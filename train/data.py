"""The DALI input pipeline: WebDataset shards -> decoded, sampled, normalised clip batches.

Per worker (rank ``r`` of ``w``), per epoch::

    fn.readers.webdataset(tars, .idx, ext=[webm, labels, json], shard_id=r, num_shards=w,
                          random_shuffle, seed, pad_last_batch=True)
      -> fn.python_function(json -> n_frames)      clip start: random (train) or centred (eval)
      -> fn.decoders.video("cpu" | "mixed", start_frame, sequence_length=T, stride=P, padding)
      -> grey channel -> resize (if the shards are not `size`) -> random pad-and-crop (train)
      -> crop_mirror_normalize (stats.json mean/std, FHWC -> CFHW) -> intensity jitter (train)

and `ClipLoader.epoch` turns DALI's outputs into `Batch` objects: ``clips`` N×C×T×H×W float32 on
the worker's device, ``labels`` N×5 (NaN unknown), ``valid`` (False for padding), and ``keys``.

Equal batch counts on every rank: DALI splits the split's samples into ``w`` contiguous parts of
``floor(n*r/w)..floor(n*(r+1)/w)`` and, with ``pad_last_batch``, repeats a rank's last sample to
fill its last batch. Every rank runs ``ceil(max part / batch)`` batches per epoch, so DDP
collectives never wait for a rank that ran out; padding samples come last and are marked invalid.

Reproducible, resumable epochs: a fresh pipeline is built per epoch, seeded from (seed, epoch,
rank), and the tar order is permuted per epoch with a seed shared by all ranks (so the parts
still partition the split). The reader position is therefore just (epoch, batch):
`ClipLoader.epoch(e, start_batch=b)` replays epoch ``e`` from batch ``b`` exactly.

Pixel values (measured on DALI 2.4, CPU decoder): the decoder reads our VP9's luma as limited
("TV") range and gives ``R = G = B = clip(round((Y' - 16) * 255 / 219), 0, 255)``. Ingest stores
grey ``Y`` as ``Y' = 16 + round(Y * 219 / 255)`` (``shards.format.GREY_TO_LUMA``, format version
2), so the decoded value is ``Y`` again up to codec error and at most one grey level of
quantisation, over the whole 0..255 (version-1 sets stored ``Y`` as is and lost everything below 16
and above 235; `split_files` refuses them). ``stats.json`` holds the mean/std of ``Y``, which the
pipeline applies to the decoded values as they are: the network input is ``(Y - mean) / std``.
`frames_to_clip` computes the same from raw frames, passing ``Y`` through the exact ``Y -> Y' ->
decoded`` round trip first, so a model is fed identically from shards and from raw frames.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from echocmr.shards.format import (
    GREY_ROUND_TRIP,
    STATS_FILE,
    TASKS,
    check_format_version,
    index_name,
)
from echocmr.train.config import DataConfig


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
    def build(cls, config: DataConfig, stats: dict, channels: int = 1) -> InputSpec:
        """The spec of a run: clip shape from ``config``, fps and pixel statistics from stats."""
        mean, std = stats.get("pixel_mean"), stats.get("pixel_std")
        if mean is None or not std:
            raise ValueError("stats.json has no train pixel_mean/pixel_std (is the train split "
                             "empty?); training needs them to normalise clips")
        return cls(frames=config.frames, period=config.period, size=config.size,
                   fps=float(stats["clip"]["fps"]), mean=float(mean), std=float(std),
                   tasks=tuple(stats.get("tasks", TASKS)), channels=channels,
                   pad_mode=config.pad_mode, clip_size=_clip_size(stats),
                   shard_format=stats.get("format_version"))


def _clip_size(stats: dict) -> int | None:
    clip = stats.get("clip") or {}
    height, width = clip.get("height"), clip.get("width")
    return int(height) if height and height == width else None


@dataclass
class ReaderPosition:
    """Where the training reader is: the next batch to read is ``batch`` of ``epoch``."""

    epoch: int = 0
    batch: int = 0


@dataclass
class Batch:
    """One batch on the worker's device. ``clips`` [N, C, T, H, W]; ``labels`` [N, K] NaN
    unknown; ``valid`` [N] False for padding repeats; ``keys`` the sample keys."""

    clips: torch.Tensor
    labels: torch.Tensor
    valid: torch.Tensor
    keys: list[str]

    @property
    def known(self) -> torch.Tensor:
        """[N, K] True where a label is known and the sample is not padding."""
        return ~torch.isnan(self.labels) & self.valid[:, None]


def split_files(shards: str, split: str) -> tuple[list[str], list[str], list[int]]:
    """Tars, their ``.idx`` files and sample counts for one split of a local shard set.

    Raises `shards.format.FormatVersionError` for a set of another format version (its pixels
    would decode differently): training and eval both read through here.
    """
    from echocmr.shards.reader import list_shards, read_stats
    from echocmr.shards.storage import is_local, local_path

    if not is_local(shards):
        raise ValueError(f"DALI reads local files only, and {shards} is a URL: stage it onto local "
                         "disk first (shards.stage.stage, which `echocmr train` and `echocmr eval` "
                         "do for a URL), or copy or mount it and pass that path")
    tars = [os.path.abspath(local_path(t)) for t in list_shards(shards, split)]
    if not tars:
        raise FileNotFoundError(f"no {split}-*.tar shards in {shards}")
    check_format_version(read_stats(shards), f"shard set {shards} ({STATS_FILE})")
    indexes, counts = [], []
    for tar in tars:
        idx = os.path.join(os.path.dirname(tar), index_name(os.path.basename(tar)))
        if not os.path.exists(idx):
            raise FileNotFoundError(f"{idx} is missing; run `echocmr shards verify {shards}` and "
                                    "re-run the ingest or reshard that wrote the set")
        with open(idx) as f:
            header = f.readline().split()
        if len(header) != 2 or not header[1].isdigit():
            raise ValueError(f"{idx} is not a DALI wds2idx index (header {header!r})")
        indexes.append(idx)
        counts.append(int(header[1]))
    return tars, indexes, counts


def shard_sizes(n_samples: int, world: int) -> list[int]:
    """Samples per rank as DALI splits them: rank r reads ``floor(n*r/w)..floor(n*(r+1)/w)``."""
    return [n_samples * (r + 1) // world - n_samples * r // world for r in range(world)]


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (DALI seeds are int32; numpy's SeedSequence mixes them)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class ClipLoader:
    """Batches of one split for one rank; build one per split and call `epoch` per epoch.

    ``train=True`` shuffles, takes random clip starts and augments (if enabled in config);
    ``train=False`` reads in stored order, takes centred clips and never augments (validation,
    eval, inference). ``device`` is where batches land: a CUDA device selects DALI's ``mixed``
    (GPU) video decoder, anything else the CPU decoder.
    """

    def __init__(self, shards: str, split: str, config: DataConfig, *, spec: InputSpec,
                 train: bool, stats: dict | None = None, rank: int = 0, world: int = 1,
                 device: torch.device | str | None = None) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.split, self.config, self.spec, self.train = split, config, spec, train
        self.rank, self.world = rank, world
        self.device = torch.device(device or "cpu")
        self.tars, self.indexes, counts = split_files(shards, split)
        self.num_samples = sum(counts)
        self.shard_sizes = shard_sizes(self.num_samples, world)
        if min(self.shard_sizes) < 1:
            raise ValueError(
                f"{split} has {self.num_samples} clips, fewer than the {world} workers")
        self.batches_per_epoch = math.ceil(max(self.shard_sizes) / config.batch_size)
        stored = (stats or {}).get("clip", {})
        self._stored_size = (stored.get("height"), stored.get("width"))

    # -- public -------------------------------------------------------------------------------

    def epoch(self, epoch: int, start_batch: int = 0,
              max_batches: int | None = None) -> Iterator[Batch]:
        """The batches of ``epoch`` from ``start_batch`` (same order every time it is replayed)."""
        stop = self.batches_per_epoch if max_batches is None else min(max_batches,
                                                                      self.batches_per_epoch)
        pipe = self._build(epoch)
        try:
            for b in range(stop):
                outputs = pipe.run()
                if b >= start_batch:
                    yield self._to_batch(outputs, b)
        finally:
            del pipe

    def __len__(self) -> int:
        return self.batches_per_epoch

    # -- pipeline -----------------------------------------------------------------------------

    def _build(self, epoch: int):
        from nvidia.dali import Pipeline, fn, types

        cfg, spec = self.config, self.spec
        gpu = self.device.type == "cuda"
        # Tar order: per-epoch permutation shared by all ranks, so the rank parts still partition.
        order = list(range(len(self.tars)))
        if self.train:
            order = list(np.random.default_rng(derive_seed(cfg.seed, epoch)).permutation(order))
        pipe = Pipeline(batch_size=cfg.batch_size, num_threads=cfg.num_threads,
                        device_id=(self.device.index or 0) if gpu else None,
                        seed=derive_seed(cfg.seed, epoch, self.rank, int(self.train)),
                        prefetch_queue_depth=cfg.prefetch)
        with pipe:
            video, labels, meta = fn.readers.webdataset(
                paths=[self.tars[i] for i in order], index_paths=[self.indexes[i] for i in order],
                ext=["webm", "labels", "json"],
                dtypes=[types.UINT8, types.FLOAT, types.UINT8],
                missing_component_behavior="error",
                shard_id=self.rank, num_shards=self.world, pad_last_batch=True,
                random_shuffle=self.train, initial_fill=cfg.shuffle_buffer, name="reader")
            frames = fn.decoders.video(
                video, device="mixed" if gpu else "cpu", start_frame=self._clip_start(meta),
                sequence_length=spec.frames, stride=spec.period,
                pad_mode=spec.pad_mode, fill_value=0)
            if spec.channels == 1:
                frames = frames[:, :, :, 0:1]  # R = G = B for grey video
            if tuple(self._stored_size) != (spec.size, spec.size):
                frames = fn.resize(frames, size=[spec.size, spec.size], antialias=True)
            augment = self.train and cfg.augment.enabled
            if augment and cfg.augment.pad > 0:
                p = cfg.augment.pad
                shift = fn.random.uniform(range=[-p, p + 1], shape=[2])
                anchor = fn.cast(_floor(shift), dtype=types.INT32)
                frames = fn.slice(frames, anchor, [spec.size, spec.size], axes=[1, 2],
                                  out_of_bounds_policy="pad", fill_values=0)
            clips = fn.crop_mirror_normalize(frames, dtype=types.FLOAT, output_layout="CFHW",
                                             mean=[spec.mean] * spec.channels,
                                             std=[spec.std] * spec.channels)
            if augment and (cfg.augment.contrast > 0 or cfg.augment.brightness > 0):
                c, b = cfg.augment.contrast, cfg.augment.brightness
                scale = fn.random.uniform(range=[1 - c, 1 + c])
                shift = fn.random.uniform(range=[-b, b] if b > 0 else [0.0, 0.0])
                if gpu:  # per-clip scalars join the GPU clips on the GPU
                    scale, shift = scale.gpu(), shift.gpu()
                clips = clips * scale + shift
            pipe.set_outputs(clips, labels, meta)
        pipe.build()
        return pipe

    def _clip_start(self, meta):
        """First frame per sample: uniform over all full clips (train) or the centred one."""
        from nvidia.dali import fn, types

        span = (self.spec.frames - 1) * self.spec.period + 1
        n_frames = fn.python_function(meta, function=_n_frames, num_outputs=1)
        last = fn.cast(n_frames - span, dtype=types.INT32)
        last = last * fn.cast(last > 0, dtype=types.INT32)  # max(n - span, 0)
        if not self.train:
            return last // 2
        u = fn.random.uniform(range=[0.0, 1.0])
        start = fn.cast(_floor(u * fn.cast(last + 1, dtype=types.FLOAT)), dtype=types.INT32)
        over = fn.cast(start > last, dtype=types.INT32)  # u == 1.0 (float rounding): clamp
        return start - over

    # -- outputs ------------------------------------------------------------------------------

    def _to_batch(self, outputs, b: int) -> Batch:
        clips_tl, labels_tl, meta_tl = outputs
        clips = _to_torch(clips_tl, self.device)
        labels = torch.from_numpy(np.array(labels_tl.as_tensor(), dtype=np.float32))
        keys = [json.loads(np.array(meta_tl.at(i)).tobytes())["key"] for i in range(len(meta_tl))]
        real = self.shard_sizes[self.rank] - b * self.config.batch_size
        valid = torch.arange(len(keys)) < real
        return Batch(clips=clips, labels=labels.to(self.device), valid=valid.to(self.device),
                     keys=keys)


def frames_to_clip(frames_THW: np.ndarray, spec: InputSpec,
                   start: int | None = None) -> torch.Tensor:
    """Grey frames ``uint8[T, H, W]`` (0-255) to one network input ``float32[C, T', S, S]``.

    What `ClipLoader` does with ``train=False``, for callers holding raw frames (predict): the
    centred clip (or the one at ``start``), padded as ``spec.pad_mode``, each grey level passed
    through the shards' exact round trip (limited-range store, decoder expansion: at most one
    level off, nothing clipped), resized, normalised. It equals the pipeline on the shard of the
    same frames up to VP9's codec error; frames already decoded (`ingest.encode.decode_webm`)
    pass through the round trip unchanged, so for them it equals the pipeline exactly.
    """
    frames = np.asarray(frames_THW)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8[T, H, W] frames, got {frames.dtype}{frames.shape}")
    span = (spec.frames - 1) * spec.period + 1
    if start is None:
        start = max(len(frames) - span, 0) // 2
    idx = start + spec.period * np.arange(spec.frames)
    x = _decoder_values(frames).astype(np.float32)
    inside = idx < len(frames)
    picked = x[np.minimum(idx, len(frames) - 1)]
    if spec.pad_mode == "constant":
        picked[~inside] = 0.0
    clip = torch.from_numpy(picked)[None]  # [1, T, H, W]
    if clip.shape[-2:] != (spec.size, spec.size):
        clip = torch.nn.functional.interpolate(clip, size=(spec.size, spec.size), mode="bilinear",
                                               antialias=True, align_corners=False)
    clip = (clip - spec.mean) / spec.std
    return clip.expand(spec.channels, -1, -1, -1).contiguous()


def _decoder_values(frames: np.ndarray) -> np.ndarray:
    """The 0-255 values DALI's decoder gives for grey ``frames`` stored by ingest, without codec
    error: ``Y -> Y' = 16 + round(Y * 219/255) -> clip(round((Y' - 16) * 255/219), 0, 255)``."""
    return GREY_ROUND_TRIP[frames]


def _n_frames(meta: np.ndarray) -> np.ndarray:
    return np.array(json.loads(meta.tobytes())["n_frames"], dtype=np.int32)


def _floor(x):
    import nvidia.dali.math as dmath

    return dmath.floor(x)


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """A dense DALI TensorList as a torch tensor on ``device`` (one copy)."""
    dense = tensor_list.as_tensor()
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(dense, dtype=np.float32, copy=True))
