"""Train a view classifier on the clips of a shard set whose view is known.

``echocmr views train --shards DIR [--register NAME]``: the clips of train and val whose view is
known (a target view, or any other name a views table gave, which is the class ``other``;
``unknown`` clips are left out and counted) are read through the same DALI graph as training
(`read.loader.ClipLoader`: random window and augmentation for train, the centred window for val;
``--gpu`` decodes on NVDEC and trains on the GPU), fed to `model.views.ViewNet`, and the epoch
with the best val accuracy is kept. Its val logits fit the temperature (`fit_temperature`), and
the calibrated confusion on val (``unknown`` below the threshold) goes into the run, the card and
the printout. The run is logged to MLflow (experiment ``echocmr-views``), the model logged as a
pyfunc and, with ``--register``, registered (`model.view_store`). ``--out DIR`` also writes the
artifact directory there.

Cost on 2 CPU cores: 4 frames at 64 x 64, width 16: a few seconds per hundred clips per epoch
(docs/benchmarks.md, "View classifier").
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from echocmr.model.contract import InputSpec
from echocmr.model.tracking import (
    manifest_digest,
    resolve_tracking_uri,
    set_name,
    sqlite_artifact_root,
)
from echocmr.model.view_store import ViewRegistration, log_view_model, register_view_model
from echocmr.model.views import (
    DEFAULT_THRESHOLD,
    VIEW_CLASSES,
    ViewNet,
    ViewNetConfig,
    class_index,
    confusion,
    fit_temperature,
    format_confusion,
    write_view_model,
)
from echocmr.read.config import AugmentConfig, DataConfig
from echocmr.read.loader import ClipLoader, site_selection
from echocmr.shards.format import VIEW_UNKNOWN, check_format_version, view_class
from echocmr.shards.reader import read_manifest, read_stats

log = logging.getLogger(__name__)

EXPERIMENT = "echocmr-views"


@dataclass(kw_only=True)
class ViewTrainConfig:
    """How the view classifier is trained (``echocmr views train`` flags)."""

    frames: int = 4  # frames per clip, stacked as channels
    period: int = 6  # every 6th frame: 4 frames span ~0.6 s at the stored 30 fps
    size: int = 64
    batch_size: int = 32
    epochs: int = 10
    # A few hundred labelled clips are a handful of batches per epoch: train at least this many
    # steps whatever ``epochs`` says (measured: 34 train clips, 80 steps learned nothing; 300
    # steps reached a train loss of 0.2; docs/benchmarks.md, "View classifier").
    min_steps: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    net: ViewNetConfig = field(default_factory=ViewNetConfig)
    threshold: float = DEFAULT_THRESHOLD
    exclude_sites: tuple[str, ...] = ()
    gpu: bool = False
    experiment: str = EXPERIMENT

    def __post_init__(self) -> None:
        for name in ("frames", "period", "size", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"views train: {name} must be >= 1")
        if self.min_steps < 0:
            raise ValueError("views train: min_steps must be >= 0")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"views train: threshold {self.threshold} is not in [0, 1]")

    def data(self) -> DataConfig:
        return DataConfig(frames=self.frames, period=self.period, size=self.size,
                          batch_size=self.batch_size, seed=self.seed,
                          views=(*VIEW_CLASSES,), exclude_sites=tuple(self.exclude_sites),
                          augment=AugmentConfig(pad=4, contrast=0.15, brightness=0.15),
                          decoder="auto", shuffle_buffer=4096)


@dataclass
class ViewTrainResult:
    artifact_dir: str | None
    val: dict
    counts: dict[str, dict[str, int]]
    train_sites: list[str]
    run_id: str | None = None
    model_uri: str | None = None
    registration: ViewRegistration | None = None
    seconds: float = 0.0


def view_counts_by_split(shards: str, exclude_sites=()) -> dict[str, dict[str, int]]:
    """Clips per split and view class (``unknown`` included: those are left out)."""
    manifest = read_manifest(shards)
    manifest = manifest[~manifest["site"].astype(str).isin(list(exclude_sites))]
    classes = manifest["view"].map(view_class)
    out = {}
    for split in ("train", "val"):
        mine = classes[manifest["split"] == split]
        out[split] = {str(k): int(v) for k, v in mine.value_counts().sort_index().items()}
    return out


def train_view_model(shards: str, config: ViewTrainConfig, *, tracking_uri: str | None = None,
                     register: str | None = None, out: str | None = None,
                     track: bool = True) -> ViewTrainResult:
    """Train, calibrate, log and (with ``register``) register a view classifier."""
    import torch

    started = time.perf_counter()
    stats = read_stats(shards)
    check_format_version(stats, shards)
    stats, train_sites = site_selection(shards, stats, config.exclude_sites)
    counts = view_counts_by_split(shards, config.exclude_sites)
    for split in ("train", "val"):
        known = {k: v for k, v in counts[split].items() if k != VIEW_UNKNOWN}
        if sum(known.values()) == 0:
            raise ValueError(f"{shards}: no {split} clip has a known view ({counts[split]}); "
                             "ingest a few hundred clips with --views first (docs/views.md)")
    log.info("clips by view: train %s, val %s (unknown left out)", counts["train"],
             counts["val"])
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if config.gpu else "cpu")
    data = config.data()
    spec = InputSpec.build(data, replace(stats, tasks=tuple(VIEW_CLASSES)))
    manifest = read_manifest(shards)
    label_of = {str(k): v for k, v in zip(manifest["key"], manifest["view"], strict=True)
                if view_class(v) != VIEW_UNKNOWN}
    train = ClipLoader(shards, "train", data, spec=spec, train=True, stats=stats, device=device)
    val = ClipLoader(shards, "val", data, spec=spec, train=False, stats=stats, device=device)
    net = ViewNet(config.net, frames=config.frames, num_classes=len(VIEW_CLASSES)).to(device)
    train_keys = set(manifest.loc[manifest["split"] == "train", "key"].astype(str))
    y_train = np.array([class_index(v) for k, v in label_of.items() if k in train_keys],
                       dtype=np.int64)
    freq = np.bincount(y_train, minlength=len(VIEW_CLASSES)).astype(np.float64)
    weight = torch.tensor(np.where(freq > 0, freq.sum() / np.maximum(freq, 1) / len(freq), 0.0),
                          dtype=torch.float32, device=device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    epochs = max(config.epochs, math.ceil(config.min_steps / max(len(train), 1)))
    steps = max(1, epochs * len(train))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps,
                                                pct_start=0.2)
    best = ((-1.0, -math.inf), None, None, None)  # (accuracy, -loss), state, logits, targets
    history = []
    for epoch in range(epochs):
        net.train()
        total, n = 0.0, 0
        for batch in train.epoch(epoch):
            n_valid = batch.n_valid  # padding repeats come last
            y = torch.tensor([class_index(label_of[k]) for k in batch.keys[:n_valid]],
                             device=device)
            logits = net(batch.clips[:n_valid])
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * n_valid
            n += n_valid
        logits, target = _predict(net, val, label_of)
        acc = float((logits.argmax(1) == target).float().mean()) if len(target) else 0.0
        nll = (float(torch.nn.functional.cross_entropy(logits, target)) if len(target)
               else math.inf)
        history.append({"epoch": epoch, "train_loss": total / max(n, 1), "val_accuracy": acc,
                        "val_loss": nll})
        log.info("views epoch %d: train loss %.4f, val accuracy %.4f", epoch, total / max(n, 1),
                 acc)
        if (acc, -nll) > best[0]:  # best val accuracy; ties (a small val set) by val loss
            state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            best = ((acc, -nll), state, logits, target)
    _, state, logits, target = best
    net.load_state_dict(state)
    net = net.cpu().eval()
    temperature = fit_temperature(logits, target)
    val_report = calibrated_confusion(logits, target, temperature, config.threshold)
    val_report["history"] = history
    result = ViewTrainResult(artifact_dir=None, val=val_report, counts=counts,
                             train_sites=train_sites)
    with tempfile.TemporaryDirectory(prefix="echocmr-views-") as tmp:
        artifact = write_view_model(out or os.path.join(tmp, "view_model"), net, spec,
                                    temperature=temperature, threshold=config.threshold,
                                    val=_plain(val_report), train_sites=train_sites)
        result.artifact_dir = artifact if out else None
        if track:
            _track(result, artifact, shards, config, tracking_uri=tracking_uri,
                   register=register)
    result.seconds = time.perf_counter() - started
    return result


def _predict(net, loader: ClipLoader, label_of: dict[str, str]):
    """Val logits (CPU) and class targets of every real sample."""
    import torch

    net.eval()
    out, target = [], []
    with torch.inference_mode():
        for batch in loader.epoch(0):
            n = batch.n_valid
            out.append(net(batch.clips[:n]).float().cpu())
            target += [class_index(label_of[k]) for k in batch.keys[:n]]
    logits = torch.cat(out) if out else torch.zeros((0, len(VIEW_CLASSES)))
    return logits, torch.tensor(target, dtype=torch.long)


def calibrated_confusion(logits, target, temperature: float, threshold: float) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix (``unknown`` column last) of
    calibrated predictions: below ``threshold`` a clip is ``unknown``."""
    import torch

    probs = torch.softmax(logits.double() / temperature, dim=1).numpy()
    pred = probs.argmax(1)
    conf = probs.max(1) if len(probs) else np.zeros(0)
    pred = np.where(conf >= threshold, pred, len(VIEW_CLASSES))
    t = target.numpy()
    matrix = confusion(t, pred)
    per_class = {c: (float(matrix[k, k] / matrix[k].sum()) if matrix[k].sum() else None)
                 for k, c in enumerate(VIEW_CLASSES)}
    return {"accuracy": float((pred == t).mean()) if len(t) else 0.0,
            "accuracy_uncalibrated": float((probs.argmax(1) == t).mean()) if len(t) else 0.0,
            "unknown_rate": float((pred == len(VIEW_CLASSES)).mean()) if len(t) else 0.0,
            "per_class": per_class, "confusion": matrix.tolist(),
            "temperature": float(temperature), "threshold": float(threshold), "n": int(len(t))}


