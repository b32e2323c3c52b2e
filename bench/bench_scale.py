"""Benchmark: the shard toolkit at archive scale, wall and CPU time and peak memory against N.

Builds (once, cached under ``/tmp/echocmr-bench-scale-format<N>``, or ``--cache DIR``) shard
sets of 10^4 and 10^5 clips (``--sizes``; 10^6 on request: ~30 GB of tars per set, as much again
for the merged set; with ``--tiny``, whose source ingest stores 16x16 clips of 2 frames, 3.6 GB)
from a small **real** ingest: a
synthetic cohort of 4 patients through ``echocmr synth`` and ``echocmr ingest`` (22 clips). Its
clips' bytes are reused under new keys, patients, studies, splits and four sites, written through
the project's writer (`shards.writer.ShardSetWriter`), with each clip's ingest facts, labels and
pixel statistics, so every set is a valid current-format set (`shards verify` says OK). To keep
the default run affordable on a shared 2-core machine, only the ``--distinct`` smallest ingested
clips are reused (default 8, 11–30 KB each): the toolkit never decodes, so clip size changes the
bytes read, not what is measured here (driver memory and per-clip cost).

Then, each in a fresh process (peak RSS is that process's own ``VmHWM``), per size:

- ``reshard``: `shards.reshard.reshard` of the four site sets into one (4 sites -> 1);
- ``verify``: `shards.verify.verify` of the merged set (every byte read, SHA-256 per member);
- ``stats``: `shards.stats.describe` of the merged set (the ``shards stats`` report);

- ``plan``: the training driver's read plan of the merged set (`read.assign.plan_reading`,
  train and val, ``site_d`` left out: every shard loses samples to the selection);
- ``rankW`` (``--ranks``, default 1 and 16): rank 0 of W building its training loader from
  that plan and dealing itself its first epoch (`read.loader.ClipLoader.rank_files`: its own
  index headers, and its shortened indexes from the plan's bits), the plan unpickled from what
  ``plan`` pickled, as a Ray worker receives it; the row prints rank 0's tars and clips;

and prints wall s, CPU s (user + system of the process), peak RSS and its excess over the
process's baseline after imports, memory per clip, and the growth exponent between the two
largest sizes (``log(t2/t1) / log(N2/N1)``: 1.0 is linear). It extrapolates peak RSS to 10^6
clips from the per-clip growth between the two largest sizes.

``--ray`` (default on at the smallest size only) also runs verify and reshard with
``--address`` on a local Ray cluster of 1 and of 2 nodes (`cluster.inprocess.temporary_cluster`)
and checks the results are identical to the local run. On one 2-core machine this is a
correctness run, not a speed-up measurement: both "nodes" share the same two cores.

``--plan-only 1000000`` measures the read plan likewise on a manifest-only set.
``--stats-only 1000000`` measures ``shards stats`` at 10^6 clips on a manifest-only set (rows
made as above, no tars: stats reads the manifest alone).

Run: ``.venv/bin/python -m bench.bench_scale [--sizes 10000 100000] [--ray-size 10000]
[--stats-only 1000000] [--ops reshard verify stats] [--ranks 1 16]`` (``--sizes 10000 100000 1000000`` for the full table;
``--tiny --cache /tmp/DIR --sizes 100000 1000000 --ray-size 0 --ranks --keep`` for the toolkit at 10^6 clips in ~8 GB).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from echocmr.shards.format import FORMAT_VERSION  # noqa: E402  (a cache of another format is stale)

CACHE = f"/tmp/echocmr-bench-scale-format{FORMAT_VERSION}"
# ``--tiny``: the source ingest stores 16x16 clips of at most 2 frames (real VP9 clips through
# the real ingest, a few hundred bytes each), so that 10^6-clip sets fit on a shared disk.
TINY = {"size": 16, "max_frames": 2}
SITES = ("site_a", "site_b", "site_c", "site_d")
OPERATIONS = ("reshard", "verify", "stats")


def _run(argv: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "echocmr", *argv], check=True, capture_output=True)


def source_set() -> str:
    """A real ingest of a tiny synthetic cohort (cached); with ``--tiny`` its clips are 16x16
    pixels of at most 2 frames (`TINY`, a config file given to ``echocmr ingest``)."""
    src = os.path.join(CACHE, "source")
    if os.path.exists(os.path.join(src, "stats.json")):
        return src
    cohort = os.path.join(CACHE, "cohort")
    shutil.rmtree(cohort, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    _run(["synth", "--out", cohort, "--patients", "4", "--workers", "1"])
    extra = []
    if CACHE.endswith("-tiny"):
        config = os.path.join(CACHE, "tiny.yaml")
        with open(config, "w") as f:
            f.write(f"preprocess: {{size: {TINY['size']}, max_frames: {TINY['max_frames']}}}\n")
        extra = ["--config", config]
    _run(["ingest", "--dicom", os.path.join(cohort, "dicom"), "--labels",
          os.path.join(cohort, "cmr_labels.parquet"), "--views", os.path.join(cohort, "views.csv"),
          "--out", src, "--site", "site_a", "--no-progress", *extra])
    return src


def _clips(src: str, distinct: int) -> tuple[list[dict], dict]:
    """The ``distinct`` smallest ingested clips: members, meta, labels, pixel statistics."""
    from echocmr.shards.reader import iter_samples, read_manifest, read_stats

    manifest = read_manifest(src).set_index("key")
    samples = sorted(iter_samples(src), key=lambda s: len(s.video))[:distinct]
    out = []
    for s in samples:
        row = manifest.loc[s.key]
        out.append({"video": s.video, "labels": s.labels, "meta": s.meta,
                    "pixel_stats": (float(row["pixel_mean"]), float(row["pixel_std"]),
                                    int(row["n_pixels"]))})
    return out, read_stats(src).to_dict()


def build(n_clips: int, distinct: int) -> list[str]:
    """Four site sets with ``n_clips`` clips in all (cached); returns their directories."""
    from dataclasses import replace

    from echocmr.shards.format import STATS_FILE, Sample
    from echocmr.shards.writer import ShardSetWriter, WriterConfig

    root = os.path.join(CACHE, f"n{n_clips}-d{distinct}")
    dirs = [os.path.join(root, site) for site in SITES]
    if all(os.path.exists(os.path.join(d, STATS_FILE)) for d in dirs):
        return dirs
    clips, stats = _clips(source_set(), distinct)
    per_site = n_clips // len(SITES)
    for site, directory in zip(SITES, dirs, strict=True):
        shutil.rmtree(directory, ignore_errors=True)
        with ShardSetWriter(directory, config=WriterConfig(samples_per_shard=256),
                            clip_format=stats["clip"],
                            split_key_fingerprint=stats["split_key_fingerprint"],
                            label_rules={site: next(iter(stats["label_rules"].values()))}
                            ) as writer:
            # Ingest writes a split's samples together, sorted by key: do the same.
            for split in ("train", "val", "test"):
                for i in range(per_site):
                    patient = i // 2  # two clips per patient, one study each
                    if ("train", "train", "train", "val", "test")[patient % 5] != split:
                        continue
                    clip = clips[i % len(clips)]
                    digest = hashlib.sha256(f"{site}|{i}".encode()).hexdigest()
                    patient_hash = hashlib.sha256(f"p|{site}|{patient}".encode()).hexdigest()[:16]
                    meta = replace(clip["meta"], key=f"{site}-{digest[:16]}", site=site,
                                   split=split, patient_hash=patient_hash,
                                   study_hash=hashlib.sha256(
                                       f"s|{site}|{patient}".encode()).hexdigest()[:16])
                    writer.add(Sample(key=meta.key, video=clip["video"], labels=clip["labels"],
                                      meta=meta), pixel_stats=clip["pixel_stats"])
    return dirs


def manifest_only(n_clips: int, distinct: int, *, indexes: bool = False) -> str:
    """A set of ``n_clips`` rows with no tars (cached): ``manifest.parquet`` and ``stats.json``
    only, rows made as `build` makes them (random-looking keys and hashes, two clips per
    patient). ``shards stats`` reads nothing else, so its driver can be measured at sizes whose
    tars would not fit on this machine's disk. ``indexes``: each shard's ``.idx`` too (members
    at made-up offsets), which reshard's scan and plan read (and nothing else)."""
    import numpy as np
    import pyarrow as pa

    from echocmr.shards.format import MANIFEST_SCHEMA, STATS_FILE, TASKS
    from echocmr.shards.stats import compute_stats, stats_json_bytes
    from echocmr.shards.writer import manifest_bytes

    root = os.path.join(CACHE, f"manifest-only-n{n_clips}{'-idx' if indexes else ''}")
    if os.path.exists(os.path.join(root, STATS_FILE)):
        return root
    clips, stats = _clips(source_set(), distinct)
    os.makedirs(root, exist_ok=True)
    i = np.arange(n_clips)
    patient = i // 2
    split = np.array(["train", "train", "train", "val", "test"])[patient % 5]
    site = np.array(SITES)[i % len(SITES)]
    order = np.lexsort((i, split))  # a split's rows together, as the writers put them

    def hexes(tag: str, values) -> list[str]:
        return [hashlib.sha256(f"{tag}|{v}".encode()).hexdigest() for v in values]

    clip = [clips[k % len(clips)] for k in range(len(clips))]
    which = i % len(clips)
    shard = [f"{s}-{k // 256:06d}.tar" for s, k in zip(split[order], i, strict=True)]
    columns = {
        "key": [f"{s}-{h[:16]}" for s, h in zip(site[order], hexes("k", i[order]), strict=True)],
        "shard": shard, "split": split[order], "site": site[order],
        "patient_hash": [h[:16] for h in hexes("p", patient[order])],
        "study_hash": [h[:16] for h in hexes("s", patient[order])],
        "view": [clip[k]["meta"].view for k in which[order]],
        "n_frames": [clip[k]["meta"].n_frames for k in which[order]],
        "fps": [clip[k]["meta"].fps for k in which[order]],
        **{t: [float(clip[k]["labels"][j]) for k in which[order]] for j, t in enumerate(TASKS)},
        "video_bytes": [len(clip[k]["video"]) for k in which[order]],
        "video_sha256": hexes("v", i[order]), "json_sha256": hexes("j", i[order]),
        "pixel_mean": [clip[k]["pixel_stats"][0] for k in which[order]],
        "pixel_std": [clip[k]["pixel_stats"][1] for k in which[order]],
        "n_pixels": [clip[k]["pixel_stats"][2] for k in which[order]],
        "view_confidence": [None] * n_clips,  # views from a table (no classifier)
        "vendor": [clip[k]["meta"].vendor for k in which[order]],  # as the clip's KEY.json
    }
    table = pa.table({c: columns[c] for c in MANIFEST_SCHEMA.names}, schema=MANIFEST_SCHEMA)
    with open(os.path.join(root, "manifest.parquet"), "wb") as f:
        f.write(manifest_bytes(table))
    header = compute_stats(table, clip_format=stats["clip"],
                           split_key_fingerprint=stats["split_key_fingerprint"])
    with open(os.path.join(root, STATS_FILE), "wb") as f:
        f.write(stats_json_bytes(header))
    if indexes:
        from echocmr.shards.format import index_name
        from echocmr.shards.index import IndexEntry, format_index

        by_shard: dict[str, list[str]] = {}
        for key, name in zip(columns["key"], shard, strict=True):
            by_shard.setdefault(name, []).append(key)
        for name, keys in by_shard.items():
            samples = [[IndexEntry(ext, 2048 * i + 512 * (1 + 2 * j), 300, f"{key}.{ext}")
                        for j, ext in enumerate(("json", "labels", "webm"))]
                       for i, key in enumerate(keys)]
            with open(os.path.join(root, index_name(name)), "w") as f:
                f.write(format_index(samples))
    return root


