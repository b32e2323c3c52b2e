"""The view classifier's forward pass in numpy: what ingest's workers run, without torch.

Why: ``echocmr ingest --view-model`` labels each kept clip in the worker that made it. The network
itself is cheap (a few ms of CPU a clip), but a worker that unpickles a torch module imports
torch, about 1.5 CPU s per process (measured here: ``import torch`` in a fresh Python), paid by
every worker of every run and, on a small site, the larger part of what the view model added to
ingest's CPU (docs/benchmarks.md, "View classifier"). The command line loads the model with
torch once (`model.views.read_view_model`) and hands the workers `PortableViewClassifier`:
the same weights as numpy arrays and the same arithmetic, in a module that imports numpy alone.

It computes what `model.views.ViewClassifier` computes: the centred window of
`model.contract.frames_to_clip` (the shards' grey round trip, padding), torch's antialiased
bilinear resize (``interpolate(..., antialias=True, align_corners=False)``: a triangle filter
widened by the scale factor, as PIL does), normalisation, then `model.views.ViewNet`
(3x3 convolutions, GroupNorm, ReLU, global average pool, linear) and the temperature. Equal to
the torch classifier up to float32 rounding (tests/test_views.py compares them on clips of
every view).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from echocmr.model.contract import InputSpec, _normalise, _pick, centre_start, decoder_values

VIEW_UNKNOWN = "unknown"  # `shards.format.VIEW_UNKNOWN` (the view vocabulary)
GROUP_NORM_EPS = 1e-5  # torch.nn.GroupNorm's default


@dataclass(frozen=True)
class ViewCall:
    """One clip's view: the class (``unknown`` below the threshold), its confidence, and the
    class the network would pick regardless (``best``)."""

    view: str
    confidence: float
    best: str


@lru_cache(maxsize=16)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``float32[n_out, n_in]``: torch's antialiased bilinear resize of one axis
    (``align_corners=False``) as a matrix; a 2-D resize is ``R_h @ X @ R_w.T``."""
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    out = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - centre + 0.5) * inv))
        total = w.sum()
        out[i, lo:hi] = w / total if total > 0 else w
    return out.astype(np.float32)


def _conv3x3(x_NCHW: np.ndarray, w_OCKK: np.ndarray, stride: int) -> np.ndarray:
    """A 3x3 convolution, padding 1, no bias, as one matrix product over the patches."""
    n, c, h, w = x_NCHW.shape
    padded = np.pad(x_NCHW, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = sliding_window_view(padded, (3, 3), axis=(2, 3))[:, :, ::stride, ::stride]
    ho, wo = patches.shape[2], patches.shape[3]
    cols = patches.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * 9)
    out = cols @ w_OCKK.reshape(w_OCKK.shape[0], -1).T
    return out.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2)


def _group_norm(x_NCHW: np.ndarray, groups: int, weight: np.ndarray,
                bias: np.ndarray) -> np.ndarray:
    n, c, h, w = x_NCHW.shape
    g = x_NCHW.reshape(n, groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = g.var(axis=2, keepdims=True)
    g = (g - mean) / np.sqrt(var + GROUP_NORM_EPS)
    return g.reshape(n, c, h, w) * weight[None, :, None, None] + bias[None, :, None, None]


@dataclass
class PortableViewNet:
    """`model.views.ViewNet`'s weights as float32 arrays: per block (conv, norm groups, norm
    weight, norm bias) twice, the first conv with stride 2; then the linear layer."""

    blocks: list[tuple]
    fc_weight: np.ndarray
    fc_bias: np.ndarray

    @classmethod
    def from_state(cls, state: dict[str, Any], blocks: int) -> PortableViewNet:
        """From a ViewNet state dict (tensors or arrays), ``blocks`` blocks of six layers."""
        def arr(key: str) -> np.ndarray:
            value = state[key]
            value = value.detach().cpu().numpy() if hasattr(value, "detach") else value
            return np.ascontiguousarray(value, dtype=np.float32)

        out = []
        for b in range(blocks):
            layers = []
            for conv, norm in ((6 * b, 6 * b + 1), (6 * b + 3, 6 * b + 4)):
                w = arr(f"features.{conv}.weight")
                channels = w.shape[0]
                layers.append((w, min(8, channels), arr(f"features.{norm}.weight"),
                               arr(f"features.{norm}.bias")))
            out.append(tuple(layers))
        return cls(blocks=out, fc_weight=arr("fc.weight"), fc_bias=arr("fc.bias"))

    def logits(self, x_NTHW: np.ndarray) -> np.ndarray:
        x = x_NTHW.astype(np.float32, copy=False)
        for first, second in self.blocks:
            for (w, groups, gw, gb), stride in ((first, 2), (second, 1)):
                x = np.maximum(_group_norm(_conv3x3(x, w, stride), groups, gw, gb), 0.0)
        return x.mean(axis=(2, 3)) @ self.fc_weight.T + self.fc_bias


class PortableViewClassifier:
    """Grey frames ``uint8[T, H, W]`` -> `ViewCall`, as `model.views.ViewClassifier` answers,
    in numpy (module docstring). Built by `model.views.ViewClassifier.portable`; picklable, and
    unpickling it imports no torch."""

    def __init__(self, *, net: PortableViewNet, spec: InputSpec, classes: tuple[str, ...],
                 temperature: float, threshold: float, source: str, version: dict[str, Any]):
        self.net, self.spec, self.classes = net, spec, tuple(classes)
        self.temperature, self.threshold = float(temperature), float(threshold)
        self.source, self.version = source, dict(version)

    def __call__(self, frames_THW: np.ndarray) -> ViewCall:
        return self.classify([frames_THW])[0]

    def inputs(self, frames_THW: np.ndarray) -> np.ndarray:
        """The network input ``float32[T, S, S]`` of one clip (`frames_to_clip`, one channel)."""
        frames = np.asarray(frames_THW)
        if frames.ndim != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8[T, H, W] frames, got {frames.dtype}{frames.shape}")
        spec = self.spec
        picked = _pick(decoder_values(frames), spec, [centre_start(len(frames), spec)])[0]
        h, w = picked.shape[1:]
        if (h, w) != (spec.size, spec.size):
            rows, cols = resize_matrix(h, spec.size), resize_matrix(w, spec.size)
            picked = np.einsum("sh,thw,rw->tsr", rows, picked, cols, optimize=True)
        return _normalise(picked, spec).astype(np.float32)

    def probabilities(self, clips: list[np.ndarray]) -> np.ndarray:
        x = np.stack([self.inputs(c) for c in clips])
        z = self.net.logits(x).astype(np.float64) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def classify(self, clips: list[np.ndarray]) -> list[ViewCall]:
        if not clips:
            return []
        out = []
        for p in self.probabilities(clips):
            k = int(np.argmax(p))
            best, conf = self.classes[k], float(p[k])
            out.append(ViewCall(view=best if conf >= self.threshold else VIEW_UNKNOWN,
                                confidence=conf, best=best))
        return out
