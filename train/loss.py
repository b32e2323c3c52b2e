"""Masked multi-task binary cross-entropy: one BCE per task over the clips whose label is known.

A clip's label for a task is NaN when CMR did not measure it; such entries contribute nothing, so
one network trains on all five tasks although most clips lack some labels. Each task's loss is the
mean over its known labels in the batch (0 when none), and the total is the task-weighted mean of
those. Optional positive-class weights (train negatives / positives, from ``stats.json``) counter
class imbalance; they change the loss scale, not which labels count.

Shapes: ``logits_NK``, ``labels_NK`` (float, NaN unknown), ``valid_N`` (False for the padding
samples that keep DDP ranks in step; they count for nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from echocmr.shards.format import TASKS, ShardStats


class MaskedMultiTaskBCE(nn.Module):
    """``forward(logits_NK, labels_NK, valid_N=None) -> (loss, per_task_K)``."""

    def __init__(self, task_weights: Sequence[float] | Mapping[str, float] | None = None,
                 pos_weight: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        if task_weights is None:
            task_weights = [1.0] * len(TASKS)
        if isinstance(task_weights, Mapping):
            task_weights = [float(task_weights.get(t, 1.0)) for t in TASKS]
        weights = torch.as_tensor(list(task_weights), dtype=torch.float32)
        if weights.shape != (len(TASKS),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"task weights must be {len(TASKS)} values >= 0 with a positive sum")
        self.register_buffer("task_weights", weights)
        if pos_weight is not None:
            pos_weight = torch.as_tensor(pos_weight, dtype=torch.float32)
            if pos_weight.shape != (len(TASKS),) or not (pos_weight > 0).all():
                raise ValueError(
                    f"pos_weight must be {len(TASKS)} positive values, got {pos_weight}")
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits_NK: torch.Tensor, labels_NK: torch.Tensor,
                valid_N: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits_NK = logits_NK.float()
        known_NK = ~torch.isnan(labels_NK)
        if valid_N is not None:
            known_NK = known_NK & valid_N.bool()[:, None]
        targets_NK = torch.where(known_NK, labels_NK, torch.zeros_like(labels_NK))
        bce_NK = F.binary_cross_entropy_with_logits(
            logits_NK, targets_NK, pos_weight=self.pos_weight, reduction="none")
        # where(), not multiplication: a NaN could never leak, and unknown entries get zero grad.
        bce_NK = torch.where(known_NK, bce_NK, torch.zeros_like(bce_NK))
        per_task_K = bce_NK.sum(0) / known_NK.sum(0).clamp(min=1)
        loss = (per_task_K * self.task_weights).sum() / self.task_weights.sum()
        return loss, per_task_K.detach()


def pos_weights_from_stats(stats: ShardStats) -> list[float]:
    """Per task ``negatives / positives`` among known train labels (1.0 where undefined)."""
    train = stats.splits.get("train")
    if train is None:
        raise ValueError("stats.json lacks splits.train; re-run the ingest or reshard that wrote "
                         "the set")
    positives, known = train.positives, train.known
    weights = []
    for task in TASKS:
        pos = float(positives.get(task, 0))
        neg = float(known.get(task, 0)) - pos
        weights.append(neg / pos if pos > 0 and neg > 0 else 1.0)
    return weights


def build_loss(task_weights: Mapping[str, float], use_pos_weight: bool,
               stats: ShardStats | None) -> MaskedMultiTaskBCE:
    """The loss of a run: per-task weights from config, positive weights from ``stats``."""
    pos_weight = pos_weights_from_stats(stats) if (use_pos_weight and stats is not None) else None
    if use_pos_weight and stats is None:
        raise ValueError("pos_weight needs the shard set's stats.json")
    return MaskedMultiTaskBCE(task_weights, pos_weight)