# -- one measured operation per process ----------------------------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; getrusage's survives fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(op: str, inputs: list[str], merged: str, address: str | None, out: str) -> None:
    import echocmr.shards.reshard  # noqa: F401
    import echocmr.shards.stats  # noqa: F401
    import echocmr.shards.verify  # noqa: F401

    if op.startswith(("plan", "rank")):
        _child_ranks(op, merged)
        return
    if op == "reshard-plan":  # the scan and the plan alone: stopped where the output begins
        import echocmr.shards.reshard as module

        class _Planned(Exception):
            pass

        def stop(*args):
            raise _Planned

        module._check_out = stop  # called right after the plan, before and after issue 26's
        op, inputs, out = "reshard", [merged], merged.rstrip("/") + "-out"  # never made
    baseline = _peak_rss_mb()
    wall, cpu = time.perf_counter(), _cpu_s()
    result = None
    extra = {"address": address} if address else {}  # the toolkit before --address had none
    if op == "reshard":
        from echocmr.shards.reshard import ReshardConfig, reshard

        shutil.rmtree(out, ignore_errors=True)
        try:
            reshard(inputs, out, config=ReshardConfig(samples_per_shard=256), **extra)
        except Exception as exc:
            if type(exc).__name__ != "_Planned":
                raise
    elif op == "verify":
        from echocmr.shards.verify import problems_json, verify

        result = problems_json(verify(merged, **extra))
    else:
        from echocmr.shards.stats import describe

        result = json.dumps(describe(merged), sort_keys=True)
    wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
    digest = hashlib.sha256((result or "").encode()).hexdigest()[:16]
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": _peak_rss_mb(),
                      "baseline_rss_mb": baseline, "result": digest}))


