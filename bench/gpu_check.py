"""The GPU path, measured in one short run: decode, loader, training, pipeline rebuilds, eval.

Not a ``bench_*`` module, so ``make bench`` does not pick it up: it is made to run once on a lent
device machine (docs/benchmarks.md, "GPU check", has the exact calls), which has torch, numpy,
pandas, pyarrow, fsspec and PyYAML, DALI carried in parts, and none of Ray, MLflow, webdataset,
pydicom or PyAV. So this script uses the engine and the loader directly and imports none of
those (a test runs it with them blocked). Shard sets are built here and carried::

    python bench/gpu_check.py --make-data .device/data          # here: two tiny shard sets
    python bench/gpu_check.py --shards .device/data --out $OUT   # there: --device cuda (default)
    python bench/gpu_check.py --shards DIR --out DIR --device cpu  # anywhere: the CPU parts

Sections (each catches its own errors and records them, so one failing hides no other):

0. NVDEC's real minimum frame size per codec, read from the driver (``cuvidGetDecoderCaps``),
   against ``shards.format.NVDEC_MIN_SIZE``; and the chip's bf16 matmul peak.
1. ``decode``: DALI ``mixed`` against ``cpu`` on the same whole test clips, at the default clip
   size (144) and the old 112: works or the error, and max / mean absolute difference in grey
   levels.
2. ``loader``: `read.loader.ClipLoader` clips/s into training tensors on the device (training
   window, augmentation on): ``mixed``, and CPU decode with 16 DALI threads.
3. ``train``: `train.engine.Engine` steps of R(2+1)D-18 at 32x112x112 (bf16 autocast,
   channels-last), without and with ``torch.compile``, batch 16/32/64, fed by the real loader
   and by a tensor already on the GPU (the compute ceiling); data-wait share of step time; model
   FLOP utilisation from torch's flop counter (forward + backward) against the measured peak.
4. ``rebuilds``: GPU and host memory after each of 5 pipeline rebuilds (train and val pipelines
   are built per epoch), without and with DALI's ``ReleaseUnusedMemory``.
5. ``eval``: `eval.infer.infer_tars` over the test split on GPU (``mixed``) and on CPU: windows/s
   and the largest difference in probabilities.

Time: a global budget (``--budget-s``, 270 s) and a limit per section (`LIMITS_S`), checked
before each measurement; what does not fit is recorded as skipped. Estimates for one H200 (an
estimate: none has run yet): start-up and peak 15 s, decode 20 s, loader 30 s, train 130 s
(uncompiled about 10 s per batch size; compile about 30 s per batch size), rebuilds 30 s, eval
30 s; at most 270 s, plus DALI's unpacking (a 180 MB xz tarball, estimated 20-30 s), inside the
6 minutes the device check may take. ``$OUT/gpu_check.json`` is rewritten
after every section, so a run cut short still leaves what it measured.

On ``--device cpu`` the sizes shrink (a width-8 network on 8x32x32 clips, batch 2, a few
steps), ``mixed`` and compile are recorded as skipped, and the whole run takes seconds: that is
what ``make test`` runs (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

SETS = {"default": "s144", "old": "s112"}  # --make-data writes these under DIR
LIMITS_S = {"decode": 30, "loader": 35, "train": 130, "rebuilds": 30, "eval": 30}
JSON_NAME = "gpu_check.json"
# What the device machine has besides the standard library (shared/device/README.md, DESIGN.md:
# torch and what it brings, numpy, pandas, pyarrow, fsspec, PyYAML, OpenCV, scikit-learn) plus
# DALI and the dependencies prepare.sh packs with it. tests/test_gpu_check.py runs the check
# with every other package blocked, and checks this process imported nothing else.
DEVICE_PACKAGES = frozenset({
    "echocmr", "torch", "torchgen", "functorch", "triton", "sympy", "mpmath", "networkx",
    "jinja2", "markupsafe", "filelock", "typing_extensions", "setuptools", "numpy", "pandas",
    "dateutil", "pytz", "tzdata", "pyarrow", "fsspec", "yaml", "cv2", "sklearn", "scipy",
    "joblib", "threadpoolctl", "nvidia", "astunparse", "gast", "libcst", "makefun", "optree",
    "nvtx", "six", "packaging",
})


@dataclass(frozen=True)
class Profile:
    """How big the check is on a device (``cuda``: the real model) or on the CPU (the test)."""

    width: int
    layers: tuple[int, int, int, int]
    frames: int
    period: int
    size: int
    batch_sizes: tuple[int, ...]
    compile: tuple[bool, ...]
    widen: int  # the train split is listed this many times over, so epochs outlast a measurement
    mixed_threads: int
    cpu_threads: int
    warmup_steps: int
    steps: int
    loader_batches: int
    loader_batch: int
    rebuild_batches: int


GPU = Profile(width=64, layers=(2, 2, 2, 2), frames=32, period=2, size=112,
              batch_sizes=(16, 32, 64), compile=(False, True), widen=100, mixed_threads=4,
              cpu_threads=16, warmup_steps=5, steps=20, loader_batches=60, loader_batch=32,
              rebuild_batches=3)
CPU = Profile(width=8, layers=(1, 1, 1, 1), frames=8, period=2, size=32, batch_sizes=(2,),
              compile=(False,), widen=2, mixed_threads=1, cpu_threads=2, warmup_steps=1,
              steps=3, loader_batches=4, loader_batch=2, rebuild_batches=1)


# -- data (run here) --------------------------------------------------------------------------


def make_data(out: str, *, patients: int = 48, frames: int = 72, old_patients: int = 8) -> None:
    """Write the two shard sets the check reads: ``s144`` (the default clip size) and ``s112``
    (the old one), train/val/test, with the test fixture's phantom clips (needs PyAV: here)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "tests"))
    from echocmr.shards.format import DEFAULT_CLIP_SIZE

    from _shards_fixtures import make_shard_set

    for name, size, n in ((SETS["default"], DEFAULT_CLIP_SIZE, patients),
                          (SETS["old"], 112, old_patients)):
        make_shard_set(os.path.join(out, name), n_patients=n, clips_per_patient=2,
                       n_frames=frames, size=size, samples_per_shard=16, seed=1)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out}: {total / 1e6:.1f} MB")


