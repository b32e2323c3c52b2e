"""One rank's training state and its epoch loops, the same code inside Ray workers and in-process.

`Engine` owns the model (wrapped in DDP when ``world > 1``), the loss, optimiser, scheduler, the
train and val `ClipLoader`s and the reader position. `train_epoch` runs one epoch from the
position; `validate` predicts the val split on every rank and gathers the predictions so each rank
computes the same per-task AUC; `state_dict`/`load_state_dict` are what a checkpoint holds.

Why a separate object from the Ray loop: resume must be provably exact, and that is testable
in-process (no Ray) by running, saving, restoring into a fresh engine and comparing batches and
losses with an uninterrupted run. ``train.loop`` only adds Ray's reporting and restarts.

On a GPU: bf16 autocast, channels-last-3d weights and inputs, optional ``torch.compile``.

Tests that need a worker to die at a given step pass a hook to `train.loop.run_training`
(``step_hook``); the engine knows nothing of it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from echocmr.errors import EchocmrError
from echocmr.model.auc import mean_auc, task_aucs
from echocmr.model.contract import InputSpec
from echocmr.model.network import R2Plus1D, build_model
from echocmr.read.assign import ReadPlan
from echocmr.read.loader import Batch, ClipLoader, ReaderPosition, derive_seed
from echocmr.shards.format import TASKS, ShardStats
from echocmr.train.config import SelectionConfig, TrainConfig
from echocmr.train.loss import build_loss
from echocmr.train.selection import checkpoint_score


@dataclass
class EpochResult:
    """What `Engine.train_epoch` measured (losses averaged over ranks)."""

    epoch: int
    steps: int
    loss: float
    task_loss: dict[str, float]
    clips: int  # real (non-padding) clips this rank trained on
    seconds: float
    data_wait_s: float  # time blocked waiting for the next batch
    step_losses: list[float] = field(default_factory=list)  # this rank's, per step
    batch_keys: list[list[str]] = field(default_factory=list)  # this rank's, per step

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_s / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _EpochProgress:
    """What one rank has trained of the current epoch: the part a mid-epoch checkpoint keeps, so
    that the resumed epoch reports the losses, clips and time of the whole epoch."""

    epoch: int
    losses: list  # per step: 0-d float32 tensors on the device (floats once restored)
    task_sums: torch.Tensor  # [K] float32, summed over the steps
    keys: list[list[str]] = field(default_factory=list)
    clips: int = 0
    data_wait_s: float = 0.0
    seconds_before: float = 0.0  # spent on this epoch before `started` (an earlier process)
    started: float = 0.0  # perf_counter when this process took the epoch up

    @classmethod
    def empty(cls, epoch: int, device: torch.device) -> _EpochProgress:
        return cls(epoch=epoch, losses=[], task_sums=torch.zeros(len(TASKS), device=device))

    def step_losses(self) -> list[float]:
        """Per-step losses as floats (one device sync for the tensors among them)."""
        if not self.losses:
            return []
        return torch.stack([torch.as_tensor(v, dtype=torch.float32).to(self.task_sums.device)
                            for v in self.losses]).tolist()

    def to_state(self) -> dict:
        return {"epoch": self.epoch, "step_losses": self.step_losses(),
                "task_sums": self.task_sums.detach().cpu().clone(), "keys": self.keys,
                "clips": self.clips, "data_wait_s": self.data_wait_s,
                "seconds": self.seconds_before + time.perf_counter() - self.started}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> _EpochProgress:
        return cls(epoch=int(state["epoch"]), losses=list(state["step_losses"]),
                   task_sums=state["task_sums"].to(device), keys=list(state["keys"]),
                   clips=int(state["clips"]), data_wait_s=float(state["data_wait_s"]),
                   seconds_before=float(state["seconds"]))


class ResumeError(EchocmrError, RuntimeError):
    """A checkpoint this engine cannot continue from exactly (and will not continue from)."""


@dataclass
class ValResult:
    loss: float
    aucs: dict[str, float | None]
    keys: list[str]  # gathered over ranks, padding removed
    probs: np.ndarray  # [N, K]
    labels: np.ndarray  # [N, K], NaN unknown
    selection: SelectionConfig | None = None  # None: the mean AUC over every task

    @property
    def mean_auc(self) -> float | None:
        return mean_auc(self.aucs)

    @property
    def score(self) -> float:
        sel = self.selection
        if sel is None:
            return checkpoint_score(self.aucs, self.loss)
        return checkpoint_score(self.aucs, self.loss, metric=sel.metric, tasks=sel.tasks,
                                weights=sel.weights)


class Engine:
    """Training state of one rank. ``world > 1`` needs an initialised ``torch.distributed``."""

    def __init__(self, config: TrainConfig, shards: str, *, stats: ShardStats, rank: int = 0,
                 world: int = 1, device: torch.device | str = "cpu",
                 plan: ReadPlan | None = None) -> None:
        self.config, self.rank, self.world = config, rank, world
        self.device = torch.device(device)
        self.gpu = self.device.type == "cuda"
        self.spec = InputSpec.build(config.data, stats, channels=config.model.in_channels)
        torch.manual_seed(derive_seed(config.data.seed, 12345))  # same init on every rank
        self.model: R2Plus1D = build_model(config.model).to(self.device)
        self._memory_format = torch.contiguous_format
        if self.gpu and config.channels_last:
            self._memory_format = torch.channels_last_3d
            self.model = self.model.to(memory_format=self._memory_format)
        self.net: torch.nn.Module = self.model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.gpu else None)
        if self.gpu and config.compile:
            self.net = torch.compile(self.net)
        self.loss_fn = build_loss(config.task_weights, config.pos_weight, stats).to(self.device)
        common = dict(stats=stats, rank=rank, world=world, device=self.device, spec=self.spec,
                      plan=plan)  # plan: the driver's (read.assign); None plans here
        self.train_loader = ClipLoader(shards, "train", config.data, train=True, **common)
        self.val_loader = ClipLoader(shards, "val", config.data, train=False, **common)
        self.steps_per_epoch = len(self.train_loader)
        if config.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, config.max_steps_per_epoch)
        self.optimizer = _optimizer(self.model, config)
        self.scheduler = _scheduler(self.optimizer, config, self.steps_per_epoch)
        self.position = ReaderPosition()
        self.global_step = 0
        self._progress: _EpochProgress | None = None  # the epoch in progress, if any
        self.resume_note: str | None = None  # set by `load_state_dict` on a worker-count change

    # -- training -----------------------------------------------------------------------------

    def train_epoch(self, on_step: Callable[[], None] | None = None) -> EpochResult:
        """Train from the reader position to the end of its epoch; the position moves on.

        ``on_step`` runs after every step, once the position and ``global_step`` count it (the
        Ray loop writes its step checkpoints there). An epoch resumed mid-way from a checkpoint
        starts from what the checkpoint kept of it (`state_dict`'s ``progress``), so its result
        covers the whole epoch, as an uninterrupted run's does.
        """
        epoch, first = self.position.epoch, self.position.batch
        self.net.train()
        # Losses stay where they were computed until the epoch ends: reading one back per step
        # (loss.item()) would make the host wait for the GPU every step and count that as data
        # wait. On the CPU the values, and their float32 sums, are the same either way.
        done = self._progress
        if done is None or done.epoch != epoch or len(done.losses) != first:
            done = _EpochProgress.empty(epoch, self.device)  # no (or another epoch's) record
        self._progress = done
        start = done.started = time.perf_counter()
        batches = self.train_loader.epoch(epoch, start_batch=first,
                                          max_batches=self.steps_per_epoch)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            done.data_wait_s += time.perf_counter() - t0
            if batch is None:
                break
            loss, task_loss = self._step(batch)
            done.losses.append(loss)
            done.task_sums += task_loss
            done.keys.append(batch.keys)
            done.clips += batch.n_valid
            self.position.batch += 1
            self.global_step += 1
            if on_step is not None:
                on_step()
        losses = done.losses
        step_losses = done.step_losses()  # the epoch's one sync
        task_mean = (done.task_sums / max(len(losses), 1)).cpu()
        seconds = done.seconds_before + time.perf_counter() - start
        mean_loss = self.mean_over_ranks(float(np.mean(step_losses)) if losses else 0.0)
        self.position = ReaderPosition(epoch=epoch + 1, batch=0)
        self._progress = None
        return EpochResult(
            epoch=epoch, steps=len(losses), loss=mean_loss,
            task_loss={t: self.mean_over_ranks(float(v))
                       for t, v in zip(TASKS, task_mean, strict=True)},
            clips=done.clips, seconds=seconds, data_wait_s=done.data_wait_s,
            step_losses=step_losses, batch_keys=done.keys)

    def _step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step; returns the loss and per-task losses as 0-d / [K] float32
        tensors on the device, not read back (reading them would wait for the GPU)."""
        clips = batch.clips.to(memory_format=self._memory_format)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.gpu and self.config.bf16):
            logits = self.net(clips)
        loss, per_task = self.loss_fn(logits, batch.labels, batch.valid)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach().float(), per_task.float()

    # -- validation ---------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> ValResult:
        """Predict the val split on all ranks; gather; AUC per task (same on every rank)."""
        self._sync_buffers()  # BN statistics of rank 0, as saved in the checkpoint
        self.model.eval()
        keys, probs, labels, loss_sum, loss_n = [], [], [], 0.0, 0
        for batch in self.val_loader.epoch(0):
            clips = batch.clips.to(memory_format=self._memory_format)
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=self.gpu and self.config.bf16):
                logits = self.model(clips)
            loss, _ = self.loss_fn(logits, batch.labels, batch.valid)
            n = int(batch.valid.sum())
            loss_sum, loss_n = loss_sum + float(loss) * n, loss_n + n
            valid = batch.valid.cpu().numpy()
            keys += [k for k, v in zip(batch.keys, valid, strict=True) if v]
            probs.append(torch.sigmoid(logits.float()).cpu().numpy()[valid])
            labels.append(batch.labels.cpu().numpy()[valid])
        local = (keys, np.concatenate(probs), np.concatenate(labels), loss_sum, loss_n)
        parts = [local]
        if self.world > 1:
            parts = [None] * self.world
            dist.all_gather_object(parts, local)
        seen, rows_k, rows_p, rows_l = set(), [], [], []
        for part_keys, part_probs, part_labels, _, _ in parts:
            for i, key in enumerate(part_keys):
                if key not in seen:
                    seen.add(key)
                    rows_k.append(key)
                    rows_p.append(part_probs[i])
                    rows_l.append(part_labels[i])
        probs_NK, labels_NK = np.stack(rows_p), np.stack(rows_l)
        total_n = sum(p[4] for p in parts)
        val_loss = sum(p[3] for p in parts) / max(total_n, 1)
        aucs = task_aucs(labels_NK, probs_NK, self.config.min_positives)
        return ValResult(loss=val_loss, aucs=aucs, keys=rows_k, probs=probs_NK, labels=labels_NK,
                         selection=self.config.selection)

    def _sync_buffers(self) -> None:
        if self.world > 1:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    def mean_over_ranks(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64,
                         device=self.device if self.gpu else "cpu")
        dist.all_reduce(t)
        return float(t.item()) / self.world

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Model (CPU, contiguous), optimiser, scheduler, reader position, step, worker count,
        and per rank: RNG states and, mid-epoch, what it has trained of the epoch (``progress``).

        ``rng`` and ``progress`` are gathered from every rank (a collective call when
        ``world > 1``), so all ranks must call this together.
        """
        progress = self._progress.to_state() \
            if self._progress is not None and self.position.batch > 0 else None
        mine = (rng_state(), progress)
        ranks = [mine]
        if self.world > 1:
            ranks = [None] * self.world
            dist.all_gather_object(ranks, mine)
        return {
            "model": {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "position": {"epoch": self.position.epoch, "batch": self.position.batch},
            "global_step": self.global_step,
            "world": self.world,
            "steps_per_epoch": self.steps_per_epoch,
            "rng": [r for r, _ in ranks],
            "progress": [p for _, p in ranks],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; exactly when it was saved by as many workers as this run has.

        Another worker count: from an epoch boundary the run goes on (the schedule at the same
        epoch; the old ranks' RNG states unused, `resume_note` says so); from mid-epoch it is
        refused with `ResumeError` (batch ``b`` of ``w`` workers is not batch ``b`` of ``w'``).
        """
        position = ReaderPosition(**state["position"])
        saved_world = int(state.get("world") or len(state.get("rng") or []) or self.world)
        if saved_world != self.world and position.batch > 0:
            raise ResumeError(mid_epoch_world_change(position, saved_world, self.world))
        self.model.load_state_dict(state["model"])
        if self._memory_format is not torch.contiguous_format:
            self.model.to(memory_format=self._memory_format)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.position = position
        self.global_step = int(state["global_step"])
        self._progress = None
        if saved_world == self.world:
            rngs = state.get("rng") or []
            if len(rngs) == self.world:
                set_rng_state(rngs[self.rank])
            progress = (state.get("progress") or [None] * self.world)[self.rank]
            if progress is not None and position.batch > 0:
                self._progress = _EpochProgress.from_state(progress, self.device)
            return
        # An epoch boundary with another worker count: the LR schedule goes on at the same
        # epoch, counted in this run's steps per epoch (the optimiser steps themselves differ).
        at = position.epoch * self.steps_per_epoch
        factor = self.scheduler.lr_lambdas[0]
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * factor(at)
        self.scheduler.last_epoch = at
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.resume_note = world_change_note(
            position.epoch, saved_world, self.world, self.steps_per_epoch,
            self.config.data.batch_size, self.train_loader.num_samples,
            capped=self.steps_per_epoch < len(self.train_loader))


