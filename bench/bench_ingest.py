"""Benchmark: ingest throughput (clips/s) with 1 and 2 workers, against the plain way.

The plain way is what a user would write without echocmr, as in common echo-AI code: for each
file, pydicom's ``pixel_array`` (YCbCr converted to RGB), OpenCV ``resize`` of every frame to
112x112, one AVI per clip with ``cv2.VideoWriter`` (MJPG), in one process. It does none of
ingest's work beyond that (no sector mask, no frame-rate resampling, no labels, no shards), so a
ratio above 1 is ingest being faster while doing more.

Input: a synthetic cohort from `ingest.synth` (several vendors: JPEG baseline YBR, JPEG-LS,
native; 480x640 to 768x1024 pixels), generated once and cached under
``/tmp/echocmr-bench-ingest``. Both ways process the same files: the plain way takes exactly the
files ingest kept. Clips/s counts kept clips over the whole wall time of a run (pool start-up,
pairing, encoding and shard writing included for ingest).

Every input file is read once before the runs, so the first run does not pay for a cold page
cache.

``--text-detector`` instead measures what the OCR pass (`ingest.text_detector`, on by default)
costs: ingest with 2 workers, detector on against detector off, on the same cohort, and prints
the throughput ratio on/off and the detector's cost per kept clip.

``--ray`` instead runs ingest as Ray tasks (`ingest.distributed`) on a
``ray.cluster_utils.Cluster`` of 1 and then 2 nodes of 1 CPU each, prints the wall time of each
(connection to the running cluster, file tasks, shard tasks, manifest; not the cluster's start)
and checks that both wrote byte-identical sets. On a 2-core machine this is a correctness run:
the driver, the Ray daemons of each node and the tasks share the same two cores, so a second node
adds no CPU (docs/ingest.md, "Ingest a whole archive", says what scaling to expect on a real
cluster).

Run: ``.venv/bin/python -m bench.bench_ingest [--patients 10] [--text-detector | --ray]`` (or
``make bench``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

CACHE = "/tmp/echocmr-bench-ingest"


def _cohort(patients: int) -> str:
    from echocmr.ingest.synth import generate_cohort

    root = os.path.join(CACHE, f"cohort-{patients}")
    if not os.path.exists(os.path.join(root, "synth_truth.parquet")):
        print(f"generating a synthetic cohort of {patients} patients in {root} (once)", flush=True)
        generate_cohort(root, patients=patients, seed=17, overwrite=True, progress=False)
    return root


def _warm(root: str) -> int:
    """Read every input file once, so no way pays for a cold page cache; returns bytes."""
    total = 0
    for dirpath, _, files in os.walk(os.path.join(root, "dicom")):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                while chunk := f.read(1 << 24):
                    total += len(chunk)
    return total


def _run_ingest(root: str, workers: int, detector: bool = True) -> tuple[float, int, list[str]]:
    from echocmr.ingest.config import IngestConfig, TextDetectorConfig
    from echocmr.ingest.job import run_ingest
    from echocmr.shards.format import INGEST_REPORT_FILE

    out = os.path.join(CACHE, f"out-{workers}-{'ocr' if detector else 'no-ocr'}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    config = IngestConfig(site="bench", workers=workers,
                          text_detector=TextDetectorConfig(enabled=detector))
    summary = run_ingest(os.path.join(root, "dicom"), os.path.join(root, "cmr_labels.parquet"),
                         out, config=config,
                         views_path=os.path.join(root, "views.csv"), progress=False)
    seconds = time.perf_counter() - t0
    import pyarrow.parquet as pq

    report = pq.read_table(os.path.join(out, INGEST_REPORT_FILE)).to_pylist()
    kept = [r["source"] for r in report if r["status"] == "kept"]
    return seconds, summary.kept, kept


def _plain_way(root: str, sources: list[str]) -> float:
    """pydicom RGB pixel_array -> cv2.resize per frame -> one MJPG AVI per clip."""
    import cv2
    import numpy as np
    import pydicom

    out = os.path.join(CACHE, "out-plain")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    t0 = time.perf_counter()
    for i, source in enumerate(sources):
        ds = pydicom.dcmread(os.path.join(root, "dicom", source))
        frames = ds.pixel_array  # YBR is converted to RGB here
        if frames.ndim == 3:  # grey: make it 3-channel as a video writer wants
            frames = np.repeat(frames[..., None], 3, axis=-1)
        fps = float(ds.get("RecommendedDisplayFrameRate", 0) or ds.get("CineRate", 0) or 30)
        writer = cv2.VideoWriter(os.path.join(out, f"{i:05d}.avi"),
                                 cv2.VideoWriter_fourcc(*"MJPG"), fps, (112, 112))
        for frame in frames:
            small = cv2.resize(frame, (112, 112), interpolation=cv2.INTER_AREA)
            writer.write(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        writer.release()
    return time.perf_counter() - t0


def _digests(out: str) -> dict[str, str]:
    import hashlib

    return {os.path.relpath(os.path.join(d, n), out):
            hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest()
            for d, _, names in os.walk(out) for n in names}


def _run_on_ray(root: str, nodes: int) -> tuple[float, int, dict[str, str]]:
    """Ingest on a fresh local cluster of ``nodes`` nodes (1 CPU each): (seconds, kept, digests)."""
    import tempfile

    import ray
    from ray.cluster_utils import Cluster

    from echocmr.ingest.config import IngestConfig, ShardConfig
    from echocmr.ingest.job import run_ingest

    out = os.path.join(CACHE, f"out-ray-{nodes}")
    shutil.rmtree(out, ignore_errors=True)
    temp = tempfile.mkdtemp(prefix="ecmr-", dir="/tmp")  # short: Unix socket paths
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_AUTH_MODE")}
    os.environ.update(RAY_TMPDIR=temp, RAY_AUTH_MODE="disabled")
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        t0 = time.perf_counter()
        summary = run_ingest(os.path.join(root, "dicom"), os.path.join(root, "cmr_labels.parquet"),
                             out, config=IngestConfig(site="bench", shards=ShardConfig(
                                 samples_per_shard=4)),  # several shard tasks, not one
                             views_path=os.path.join(root, "views.csv"), progress=False,
                             address=cluster.address)
        seconds = time.perf_counter() - t0
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return seconds, summary.kept, _digests(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=10, help="synthetic cohort size")
    parser.add_argument("--text-detector", action="store_true",
                        help="measure ingest with the text detector on against off")
    parser.add_argument("--ray", action="store_true",
                        help="ingest as Ray tasks on a local cluster of 1, then 2 nodes")
    args = parser.parse_args([] if argv is None else argv)  # `make bench` passes nothing
    os.environ.setdefault("ECHOCMR_SPLIT_KEY", "bench-key")
    root = _cohort(args.patients)
    print(f"{_warm(root) / 1e6:.0f} MB of DICOM read once to warm the page cache; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    if args.ray:
        t1, kept, one = _run_on_ray(root, nodes=1)
        t2, _, two = _run_on_ray(root, nodes=2)
        print(f"{kept} clips kept; ingest as Ray tasks, nodes of 1 CPU each, {os.cpu_count()} "
              f"cores on this machine")
        print(f"  1 node  {t1:7.1f} s  {kept / t1:6.2f} clips/s")
        print(f"  2 nodes {t2:7.1f} s  {kept / t2:6.2f} clips/s")
        same = one == two
        print(f"  outputs byte-identical (sha256 of all {len(one)} files): {same}")
        if not same:
            raise RuntimeError("1-node and 2-node ingests differ: " + ", ".join(
                sorted(k for k in one.keys() | two.keys() if one.get(k) != two.get(k))))
        return
    if args.text_detector:
        # Alternate off/on twice and keep each one's best, so a burst of load on a shared machine
        # does not decide the ratio.
        runs = [_run_ingest(root, workers=2, detector=on) for on in (False, True, False, True)]
        t_off, kept_off, _ = min(runs[0::2])
        t_on, kept_on, _ = min(runs[1::2])
        print(f"{kept_on} clips kept; ingest with 2 workers, {os.cpu_count()} cores")
        print(f"  detector off {t_off:7.1f} s  {kept_off / t_off:6.2f} clips/s")
        print(f"  detector on  {t_on:7.1f} s  {kept_on / t_on:6.2f} clips/s")
        print(f"  ratio on/off (throughput): {(kept_on / t_on) / (kept_off / t_off):.2f}x; "
              f"detector cost {2 * (t_on - t_off) / max(kept_on, 1):.2f} core-s per clip")
        return

    t1, kept1, sources = _run_ingest(root, workers=1)
    t2, kept2, _ = _run_ingest(root, workers=2)
    tp = _plain_way(root, sources)
    n = len(sources)
    rates = {"ingest, 1 worker": kept1 / t1, "ingest, 2 workers": kept2 / t2, "plain way": n / tp}
    print(f"{n} clips (of the cohort's files, the ones ingest keeps); {os.cpu_count()} cores")
    for name, seconds, clips in (("ingest, 1 worker", t1, kept1), ("ingest, 2 workers", t2, kept2),
                                 ("plain way", tp, n)):
        print(f"  {name:<18} {seconds:7.1f} s  {clips / seconds:6.2f} clips/s")
    plain = rates["plain way"]
    print(f"  ratio ingest/plain: 1 worker {rates['ingest, 1 worker'] / plain:.2f}x, "
          f"2 workers {rates['ingest, 2 workers'] / plain:.2f}x")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
