"""Inference over a shard split: every clip (window) of every video, as a clip table.

Decoding is the training pipeline's, without augmentation: DALI's ``fn.readers.webdataset`` over
the split's tars and ``.idx`` files, ``fn.decoders.video`` (``cpu``, or ``mixed`` on a GPU), the
grey channel, and the same ``fn.resize`` when the shards are not the network's size. The one
difference is that eval decodes each video whole instead of one window, then cuts windows on the
host: T frames every P frames (from the model's `train.data.InputSpec`), normalised with the
spec's mean/std exactly as `train.data.ClipLoader` does, padded as its ``pad_mode`` says.

Windows (``InferConfig.clips``):

* ``all`` (default): starts 0, stride, 2*stride, ... up to the last full window, plus the last
  full window itself so the tail is covered. ``stride`` defaults to half a window's span
  ((T-1)*P+1 frames); ``stride=1`` is every possible clip. A video shorter than one window gives
  one padded window at 0.
* ``centre``: the single centred window — the clip `ClipLoader(train=False)` feeds validation.

Large splits: with ``workers > 1`` the split's tars are dealt round-robin to Ray tasks, each of
which loads the model itself and runs the same code (one GPU each with ``gpu=True``).

A shard set at a URL (``s3://``, ``gs://``) is read from a node-local copy of the split
(`shards.stage`, in ``InferConfig.cache_dir``): made by this process when it infers in process,
by each Ray task otherwise (one download per node; every node with a task copies the split).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd

from echocmr.eval.outputs import CLIP_COLUMNS
from echocmr.eval.tasks import TASKS, p_col, y_col

log = logging.getLogger(__name__)

ClipMode = Literal["all", "centre"]
MODES = get_args(ClipMode)


@dataclass(kw_only=True)
class InferConfig:
    clips: ClipMode = "all"  # "all" windows over each video, or the "centre" one
    stride: int | None = None  # frames between window starts ("all"); None = half a window's span
    batch_size: int = 16  # windows per forward pass
    read_batch: int = 4  # videos per DALI batch
    num_threads: int = 2  # DALI CPU threads
    workers: int = 1  # >1: spread the split's tars over this many Ray tasks
    gpu: bool = False  # CUDA model and DALI "mixed" decoding (one GPU per Ray task)
    cpus_per_worker: int = 1
    cache_dir: str | None = None  # node-local copy of a set at a URL; None: shards.stage default

    def __post_init__(self) -> None:
        if self.cache_dir is not None and "://" in self.cache_dir:
            raise ValueError(f"cache_dir must be a local directory, got {self.cache_dir!r}")
        if self.clips not in MODES:
            raise ValueError(f"clips={self.clips!r}: choose 'all' or 'centre'")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1 frame, got {self.stride}")
        for name in ("batch_size", "read_batch", "num_threads", "workers", "cpus_per_worker"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def describe(self, spec) -> str:
        span = window_span(spec)
        if self.clips == "centre":
            return f"centre clip, {spec.frames} frames every {spec.period}"
        stride = self.stride or max(1, span // 2)
        return f"all clips, {spec.frames} frames every {spec.period}, start stride {stride}"


def window_span(spec) -> int:
    """Source frames one window covers: (T - 1) * P + 1."""
    return (spec.frames - 1) * spec.period + 1


def window_starts(n_frames: int, spec, *, mode: str = "all", stride: int | None = None) -> list[int]:
    """First frame of each window of a video of ``n_frames`` frames (see the module docstring)."""
    if n_frames < 1:
        raise ValueError("a video needs at least one frame")
    span = window_span(spec)
    last = max(n_frames - span, 0)
    if mode == "centre":
        return [last // 2]
    if mode != "all":
        raise ValueError(f"mode={mode!r}: choose 'all' or 'centre'")
    starts = list(range(0, last + 1, stride or max(1, span // 2)))
    if starts[-1] != last:
        starts.append(last)
    return starts


def window_clips(frames_FHW: np.ndarray, spec, starts: list[int]) -> np.ndarray:
    """Decoded frames (uint8 grey 0-255 as DALI gives them, already at the network size) to
    network inputs ``float32[W, C, T, S, S]``: one window per start, padded and normalised with
    the spec's mean/std like `train.data.ClipLoader` with ``train=False``."""
    frames = np.asarray(frames_FHW)
    if frames.ndim != 3 or frames.shape[1:] != (spec.size, spec.size):
        raise ValueError(f"expected [F, {spec.size}, {spec.size}] frames, got {frames.shape}")
    n = frames.shape[0]
    idx_WT = np.asarray(starts)[:, None] + spec.period * np.arange(spec.frames)[None, :]
    picked = frames[np.minimum(idx_WT, n - 1)].astype(np.float32)  # [W, T, S, S]
    if spec.pad_mode == "constant":
        picked[idx_WT >= n] = 0.0  # DALI's fill_value=0 for frames past the end
    picked = (picked - spec.mean) / spec.std
    return np.repeat(picked[:, None], spec.channels, axis=1)  # [W, C, T, S, S], writable


