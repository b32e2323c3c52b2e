"""R(2+1)D video network with torchvision's ``r2plus1d_18`` parameter names, and a 5-logit head.

Written here because torchvision has no CPU build on our package mirror. Every parameter and
buffer keeps torchvision's name and shape (``stem.0..5``, ``layer1..4.{0,1}.conv1.0.0`` ...,
``downsample.0/1``, ``fc``), so a published Kinetics-400 or EchoNet-Dynamic checkpoint given as a
file loads with `load_pretrained`. Width and depth are configurable so CPU runs stay small: width
64 and layers (2, 2, 2, 2) is exactly ``r2plus1d_18``.

Grey input: with ``in_channels=1`` the stem's first convolution has one input channel. Loading
3-channel weights sums them over the channel axis, which gives the same output for a grey clip
that the RGB network gives for that clip repeated on three channels (conv is linear in its input).

Shapes: input ``clip_NCTHW`` (N clips, C channels, T frames, H x W), output ``logits_NK`` (K=5
tasks in `shards.format.TASKS` order).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from echocmr.model.config import ModelConfig
from echocmr.shards.format import TASKS

log = logging.getLogger(__name__)

STEM_MIDPLANES = 45  # torchvision's R2Plus1dStem, at width 64


class Conv2Plus1D(nn.Sequential):
    """A 3x3x3 convolution factorised into spatial 1x3x3, BN, ReLU, temporal 3x1x1."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_planes, midplanes, kernel_size=(1, 3, 3), stride=(1, stride, stride),
                      padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(midplanes),
            nn.ReLU(inplace=True),
            nn.Conv3d(midplanes, out_planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1),
                      padding=(1, 0, 0), bias=False),
        )


def block_midplanes(in_planes: int, planes: int) -> int:
    """torchvision's choice: as many (2+1)D parameters as a full 3x3x3 convolution would have."""
    return (in_planes * planes * 3 * 3 * 3) // (in_planes * 3 * 3 + 3 * planes)


