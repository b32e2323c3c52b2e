"""The one DALI graph that reads shards: reader -> video decoder -> grey -> resize (-> augment).

Training (`read.loader.ClipLoader`) and eval (`eval.infer.decode_videos`) both build their
pipelines here, so the two cannot drift apart in how a clip is read, decoded or resized::

    fn.readers.webdataset(tars, .idx, ext=[webm, labels, json], shard_id, num_shards,
                          pad_last_batch=True, random_shuffle)
      -> window start from KEY.json (`model.contract`: random or centred; not for whole videos)
      -> fn.decoders.video("cpu" | "mixed"; whole video, or T frames every P from the start)
      -> grey channel -> fn.resize to spec.size (antialiased; when the shards' clips are another
         size: the whole stored square, never a crop, so the sector keeps its lateral walls
         and apex)
      -> windows only: random pad-and-crop (augment) -> crop_mirror_normalize (FHWC -> CFHW,
         spec.mean/std) -> intensity jitter (augment)

`build_pipeline` returns the built pipeline; its outputs are ``(x, labels, meta)`` where ``x`` is
``float32[C, T, S, S]`` network inputs for ``window="random" | "centre"`` and ``uint8[F, S, S, 1]``
grey frames for ``window="whole"`` (eval cuts its windows on the host with
`model.contract.window_clips`). ``meta`` is the raw ``KEY.json`` bytes; `sample_meta` parses them.

Where it runs: with ``PipelineConfig.device_id`` set the decoder is ``mixed`` (NVDEC) and every
stage after it (grey channel, resize, augmentation, normalisation) runs on that GPU; without it
everything runs on DALI's CPU threads (`resolve_decoder` picks, from ``data.decoder``). NVDEC
refuses clips below a minimum size (`shards.format.NVDEC_MIN_SIZE`): callers check a set with
`shards.format.check_gpu_decodable` before building a ``mixed`` pipeline.

Sharding and padding are DALI's: with ``num_shards = w`` reader ``r`` reads the ``r``-th of ``w``
contiguous parts of the samples and, with ``pad_last_batch``, repeats its last sample to fill its
last batch (the caller knows how many samples are real).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from echocmr.model.contract import InputSpec, centre_start, last_start
from echocmr.read.config import AugmentConfig
from echocmr.shards.format import SampleMeta

WINDOWS = ("random", "centre", "whole")


def resolve_decoder(setting: str, *, gpu: bool) -> str:
    """``data.decoder`` for a run on a GPU (``gpu``) or not: ``"mixed"`` or ``"cpu"``."""
    if setting == "auto":
        return "mixed" if gpu else "cpu"
    if setting == "mixed" and not gpu:
        raise ValueError("data.decoder: mixed decodes on the GPU; this run has none")
    if setting not in ("mixed", "cpu"):
        raise ValueError(f"data.decoder={setting!r}: choose auto, mixed or cpu")
    return setting


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """How DALI runs: batch, threads, prefetch and seed (the graph itself follows the spec)."""

    batch_size: int
    num_threads: int = 2
    prefetch: int = 1
    seed: int = 0
    device_id: int | None = None  # a CUDA device: DALI's "mixed" decoder; None: CPU only


def build_pipeline(tars: list[str], indexes: list[str], spec: InputSpec, *,
                   config: PipelineConfig, window: str,
                   stored_size: tuple[int, int] | None = None,
                   shard_id: int = 0, num_shards: int = 1,
                   shuffle_buffer: int | None = None, augment: AugmentConfig | None = None):
    """The built DALI pipeline over ``tars`` (module docstring).

    ``window``: ``random`` (a uniformly random full window per sample, training), ``centre`` (the
    centred window, validation) or ``whole`` (every frame, eval). ``stored_size`` is the shards'
    ``(height, width)`` (None: unknown, resize). ``shuffle_buffer``: shuffle samples through a
    buffer of that many (None: stored order). ``augment``: training augmentation (windows only).
    """
    from nvidia.dali import Pipeline, fn, types

    if window not in WINDOWS:
        raise ValueError(f"window={window!r}: choose one of {WINDOWS}")
    if augment is not None and window == "whole":
        raise ValueError("augmentation applies to windows, not to whole videos")
    gpu = config.device_id is not None
    pipe = Pipeline(batch_size=config.batch_size, num_threads=config.num_threads,
                    device_id=config.device_id, seed=config.seed,
                    prefetch_queue_depth=config.prefetch)
    with pipe:
        video, labels, meta = fn.readers.webdataset(
            paths=list(tars), index_paths=list(indexes), ext=["webm", "labels", "json"],
            dtypes=[types.UINT8, types.FLOAT, types.UINT8], missing_component_behavior="error",
            shard_id=shard_id, num_shards=num_shards, pad_last_batch=True,
            random_shuffle=shuffle_buffer is not None, initial_fill=shuffle_buffer or 1024,
            name="reader")
        device = "mixed" if gpu else "cpu"
        if window == "whole":
            frames = fn.decoders.video(video, device=device)
        else:
            frames = fn.decoders.video(
                video, device=device, start_frame=_window_start(meta, spec, window),
                sequence_length=spec.frames, stride=spec.period, pad_mode=spec.pad_mode,
                fill_value=0)
        if spec.channels == 1 or window == "whole":
            frames = frames[:, :, :, 0:1]  # R = G = B for grey video
        if stored_size is None or tuple(stored_size) != (spec.size, spec.size):
            frames = fn.resize(frames, size=[spec.size, spec.size], antialias=True)
        if window == "whole":
            pipe.set_outputs(frames, labels, meta)
        else:
            pipe.set_outputs(_to_network_input(frames, spec, augment, gpu=gpu), labels, meta)
    pipe.build()
    return pipe


def sample_meta(meta_bytes) -> SampleMeta:
    """The `SampleMeta` of one sample's ``meta`` output (``KEY.json`` bytes as uint8)."""
    return SampleMeta.from_json(np.array(meta_bytes).tobytes())