def _child_ranks(op: str, merged: str) -> None:
    """``plan``: the training driver's read plan (`read.assign.plan_reading`, site_d left out),
    pickled next to the set as the driver sends it. ``rankW``: what rank 0 of W does when its
    loader is built from that plan (unpickled, as a Ray worker receives it) and deals itself
    its first epoch (`ClipLoader.rank_files`: its index headers and shortened indexes)."""
    import pickle

    from echocmr.model.contract import InputSpec
    from echocmr.read.assign import plan_reading
    from echocmr.read.config import DataConfig
    from echocmr.read.loader import ClipLoader
    from echocmr.shards.reader import read_stats

    data = DataConfig(exclude_sites=("site_d",))
    stats = read_stats(merged)
    saved = os.path.join(os.path.dirname(merged.rstrip("/")), "plan.pickle")
    baseline = _peak_rss_mb()
    wall, cpu = time.perf_counter(), _cpu_s()
    if op == "plan":
        plan = plan_reading(merged, ("train", "val"), exclude_sites=data.exclude_sites,
                            views=data.views)
        result = [len(s.names) for s in plan.splits.values()]
        with open(saved, "wb") as f:  # what the driver sends every rank
            pickle.dump(plan, f)
        result.append(os.path.getsize(saved))
    else:
        world = int(op[4:])
        with open(saved, "rb") as f:  # the driver's plan, as a Ray worker receives it
            plan = pickle.load(f)
        loader = ClipLoader(merged, "train", data, spec=InputSpec.build(data, stats),
                            train=True, stats=stats, rank=0, world=world, plan=plan)
        tars, _, counts = loader.rank_files(0)
        result = [len(tars), sum(counts)]
    wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
    digest = hashlib.sha256(json.dumps(result).encode()).hexdigest()[:16]
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": _peak_rss_mb(),
                      "baseline_rss_mb": baseline, "result": digest, "detail": result}))


