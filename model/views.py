"""The view classifier: which standard view a clip is, as plain data that outlives its code.

A small 2-D CNN looks at a few frames of a clip, stacked as channels (``frames`` frames every
``period``, the centred window of `model.contract`, resized to ``size``), and says one of
``classes``: the target views (`shards.format.TARGET_VIEWS`: A4C, A2C, PLAX) and ``other`` (any
view that is not a target). Its logits are divided by a temperature fitted on val (temperature
scaling), so the top softmax probability is a calibrated confidence; below ``threshold`` the
clip's view is ``unknown`` (`ViewClassifier`).

The artifact is a directory with two files, no pickled object::

    weights.pt   torch.save of a flat {parameter name: tensor} dict, float32 (weights-only load)
    model.json   {"format": 1, "kind": "echocmr.ViewNet", "classes": [...], "net": {...},
                  "input_spec": {...}, "temperature": T, "threshold": t, "val": {...},
                  "train_sites": [...], "echocmr_version": "...", "torch_version": "..."}

A reader refuses a ``format`` or ``kind`` it does not know, saying what to do. The input is the
same `model.contract.InputSpec` the CMR model uses (its ``tasks`` are the classes), so the read
path (`read.pipeline`) feeds training exactly as `frames_to_clip` feeds raw frames at ingest and
predict.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from echocmr.model.artifact import echocmr_version, portable_weights, torch_version
from echocmr.model.contract import InputSpec, frames_to_clip
from echocmr.model.view_numpy import PortableViewClassifier, PortableViewNet, ViewCall
from echocmr.shards.format import TARGET_VIEWS, VIEW_OTHER, VIEW_UNKNOWN, view_class

VIEW_FORMAT = 1
VIEW_KIND = "echocmr.ViewNet"
WEIGHTS_FILE = "weights.pt"
META_FILE = "model.json"
VIEW_CLASSES: tuple[str, ...] = (*TARGET_VIEWS, VIEW_OTHER)
# A clip whose calibrated confidence is below this is labelled ``unknown`` (docs/views.md). A
# starting point, not a measured optimum: choose it per model from the val confusion (the card)
# and a held-out site (bench/bench_views.py); `--threshold` at training, `--view-threshold` at
# ingest.
DEFAULT_THRESHOLD = 0.8


def class_index(view: str) -> int:
    """The class of a stored view name (a target view, else ``other``); ValueError for
    ``unknown``, which is no class."""
    name = view_class(view)
    if name == VIEW_UNKNOWN:
        raise ValueError("a clip of unknown view has no class")
    return VIEW_CLASSES.index(name)


@dataclass(frozen=True, kw_only=True)
class ViewNetConfig:
    """The network's shape: ``width`` channels in the first block, doubled per block up to 4x."""

    width: int = 16
    blocks: int = 4
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.width < 1 or not 1 <= self.blocks <= 6 or not 0 <= self.dropout < 1:
            raise ValueError(f"view network: width >= 1, 1 <= blocks <= 6, 0 <= dropout < 1; "
                             f"got {self}")


def _norm(channels: int) -> nn.Module:
    """Group norm: no running statistics, so a net trained for a few dozen steps on a few
    hundred clips behaves the same in eval mode as in training (batch norm's running estimates
    lag far behind after so few steps)."""
    return nn.GroupNorm(min(8, channels), channels)


class ViewNet(nn.Module):
    """``x_NCTHW`` (the `InputSpec` network input, C = 1) -> logits ``[N, classes]``: frames are
    channels of a 2-D CNN (conv-GroupNorm-ReLU, stride 2 per block), global average pool,
    linear."""

    def __init__(self, config: ViewNetConfig, *, frames: int, num_classes: int) -> None:
        super().__init__()
        self.config, self.frames, self.num_classes = config, frames, num_classes
        layers: list[nn.Module] = []
        c_in = frames
        for b in range(config.blocks):
            c_out = config.width * min(2 ** b, 4)
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       _norm(c_out), nn.ReLU(inplace=True),
                       nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                       _norm(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.drop = nn.Dropout(config.dropout)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x_NCTHW: torch.Tensor) -> torch.Tensor:
        x_NTHW = x_NCTHW.mean(dim=1)  # grey: the C copies are equal
        feat = self.features(x_NTHW).mean(dim=(2, 3))
        return self.fc(self.drop(feat))


