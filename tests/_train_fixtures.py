"""Shared helpers of the train tests: a tiny real shard set and a tiny training config.

The shard set comes from `_shards_fixtures.make_shard_set` (real VP9 clips through the real
writer): 10 patients x 3 clips of 20 frames at 32x32 -> 18 train, 6 val, 6 test clips, 4 per tar.
The config is a width-4, one-block-per-stage R(2+1)D on 4x32x32 clips: a step takes milliseconds,
so the tests measure the plumbing (DALI, DDP, Ray, MLflow), not the network.
"""

from __future__ import annotations

import copy

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