def _window_start(meta, spec: InputSpec, window: str):
    """First frame per sample: the centred window, or one uniform over all full windows."""
    from nvidia.dali import fn, types

    if window == "centre":
        return fn.python_function(meta, function=partial(_start_of, centre_start, spec),
                                  num_outputs=1)
    last = fn.python_function(meta, function=partial(_start_of, last_start, spec), num_outputs=1)
    u = fn.random.uniform(range=[0.0, 1.0])
    start = fn.cast(_floor(u * fn.cast(last + 1, dtype=types.FLOAT)), dtype=types.INT32)
    over = fn.cast(start > last, dtype=types.INT32)  # u == 1.0 (float rounding): clamp
    return start - over


def _start_of(rule, spec: InputSpec, meta: np.ndarray) -> np.ndarray:
    return np.array(rule(sample_meta(meta).n_frames, spec), dtype=np.int32)


def _to_network_input(frames, spec: InputSpec, augment: AugmentConfig | None, *, gpu: bool):
    """Decoded windows (FHWC uint8) to normalised CFHW float clips, augmented if asked."""
    from nvidia.dali import fn, types

    if augment is not None and augment.pad > 0:
        p = augment.pad
        shift = fn.random.uniform(range=[-p, p + 1], shape=[2])
        anchor = fn.cast(_floor(shift), dtype=types.INT32)
        frames = fn.slice(frames, anchor, [spec.size, spec.size], axes=[1, 2],
                          out_of_bounds_policy="pad", fill_values=0)
    clips = fn.crop_mirror_normalize(frames, dtype=types.FLOAT, output_layout="CFHW",
                                     mean=[spec.mean] * spec.channels,
                                     std=[spec.std] * spec.channels)
    if augment is not None and (augment.contrast > 0 or augment.brightness > 0):
        c, b = augment.contrast, augment.brightness
        scale = fn.random.uniform(range=[1 - c, 1 + c])
        shift = fn.random.uniform(range=[-b, b] if b > 0 else [0.0, 0.0])
        if gpu:  # per-clip scalars join the GPU clips on the GPU
            scale, shift = scale.gpu(), shift.gpu()
        clips = clips * scale + shift
    return clips


def _floor(x):
    import nvidia.dali.math as dmath

    return dmath.floor(x)