def _plain(val: dict) -> dict:
    return {k: v for k, v in val.items() if k != "history"}


def _track(result: ViewTrainResult, artifact: str, shards: str, config: ViewTrainConfig, *,
           tracking_uri: str | None, register: str | None) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(config.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        config.experiment, artifact_location=sqlite_artifact_root(uri))
    digest = manifest_digest(shards)
    with mlflow.start_run(experiment_id=exp_id) as run:
        result.run_id = run.info.run_id
        params = {k: v for k, v in asdict(config).items() if k != "net"}
        params |= {f"net.{k}": v for k, v in asdict(config.net).items()}
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.set_tags({"echocmr.kind": "view_classifier", "shards": set_name(shards),
                         "data_digest": digest, "echocmr.train_sites": ",".join(
                             result.train_sites),
                         **{f"echocmr.views_{split}": ",".join(f"{k}={v}" for k, v in c.items())
                            for split, c in result.counts.items()}})
        for h in result.val["history"]:
            mlflow.log_metrics({"train_loss": h["train_loss"], "val_accuracy_raw":
                                h["val_accuracy"]}, step=h["epoch"])
        mlflow.log_metrics({"val_accuracy": result.val["accuracy"],
                            "val_unknown_rate": result.val["unknown_rate"],
                            "temperature": result.val["temperature"],
                            **{f"val_accuracy_{c}": a for c, a in result.val["per_class"].items()
                               if a is not None}})
        mlflow.log_text(format_confusion(np.asarray(result.val["confusion"])) + "\n",
                        "val_confusion.txt")
        result.model_uri = log_view_model(artifact, tracking_uri=uri, run_id=run.info.run_id)
    if register:
        result.registration = register_view_model(
            result.model_uri, register, tracking_uri=uri, run_id=result.run_id,
            val=_plain(result.val), data_digest=digest, train_sites=result.train_sites,
            shards=shards)
