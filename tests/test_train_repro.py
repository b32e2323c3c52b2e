"""The same-machine guarantee: two short CPU runs with one config, seed and shard set end with
bit-identical weights; another seed gives other weights (so the equality is not vacuous)."""

import pytest
import torch

from echocmr.shards.reader import read_stats
from echocmr.train.config import TrainConfig
from echocmr.train.engine import Engine

from _train_fixtures import make_tiny_shards, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(str(tmp_path_factory.mktemp("shards")))


def _run(shards, seed):
    cfg = tiny_config(epochs=2)
    cfg["data"] = {**cfg["data"], "seed": seed}
    e = Engine(TrainConfig.from_dict(cfg), shards, stats=read_stats(shards))
    losses = [e.train_epoch().step_losses for _ in range(2)]
    return e.model.state_dict(), losses, e.validate()


def test_two_runs_on_one_machine_give_identical_weights(shards):
    torch.manual_seed(123)  # process state before the run must not matter
    w1, l1, v1 = _run(shards, seed=0)
    torch.manual_seed(456)
    w2, l2, v2 = _run(shards, seed=0)
    assert l1 == l2  # every step's loss, bit for bit
    for (k, a), b in zip(w1.items(), w2.values(), strict=True):
        assert torch.equal(a, b), k
    assert (v1.probs == v2.probs).all()
    w3, _, _ = _run(shards, seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(w1.values(), w3.values(), strict=True))


def test_seed_sweep_reports_spread_beside_sampling_ci(tmp_path, capsys):
    import json

    import numpy as np

    import echocmr.cli as echocmr_cli
    from echocmr.workflows.sweep import seed_spread

    dirs = []
    for i, auc in enumerate((0.80, 0.84, 0.78)):
        d = tmp_path / f"seed{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({
            "wma": {"auc": auc, "ci_low": auc - 0.05, "ci_high": auc + 0.05},
            "t1": {"auc": None, "ci_low": None, "ci_high": None}}))
        dirs.append(str(d))
    spread = seed_spread({d: json.loads((tmp_path / d / "metrics.json").read_text())
                          for d in dirs})
    assert spread["wma"]["sd"] == pytest.approx(np.std([0.80, 0.84, 0.78], ddof=1))
    assert spread["wma"]["mean_ci_width"] == pytest.approx(0.10)
    assert spread["t1"]["n_runs"] == 0 and spread["t1"]["sd"] is None
    assert echocmr_cli.main(["sweep", *dirs]) == 0
    out = capsys.readouterr().out
    assert "SD over seeds" in out and "0.807" in out
    args = echocmr_cli.build_parser().parse_args(["train", "--seed", "3"])
    from echocmr.train.cli import overrides_from_args

    assert overrides_from_args(args)["data"] == {"seed": 3}
