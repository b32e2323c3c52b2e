"""Shared helpers of the train tests: a tiny real shard set and a tiny training config.

The shard set comes from `_shards_fixtures.make_shard_set` (real VP9 clips through the real
writer): 10 patients x 3 clips of 20 frames at 32x32 -> 18 train, 6 val, 6 test clips, 4 per tar.
The config is a width-4, one-block-per-stage R(2+1)D on 4x32x32 clips: a step takes milliseconds,
so the tests measure the plumbing (DALI, DDP, Ray, MLflow), not the network.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

from _shards_fixtures import make_shard_set

TINY = {
    "epochs": 2,
    "model": {"width": 4, "layers": [1, 1, 1, 1]},
    "data": {"frames": 4, "period": 2, "size": 32, "batch_size": 2, "num_threads": 1,
             "prefetch": 1, "augment": {"pad": 4}},
    "optim": {"lr": 1e-3, "warmup_epochs": 0.0},
    "min_positives": 1,
}


def tiny_config(**overrides) -> dict:
    """The tiny config as a nested dict, with top-level ``overrides`` applied."""
    config = copy.deepcopy(TINY)
    config.update(overrides)
    return config


def make_tiny_shards(out_dir: str, seed: int = 0) -> str:
    return make_shard_set(out_dir, n_patients=10, clips_per_patient=3, n_frames=20, size=32,
                          samples_per_shard=4, seed=seed)


@dataclass(frozen=True)
class CrashAtStep:
    """A `train.loop.StepHook` that kills rank ``rank`` hard (``os._exit(1)``: no cleanup,
    nothing for Ray to catch) once, after global step ``step``, having first created the file
    ``marker``; while ``marker`` exists the crash is spent, so the restarted group trains on.

    ``delay_s`` waits before the exit: Ray Train V2's controller collects reports by polling the
    workers (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``) and a report still unpolled when a worker dies
    is lost, so a crash right after a report would restart one checkpoint earlier. Ray workers
    unpickle it from this module: the tests' Ray puts this folder on their ``PYTHONPATH``.
    """

    rank: int
    step: int
    marker: str
    delay_s: float = 2.0

    def __call__(self, rank: int, global_step: int) -> None:
        if rank == self.rank and global_step == self.step and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(f"rank {rank} exited at step {global_step}\n")
            time.sleep(self.delay_s)
            os._exit(1)