MIN_TEMPERATURE, MAX_TEMPERATURE = 0.5, 20.0


def fit_temperature(logits_NK: torch.Tensor, target_N: torch.Tensor) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017),
    searched on a log grid over [0.5, 20] then refined; 1.0 when there is nothing to fit.

    The lower bound keeps a tiny val set that the network gets all right (NLL falls without end
    as T -> 0) from making every call certain, which would leave nothing ``unknown``; measured:
    3 val clips, all right, fitted T = 0.047 without it."""
    if len(target_N) == 0:
        return 1.0
    logits = logits_NK.detach().double()

    def nll(t: float) -> float:
        return float(nn.functional.cross_entropy(logits / t, target_N))

    grid = np.exp(np.linspace(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE), 61))
    best = min(grid, key=nll)
    fine = np.clip(best * np.exp(np.linspace(-0.06, 0.06, 25)), MIN_TEMPERATURE,
                   MAX_TEMPERATURE)
    return float(min(fine, key=nll))


@dataclass
class ViewModel:
    """A trained view classifier: network (eval mode, CPU), its input spec and its facts."""

    net: ViewNet
    spec: InputSpec
    classes: tuple[str, ...]
    temperature: float
    threshold: float
    meta: dict[str, Any]

    def probabilities(self, x_NCTHW: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities ``[N, classes]`` of network inputs."""
        with torch.inference_mode():
            return torch.softmax(self.net(x_NCTHW) / self.temperature, dim=1)


