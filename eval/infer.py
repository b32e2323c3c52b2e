"""Inference over a shard split: every clip (window) of every video, as a clip table.

Decoding is the training pipeline's own graph (`read.pipeline.build_pipeline` with
``window="whole"``): the same reader, video decoder (``cpu``, or ``mixed`` on a GPU), grey channel
and resize, except that each video is decoded whole. Windows are then cut on the host by the
model contract (`model.contract.window_starts` and `window_clips`): T frames every P frames of the
model's `InputSpec`, padded and normalised exactly as the training pipeline does.

Windows (``InferConfig.clips``, see `model.contract.window_starts`):

* ``all`` (default): starts 0, stride, 2*stride, ... up to the last full window, plus the last
  full window itself so the tail is covered. ``stride`` defaults to half a window's span
  ((T-1)*P+1 frames); ``stride=1`` is every possible clip. A video shorter than one window gives
  one padded window at 0.
* ``centre``: the single centred window — the clip training's validation feeds the network.

Large splits: with ``workers > 1`` the split's tars are dealt round-robin to Ray tasks, each of
which loads the model itself and runs the same code (one GPU each with ``gpu=True``).

A shard set at a URL (``s3://``, ``gs://``) is read from a node-local copy of the split
(`shards.stage`, in ``InferConfig.cache_dir``): made by this process when it infers in process,
by each Ray task otherwise (one download per node; every node with a task copies the split).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from echocmr.eval.outputs import CLIP_COLUMNS
from echocmr.model.contract import WINDOW_MODES as MODES
from echocmr.model.contract import (
    InputSpec,
    WindowMode,
    window_clips,
    window_span,
    window_starts,
)
from echocmr.model.predict import predict_windows
from echocmr.model.store import load_model
from echocmr.model.tasks import TASKS, p_col, y_col
from echocmr.progress import Progress
from echocmr.ray_connect import ray_init
from echocmr.read.loader import select_sites, split_files
from echocmr.read.pipeline import PipelineConfig, build_pipeline, sample_meta
from echocmr.shards import storage
from echocmr.shards.format import (
    STATS_FILE,
    ClipFormat,
    SampleMeta,
    check_format_version,
    check_gpu_decodable,
)
from echocmr.shards.index import index_count
from echocmr.shards.reader import list_shards, read_stats
from echocmr.shards.stage import stage
from echocmr.shards.storage import canonical, is_url

log = logging.getLogger(__name__)

ClipMode = WindowMode


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


def decode_videos(tars: list[str], indexes: list[str], spec: InputSpec, *,
                  stored_size: tuple | None, config: InferConfig,
                  device) -> Iterator[tuple[str, np.ndarray, SampleMeta, np.ndarray]]:
    """``(key, labels float32[5], meta, frames uint8[F, S, S])`` per sample, in stored order."""

    n_samples = sum(index_count(i) for i in indexes)
    gpu = getattr(device, "type", str(device)) == "cuda"
    run = PipelineConfig(batch_size=config.read_batch, num_threads=config.num_threads,
                         prefetch=1, seed=0,
                         device_id=(getattr(device, "index", None) or 0) if gpu else None)
    pipe = build_pipeline(tars, indexes, spec, config=run, window="whole",
                          stored_size=stored_size)
    seen = 0
    try:
        while seen < n_samples:
            frames_tl, labels_tl, meta_tl = pipe.run()
            if gpu:
                frames_tl = frames_tl.as_cpu()
            for i in range(len(meta_tl)):
                if seen >= n_samples:  # pad_last_batch repeats the last sample
                    break
                m = sample_meta(meta_tl.at(i))
                f = np.array(frames_tl.at(i))[..., 0]
                yield m.key, np.array(labels_tl.at(i), dtype=np.float32), m, f
                seen += 1
    finally:
        del pipe


def infer_tars(model, spec: InputSpec, tars: list[str], indexes: list[str], *, config: InferConfig,
               stored_size: tuple | None, device=None, progress: bool = True) -> pd.DataFrame:
    """The clip table (``eval.outputs.CLIP_COLUMNS``) of the given tars; progress (videos done,
    rate, time left) on stderr, a bar on a terminal, a line every 30 s elsewhere."""
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

    total = sum(index_count(i) for i in indexes) if all(indexes) else None
    shown = Progress(total, desc="eval inference", unit="video", enabled=progress)
    for key, labels, meta, frames in decode_videos(tars, indexes, spec, stored_size=stored_size,
                                                   config=config, device=device):
        shown.update(1)
        if meta.n_frames != frames.shape[0]:
            log.warning("%s: metadata says %s frames, the decoder gave %d; using the decoder's",
                        key, meta.n_frames, frames.shape[0])
        starts = window_starts(frames.shape[0], spec, mode=config.clips, stride=config.stride)
        base = {"key": key, **{c: str(getattr(meta, c)) for c in
                               ("study_hash", "patient_hash", "site", "split", "view")}}
        base.update({y_col(t): float(labels[k]) for k, t in enumerate(TASKS)})
        rows += [{**base, "clip_index": w, "start_frame": int(s)} for w, s in enumerate(starts)]
        pending.append(window_clips(frames, spec, starts))
        if sum(len(c) for c in pending) >= config.batch_size:
            flush()
    flush()
    shown.close()
    return pd.DataFrame(rows, columns=CLIP_COLUMNS)


def _split_inputs(shards: str, split: str, cache_dir: str | None = None, *,
                  sites=None, index_dir: str | None = None
                  ) -> tuple[list[str], list[str], ClipFormat]:
    """Local tars, their indexes and the clip format of ``split`` (only ``sites``' samples when
    given, through shortened indexes in ``index_dir``); a set at a URL is staged onto this
    node's disk first."""

    local = stage(shards, cache_dir, splits=(split,))  # a local path comes back as it is
    tars, indexes, _ = split_files(local, split, sites=sites, index_dir=index_dir)
    if not tars:
        raise FileNotFoundError(f"no {split} clips of site {', '.join(sites or ())} in {shards}")
    return tars, indexes, ClipFormat.of_stats(read_stats(local))