class BasicBlock(nn.Module):
    """Two (2+1)D convolutions with a residual connection (torchvision ``BasicBlock``)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        mid = block_midplanes(in_planes, planes)
        self.conv1 = nn.Sequential(Conv2Plus1D(in_planes, planes, mid, stride),
                                   nn.BatchNorm3d(planes), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(Conv2Plus1D(planes, planes, mid), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + residual)


class R2Plus1D(nn.Module):
    """R(2+1)D backbone shared by all tasks, and one linear head giving a logit per task."""

    def __init__(self, config: ModelConfig | None = None, num_outputs: int = len(TASKS)) -> None:
        super().__init__()
        config = config or ModelConfig()
        self.config = config
        w = config.width
        stem_mid = max(1, round(STEM_MIDPLANES * w / 64))
        self.stem = nn.Sequential(
            nn.Conv3d(config.in_channels, stem_mid, kernel_size=(1, 7, 7), stride=(1, 2, 2),
                      padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(stem_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, w, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0),
                      bias=False),
            nn.BatchNorm3d(w),
            nn.ReLU(inplace=True),
        )
        self._in_planes = w
        self.layer1 = self._make_layer(w, config.layers[0], stride=1)
        self.layer2 = self._make_layer(2 * w, config.layers[1], stride=2)
        self.layer3 = self._make_layer(4 * w, config.layers[2], stride=2)
        self.layer4 = self._make_layer(8 * w, config.layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(8 * w, num_outputs)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._in_planes != planes:
            downsample = nn.Sequential(
                nn.Conv3d(self._in_planes, planes, kernel_size=1, stride=(stride,) * 3, bias=False),
                nn.BatchNorm3d(planes),
            )
        layers = [BasicBlock(self._in_planes, planes, stride, downsample)]
        self._in_planes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision VideoResNet's initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def features(self, clip_NCTHW: torch.Tensor) -> torch.Tensor:
        """The shared backbone's pooled features, ``[N, 8 * width]``."""
        x = self.stem(clip_NCTHW)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, clip_NCTHW: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, 5]`` in `TASKS` order (apply a sigmoid for probabilities)."""
        return self.fc(self.features(clip_NCTHW))


def build_model(config: ModelConfig) -> R2Plus1D:
    """The network for ``config``; with ``config.init`` set, published weights are loaded."""
    model = R2Plus1D(config)
    if config.init:
        report = load_pretrained(model, config.init)
        log.info("%s", report.describe())
    return model


@dataclass
class LoadReport:
    """What `load_pretrained` did with each key of the given state dict."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file: kept as init
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model: ignored
    shape_mismatch: list[str] = field(default_factory=list)  # "name: file (..) vs model (..)"
    summed_input_channels: bool = False

    def describe(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.summed_input_channels:
            lines.append("stem.0.weight: summed 3 input channels into 1 for grey clips")
        for label, names in (("missing (left at initialisation)", self.missing),
                             ("unexpected (ignored)", self.unexpected),
                             ("shape mismatch (left at initialisation)", self.shape_mismatch)):
            if names:
                lines.append(f"{label}: {', '.join(names)}")
        return "\n".join(lines)


def load_pretrained(model: R2Plus1D, source: str | Mapping[str, torch.Tensor], *,
                    strict_backbone: bool = True) -> LoadReport:
    """Load a torchvision-named R(2+1)D state dict (a file path or a mapping) into ``model``.

    Accepts a bare state dict or one nested under ``state_dict``/``model``, with or without a
    ``module.`` prefix (DataParallel checkpoints such as EchoNet-Dynamic's) and the published
    echo-CMR study's release prefix ``m.`` (its keys read ``module.m.stem.0.weight``; any
    sequence of the two is removed). torchvision's Kinetics-400 ``r2plus1d_18`` weights load
    as they are. The head ``fc``
    loads only when its shape matches (Kinetics has 400 classes, we have 5); the stem's RGB
    weights are summed for a grey model. With ``strict_backbone``, a backbone tensor that is
    missing or of the wrong shape is an error (it means a different architecture or width).
    """
    name = source if isinstance(source, str) else "<state dict>"
    state = _read_state_dict(source) if isinstance(source, str) else dict(source)
    state = {_strip_prefixes(k): v for k, v in state.items()}
    own = model.state_dict()
    report = LoadReport(source=name)
    take: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if (key == "stem.0.weight" and value.ndim == 5 and value.shape[1] == 3
                and target.shape[1] == 1 and value.shape[0] == target.shape[0]):
            value = value.sum(dim=1, keepdim=True)
            report.summed_input_channels = True
        if tuple(value.shape) != tuple(target.shape):
            report.shape_mismatch.append(
                f"{key}: file {tuple(value.shape)} vs model {tuple(target.shape)}")
            continue
        take[key] = value.to(dtype=target.dtype)
        report.loaded.append(key)
    report.missing = [k for k in own if k not in take and k not in _mismatched(report)]
    if strict_backbone:
        bad = [k for k in report.missing + _mismatched(report)
               if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
        if bad:
            raise ValueError(
                f"{name} does not fit this model ({len(bad)} backbone tensors missing or of "
                f"another shape, e.g. {bad[:3]}). It must be an r2plus1d_18-style state dict and "
                f"model.width/model.layers must match it (torchvision: width 64, layers 2,2,2,2).\n"
                + report.describe())
    model.load_state_dict(take, strict=False)
    return report


# Wrappers published checkpoints put before torchvision's names: DataParallel/DDP's ``module.``
# and the echo-CMR study's ``m.`` (its model wrapper's attribute), in either order.
_WRAPPER_PREFIXES = ("module.", "m.")


def _strip_prefixes(key: str) -> str:
    while key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _mismatched(report: LoadReport) -> list[str]:
    return [entry.split(":", 1)[0] for entry in report.shape_mismatch]


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"--init file {path} not found") from None
    except Exception as exc:
        raise ValueError(f"--init file {path} is not a torch state dict: {exc}") from None
    for nest in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(nest), dict):
            obj = obj[nest]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"--init file {path} holds no mapping of parameter names to tensors")
    return obj


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
