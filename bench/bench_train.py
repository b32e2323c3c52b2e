"""Training throughput: clips/s with 1 and 2 Ray workers, and the share of step time spent waiting
for data. (The input pipeline alone against the plain way is `bench.bench_loader`.)

Run: ``python -m bench.bench_train`` (or ``make bench``). It writes a synthetic shard set of
112x112 VP9 clips to a temp dir (the test fixture's phantom), then:

1. training, CPU: the ``cpu-small`` preset (width-16 R(2+1)D, 16x64x64) through
   ``train.loop.run_training`` with 1 and 2 Ray workers (gloo); clips/s over all workers and the
   mean share of each worker's epoch spent blocked on the next batch (second epoch: warm);
2. training, GPU (only when CUDA is available): the full R(2+1)D-18 at 32x112x112, DALI
   ``mixed`` decode, bf16, channels-last; same figures, for 1 worker and, with 2+ GPUs, 2. The
   target is that a GPU waits on data for less than 5% of a step.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

N_PATIENTS = 24  # x 3 clips: ~43 train clips
CLIPS_PER_PATIENT = 3
N_FRAMES = 72


def make_shards(out_dir: str) -> str:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
    from _shards_fixtures import make_shard_set

    return make_shard_set(out_dir, n_patients=N_PATIENTS, clips_per_patient=CLIPS_PER_PATIENT,
                          n_frames=N_FRAMES, size=112, samples_per_shard=8)


def train_figures(shards: str, config, workers: int, tracking_uri: str,
                  storage: str) -> tuple[float, float]:
    """(clips/s over all workers, data-wait share) of the second (warm) epoch."""
    from dataclasses import replace

    from echocmr.train.loop import run_training

    cpus = max(1, (os.cpu_count() or 1) // workers)  # the machine's cores split between workers
    run = replace(config, workers=workers, epochs=2, cpus_per_worker=cpus,
                  run_name=f"bench-{workers}w-{time.time_ns()}", storage=storage)
    outcome = run_training(run, shards, tracking_uri=tracking_uri)
    m = outcome.last_metrics
    return float(m["train_clips_per_s"]), float(m["data_wait_fraction"])


def main() -> None:
    import ray
    import torch

    from echocmr.train.config import load_config

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        t0 = time.perf_counter()
        shards = make_shards(os.path.join(tmp, "shards"))
        print(f"shard set: {N_PATIENTS * CLIPS_PER_PATIENT} clips of {N_FRAMES} frames, 112x112 "
              f"({time.perf_counter() - t0:.0f} s to write)")
        cpu = load_config(preset="cpu-small")

        uri = f"sqlite:///{tmp}/mlflow.db"
        ncpu = os.cpu_count() or 1
        ray.init(num_cpus=max(ncpu, 2), include_dashboard=False, log_to_driver=False)
        try:
            load = os.getloadavg()[0]
            print(f"\nCPU training, cpu-small preset, {ncpu} cores shared by the workers "
                  f"(load average {load:.1f} before the runs):")
            print("workers  clips/s  data-wait share of step time")
            for workers in (1, 2):
                rate, wait = train_figures(shards, cpu, workers, uri, os.path.join(tmp, "runs"))
                print(f"{workers:>7}  {rate:7.1f}  {wait:6.1%}")
            if torch.cuda.is_available():
                gpus = torch.cuda.device_count()
                name = torch.cuda.get_device_name(0)
                gpu = load_config(preset="gpu")
                print(f"\nGPU training, R(2+1)D-18 32x112x112, bf16, DALI mixed, {gpus} x {name}:")
                print("workers  clips/s  data-wait share of step time")
                for workers in [w for w in (1, 2) if w <= gpus]:
                    rate, wait = train_figures(shards, gpu, workers, uri,
                                               os.path.join(tmp, "runs"))
                    flag = "" if wait < 0.05 else "  (above the 5% target)"
                    print(f"{workers:>7}  {rate:7.1f}  {wait:6.1%}{flag}")
            else:
                print("\nno CUDA device: GPU figures skipped")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
