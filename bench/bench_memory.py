"""Benchmark: host memory (RSS) of one worker's loaders over many epochs, each with new pipelines.

`read.loader.ClipLoader` builds a fresh DALI pipeline per epoch (that is what makes the reader
position just (epoch, batch): module docstring there), and validation builds another per call. A
pipeline that is not freed would grow a long run's host memory by a pipeline's buffers every
epoch. This runs what one CPU worker's `Engine` does per epoch, without the network: every train
batch of the epoch (``train=True``: shuffle, random starts, augmentation) and every val batch,
then reads this process's resident set size (``VmRSS`` of ``/proc/self/status``) and counts the
DALI ``Pipeline`` objects still alive (0 when every epoch's pipelines were freed), and prints both.

Growth is judged on the epochs after the first two (allocator pools and DALI's thread pools
settle there): the least-squares slope in MiB per epoch and the difference last minus third.

Run: ``.venv/bin/python -m bench.bench_memory [EPOCHS]`` (default 20; ``make bench`` runs it
with the others). It writes its shard set to a temp dir and removes it.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
import warnings

import numpy as np

EPOCHS = 20
N_PATIENTS = 32  # x 3 clips, 72 frames at 112x112: ~58 train and ~19 val clips
CLIPS_PER_PATIENT = 3


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark needs Linux)")


def live_pipelines() -> int:
    """DALI ``Pipeline`` objects this process still holds (after a ``gc.collect``)."""
    from nvidia.dali import Pipeline

    with warnings.catch_warnings():  # isinstance on torch's deprecated reduce_op warns
        warnings.simplefilter("ignore", FutureWarning)
        return sum(isinstance(o, Pipeline) for o in gc.get_objects())


def run(shards: str, epochs: int) -> list[float]:
    """RSS after each epoch (train + val pass) of the ``cpu-small`` loaders on ``shards``."""
    import torch

    from echocmr.model.contract import InputSpec
    from echocmr.read.loader import ClipLoader
    from echocmr.shards.reader import read_stats
    from echocmr.train.config import load_config

    config = load_config(preset="cpu-small")
    stats = read_stats(shards)
    spec = InputSpec.build(config.data, stats, channels=config.model.in_channels)
    common = dict(stats=stats, spec=spec, device=torch.device("cpu"))
    train = ClipLoader(shards, "train", config.data, train=True, **common)
    val = ClipLoader(shards, "val", config.data, train=False, **common)
    print(f"train {train.num_samples} clips in {len(train)} batches, val {val.num_samples}; "
          f"data.num_threads {config.data.num_threads}, prefetch {config.data.prefetch}")
    print("epoch  RSS MiB  live pipelines  seconds")
    rss = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        checksum = 0.0
        for batch in train.epoch(epoch):
            checksum += float(batch.clips[0, 0, 0, 0, 0])  # the batch is really read
        for batch in val.epoch(0):
            checksum += float(batch.clips[0, 0, 0, 0, 0])
        gc.collect()
        rss.append(rss_mib())
        print(f"{epoch:>5}  {rss[-1]:7.1f}  {live_pipelines():14d}  "
              f"{time.perf_counter() - t0:7.1f}", flush=True)
    return rss


def growth(rss: list[float], skip: int = 2) -> tuple[float, float, float]:
    """(slope in MiB per epoch, last minus first, SD of RSS) over the epochs after ``skip``."""
    tail = np.asarray(rss[skip:])
    if len(tail) < 2:
        return 0.0, 0.0, 0.0
    slope = float(np.polyfit(np.arange(len(tail)), tail, 1)[0])
    return slope, float(tail[-1] - tail[0]), float(tail.std(ddof=1))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    epochs = int(args[0]) if args else EPOCHS
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
    from _shards_fixtures import make_shard_set

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        shards = make_shard_set(os.path.join(tmp, "shards"), n_patients=N_PATIENTS,
                                clips_per_patient=CLIPS_PER_PATIENT, n_frames=72, size=112,
                                fps=30.0, samples_per_shard=8)
        rss = run(shards, epochs)
    slope, delta, sd = growth(rss)
    print(f"RSS after epoch 0 {rss[0]:.1f} MiB, after epoch {len(rss) - 1} {rss[-1]:.1f} MiB; "
          f"epochs 2..{len(rss) - 1}: {slope:+.2f} MiB/epoch (least squares), "
          f"{delta:+.1f} MiB last minus epoch 2, SD {sd:.1f} MiB epoch to epoch")


if __name__ == "__main__":
    main()