def measure(op: str, inputs: list[str], merged: str, *, out: str | None = None,
            address: str | None = None, python: str = sys.executable) -> dict:
    env = dict(os.environ)
    proc = subprocess.run(
        [python, __file__, "--child", op, merged, out or merged, address or "",
         *inputs], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{op} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _digests(directory: str) -> dict[str, str]:
    return {n: hashlib.sha256(open(os.path.join(directory, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(directory))}


def ray_comparison(inputs: list[str], merged: str, n: int) -> None:
    """verify and reshard with --address on 1 and 2 local nodes, against the local run."""
    from echocmr.cluster.inprocess import temporary_cluster

    local_verify = measure("verify", inputs, merged)
    print(f"\nRay, {n} clips (one machine, 2 cores: a correctness run, not a speed-up figure)")
    print(f"{'nodes':>5} {'op':>8} {'wall s':>8} {'driver CPU s':>13} {'driver RSS MB':>14} "
          f"{'same as local':>14}")
    for nodes in (1, 2):
        with temporary_cluster([{"num_cpus": 1}] * nodes, connect=False) as cluster:
            r = measure("verify", inputs, merged, address=cluster.address)
            same = r["result"] == local_verify["result"]
            print(f"{nodes:>5} {'verify':>8} {r['wall_s']:>8.1f} {r['cpu_s']:>13.1f} "
                  f"{r['peak_rss_mb']:>14.0f} {'yes' if same else 'NO':>14}")
            out = os.path.join(CACHE, f"ray-out-{nodes}")
            r = measure("reshard", inputs, merged, out=out, address=cluster.address)
            same = _digests(out) == _digests(merged)
            shutil.rmtree(out, ignore_errors=True)
            print(f"{nodes:>5} {'reshard':>8} {r['wall_s']:>8.1f} {r['cpu_s']:>13.1f} "
                  f"{r['peak_rss_mb']:>14.0f} {'yes' if same else 'NO':>14}")


def main(argv: list[str] | None = None) -> int:
    global CACHE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000],
                        help="clips per benchmark set (four sites together)")
    parser.add_argument("--distinct", type=int, default=8,
                        help="distinct ingested clips reused (the smallest ones)")
    parser.add_argument("--ray-size", type=int, default=None,
                        help="size to run the 1- vs 2-node Ray comparison at (default: the "
                        "smallest; 0: none)")
    parser.add_argument("--keep", action="store_true", help="keep the built sets in the cache")
    parser.add_argument("--stats-only", type=int, nargs="*", default=[], metavar="N",
                        help="also measure `shards stats` on manifest-only sets of these sizes "
                        "(no tars: stats reads the manifest alone), e.g. 1000000")
    parser.add_argument("--plan-only", type=int, nargs="*", default=[], metavar="N",
                        help="also measure the training driver's read plan on manifest-only "
                        "sets of these sizes (it reads the manifest alone), e.g. 1000000")
    parser.add_argument("--reshard-plan-only", type=int, nargs="*", default=[], metavar="N",
                        help="also measure reshard's scan and plan alone (stopped before it "
                        "writes) on manifest-only sets with indexes of these sizes, e.g. "
                        "1000000 (with --baseline-python, before and after)")
    parser.add_argument("--baseline-python", default=None, metavar="PYTHON",
                        help="also run each operation with this interpreter (another checkout's "
                        "venv, e.g. main's) on the same sets, for a before/after table")
    parser.add_argument("--ops", nargs="*", default=list(OPERATIONS), choices=OPERATIONS,
                        help="toolkit operations to measure (default all; the merged set is "
                        "reshard's output: without reshard it must be in the cache already)")
    parser.add_argument("--ranks", type=int, nargs="*", default=[1, 16], metavar="W",
                        help="world sizes at which to measure rank 0's loader start-up (from "
                        "the driver's read plan, site_d left out); none: skip them and the plan")
    parser.add_argument("--tiny", action="store_true",
                        help="build the sets from 16x16 2-frame clips (a real ingest at "
                        "--clip-size 16, ~3 KB of tar per clip): 10^6-clip sets in ~3 GB each")
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help=f"where the built sets are kept (default {CACHE}[-tiny])")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cache:
        CACHE = args.cache.rstrip("/") + ("-tiny" if args.tiny else "")
    elif args.tiny:
        CACHE = CACHE + "-tiny"
    if args.child:
        op, merged, out, address, *inputs = args.child
        _child(op, inputs, merged, address or None, out)
        return 0

    sizes = sorted(args.sizes)
    ray_size = (sizes[0] if sizes else 0) if args.ray_size is None else args.ray_size
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'clips':>8} {'op':>15} {'wall s':>8} {'CPU s':>7} {'peak RSS MB':>12} "
          f"{'over base MB':>13} {'KB/clip':>8} {'CPU ms/1k':>10}")
    results: dict[tuple[int, str], dict] = {}
    for n in sizes:
        t0 = time.perf_counter()
        inputs = build(n, args.distinct)
        built = time.perf_counter() - t0
        merged = os.path.join(CACHE, f"n{n}-d{args.distinct}", "merged")
        runs = [("", sys.executable)]
        if args.baseline_python:
            runs.insert(0, ("before ", args.baseline_python))
        for label, python in runs:
            for op in args.ops:
                r = measure(op, inputs, merged, out=merged, python=python)
                if not label:
                    results[n, op] = r
                over = r["peak_rss_mb"] - r["baseline_rss_mb"]
                print(f"{n:>8} {label + op:>15} {r['wall_s']:>8.1f} {r['cpu_s']:>7.1f} "
                      f"{r['peak_rss_mb']:>12.0f} {over:>13.0f} {1024 * over / n:>8.2f} "
                      f"{1000 * r['cpu_s'] / n * 1000:>10.1f}", flush=True)
        for op in ["plan", *(f"rank{w}" for w in args.ranks)] if args.ranks else []:
            r = measure(op, inputs, merged)
            results[n, op] = r
            over = r["peak_rss_mb"] - r["baseline_rss_mb"]
            what = (f"  plan: {r['detail'][-1] / 1024:.0f} KB pickled" if op == "plan"
                    else f"  rank 0: {r['detail'][0]} tars, {r['detail'][1]} clips")
            print(f"{n:>8} {op:>15} {r['wall_s']:>8.2f} {r['cpu_s']:>7.2f} "
                  f"{r['peak_rss_mb']:>12.0f} {over:>13.0f} {1024 * over / n:>8.2f} "
                  f"{1000 * r['cpu_s'] / n * 1000:>10.1f}{what}", flush=True)
        if built > 1:
            print(f"         (built the {n}-clip site sets in {built:.0f} s)")
        if n == ray_size:
            ray_comparison(inputs, merged, n)
            print()
        if not args.keep and n != sizes[-1]:
            shutil.rmtree(os.path.join(CACHE, f"n{n}-d{args.distinct}"), ignore_errors=True)
    if len(sizes) >= 2:
        lo, hi = sizes[-2], sizes[-1]
        print(f"\ngrowth from {lo} to {hi} clips (exponent: log ratio / log {hi // lo}):")
        for op in [*args.ops, *(["plan", *(f"rank{w}" for w in args.ranks)] if args.ranks
                                else [])]:
            a, b = results[lo, op], results[hi, op]
            exp_wall = math.log(max(b["wall_s"], 1e-3) / max(a["wall_s"], 1e-3)) / math.log(hi / lo)
            exp_cpu = math.log(max(b["cpu_s"], 1e-3) / max(a["cpu_s"], 1e-3)) / math.log(hi / lo)
            per_clip = (b["peak_rss_mb"] - a["peak_rss_mb"]) / (hi - lo)
            at_1e6 = b["peak_rss_mb"] + per_clip * (1_000_000 - hi)
            print(f"  {op:>8}: time exponent wall {exp_wall:.2f}, CPU {exp_cpu:.2f}; peak RSS "
                  f"grows {1024 * per_clip:.2f} KB per added clip -> ~{at_1e6:.0f} MB at 10^6 "
                  f"clips{' (measured above)' if hi >= 1_000_000 else ' (extrapolated)'}")
    if sizes and not args.keep:
        shutil.rmtree(os.path.join(CACHE, f"n{sizes[-1]}-d{args.distinct}"), ignore_errors=True)
    for n in args.plan_only:
        root = manifest_only(n, args.distinct)
        r = measure("plan", [], root)
        print(f"read plan on a manifest-only set of {n} clips: wall {r['wall_s']:.1f} s, CPU "
              f"{r['cpu_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"({r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} over the baseline), plan "
              f"{r['detail'][-1] / 1024:.0f} KB pickled", flush=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    plan_rows: dict[tuple[str, int], dict] = {}
    for n in args.reshard_plan_only:
        root = manifest_only(n, args.distinct, indexes=True)
        runs = [("after", sys.executable)]
        if args.baseline_python:
            runs.insert(0, ("before", args.baseline_python))
        for label, python in runs:
            r = plan_rows[label, n] = measure("reshard-plan", [], root, python=python)
            print(f"reshard scan + plan ({label}) on a manifest-only set of {n} clips: wall "
                  f"{r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB ({r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} "
                  "over the baseline)", flush=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if len(args.reshard_plan_only) >= 2:
        lo, hi = sorted(args.reshard_plan_only)[-2:]
        for label in ("before", "after"):
            if (label, lo) in plan_rows:
                a, b = plan_rows[label, lo], plan_rows[label, hi]
                per_clip = 1024 * 1024 * (b["peak_rss_mb"] - a["peak_rss_mb"]) / (hi - lo)
                exp_cpu = math.log(max(b["cpu_s"], 1e-3) / max(a["cpu_s"], 1e-3)) / math.log(
                    hi / lo)
                print(f"reshard scan + plan ({label}) {lo} -> {hi}: CPU exponent "
                      f"{exp_cpu:.2f}; peak RSS grows {per_clip:.0f} bytes per added clip")
    for n in args.stats_only:
        root = manifest_only(n, args.distinct)
        r = measure("stats", [], root)
        print(f"stats on a manifest-only set of {n} clips: wall {r['wall_s']:.1f} s, CPU "
              f"{r['cpu_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"({r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} over the baseline)")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