# -- bookkeeping ------------------------------------------------------------------------------


@dataclass
class Budget:
    """The global deadline and the current section's."""

    total_s: float
    start: float = field(default_factory=time.perf_counter)
    section_end: float = float("inf")

    def begin(self, limit_s: float) -> None:
        self.section_end = time.perf_counter() + limit_s

    def left(self) -> float:
        now = time.perf_counter()
        return min(self.start + self.total_s, self.section_end) - now


class Check:
    """The record of one run: written to ``OUT/gpu_check.json`` after every section."""

    def __init__(self, out: str, device: str, budget: Budget) -> None:
        self.out, self.device, self.budget = out, device, budget
        self.record: dict = {"device": device, "sections": {}}
        os.makedirs(out, exist_ok=True)

    def section(self, name: str, fn, *args) -> None:
        self.budget.begin(LIMITS_S.get(name, 60))
        started = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as exc:  # a failing section must not hide the others
            result = {"error": _error(exc), "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.record["sections"][name] = result
        self.write()
        print(f"[{name}: {result['seconds']} s{', ERROR' if 'error' in result else ''}]",
              flush=True)

    def write(self) -> None:
        self.record["elapsed_s"] = round(time.perf_counter() - self.budget.start, 1)
        with open(os.path.join(self.out, JSON_NAME), "w") as f:
            json.dump(self.record, f, indent=1, default=str)


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 800 else text[:800] + " ..."


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_rss_mb() -> float:
    """This process's resident memory (VmRSS), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def gpu_memory_mb(device) -> dict:
    """torch's allocated / reserved and the device's used memory (all processes, DALI's too)."""
    import torch

    if device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(device)
    return {"torch_allocated_mb": round(torch.cuda.memory_allocated(device) / 2**20, 1),
            "torch_reserved_mb": round(torch.cuda.memory_reserved(device) / 2**20, 1),
            "device_used_mb": round((total - free) / 2**20, 1)}


def widen(shards: str, times: int, out: str) -> str:
    """A view of ``shards`` whose train split lists every train tar ``times`` times (symlinks),
    so an epoch outlasts a measurement; val and test as they are."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from echocmr.shards.format import MANIFEST_FILE, STATS_FILE, shard_name
    from echocmr.shards.manifest import manifest_bytes
    from echocmr.shards.reader import list_shards

    os.makedirs(out, exist_ok=True)
    manifest = pq.read_table(os.path.join(shards, MANIFEST_FILE))
    parts, n = [], 0
    for _ in range(times):
        for tar in list_shards(shards, "train"):
            name = shard_name("train", n)
            _link_shard(tar, os.path.join(out, name))
            rows = manifest.filter(pc.equal(manifest["shard"], os.path.basename(tar)))
            parts.append(rows.set_column(rows.schema.get_field_index("shard"), "shard",
                                         pa.array([name] * rows.num_rows, pa.string())))
            n += 1
    for split in ("val", "test"):
        for tar in list_shards(shards, split):
            _link_shard(tar, os.path.join(out, os.path.basename(tar)))
            parts.append(manifest.filter(pc.equal(manifest["shard"], os.path.basename(tar))))
    # The loaders plan their reading from the manifest: the widened set lists its own shards.
    with open(os.path.join(out, MANIFEST_FILE), "wb") as f:
        f.write(manifest_bytes(pa.concat_tables(parts)))
    os.symlink(os.path.abspath(os.path.join(shards, STATS_FILE)), os.path.join(out, STATS_FILE))
    return out


def _link_shard(tar: str, dest: str) -> None:
    from echocmr.shards.format import index_name

    os.symlink(os.path.abspath(tar), dest)
    idx = os.path.join(os.path.dirname(tar), index_name(os.path.basename(tar)))
    os.symlink(os.path.abspath(idx), dest[: -len(".tar")] + ".idx")


# -- 0. device facts --------------------------------------------------------------------------

_CODECS = {"h264": 4, "hevc": 8, "vp8": 9, "vp9": 10, "av1": 11}  # cudaVideoCodec (cuviddec.h)


class _DecodeCaps(ctypes.Structure):  # CUVIDDECODECAPS (cuviddec.h, Video Codec SDK 12)
    _fields_ = [("eCodecType", ctypes.c_int), ("eChromaFormat", ctypes.c_int),
                ("nBitDepthMinus8", ctypes.c_uint), ("reserved1", ctypes.c_uint * 3),
                ("bIsSupported", ctypes.c_ubyte), ("nNumNVDECs", ctypes.c_ubyte),
                ("nOutputFormatMask", ctypes.c_ushort), ("nMaxWidth", ctypes.c_uint),
                ("nMaxHeight", ctypes.c_uint), ("nMaxMBCount", ctypes.c_uint),
                ("nMinWidth", ctypes.c_ushort), ("nMinHeight", ctypes.c_ushort),
                ("bIsHistogramSupported", ctypes.c_ubyte), ("nCounterBitDepth", ctypes.c_ubyte),
                ("nMaxHistogramBins", ctypes.c_ushort), ("reserved3", ctypes.c_uint * 10)]


def nvdec_caps(device) -> dict:
    """NVDEC's limits per codec (8-bit 4:2:0) as the driver reports them, on ``device``'s
    primary context, beside the figure echocmr assumes (`shards.format.NVDEC_MIN_SIZE`)."""
    from echocmr.shards.format import NVDEC_MIN_SIZE

    if device.type != "cuda":
        return {"skipped": "no CUDA"}
    cuda, cuvid = ctypes.CDLL("libcuda.so.1"), ctypes.CDLL("libnvcuvid.so.1")
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    for call, args in ((cuda.cuInit, (0,)),
                       (cuda.cuDeviceGet, (ctypes.byref(dev), device.index or 0)),
                       (cuda.cuDevicePrimaryCtxRetain, (ctypes.byref(ctx), dev)),
                       (cuda.cuCtxPushCurrent_v2, (ctx,))):
        rc = call(*args)
        if rc != 0:
            raise RuntimeError(f"{call.__name__} returned CUDA error {rc}")
    out = {}
    try:
        for codec, code in _CODECS.items():
            caps = _DecodeCaps(eCodecType=code, eChromaFormat=1, nBitDepthMinus8=0)
            rc = cuvid.cuvidGetDecoderCaps(ctypes.byref(caps))
            out[codec] = ({"error": f"cuvidGetDecoderCaps returned {rc}"} if rc else
                          {"supported": bool(caps.bIsSupported), "nvdecs": caps.nNumNVDECs,
                           "min": [caps.nMinWidth, caps.nMinHeight],
                           "max": [caps.nMaxWidth, caps.nMaxHeight],
                           "assumed_min": NVDEC_MIN_SIZE.get(codec)})
    finally:
        cuda.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
        cuda.cuDevicePrimaryCtxRelease_v2(dev)
    return out


def bf16_peak(device, budget: Budget) -> dict:
    """TFLOP/s of a large bf16 matmul (the ceiling model FLOP utilisation is measured against)."""
    import torch

    if device.type != "cuda":
        return {"skipped": "no CUDA"}
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(10):
        a @ b
    _sync(device)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 50
    start.record()
    for _ in range(reps):
        a @ b
    stop.record()
    _sync(device)
    seconds = start.elapsed_time(stop) / 1000
    return {"tflops": round(2 * n**3 * reps / seconds / 1e12, 1), "matmul": f"{n}^3 bf16"}


# -- 1. decode --------------------------------------------------------------------------------


def decode_section(sets: dict[str, str], device, budget: Budget) -> dict:
    """``mixed`` against ``cpu`` on the same whole test clips of each set."""
    out = {}
    for label, shards in sets.items():
        frames, result = {}, {}
        for decoder in ("cpu", "mixed"):
            if decoder == "mixed" and device.type != "cuda":
                result[decoder] = {"status": "skipped: no CUDA"}
                continue
            try:
                started = time.perf_counter()
                frames[decoder] = _decode_whole(shards, decoder, device)
                seconds = time.perf_counter() - started
                result[decoder] = {"status": "ok", "clips": len(frames[decoder]),
                                   "clips_per_s": round(len(frames[decoder]) / seconds, 1)}
            except Exception as exc:
                result[decoder] = {"status": "error", "error": _error(exc)}
        if len(frames) == 2:
            result["diff"] = _frame_diff(frames["cpu"], frames["mixed"])
        out[label] = {"shards": shards, "clip_size": _clip(shards).size, **result}
    return out


def _clip(shards: str):
    from echocmr.shards.format import ClipFormat
    from echocmr.shards.reader import read_stats

    return ClipFormat.of_stats(read_stats(shards))


def _decode_whole(shards: str, decoder: str, device) -> dict:
    """``{key: uint8[F, H, W]}`` of the test split at the stored size (no resize)."""
    import numpy as np

    from echocmr.model.contract import InputSpec
    from echocmr.read.config import DataConfig
    from echocmr.read.loader import split_files
    from echocmr.read.pipeline import PipelineConfig, build_pipeline, sample_meta
    from echocmr.shards.reader import read_stats

    stats = read_stats(shards)
    clip = _clip(shards)
    spec = InputSpec.build(DataConfig(size=clip.height), stats)
    tars, indexes, counts = split_files(shards, "test")
    run = PipelineConfig(batch_size=4, num_threads=2, prefetch=1,
                         device_id=(device.index or 0) if decoder == "mixed" else None)
    pipe = build_pipeline(tars, indexes, spec, config=run, window="whole", stored_size=clip.size)
    got: dict = {}
    try:
        while len(got) < sum(counts):
            frames_tl, _, meta_tl = pipe.run()
            if decoder == "mixed":
                frames_tl = frames_tl.as_cpu()
            for i in range(len(meta_tl)):
                got.setdefault(sample_meta(meta_tl.at(i)).key, np.array(frames_tl.at(i))[..., 0])
    finally:
        del pipe
    return got


def _frame_diff(a: dict, b: dict) -> dict:
    import numpy as np

    keys = sorted(set(a) & set(b))
    shapes = [k for k in keys if a[k].shape != b[k].shape]
    same = [k for k in keys if a[k].shape == b[k].shape]
    d = [np.abs(a[k].astype(np.int16) - b[k].astype(np.int16)) for k in same]
    return {"clips": len(keys), "shape_mismatches": len(shapes),
            "max_abs": int(max((x.max() for x in d), default=0)),
            "mean_abs": round(float(np.mean([x.mean() for x in d])) if d else float("nan"), 4)}


# -- 2. loader --------------------------------------------------------------------------------


def data_config(profile: Profile, *, batch_size: int, decoder: str, threads: int):
    from echocmr.read.config import DataConfig
    from echocmr.shards.format import VIEW_VOCABULARY

    # Every view: the measurement reads every clip the widened set lists.
    return DataConfig(frames=profile.frames, period=profile.period, size=profile.size,
                      batch_size=batch_size, decoder=decoder, num_threads=threads, prefetch=2,
                      views=VIEW_VOCABULARY)


def loader_section(wide: str, profile: Profile, device, budget: Budget) -> dict:
    """Clips/s of the training loader into tensors on ``device``, per decoder."""
    from echocmr.model.contract import InputSpec
    from echocmr.read.loader import ClipLoader
    from echocmr.shards.reader import read_stats

    stats = read_stats(wide)
    out = {}
    variants = [("mixed", profile.mixed_threads), ("cpu", profile.cpu_threads)]
    for decoder, threads in variants:
        name = f"{decoder}, {threads} threads"
        if decoder == "mixed" and device.type != "cuda":
            out[name] = {"status": "skipped: no CUDA"}
            continue
        if budget.left() < 5:
            out[name] = {"status": "skipped: time budget"}
            continue
        try:
            config = data_config(profile, batch_size=profile.loader_batch, decoder=decoder,
                                 threads=threads)
            spec = InputSpec.build(config, stats)
            loader = ClipLoader(wide, "train", config, spec=spec, train=True, stats=stats,
                                device=device)
            started = time.perf_counter()
            batches = loader.epoch(0)
            next(batches)  # the pipeline's build and first batch
            first = time.perf_counter() - started
            clips, t0 = 0, time.perf_counter()
            for i, batch in enumerate(batches):
                clips += batch.n_valid
                if i + 2 >= profile.loader_batches or budget.left() < 2:
                    break
            _sync(device)
            seconds = time.perf_counter() - t0
            batches.close()
            out[name] = {"status": "ok", "clips": clips,
                         "clips_per_s": round(clips / seconds, 1),
                         "build_and_first_batch_s": round(first, 2),
                         "batch": profile.loader_batch}
        except Exception as exc:
            out[name] = {"status": "error", "error": _error(exc)}
    return out


# -- 3. training ------------------------------------------------------------------------------


def train_config(profile: Profile, *, batch_size: int, compile: bool, device):
    from echocmr.model.config import ModelConfig
    from echocmr.train.config import TrainConfig

    gpu = device.type == "cuda"
    return TrainConfig(
        model=ModelConfig(width=profile.width, layers=profile.layers),
        data=data_config(profile, batch_size=batch_size, decoder="auto",
                         threads=profile.mixed_threads if gpu else profile.cpu_threads),
        gpu=gpu, bf16=True, channels_last=True, compile=compile, epochs=1)


def flops_per_clip(profile: Profile, device) -> float:
    """Forward + backward FLOPs of one training clip, from torch's flop counter (batch of 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from echocmr.model.network import build_model

    config = train_config(profile, batch_size=2, compile=False, device=device)
    model = build_model(config.model).to(device).train()
    x = torch.randn(2, 1, profile.frames, profile.size, profile.size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16,
                                 enabled=device.type == "cuda"):
        model(x).float().sum().backward()
    return counter.get_total_flops() / 2


def train_section(wide: str, profile: Profile, device, peak_tflops: float | None,
                  budget: Budget) -> dict:
    """Training clips/s per (compile, batch, feed); data-wait share and MFU."""
    import torch

    from echocmr.shards.reader import read_stats
    from echocmr.train.engine import Engine

    stats = read_stats(wide)
    flops = flops_per_clip(profile, device)
    out: dict = {"flops_per_clip_fwd_bwd": flops, "peak_tflops": peak_tflops, "runs": []}
    for compiled in (False, True):
        for bs in profile.batch_sizes:
            row = {"compile": compiled, "batch": bs}
            out["runs"].append(row)
            if compiled and compiled not in profile.compile:
                row["status"] = "skipped on cpu" if device.type != "cuda" else "skipped"
                continue
            if budget.left() < (60 if compiled else 10):
                row["status"] = "skipped: time budget"
                continue
            try:
                torch.manual_seed(0)
                engine = Engine(train_config(profile, batch_size=bs, compile=compiled,
                                             device=device), wide, stats=stats, device=device)
                row["ceiling"] = _steps(engine, _synthetic(engine, bs, device), profile, device,
                                        budget)
                row["loader"] = _steps(engine, _real(engine), profile, device, budget)
                for feed in ("ceiling", "loader"):
                    rate = row[feed]["clips_per_s"]
                    if peak_tflops:
                        row[feed]["mfu"] = round(rate * flops / (peak_tflops * 1e12), 4)
                if device.type == "cuda":
                    row["max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device)
                                                    / 2**20)
                    torch.cuda.reset_peak_memory_stats(device)
                row["status"] = "ok"
                del engine
                gc.collect()
            except Exception as exc:
                row["status"] = "error"
                row["error"] = _error(exc)
    return out


def _synthetic(engine, bs: int, device):
    """The same batch over and over, already on the device: no data wait at all."""
    import torch

    from echocmr.read.loader import Batch

    spec = engine.spec
    batch = Batch(clips=torch.randn(bs, 1, spec.frames, spec.size, spec.size, device=device),
                  labels=(torch.rand(bs, len(spec.tasks), device=device) > 0.5).float(),
                  valid=torch.ones(bs, dtype=torch.bool, device=device), keys=[""] * bs,
                  n_valid=bs)
    while True:
        yield batch


def _real(engine):
    """The training loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        yield from engine.train_loader.epoch(epoch)
        epoch += 1


def _steps(engine, batches, profile: Profile, device, budget: Budget) -> dict:
    """Warm up, then time optimiser steps; the share of the time spent waiting in ``next``."""
    engine.net.train()
    warm = time.perf_counter()
    for _ in range(profile.warmup_steps):
        engine._step(next(batches))
    _sync(device)
    warmup_s = time.perf_counter() - warm
    steps, clips, wait = 0, 0, 0.0
    started = time.perf_counter()
    while steps < profile.steps and budget.left() > 1:
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        engine._step(batch)
        steps, clips = steps + 1, clips + batch.n_valid
    _sync(device)
    seconds = time.perf_counter() - started
    batches.close()
    return {"steps": steps, "clips_per_s": round(clips / seconds, 1) if seconds else None,
            "data_wait_share": round(wait / seconds, 4) if seconds else None,
            "step_ms": round(1000 * seconds / max(steps, 1), 1), "warmup_s": round(warmup_s, 1)}


# -- 4. pipeline rebuilds ---------------------------------------------------------------------


def rebuild_section(wide: str, profile: Profile, device, budget: Budget) -> dict:
    """Memory after each of 5 train + val pipeline builds (one epoch's), with and without
    DALI's ``ReleaseUnusedMemory`` after each."""
    from nvidia.dali import backend

    from echocmr.model.contract import InputSpec
    from echocmr.read.loader import ClipLoader
    from echocmr.shards.reader import read_stats

    stats = read_stats(wide)
    config = data_config(profile, batch_size=profile.loader_batch, decoder="auto",
                         threads=profile.mixed_threads if device.type == "cuda"
                         else profile.cpu_threads)
    spec = InputSpec.build(config, stats)
    loaders = [ClipLoader(wide, split, config, spec=spec, train=split == "train", stats=stats,
                          device=device) for split in ("train", "val")]
    release = getattr(backend, "ReleaseUnusedMemory", None)
    out: dict = {"release_unused_memory_exists": release is not None,
                 "before": {"host_rss_mb": round(host_rss_mb(), 1), **gpu_memory_mb(device)}}
    for use_release in (False, True):
        rows = []
        for epoch in range(5):
            if budget.left() < 2:
                rows.append({"epoch": epoch, "status": "skipped: time budget"})
                break
            started = time.perf_counter()
            for loader in loaders:
                for _ in loader.epoch(epoch, max_batches=profile.rebuild_batches):
                    pass
            gc.collect()
            if use_release and release is not None:
                release()
            _sync(device)
            rows.append({"epoch": epoch, "seconds": round(time.perf_counter() - started, 2),
                         "host_rss_mb": round(host_rss_mb(), 1), **gpu_memory_mb(device)})
        out["with_release" if use_release else "without_release"] = rows
    return out


# -- 5. eval ----------------------------------------------------------------------------------


def eval_section(shards: str, profile: Profile, device, budget: Budget) -> dict:
    """`infer_tars` over the test split on the device and on the CPU; probability agreement."""
    import numpy as np
    import torch

    from echocmr.eval.infer import InferConfig, infer_tars
    from echocmr.model.contract import InputSpec
    from echocmr.model.network import build_model
    from echocmr.model.tasks import TASKS, p_col
    from echocmr.read.loader import split_files
    from echocmr.shards.reader import read_stats

    stats = read_stats(shards)
    config = train_config(profile, batch_size=2, compile=False, device=device)
    spec = InputSpec.build(config.data, stats)
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    tars, indexes, _ = split_files(shards, "test")
    stored = _clip(shards).size
    out, tables = {}, {}
    runs = [("cpu", False, torch.device("cpu"), profile.cpu_threads)]
    if device.type == "cuda":
        runs.insert(0, ("gpu", True, device, profile.mixed_threads))
    else:
        out["gpu"] = {"status": "skipped: no CUDA"}
    for name, gpu, where, threads in runs:
        if budget.left() < 3:
            out[name] = {"status": "skipped: time budget"}
            continue
        try:
            cfg = InferConfig(gpu=gpu, batch_size=16, read_batch=4, num_threads=threads)
            started = time.perf_counter()
            table = infer_tars(copy.deepcopy(model), spec, tars, indexes, config=cfg,
                               stored_size=stored, device=where)
            seconds = time.perf_counter() - started
            tables[name] = table.sort_values(["key", "clip_index"], ignore_index=True)
            out[name] = {"status": "ok", "windows": len(table),
                         "windows_per_s": round(len(table) / seconds, 1),
                         "videos": int(table["key"].nunique())}
        except Exception as exc:
            out[name] = {"status": "error", "error": _error(exc)}
    if len(tables) == 2:
        cols = [p_col(t) for t in TASKS]
        a, b = tables["gpu"], tables["cpu"]
        same = len(a) == len(b) and (a["key"] == b["key"]).all()
        diff = np.abs(a[cols].to_numpy(float) - b[cols].to_numpy(float)) if same else None
        out["agreement"] = {"same_windows": bool(same),
                            "max_abs_prob_diff": float(diff.max()) if same else None,
                            "mean_abs_prob_diff": float(diff.mean()) if same else None,
                            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
    return out


# -- the run ----------------------------------------------------------------------------------


def run_check(shards: str, out: str, device_name: str, budget_s: float) -> dict:
    import torch

    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device; use --device cpu")
    profile = GPU if device.type == "cuda" else CPU
    check = Check(out, device_name, Budget(budget_s))
    sets = {label: os.path.join(shards, name) for label, name in SETS.items()}
    check.record["meta"] = _meta(device, profile, budget_s)
    check.write()
    check.section("nvdec", nvdec_caps, device)
    check.section("peak", bf16_peak, device, check.budget)
    peak = check.record["sections"]["peak"].get("tflops")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        wide = widen(sets["default"], profile.widen, os.path.join(tmp, "wide"))
        check.section("decode", decode_section, sets, device, check.budget)
        check.section("loader", loader_section, wide, profile, device, check.budget)
        check.section("train", train_section, wide, profile, device, peak, check.budget)
        check.section("rebuilds", rebuild_section, wide, profile, device, check.budget)
        check.section("eval", eval_section, sets["default"], profile, device, check.budget)
    check.record["imported_packages"] = sorted(_imported_packages())
    check.write()
    print(format_table(check.record))
    return check.record


def _meta(device, profile: Profile, budget_s: float) -> dict:
    import nvidia.dali
    import torch

    meta = {"python": platform.python_version(), "torch": torch.__version__,
            "dali": nvidia.dali.__version__, "cpus": os.cpu_count(), "budget_s": budget_s,
            "profile": profile.__dict__, "limits_s": LIMITS_S}
    if device.type == "cuda":
        meta.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    driver_capability=list(torch.cuda.get_device_capability(device)))
    return meta


def _imported_packages() -> set[str]:
    """Top-level packages this process imported, the standard library left out."""
    names = {m.split(".")[0] for m in list(sys.modules)}
    return {n for n in names if n not in sys.stdlib_module_names and not n.startswith("_")}


# -- the table --------------------------------------------------------------------------------


def format_table(record: dict) -> str:
    """One table of everything the run measured (``gpu_check.json`` holds the rest)."""
    rows: list[tuple[str, str, str]] = []
    s = record["sections"]
    meta = record.get("meta", {})
    rows.append(("device", record["device"], meta.get("gpu", f"{meta.get('cpus')} CPUs")))
    rows.append(("versions", "torch / DALI", f"{meta.get('torch')} / {meta.get('dali')}"))
    nv = s.get("nvdec", {})
    for codec, caps in nv.items():
        if isinstance(caps, dict) and "min" in caps:
            rows.append(("nvdec", f"{codec} min (assumed)",
                         f"{caps['min'][0]}x{caps['min'][1]} ({caps['assumed_min']})"))
    rows.append(("nvdec", "caps", _status(nv)))
    rows.append(("peak", "bf16 matmul TFLOP/s", str(s.get("peak", {}).get("tflops",
                                                                         _status(s.get("peak"))))))
    for label, r in _items(s.get("decode")):
        size = "x".join(map(str, r.get("clip_size") or ()))
        for dec in ("cpu", "mixed"):
            v = r.get(dec, {})
            rows.append(("decode", f"{label} {size} {dec}",
                         v.get("status", "") + (f", {v['clips_per_s']} clips/s"
                                                if "clips_per_s" in v else "")
                         + (f": {v['error'][:120]}" if "error" in v else "")))
        if "diff" in r:
            d = r["diff"]
            rows.append(("decode", f"{label} mixed-cpu grey levels",
                         f"max {d['max_abs']}, mean {d['mean_abs']} over {d['clips']} clips"))
    for name, v in _items(s.get("loader")):
        rows.append(("loader", name, f"{v['clips_per_s']} clips/s" if "clips_per_s" in v
                     else v.get("status", "") + (f": {v['error'][:120]}" if "error" in v else "")))
    tr = s.get("train", {})
    for r in tr.get("runs", []):
        what = f"batch {r['batch']}{', compile' if r['compile'] else ''}"
        if r.get("status") != "ok":
            rows.append(("train", what, r.get("status", "") + (f": {r['error'][:120]}"
                                                               if "error" in r else "")))
            continue
        for feed in ("ceiling", "loader"):
            v = r[feed]
            mfu = f", MFU {v['mfu']:.1%}" if "mfu" in v else ""
            rows.append(("train", f"{what}, {feed}",
                         f"{v['clips_per_s']} clips/s, wait {v['data_wait_share']:.1%}{mfu}"))
    if "error" in tr:
        rows.append(("train", "error", tr["error"][:160]))
    rb = s.get("rebuilds", {})
    for key in ("without_release", "with_release"):
        done = [r for r in rb.get(key, []) if "host_rss_mb" in r]
        if done:
            host = " / ".join(f"{r['host_rss_mb']:.0f}" for r in done)
            gpu = " / ".join(f"{r['device_used_mb']:.0f}" for r in done if "device_used_mb" in r)
            rows.append(("rebuilds", key.replace("_", " "),
                         f"host MB {host}" + (f"; GPU used MB {gpu}" if gpu else "")))
    if "error" in rb:
        rows.append(("rebuilds", "error", rb["error"][:160]))
    ev = s.get("eval", {})
    for name in ("gpu", "cpu"):
        v = ev.get(name, {})
        rows.append(("eval", name, f"{v['windows_per_s']} windows/s ({v['windows']})"
                     if "windows_per_s" in v else v.get("status", "") +
                     (f": {v['error'][:120]}" if "error" in v else "")))
    if "agreement" in ev:
        rows.append(("eval", "gpu-cpu max |p| diff", str(ev["agreement"]["max_abs_prob_diff"])))
    if "error" in ev:
        rows.append(("eval", "error", ev["error"][:160]))
    rows.append(("total", "seconds", str(record.get("elapsed_s"))))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{'section':<{w0}}  {'what':<{w1}}  result", f"{'-' * w0}  {'-' * w1}  ------"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def _items(section) -> list:
    if not isinstance(section, dict):
        return []
    return [(k, v) for k, v in section.items() if isinstance(v, dict)]


def _status(section) -> str:
    if not isinstance(section, dict):
        return "not run"
    if "error" in section:
        return "error: " + section["error"][:120]
    return section.get("skipped", "ok")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--make-data", metavar="DIR", help="write the shard sets here, then stop")
    p.add_argument("--patients", type=int, default=48, help="--make-data: patients of s144")
    p.add_argument("--frames", type=int, default=72, help="--make-data: frames per clip")
    p.add_argument("--shards", metavar="DIR", help="the --make-data directory")
    p.add_argument("--out", metavar="DIR", default=os.environ.get("OUT", "gpu_check_out"))
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--budget-s", type=float, default=270.0,
                   help="global time budget in seconds (sections skip what does not fit)")
    args = p.parse_args(argv)
    if args.make_data:
        make_data(args.make_data, patients=args.patients, frames=args.frames,
                  old_patients=min(8, args.patients))
        return 0
    if not args.shards:
        p.error("--shards DIR (or --make-data DIR) is required")
    record = run_check(args.shards, args.out, args.device, args.budget_s)
    failed = [n for n, v in record["sections"].items() if "error" in v]
    print(f"{os.path.join(args.out, JSON_NAME)} written; sections with errors: "
          f"{', '.join(failed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
