"""Each epoch's DALI pipelines are freed when the epoch ends or is abandoned, so a run that builds
new ones every epoch (`read.loader.ClipLoader`) does not hold more of them as epochs go by. The
host-memory figure over 20 epochs is `bench/bench_memory.py`'s (docs/benchmarks.md)."""

import gc
import warnings

import pytest

from echocmr.shards.reader import read_stats
from echocmr.train.config import TrainConfig
from echocmr.train.engine import Engine

from _train_fixtures import make_tiny_shards, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _live_pipelines() -> int:
    from nvidia.dali import Pipeline

    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch's deprecated reduce_op warns
        warnings.simplefilter("ignore", FutureWarning)
        return sum(isinstance(o, Pipeline) for o in gc.get_objects())


def test_no_pipeline_outlives_its_epoch(tmp_path):
    shards = make_tiny_shards(str(tmp_path / "shards"))
    e = Engine(TrainConfig.from_dict(tiny_config(epochs=2)), shards, stats=read_stats(shards))
    before = _live_pipelines()
    for _ in range(2):
        e.train_epoch()
        e.validate()
        assert _live_pipelines() == before
    batches = e.train_loader.epoch(2)
    next(batches)  # an epoch left after one batch (a crash, max_steps_per_epoch)
    assert _live_pipelines() > before  # held while the epoch is open
    batches.close()
    assert _live_pipelines() == before