def mid_epoch_world_change(position: ReaderPosition, saved: int, now: int) -> str:
    """Why a mid-epoch checkpoint of ``saved`` workers is refused for ``now``, and what to do."""
    return (f"the latest checkpoint is mid-epoch (epoch {position.epoch}, after batch "
            f"{position.batch}) of a {saved}-worker run, and this run has {now} workers: batch "
            f"{position.batch} of {saved} readers is not batch {position.batch} of {now}, so the "
            f"rest of the epoch cannot be told apart from what was trained. Resume with "
            f"--workers {saved}, and change the worker count after an epoch ends (an epoch "
            f"checkpoint), or start a new --run-name")


def world_change_note(epoch: int, saved: int, now: int, steps: int, batch: int,
                      samples: int, *, capped: bool = False) -> str:
    """What a run resumed at an epoch boundary with another worker count trains from then on."""
    sees = (f"the first {steps} batches of each of {now} reader parts of the {samples} train "
            f"clips (max_steps_per_epoch)" if capped else
            f"each of the {samples} train clips once, now in {now} reader parts")
    return (f"resumed at epoch {epoch} with {now} workers; the checkpoint was written by {saved}. "
            f"From epoch {epoch} each epoch sees {sees} ({steps} steps of {now} x {batch} "
            f"clips; the tar order "
            f"per epoch is unchanged, the sample order and augmentation within each part are "
            f"those of a {now}-worker run), so the weights differ from an uninterrupted run "
            f"with either count. The learning-rate schedule continues at epoch {epoch}; the "
            f"{saved} saved per-rank RNG states are not restored (no training step draws from "
            f"them: DALI's randomness is seeded from (seed, epoch, rank))")


def rng_state() -> dict:
    """Python, numpy and torch generator states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    o = config.optim
    # No weight decay on BatchNorm parameters and biases (1-D tensors).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
    return torch.optim.AdamW(groups, lr=o.lr)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
               steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(config.epochs * steps_per_epoch, 1)
    warmup = min(int(config.optim.warmup_epochs * steps_per_epoch), total - 1)
    cosine = config.optim.schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if not cosine:
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