def predict_windows(model, clips_WCTHW: np.ndarray, *, device, batch_size: int) -> np.ndarray:
    """Sigmoid probabilities ``[W, K]`` of the model for a stack of windows."""
    import torch

    out = []
    with torch.inference_mode():
        for lo in range(0, clips_WCTHW.shape[0], batch_size):
            x = torch.from_numpy(clips_WCTHW[lo : lo + batch_size]).to(device)
            out.append(torch.sigmoid(model(x).float()).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def decode_videos(tars: list[str], indexes: list[str], spec, *, stored_size: tuple | None,
                  config: InferConfig, device) -> Iterator[tuple[str, np.ndarray, dict, np.ndarray]]:
    """``(key, labels float32[5], meta, frames uint8[F, S, S])`` per sample, in stored order."""
    from nvidia.dali import Pipeline, fn, types

    n_samples = sum(_index_count(i) for i in indexes)
    gpu = getattr(device, "type", str(device)) == "cuda"
    pipe = Pipeline(batch_size=config.read_batch, num_threads=config.num_threads,
                    device_id=(getattr(device, "index", None) or 0) if gpu else None,
                    seed=0, prefetch_queue_depth=1)
    with pipe:
        video, labels, meta = fn.readers.webdataset(
            paths=list(tars), index_paths=list(indexes), ext=["webm", "labels", "json"],
            dtypes=[types.UINT8, types.FLOAT, types.UINT8], missing_component_behavior="error",
            shard_id=0, num_shards=1, pad_last_batch=True, random_shuffle=False, name="reader")
        frames = fn.decoders.video(video, device="mixed" if gpu else "cpu")
        frames = frames[:, :, :, 0:1]  # grey: R = G = B
        if stored_size is None or tuple(stored_size) != (spec.size, spec.size):
            frames = fn.resize(frames, size=[spec.size, spec.size], antialias=True)
        pipe.set_outputs(frames, labels, meta)
    pipe.build()
    seen = 0
    try:
        while seen < n_samples:
            frames_tl, labels_tl, meta_tl = pipe.run()
            if gpu:
                frames_tl = frames_tl.as_cpu()
            for i in range(len(meta_tl)):
                if seen >= n_samples:  # pad_last_batch repeats the last sample
                    break
                m = json.loads(np.array(meta_tl.at(i)).tobytes())
                f = np.array(frames_tl.at(i))[..., 0]
                yield m["key"], np.array(labels_tl.at(i), dtype=np.float32), m, f
                seen += 1
    finally:
        del pipe


def _index_count(index_path: str) -> int:
    with open(index_path) as f:
        return int(f.readline().split()[1])


def infer_tars(model, spec, tars: list[str], indexes: list[str], *, config: InferConfig,
               stored_size: tuple | None, device=None) -> pd.DataFrame:
    """The clip table (``eval.outputs.CLIP_COLUMNS``) of the given tars."""
    import torch

    device = torch.device(device or ("cuda" if config.gpu else "cpu"))
    model = model.to(device).eval()
    if tuple(spec.tasks) != tuple(TASKS):
        raise ValueError(f"model predicts tasks {spec.tasks}, eval expects {TASKS}")
    rows: list[dict] = []
    pending: list[np.ndarray] = []  # windows of several videos, run as full batches

    def flush() -> None:
        if not pending:
            return
        probs = predict_windows(model, np.concatenate(pending), device=device,
                                batch_size=config.batch_size)
        for row, p in zip(rows[len(rows) - len(probs):], probs, strict=True):
            row.update({p_col(t): float(p[k]) for k, t in enumerate(TASKS)})
        pending.clear()

    for key, labels, meta, frames in decode_videos(tars, indexes, spec, stored_size=stored_size,
                                                   config=config, device=device):
        if meta.get("n_frames") is not None and int(meta["n_frames"]) != frames.shape[0]:
            log.warning("%s: metadata says %s frames, the decoder gave %d; using the decoder's",
                        key, meta["n_frames"], frames.shape[0])
        starts = window_starts(frames.shape[0], spec, mode=config.clips, stride=config.stride)
        base = {"key": key, **{c: str(meta.get(c, "unknown")) for c in
                               ("study_hash", "patient_hash", "site", "split", "view")}}
        base.update({y_col(t): float(labels[k]) for k, t in enumerate(TASKS)})
        rows += [{**base, "clip_index": w, "start_frame": int(s)} for w, s in enumerate(starts)]
        pending.append(window_clips(frames, spec, starts))
        if sum(len(c) for c in pending) >= config.batch_size:
            flush()
    flush()
    return pd.DataFrame(rows, columns=CLIP_COLUMNS)


def _split_inputs(shards: str, split: str,
                  cache_dir: str | None = None) -> tuple[list[str], list[str], tuple | None]:
    """Local tars, their indexes and the stored clip size of ``split``; a set at a URL is staged
    onto this node's disk first."""
    from echocmr.shards.reader import read_stats
    from echocmr.shards.stage import stage
    from echocmr.train.data import split_files

    local = stage(shards, cache_dir, splits=(split,))  # a local path comes back as it is
    tars, indexes, _ = split_files(local, split)
    clip = read_stats(local).get("clip", {})
    stored = (clip.get("height"), clip.get("width")) if clip else None
    return tars, indexes, stored


def _remote_split(shards: str, split: str) -> tuple[list[str], tuple | None]:
    """Tar names and stored clip size of ``split`` of a set at a URL, read without staging it
    (the Ray tasks stage it where they run); the same checks `split_files` makes up front."""
    from echocmr.shards import storage
    from echocmr.shards.format import STATS_FILE, check_format_version
    from echocmr.shards.reader import list_shards, read_stats

    names = [storage.basename(t) for t in list_shards(shards, split)]
    if not names:
        raise FileNotFoundError(f"no {split}-*.tar shards in {shards}")
    stats = read_stats(shards)
    check_format_version(stats, f"shard set {shards} ({STATS_FILE})")
    clip = stats.get("clip", {})
    return names, ((clip.get("height"), clip.get("width")) if clip else None)


def infer_split(shards: str, split: str, model_uri: str, *, config: InferConfig | None = None,
                loaded=None, tracking_uri: str | None = None,
                address: str | None = None) -> tuple[pd.DataFrame, object]:
    """Clip table of ``split`` and the model's input spec.

    ``loaded`` = ``(model, spec)`` skips loading (in-process runs); Ray tasks always load
    ``model_uri`` themselves, so it must be reachable from every worker. ``address``: the Ray
    cluster (else ``RAY_ADDRESS``, else a local Ray).
    """
    from echocmr.shards.storage import canonical, is_url

    config = config or InferConfig()
    remote = is_url(shards)
    if remote:  # tar names only: this process or each Ray task stages the split where it runs
        shards = canonical(shards)
        tars, stored = _remote_split(shards, split)
        indexes = [None] * len(tars)
    else:
        tars, indexes, stored = _split_inputs(shards, split)
    if config.workers <= 1 or len(tars) == 1:
        if remote:
            tars, indexes, stored = _split_inputs(shards, split, config.cache_dir)
        model, spec = loaded if loaded is not None else _load(model_uri, tracking_uri)
        clips = infer_tars(model, spec, tars, indexes, config=config, stored_size=stored)
    else:  # Ray tasks may run elsewhere: give them an absolute path for a local model
        uri = os.path.abspath(model_uri) if os.path.exists(model_uri) else model_uri
        clips, spec = _infer_with_ray(uri, tars, indexes, stored, config, tracking_uri, address,
                                      source=shards if remote else None, split=split)
    # One row order whatever the number of workers.
    return clips.sort_values(["key", "clip_index"], ignore_index=True), spec


def _load(model_uri: str, tracking_uri: str | None = None):
    from echocmr.train.checkpoint import load_model

    return load_model(model_uri, tracking_uri=tracking_uri)


def _ray_task(model_uri: str, tars: list[str], indexes: list, stored, config_dict: dict,
              tracking_uri: str | None, source: str | None = None, split: str | None = None):
    """One Ray task's share. With ``source`` (a set at a URL), ``tars`` are tar names of
    ``split``: the task stages the split on its node and reads its local copies of them."""
    cfg = InferConfig(**config_dict)
    if source is not None:
        local_tars, local_indexes, _ = _split_inputs(source, split, cfg.cache_dir)
        by_name = {os.path.basename(t): (t, i) for t, i in zip(local_tars, local_indexes,
                                                               strict=True)}
        missing = sorted(set(tars) - set(by_name))
        if missing:
            raise FileNotFoundError(f"{source} no longer has {', '.join(missing)} of {split}")
        tars, indexes = [by_name[n][0] for n in tars], [by_name[n][1] for n in tars]
    model, spec = _load(model_uri, tracking_uri)
    return infer_tars(model, spec, tars, indexes, config=cfg, stored_size=stored), spec


def _infer_with_ray(model_uri, tars, indexes, stored, config: InferConfig, tracking_uri,
                    address: str | None, *, source: str | None = None, split: str | None = None):
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 log_to_driver=False)
    try:
        workers = min(config.workers, len(tars))
        remote = ray.remote(num_cpus=config.cpus_per_worker,
                            num_gpus=1 if config.gpu else 0)(_ray_task)
        cfg = {**asdict(config), "workers": 1}
        futures = [remote.remote(model_uri, tars[w::workers], indexes[w::workers], stored, cfg,
                                 tracking_uri, source, split) for w in range(workers)]
        parts = ray.get(futures)
    finally:
        if started:
            ray.shutdown()
    return pd.concat([p[0] for p in parts], ignore_index=True), parts[0][1]