def _remote_split(shards: str, split: str) -> tuple[list[str], ClipFormat]:
    """Tar names and the clip format of ``split`` of a set at a URL, read without staging it
    (the Ray tasks stage it where they run); the same checks `split_files` makes up front."""

    names = [storage.basename(t) for t in list_shards(shards, split)]
    if not names:
        raise FileNotFoundError(f"no {split}-*.tar shards in {shards}")
    stats = read_stats(shards)
    check_format_version(stats, f"shard set {shards} ({STATS_FILE})")
    return names, ClipFormat.of_stats(stats)


def infer_split(shards: str, split: str, model_uri: str, *, config: InferConfig | None = None,
                loaded=None, tracking_uri: str | None = None,
                address: str | None = None, sites=None) -> tuple[pd.DataFrame, object]:
    """Clip table of ``split`` (of ``sites`` only, when given) and the model's input spec.

    ``loaded`` = ``(model, spec)`` skips loading (in-process runs); Ray tasks always load
    ``model_uri`` themselves, so it must be reachable from every worker. ``address``: the Ray
    cluster (else ``RAY_ADDRESS``, else a local Ray).
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="echocmr-idx-") as index_dir:
        return _infer_split(shards, split, model_uri, config=config or InferConfig(),
                            loaded=loaded, tracking_uri=tracking_uri, address=address,
                            sites=None if sites is None else tuple(sites), index_dir=index_dir)


def _infer_split(shards: str, split: str, model_uri: str, *, config: InferConfig, loaded,
                 tracking_uri: str | None, address: str | None, sites, index_dir: str):

    remote = is_url(shards)
    if remote:  # tar names only: this process or each Ray task stages the split where it runs
        shards = canonical(shards)
        tars, clip = _remote_split(shards, split)
        indexes = [None] * len(tars)
    else:  # the set's own indexes: Ray tasks narrow them to ``sites`` where they run
        tars, indexes, clip = _split_inputs(shards, split)
    if config.gpu:  # DALI "mixed": refuse clips NVDEC cannot take before any work starts
        check_gpu_decodable(clip, f"shard set {shards}",
                            cpu_fix="run eval without --gpu (the CPU decoder reads any size)")
    stored = clip.size
    if config.workers <= 1 or len(tars) == 1:
        if remote or sites is not None:
            tars, indexes, _ = _split_inputs(shards, split, config.cache_dir, sites=sites,
                                             index_dir=index_dir)
        model, spec = loaded if loaded is not None else _load(model_uri, tracking_uri)
        clips = infer_tars(model, spec, tars, indexes, config=config, stored_size=stored)
    else:  # Ray tasks may run elsewhere: give them an absolute path for a local model
        uri = os.path.abspath(model_uri) if os.path.exists(model_uri) else model_uri
        clips, spec = _infer_with_ray(uri, tars, indexes, stored, config, tracking_uri, address,
                                      source=shards if remote else None, split=split,
                                      sites=sites, shards=shards)
    # One row order whatever the number of workers.
    return clips.sort_values(["key", "clip_index"], ignore_index=True), spec


def _load(model_uri: str, tracking_uri: str | None = None):

    return load_model(model_uri, tracking_uri=tracking_uri)


def _ray_task(model_uri: str, tars: list[str], indexes: list, stored, config_dict: dict,
              tracking_uri: str | None, source: str | None = None, split: str | None = None,
              sites=None, shards: str | None = None):
    """One Ray task's share. With ``source`` (a set at a URL), ``tars`` are tar names of
    ``split``: the task stages the split on its node and reads its local copies of them. With
    ``sites``, the task narrows its tars to those sites' samples (indexes written on its node)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="echocmr-idx-") as index_dir:
        return _task_share(model_uri, tars, indexes, stored, InferConfig(**config_dict),
                           tracking_uri, source, split, sites, shards, index_dir)


