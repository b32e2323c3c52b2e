"""Resume is exact: restore a checkpoint into a fresh engine; the next batches and losses equal an
uninterrupted run's. In-process (one rank, no Ray) through the real checkpoint files."""

import pytest
import torch

from echocmr.shards.reader import read_stats
from echocmr.train.checkpoint import load_model, read_checkpoint, save_checkpoint
from echocmr.train.config import TrainConfig
from echocmr.train.engine import Engine

from _train_fixtures import make_tiny_shards, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(str(tmp_path_factory.mktemp("shards")))


def engine(shards, **overrides):
    config = TrainConfig.from_dict(tiny_config(**{"epochs": 3, **overrides}))
    return Engine(config, shards, stats=read_stats(shards))


def checkpoint_state(e, epoch):
    return {**e.state_dict(), "epoch": epoch, "metrics": {}, "config": e.config.to_dict(),
            "input_spec": e.spec.to_dict()}


def test_restored_run_continues_exactly(shards, tmp_path):
    straight = engine(shards)
    epochs = [straight.train_epoch() for _ in range(2)]
    save_checkpoint(str(tmp_path / "ckpt"), checkpoint_state(straight, 1))
    expected = straight.train_epoch()
    expected_val = straight.validate()

    torch.manual_seed(999)  # a different process state must not matter
    resumed = engine(shards)
    resumed.load_state_dict(read_checkpoint(str(tmp_path / "ckpt")))
    assert resumed.position.epoch == 2 and resumed.global_step == sum(e.steps for e in epochs)
    got = resumed.train_epoch()
    assert got.batch_keys == expected.batch_keys
    assert got.step_losses == expected.step_losses  # bit-for-bit, not approximately
    val = resumed.validate()
    assert val.keys == expected_val.keys and (val.probs == expected_val.probs).all()
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    # epochs differ from one another (the resume is not trivially equal)
    assert epochs[0].batch_keys != expected.batch_keys


def test_mid_epoch_position_resumes_the_rest_of_the_epoch(shards):
    straight = engine(shards)
    straight.train_epoch()
    full = straight.train_epoch()  # epoch 1
    partial = engine(shards)
    partial.train_epoch()
    state = partial.state_dict()
    # replay the first two batches of epoch 1 by hand, then stop there as a crash would
    batches = partial.train_loader.epoch(1, max_batches=2)
    for batch in batches:
        partial._step(batch)
        partial.position.batch += 1
        partial.global_step += 1
    state = partial.state_dict()
    assert state["position"] == {"epoch": 1, "batch": 2}
    resumed = engine(shards)
    resumed.load_state_dict(state)
    rest = resumed.train_epoch()
    assert rest.batch_keys == full.batch_keys[2:]
    assert rest.step_losses == full.step_losses[2:]


def test_load_model_from_checkpoint_gives_eval_model(shards, tmp_path):
    e = engine(shards, epochs=1)
    e.train_epoch()
    path = save_checkpoint(str(tmp_path / "c"), checkpoint_state(e, 0))
    model, spec = load_model(path)
    assert spec == e.spec and not model.training
    clip = torch.randn(2, 1, 4, 32, 32)
    e.model.eval()
    with torch.no_grad():
        assert torch.equal(model(clip), e.model(clip))
    with pytest.raises(FileNotFoundError, match="neither an MLflow URI"):
        load_model(str(tmp_path / "nothing-here"))