def write_view_model(directory: str | os.PathLike, net: ViewNet, spec: InputSpec, *,
                     temperature: float, threshold: float = DEFAULT_THRESHOLD,
                     val: dict | None = None, train_sites: list[str] | None = None) -> str:
    """Write the artifact (module docstring); return the directory."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    torch.save(portable_weights(net), os.path.join(directory, WEIGHTS_FILE))
    meta = {"format": VIEW_FORMAT, "kind": VIEW_KIND, "classes": list(VIEW_CLASSES),
            "net": asdict(net.config), "frames": net.frames, "input_spec": spec.to_dict(),
            "temperature": float(temperature), "threshold": float(threshold),
            "val": val or {}, "train_sites": list(train_sites or []),
            "echocmr_version": echocmr_version(), "torch_version": torch_version()}
    with open(os.path.join(directory, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    return directory


def is_view_model_dir(directory: str | os.PathLike) -> bool:
    path = os.path.join(directory, META_FILE)
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f).get("kind") == VIEW_KIND
        except (ValueError, AttributeError):
            return False


def read_view_model(directory: str | os.PathLike) -> ViewModel:
    """The `ViewModel` of an artifact directory; a format or kind it does not know is refused."""
    path = os.path.join(directory, META_FILE)
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if not isinstance(meta, dict) or meta.get("kind") != VIEW_KIND:
        raise ValueError(f"{path} is not an echocmr view classifier (kind {VIEW_KIND}); a CMR "
                         "model goes to --model, a view model to --view-model")
    if meta.get("format") != VIEW_FORMAT:
        raise ValueError(
            f"{path} is view-model format {meta.get('format')!r}, written by echocmr "
            f"{meta.get('echocmr_version', '?')}; this echocmr ({echocmr_version()}) reads format "
            f"{VIEW_FORMAT}: install echocmr=={meta.get('echocmr_version', '?')}")
    classes = tuple(meta["classes"])
    if classes != VIEW_CLASSES:
        raise ValueError(f"{path}: classes {list(classes)}; this echocmr knows "
                         f"{list(VIEW_CLASSES)}")
    net = ViewNet(ViewNetConfig(**meta["net"]), frames=int(meta["frames"]),
                  num_classes=len(classes))
    net.load_state_dict(torch.load(os.path.join(directory, WEIGHTS_FILE), map_location="cpu",
                                   weights_only=True))
    net.eval()
    return ViewModel(net=net, spec=InputSpec.from_dict(meta["input_spec"]), classes=classes,
                     temperature=float(meta["temperature"]), threshold=float(meta["threshold"]),
                     meta=meta)


class ViewClassifier:
    """Grey frames ``uint8[T, H, W]`` -> `ViewCall`. Picklable (a process pool or a Ray task
    carries it to its workers, which is how ingest gets one without importing this package) and
    single-threaded in torch, so it never competes with the pool it runs in.

    ``source`` names the model (``models:/NAME/VERSION`` or a path) for lineage.
    """

    def __init__(self, model: ViewModel, *, source: str = "", threshold: float | None = None):
        self.model = model
        self.source = source
        self.threshold = model.threshold if threshold is None else float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"view threshold {self.threshold} is not in [0, 1]")

    @property
    def version(self) -> dict[str, Any]:
        """What stats.json records as the view model (lineage)."""
        return {"source": self.source, "threshold": self.threshold,
                "echocmr_version": self.model.meta.get("echocmr_version"),
                "train_sites": self.model.meta.get("train_sites", [])}

    def __call__(self, frames_THW: np.ndarray) -> ViewCall:
        return self.classify([frames_THW])[0]

    def portable(self) -> PortableViewClassifier:
        """The same classifier in numpy (`model.view_numpy`): what ingest's workers get, so a
        worker never imports torch for it."""
        return PortableViewClassifier(
            net=PortableViewNet.from_state(self.model.net.state_dict(),
                                           self.model.net.config.blocks),
            spec=self.model.spec, classes=self.model.classes,
            temperature=self.model.temperature, threshold=self.threshold, source=self.source,
            version=self.version)

    def classify(self, clips: list[np.ndarray]) -> list[ViewCall]:
        if not clips:
            return []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            x = torch.stack([frames_to_clip(np.asarray(c), self.model.spec) for c in clips])
            probs = self.model.probabilities(x).numpy()
        finally:
            torch.set_num_threads(threads)
        out = []
        for p in probs:
            k = int(np.argmax(p))
            best, conf = self.model.classes[k], float(p[k])
            out.append(ViewCall(view=best if conf >= self.threshold else VIEW_UNKNOWN,
                                confidence=conf, best=best))
        return out


def confusion(target_N: np.ndarray, pred_N: np.ndarray, classes=VIEW_CLASSES) -> np.ndarray:
    """``[true class, predicted class]`` counts; ``pred`` may hold ``len(classes)`` for
    ``unknown`` (an extra last column)."""
    k = len(classes)
    out = np.zeros((k, k + 1), dtype=np.int64)
    for t, p in zip(np.asarray(target_N), np.asarray(pred_N), strict=True):
        out[int(t), int(p)] += 1
    return out


def format_confusion(matrix: np.ndarray, classes=VIEW_CLASSES) -> str:
    """The confusion matrix as a fixed-width table (rows: true view; columns: predicted, with
    ``unknown`` last), and per-class accuracy."""
    cols = [*classes, VIEW_UNKNOWN]
    width = max(8, *(len(c) + 1 for c in cols))
    lines = ["true \\ pred".ljust(12) + "".join(c.rjust(width) for c in cols) + "  accuracy"]
    for i, name in enumerate(classes):
        row = matrix[i]
        n = int(row.sum())
        acc = f"{100.0 * row[i] / n:8.1f} %" if n else "       -"
        lines.append(name.ljust(12) + "".join(str(int(v)).rjust(width) for v in row) + "  " + acc)
    return "\n".join(lines)
