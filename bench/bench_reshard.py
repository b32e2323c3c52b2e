"""Benchmark: reshard throughput and peak memory, against loading everything and rewriting.

Builds (once, cached under ``/tmp/echocmr-bench-reshard-format<N>``) two-site shard sets of two sizes,
then in a fresh process per measurement:

- ``reshard``: `shards.reshard.reshard` (streams: one ranged read per sample);
- ``plain``: what one would write without the toolkit: read every sample of both sets into a
  list, shuffle each split, write them with `ShardSetWriter`.

and prints clips/s, MB/s (clip bytes read) and peak RSS for each. The point: the plain way's
memory grows with the video bytes (all of them are held at once); reshard's holds one sample plus
a plan of a few KB per clip (manifest rows), so it does not grow with the data's size: a few KB
per clip whether clips are 50 KB or 5 MB.

Clips are real VP9 WebM (112x112, 48 frames, ~45 KB); to keep the one-off build short, 64 distinct
clips are encoded and reused under different keys (reshard never decodes, so this does not change
its speed; verify's SHA-256 checks still run on every clip).

Run: ``.venv/bin/python bench/bench_reshard.py [--sizes 1000 4000]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time

# The repo root, for the child processes this file runs as a script (``--child``).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from echocmr.shards.format import FORMAT_VERSION  # noqa: E402  (a cache of another format is stale)

CACHE = f"/tmp/echocmr-bench-reshard-format{FORMAT_VERSION}"
SITES = ("site_a", "site_b")
N_DISTINCT = 64


def _clips(n: int) -> list[tuple[bytes, tuple[float, float, int]]]:
    import numpy as np

    from echocmr.ingest.encode import encode_webm

    rng = np.random.default_rng(0)
    out = []
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32)
    for _ in range(n):
        texture = rng.normal(0, 8, size=(112, 112))
        r0, cy, cx = rng.uniform(18, 28), rng.uniform(45, 67), rng.uniform(45, 67)
        frames = np.empty((48, 112, 112), dtype=np.uint8)
        for t in range(48):
            r = r0 * (1 + 0.25 * np.sin(2 * np.pi * t / 24))
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
            frames[t] = np.clip(40 + 140 * disc + texture + rng.normal(0, 3, (112, 112)), 0, 255)
        pixels = frames.astype(np.float64)
        out.append((encode_webm(frames, 30.0), (pixels.mean(), pixels.std(), pixels.size)))
    return out


def build(n_clips: int) -> list[str]:
    """Two site sets with ``n_clips`` clips in all (cached); returns their directories."""
    import numpy as np

    from echocmr.shards.format import STATS_FILE, Sample
    from echocmr.shards.writer import ShardSetWriter, WriterConfig

    root = os.path.join(CACHE, f"n{n_clips}")
    dirs = [os.path.join(root, site) for site in SITES]
    if all(os.path.exists(os.path.join(d, STATS_FILE)) for d in dirs):
        return dirs
    clips = _clips(N_DISTINCT)
    fmt = {"height": 112, "width": 112, "fps": 30.0, "codec": "vp9", "pix_fmt": "yuv420p"}
    for site, directory in zip(SITES, dirs, strict=True):
        shutil.rmtree(directory, ignore_errors=True)
        with ShardSetWriter(
            directory,
            config=WriterConfig(samples_per_shard=64),
            clip_format=fmt,
            split_key_fingerprint="bench",
        ) as writer:
            for i in range(n_clips // len(SITES)):
                patient = i // 2
                split = ("train", "train", "train", "val", "test")[patient % 5]
                video, pixel_stats = clips[i % N_DISTINCT]
                key = f"{site}-{hashlib.sha256(f'{site}{i}'.encode()).hexdigest()[:16]}"
                meta = {
                    "site": site,
                    "split": split,
                    "patient_hash": f"{site}{patient}",
                    "study_hash": f"{site}{patient}",
                    "view": "A4C",
                    "fps": 30.0,
                    "n_frames": 48,
                }
                labels = np.array([patient % 2, 0, np.nan, 1, 0], dtype=np.float32)
                writer.add(
                    Sample(key=key, video=video, labels=labels, meta=meta), pixel_stats=pixel_stats
                )
    return dirs


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Read from /proc (VmHWM, reset by exec): getrusage's
    ru_maxrss survives fork + exec, so a child of a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_reshard(inputs: list[str], out: str) -> None:
    from echocmr.shards.reshard import ReshardConfig, reshard

    reshard(inputs, out, config=ReshardConfig(samples_per_shard=256))


def run_plain(inputs: list[str], out: str) -> None:
    """Load every sample, shuffle per split, rewrite."""
    from echocmr.shards.reader import iter_samples, read_manifest, read_stats
    from echocmr.shards.writer import ShardSetWriter, WriterConfig

    samples = [s for d in inputs for s in iter_samples(d)]
    manifest = {}
    for d in inputs:
        m = read_manifest(d)
        manifest.update(
            zip(
                m["key"],
                zip(m["pixel_mean"], m["pixel_std"], m["n_pixels"], strict=True),
                strict=True,
            )
        )
    random.Random(0).shuffle(samples)
    stats = read_stats(inputs[0])
    with ShardSetWriter(
        out,
        config=WriterConfig(samples_per_shard=256),
        clip_format=stats.clip_format(),
        split_key_fingerprint=stats.split_key_fingerprint,
    ) as writer:
        for sample in samples:
            writer.add(sample, pixel_stats=manifest[sample.key])


def _child(mode: str, inputs: list[str], out: str) -> None:
    import webdataset  # noqa: F401  (count the libraries in the baseline, not the run)

    import echocmr.shards.reader  # noqa: F401
    import echocmr.shards.reshard  # noqa: F401

    baseline = _peak_rss_mb()
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    (run_reshard if mode == "reshard" else run_plain)(inputs, out)
    seconds = time.perf_counter() - t0
    print(
        json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "baseline_rss_mb": baseline})
    )


def measure(mode: str, inputs: list[str]) -> dict:
    """Run one mode in a fresh process (so peak RSS is its own)."""
    out = os.path.join(CACHE, "out")
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, out, *inputs],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1000, 4000],
        help="clips per benchmark set (two sites together)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, out, *inputs = args.child
        _child(mode, inputs, out)
        return 0

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    results = {}
    print(
        f"{'clips':>6} {'data MB':>8} {'mode':>8} {'s':>7} {'clips/s':>8} {'MB/s':>7} "
        f"{'peak RSS MB':>12} {'over baseline':>14}"
    )
    for n in args.sizes:
        t0 = time.perf_counter()
        inputs = build(n)
        built = time.perf_counter() - t0
        from echocmr.shards.reader import read_manifest

        data_mb = sum(read_manifest(d)["video_bytes"].sum() for d in inputs) / 1e6
        for mode in ("reshard", "plain"):
            r = results[n, mode] = measure(mode, inputs)
            print(
                f"{n:>6} {data_mb:>8.1f} {mode:>8} {r['seconds']:>7.2f} "
                f"{n / r['seconds']:>8.0f} {data_mb / r['seconds']:>7.1f} "
                f"{r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] - r['baseline_rss_mb']:>14.0f}"
            )
        if built > 1:
            print(f"       (built the {n}-clip input sets in {built:.0f} s; cached in {CACHE})")
    print("reshard includes verifying its output (every byte read back, SHA-256 per clip).")
    if len(args.sizes) >= 2:
        lo, hi = min(args.sizes), max(args.sizes)
        for mode in ("reshard", "plain"):
            grow = results[hi, mode]["peak_rss_mb"] - results[lo, mode]["peak_rss_mb"]
            print(
                f"{mode}: peak RSS grows {grow:.0f} MB from {lo} to {hi} clips "
                f"({1000 * grow / (hi - lo):.1f} KB per added clip)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