def _task_share(model_uri, tars, indexes, stored, cfg: InferConfig, tracking_uri, source, split,
                sites, shards, index_dir):
    if source is not None:
        local_tars, local_indexes, _ = _split_inputs(source, split, cfg.cache_dir)
        by_name = {os.path.basename(t): (t, i) for t, i in zip(local_tars, local_indexes,
                                                               strict=True)}
        missing = sorted(set(tars) - set(by_name))
        if missing:
            raise FileNotFoundError(f"{source} no longer has {', '.join(missing)} of {split}")
        tars, indexes = [by_name[n][0] for n in tars], [by_name[n][1] for n in tars]
    if sites is not None:

        local = stage(source, cfg.cache_dir, splits=(split,)) if source is not None else shards
        tars, indexes, _ = select_sites(local, split, tars, indexes, sites=sites,
                                        index_dir=index_dir)
        if not tars:  # this task's tars hold none of the sites' samples
            return pd.DataFrame(columns=CLIP_COLUMNS), None
    model, spec = _load(model_uri, tracking_uri)
    return infer_tars(model, spec, tars, indexes, config=cfg, stored_size=stored), spec


def _infer_with_ray(model_uri, tars, indexes, stored, config: InferConfig, tracking_uri,
                    address: str | None, *, source: str | None = None, split: str | None = None,
                    sites=None, shards: str | None = None):
    import ray

    started = ray_init(address, include_dashboard=False, log_to_driver=False)
    try:
        workers = min(config.workers, len(tars))
        remote = ray.remote(num_cpus=config.cpus_per_worker,
                            num_gpus=1 if config.gpu else 0)(_ray_task)
        cfg = {**asdict(config), "workers": 1}
        futures = [remote.remote(model_uri, tars[w::workers], indexes[w::workers], stored, cfg,
                                 tracking_uri, source, split, sites, shards)
                   for w in range(workers)]
        parts = [p for p in ray.get(futures) if p[1] is not None]
    finally:
        if started:
            ray.shutdown()
    if not parts:
        raise FileNotFoundError(f"no {split} clips of site {', '.join(sites or ())}")
    return pd.concat([p[0] for p in parts], ignore_index=True), parts[0][1]
