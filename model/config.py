"""The network's shape (`ModelConfig`): the part of a training config that a trained model keeps.

`train.config.TrainConfig` holds it as ``model``; the checkpoint and the artifact store it as a
dict (`model.artifact`), so a model can be rebuilt without the rest of the training recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from echocmr.config import ConfigError


@dataclass(kw_only=True)
class ModelConfig:
    """R(2+1)D shape. Defaults are torchvision's ``r2plus1d_18`` (33 M parameters)."""

    width: int = 64  # channels of layer1 (layer2..4: 2x, 4x, 8x); torchvision: 64
    layers: tuple[int, ...] = (2, 2, 2, 2)  # BasicBlocks per stage; torchvision: 2,2,2,2
    in_channels: int = 1  # grey echo; 3-channel published weights are summed into 1 on load
    init: str | None = None  # a published state dict file (Kinetics / EchoNet) to start from

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        if self.width < 1:
            raise ConfigError(f"model.width must be >= 1, got {self.width}")
        if len(self.layers) != 4 or any(n < 1 for n in self.layers):
            raise ConfigError(f"model.layers must be four counts >= 1, got {self.layers}")
        if self.in_channels not in (1, 3):
            raise ConfigError(f"model.in_channels must be 1 (grey) or 3, got {self.in_channels}")
