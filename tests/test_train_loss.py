"""train.loss and model.auc against plain reference computations."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from echocmr.model.auc import mean_auc, roc_auc, task_aucs
from echocmr.shards.format import ShardStats
from echocmr.train.loss import MaskedMultiTaskBCE, build_loss, pos_weights_from_stats
from echocmr.train.selection import checkpoint_score

NAN = float("nan")


def reference_loss(logits, labels, task_w, pos_w=None, valid=None):
    """Per element BCE in plain Python, averaged per task over known labels, weighted."""
    n, k = len(labels), len(labels[0])
    pos_w = pos_w or [1.0] * k
    per_task = []
    for j in range(k):
        terms = []
        for i in range(n):
            if math.isnan(labels[i][j]) or (valid is not None and not valid[i]):
                continue
            p = 1 / (1 + math.exp(-logits[i][j]))
            y = labels[i][j]
            terms.append(-(pos_w[j] * y * math.log(p) + (1 - y) * math.log(1 - p)))
        per_task.append(sum(terms) / len(terms) if terms else 0.0)
    return sum(w * t for w, t in zip(task_w, per_task, strict=True)) / sum(task_w), per_task


def test_matches_reference_with_unknown_labels_weights_and_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).tolist()
    labels = [[1, 0, NAN, 1, NAN], [0, NAN, NAN, 0, NAN], [1, 1, NAN, NAN, NAN],
              [0, 0, NAN, 1, NAN], [NAN, 1, NAN, 0, NAN], [1, 1, 1, 1, 1]]
    valid = [True, True, True, True, True, False]  # the last row is DDP padding
    task_w, pos_w = [2.0, 1.0, 1.0, 0.5, 1.0], [3.0, 1.0, 2.0, 1.0, 1.5]
    loss_fn = MaskedMultiTaskBCE(task_w, pos_w)
    loss, per_task = loss_fn(torch.tensor(logits), torch.tensor(labels), torch.tensor(valid))
    ref, ref_tasks = reference_loss(logits, labels, task_w, pos_w, valid)
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    assert per_task.tolist() == pytest.approx(ref_tasks, rel=1e-5)
    assert per_task[2] == 0 and per_task[4] == 0  # no known label: nothing, not NaN


def test_unknown_labels_get_no_gradient():
    logits = torch.zeros(3, 5, requires_grad=True)
    labels = torch.tensor([[1, NAN, 0, NAN, 1]] * 3)
    loss, _ = MaskedMultiTaskBCE()(logits, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert (logits.grad[:, [1, 3]] == 0).all() and (logits.grad[:, [0, 2, 4]] != 0).all()


def test_pos_weights_from_stats_and_bad_weights():
    train = {"clips": 40, "studies": 40, "patients": 20, "sites": ["a"], "prevalence": {},
             "positives": {"wma": 10, "lge": 0, "t1": 5, "t2": 4, "ecv": 2},
             "known": {"wma": 40, "lge": 30, "t1": 5, "t2": 10, "ecv": 8}}
    stats = ShardStats.from_dict({"format_version": 2, "splits": {"train": train}})
    assert pos_weights_from_stats(stats) == [3.0, 1.0, 1.0, 1.5, 3.0]
    assert build_loss({"wma": 1.0}, True, stats).pos_weight.tolist() == [3.0, 1.0, 1.0, 1.5, 3.0]
    assert build_loss({"wma": 1.0}, False, stats).pos_weight is None
    with pytest.raises(ValueError, match="lacks splits.train"):
        pos_weights_from_stats(ShardStats.from_dict({"format_version": 2, "splits": {}}))
    with pytest.raises(ValueError, match="task weights"):
        MaskedMultiTaskBCE([0, 0, 0, 0, 0])


def test_task_aucs_match_sklearn_and_skip_thin_tasks():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=(40, 5)).astype(float)
    labels[rng.random((40, 5)) < 0.3] = np.nan
    labels[:, 4] = np.nan
    labels[:3, 4] = [1, 0, 0]  # one positive only
    probs = rng.random((40, 5))
    aucs = task_aucs(labels, probs, min_positives=2)
    for k, task in enumerate(("wma", "lge", "t1", "t2")):
        known = ~np.isnan(labels[:, k])
        assert aucs[task] == pytest.approx(roc_auc_score(labels[known, k], probs[known, k]))
    assert aucs["ecv"] is None
    assert mean_auc(aucs) == pytest.approx(np.mean([aucs[t] for t in ("wma", "lge", "t1", "t2")]))
    assert checkpoint_score({t: None for t in aucs}, val_loss=0.7) == -0.7


def test_roc_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        y = rng.random(n) < 0.4
        y[0], y[1] = True, False
        score = np.round(rng.random(n), 1)  # many ties
        assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    with pytest.raises(ValueError, match="one positive and one negative"):
        roc_auc(np.array([True, True]), np.array([0.1, 0.2]))


def test_checkpoint_score_follows_the_prespecified_selection():
    from echocmr.train.config import ConfigError, SelectionConfig, load_config

    aucs = {"wma": 0.9, "lge": 0.7, "t1": 0.4, "t2": None, "ecv": 0.5}
    assert checkpoint_score(aucs, 0.6) == pytest.approx((0.9 + 0.7 + 0.4 + 0.5) / 4)
    assert checkpoint_score(aucs, 0.6, tasks=("wma",)) == 0.9
    assert checkpoint_score(aucs, 0.6, tasks=("wma", "lge"), weights={"wma": 3, "lge": 1}) == (
        pytest.approx(0.85))
    assert checkpoint_score(aucs, 0.6, tasks=("t2",)) == -0.6  # no AUC: -val loss
    assert checkpoint_score(aucs, 0.6, metric="loss") == -0.6
    cfg = load_config()
    assert (cfg.selection.metric, cfg.selection.tasks) == ("auc", ("wma",))
    assert cfg.selection.describe() == "val AUC (wma)"
    cfg = load_config(overrides={"selection": {"metric": "loss"}})
    assert cfg.selection.describe() == "val loss"
    with pytest.raises(ConfigError, match="selection.tasks"):
        SelectionConfig(tasks=("bogus",))
    with pytest.raises(ConfigError, match="selection.metric|metric"):
        load_config(overrides={"selection": {"metric": "f1"}})


def test_a_fallback_score_is_named_a_val_loss_not_an_auc():
    """Registration names what the score is: with no val AUC for the rule's tasks (too few val
    positives) `checkpoint_score` is -val loss, and `models list` must not print it as
    "val AUC (wma) -0.289" (seen in the training journey, tests/test_journeys.py)."""
    from echocmr.train.selection import scored_on

    aucs = {"wma": None, "lge": 0.7, "t1": float("nan"), "t2": None, "ecv": 0.5}
    assert scored_on("val AUC (wma)", aucs, tasks=("wma",)) == "val loss (no val AUC (wma))"
    assert scored_on("val AUC (t1)", aucs, tasks=("t1",)) == "val loss (no val AUC (t1))"  # NaN
    assert scored_on("val AUC (wma + lge)", aucs, tasks=("wma", "lge")) == "val AUC (wma + lge)"
    assert scored_on("val AUC (0*lge + 1*wma)", aucs, tasks=("lge", "wma"),
                     weights={"lge": 0.0, "wma": 1.0}) == "val loss (no val AUC (0*lge + 1*wma))"
    assert scored_on("val AUC (wma, lge, t1, t2, ecv)", aucs) == "val AUC (wma, lge, t1, t2, ecv)"
    assert scored_on("val loss", aucs, metric="loss") == "val loss"
    # the score it names is the one checkpoint_score gave
    assert checkpoint_score(aucs, 0.3, tasks=("wma",)) == -0.3


def test_val_result_score_uses_the_run_selection():
    import numpy as np

    from echocmr.train.config import SelectionConfig
    from echocmr.train.engine import ValResult

    aucs = {"wma": 0.9, "lge": 0.3, "t1": 0.5, "t2": 0.5, "ecv": 0.5}
    v = ValResult(loss=0.4, aucs=aucs, keys=[], probs=np.zeros((0, 5)), labels=np.zeros((0, 5)),
                  selection=SelectionConfig())
    assert v.score == 0.9 and v.mean_auc == pytest.approx(0.54)
    v.selection = SelectionConfig(metric="loss")
    assert v.score == -0.4
