"""Resume is exact: restore a checkpoint into a fresh engine; the next batches and losses equal an
uninterrupted run's. In-process (one rank, no Ray) through the real checkpoint files."""

import pytest
import torch

from echocmr.model.checkpoint import read_checkpoint, save_checkpoint
from echocmr.model.store import load_model
from echocmr.shards.reader import read_stats
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


class Killed(Exception):
    """Stands for the process dying mid-epoch (the Ray test kills a real worker)."""


def test_step_checkpoint_resumes_mid_epoch_and_ends_with_identical_weights(shards, tmp_path):
    straight = engine(shards)
    results = [straight.train_epoch() for _ in range(3)]
    assert straight.steps_per_epoch == 9

    crashed = engine(shards)
    crashed.train_epoch()
    saved = []

    def on_step():  # a step checkpoint every 4 global steps, then "killed" at step 14
        if crashed.global_step % 4 == 0:
            save_checkpoint(str(tmp_path / f"step{crashed.global_step}"),
                            checkpoint_state(crashed, crashed.position.epoch - 1))
            saved.append(crashed.global_step)
        if crashed.global_step == 14:
            raise Killed

    with pytest.raises(Killed):
        crashed.train_epoch(on_step=on_step)
    assert saved == [12]  # step 12 = epoch 1, after batch 3

    torch.manual_seed(7)
    resumed = engine(shards)
    resumed.load_state_dict(read_checkpoint(str(tmp_path / "step12")))
    assert resumed.position.epoch == 1 and resumed.position.batch == 3
    epoch1 = resumed.train_epoch()
    # the resumed epoch reports the whole epoch, its first three steps from the checkpoint
    assert epoch1.step_losses == results[1].step_losses
    assert epoch1.batch_keys == results[1].batch_keys
    assert epoch1.loss == results[1].loss and epoch1.task_loss == results[1].task_loss
    assert epoch1.clips == results[1].clips and epoch1.steps == 9
    epoch2 = resumed.train_epoch()
    assert epoch2.step_losses == results[2].step_losses
    for (name, a), b in zip(resumed.model.state_dict().items(),
                            straight.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


def test_another_worker_count_resumes_at_an_epoch_boundary_and_refuses_mid_epoch(shards):
    from echocmr.train.engine import ResumeError

    two = engine(shards)
    two.train_epoch()
    state = two.state_dict()
    state["world"] = 2  # as a two-worker run writes it: one RNG state and progress per rank
    state["rng"], state["progress"] = state["rng"] * 2, [None, None]
    one = engine(shards)
    one.load_state_dict(state)
    assert one.position.epoch == 1 and one.global_step == 9
    note = one.resume_note
    assert "resumed at epoch 1 with 1 workers; the checkpoint was written by 2" in note
    assert "each of the 18 train clips once" in note and "RNG states are not restored" in note
    # the schedule continues at epoch 1 of this run's steps (the same steps here: 1 worker)
    assert one.scheduler.last_epoch == 9
    assert one.optimizer.param_groups[0]["lr"] == two.optimizer.param_groups[0]["lr"]
    assert one.train_epoch().steps == 9

    state["position"] = {"epoch": 1, "batch": 3}
    with pytest.raises(ResumeError, match=r"mid-epoch \(epoch 1, after batch 3\) of a 2-worker "
                                          r"run.*Resume with --workers 2"):
        engine(shards).load_state_dict(state)
