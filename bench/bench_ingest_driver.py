"""Benchmark: the ingest driver (`echocmr ingest`'s own process) over a tree of 10^5-10^6 files.

What it measures: the **driver's** work, not the decoding. Each input is an 8-byte file that
is not a DICOM, so every worker rejects it at once (``not_dicom``, one read, one work cache
entry written); what is left, and measured, is the process you run ``echocmr ingest`` in:
listing the tree, the cache entries and the resume checks, handing files to the workers and
collecting their results, the duplicate check, planning the (empty) shard set and writing
``ingest_report.parquet`` (one row per file). Not measured: the work cache's removal (kept,
``keep_work_cache``, for the resume run) and the planning and writing of kept clips' shards (no
file is kept: that is the shard writer's, `shards.writer`). It runs the real CLI
(`echocmr.cli.main`, ``ingest``, a process pool of ``--workers``), once per row in a fresh
process, and prints for that process alone: wall s, CPU s (user + system of the driver after
its imports; the workers' CPU is the ``workers CPU`` column, from ``RUSAGE_CHILDREN``), peak RSS
(``VmHWM``), its excess over the process's RSS after imports, bytes per file, and the growth
exponents between the two sizes (``log(x2/x1) / log(N2/N1)``: 1.0 is linear, 0 flat).

Two runs per size:

- ``fresh``: an empty ``--out`` (``keep_work_cache: true`` so the second run has a cache);
- ``resume``: the same command again: every file's result comes from the work cache (the crash
  resume path: the cache listed and every entry read back), nothing is re-processed.

The tree is ``ROOT/tree-N`` (``--root``, default ``/tmp/echocmr-bench-ingest-driver``) (1,000 files per directory), built once and kept across runs
(``--keep``) or deleted at the end. 10^6 files take ~4 GB of disk (4 KB blocks) and as much
again for the work cache while a run holds it.

Run: ``.venv/bin/python -m bench.bench_ingest_driver [--sizes 100000 1000000] [--workers 2]
[--root DIR] [--keep]`` (default sizes 10^4 and 10^5, as ``make bench`` runs it). The
code measured is the ``echocmr`` that ``sys.executable`` imports: run the file with another
checkout's Python (its venv) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

ROOT = "/tmp/echocmr-bench-ingest-driver"
LABELS = "patient_id,cmr_date,wma,lge,t1,t2,ecv\nP1,2020-01-01,1,0,0,1,0\n"
KEY = "bench-ingest-driver-split-key-0123456789"  # a real (non-demo) key: the bench is no cohort

_RUNNER = r"""
import json, resource, sys, time
import echocmr.cli, echocmr.ingest.job  # imports first: the baseline excludes them
def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
base = rss("VmRSS:")
cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
wall = time.monotonic()
code = echocmr.cli.main(sys.argv[1:])
wall = time.monotonic() - wall
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print("BENCH " + json.dumps({"code": code, "wall": wall, "cpu": me.ru_utime + me.ru_stime - cpu0,
      "workers_cpu": kids.ru_utime + kids.ru_stime, "peak": rss("VmHWM:"), "base": base}))
"""


def build_tree(root: str, n: int) -> str:
    """``n`` 8-byte non-DICOM files, 1,000 per directory (built once; a marker says it is whole)."""
    tree = os.path.join(root, f"tree-{n}")
    marker = os.path.join(root, f"tree-{n}.done")
    if os.path.exists(marker):
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    started = time.monotonic()
    for d in range(math.ceil(n / 1000)):
        sub = os.path.join(tree, f"d{d:05d}")
        os.makedirs(sub)
        for i in range(d * 1000, min(n, (d + 1) * 1000)):
            with open(os.path.join(sub, f"f{i:07d}"), "wb") as f:
                f.write(b"notdicom")
    open(marker, "w").close()
    print(f"  built {tree}: {n} files in {time.monotonic() - started:.0f} s", flush=True)
    return tree


def run_driver(tree: str, out: str, labels: str, config: str, workers: int) -> dict:
    env = dict(os.environ, ECHOCMR_SPLIT_KEY=KEY)  # this subprocess only
    argv = [sys.executable, "-c", _RUNNER, "ingest", "--dicom", tree, "--labels", labels,
            "--out", out, "--config", config, "--workers", str(workers), "--site", "bench",
            "--no-progress"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"ingest failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][6:])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000],
                    help="files per tree (the issue's figures: 100000 1000000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--root", default=ROOT)
    ap.add_argument("--keep", action="store_true", help="keep the trees for the next run")
    args = ap.parse_args(argv)
    os.makedirs(args.root, exist_ok=True)
    labels = os.path.join(args.root, "labels.csv")
    with open(labels, "w") as f:
        f.write(LABELS)
    config = os.path.join(args.root, "bench-config.yaml")
    with open(config, "w") as f:
        f.write("keep_work_cache: true\ntext_detector:\n  enabled: false\n")
    import echocmr

    print(f"ingest driver: echocmr from {os.path.dirname(echocmr.__file__)}, "
          f"{args.workers} worker(s), load average {os.getloadavg()[0]:.2f}", flush=True)
    rows: dict[str, list[tuple[int, dict]]] = {"fresh": [], "resume": []}
    for n in args.sizes:
        tree = build_tree(args.root, n)
        out = os.path.join(args.root, f"out-{n}")
        shutil.rmtree(out, ignore_errors=True)
        for mode in ("fresh", "resume"):
            r = run_driver(tree, out, labels, config, args.workers)
            rows[mode].append((n, r))
            print(f"  {mode:<6} {n:>9} files: wall {r['wall']:7.1f} s  driver CPU "
                  f"{r['cpu']:7.1f} s ({1e6 * r['cpu'] / n:5.0f} us/file)  workers CPU "
                  f"{r['workers_cpu']:7.1f} s  peak RSS {r['peak']:7.0f} MB (+{r['peak'] - r['base']:.0f}"
                  f" over {r['base']:.0f} after imports; {1e6 * (r['peak'] - r['base']) / n:.0f} "
                  f"B/file)  load {os.getloadavg()[0]:.2f}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(tree, ignore_errors=True)
            os.remove(os.path.join(args.root, f"tree-{n}.done"))
    if len(args.sizes) >= 2:
        for mode, got in rows.items():
            (n1, a), (n2, b) = got[-2], got[-1]
            ratio = math.log(n2 / n1)
            print(f"  {mode:<6} growth {n1} -> {n2}: driver CPU exponent "
                  f"{math.log(b['cpu'] / a['cpu']) / ratio:.2f}, wall "
                  f"{math.log(b['wall'] / a['wall']) / ratio:.2f}, peak RSS "
                  f"{math.log(b['peak'] / a['peak']) / ratio:.2f} (excess over imports "
                  f"{math.log(max(b['peak'] - b['base'], 1) / max(a['peak'] - a['base'], 1)) / ratio:.2f})")


if __name__ == "__main__":
    main()
