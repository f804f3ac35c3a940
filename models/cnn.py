"""The paper's CNN: a U-Net-like encoder/decoder with the same width C at every stage.

Encoder (S stages). Stage i halves the resolution::

    Conv2d(k=4, s=2, p=1)  (3 -> C for i = 0, else C -> C)
    BatchNorm2d -> LeakyReLU(0.2) for i = 0, ReLU otherwise -> Dropout(0.5)

The outputs of stages 0..S-2 are the skip connections (taken after dropout); stage S-1 is the
bottleneck, at H / 2**S.

Decoder (S steps). Step i doubles the resolution with ConvTranspose2d(k=4, s=2, p=1):
C -> C for i = 0, 2C -> C in between (its input is [decoder, skip] concatenated), 2C -> 1 for the
last step, which produces the logits at full resolution. Every step but the last continues with
BatchNorm2d -> ReLU -> concat with skip S-2-i -> Dropout(0.5).

Parameter count, from the shapes above (a k x k conv holds cin*cout*k*k weights + cout biases;
BatchNorm holds 2C)::

    encoder  (3*16*C + C) + (S-1) * (16*C*C + C) + S * 2C
    decoder  (16*C*C + C + 2C) + (S-2) * (16*2C*C + C + 2C) + (16*2C + 1)

which gives the paper's 530,753 (S=4, C=64), 3,684,481 (6, 128) and 13,674,529 (7, 224).

Full precision (docs/study.md): the first encoder conv (3 input channels: too few for a 16-wide
NVFP4 block, and the raw pixels matter most), the bottleneck conv and the last decoder layer (it
makes the logits). Every other conv / transposed conv is quantized, and since C is a multiple of 16
their contraction dimensions tile into NVFP4 blocks exactly.

Init: Kaiming normal (fan-in, ReLU gain) for every conv and transposed-conv weight, zero biases,
BatchNorm weight 1 and bias 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.layers import SegmentationModel, full_precision_head, require_int, require_rate
from quant.nvfp4 import BLOCK


@dataclass(frozen=True)
class CNNConfig:
    """Hyperparameters of the CNN. `img_size` is the intended input side (checked, not stored)."""

    stages: int = 4
    channels: int = 64
    dropout: float = 0.5
    negative_slope: float = 0.2
    img_size: int = 256

    def __post_init__(self) -> None:
        require_int("CNNConfig", "stages", self.stages, minimum=2)
        require_int("CNNConfig", "channels", self.channels, multiple=BLOCK)
        require_rate("CNNConfig", "dropout", self.dropout)
        if not isinstance(self.negative_slope, int | float) or self.negative_slope < 0:
            raise ValueError(f"CNNConfig.negative_slope must be >= 0, got {self.negative_slope!r}")
        require_int("CNNConfig", "img_size", self.img_size, multiple=2**self.stages)


class EncoderStage(nn.Module):
    """Conv2d 4x4 stride 2 -> BatchNorm -> LeakyReLU(first) / ReLU -> Dropout."""

    def __init__(self, cin: int, cout: int, *, first: bool, cfg: CNNConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=4, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(cout)
        self.act = nn.LeakyReLU(cfg.negative_slope) if first else nn.ReLU()
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.norm(self.conv(x))))


class DecoderStage(nn.Module):
    """ConvTranspose2d 4x4 stride 2; unless last: BatchNorm -> ReLU -> concat skip -> Dropout."""

    def __init__(self, cin: int, cout: int, *, last: bool, cfg: CNNConfig) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1)
        self.last = last
        if not last:
            self.norm = nn.BatchNorm2d(cout)
            self.act = nn.ReLU()
            self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if self.last:  # the output layer: float32 logits even under autocast
            return full_precision_head(self.conv, x)
        x = self.conv(x)
        return self.drop(torch.cat([self.act(self.norm(x)), skip], dim=1))


class CNN(SegmentationModel):
    """U-Net-like CNN of `cfg.stages` stride-2 stages at constant width `cfg.channels`."""

    arch = "cnn"

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.config = cfg
        s, c = cfg.stages, cfg.channels
        self.input_multiple = 2**s
        self.input_rule = f"{s} stride-2 stages divide the input by 2**{s}"
        self.encoder = nn.ModuleList(
            EncoderStage(3 if i == 0 else c, c, first=i == 0, cfg=cfg) for i in range(s)
        )
        self.decoder = nn.ModuleList(
            DecoderStage(c if i == 0 else 2 * c, 1 if i == s - 1 else c, last=i == s - 1, cfg=cfg)
            for i in range(s)
        )
        self.apply(_init_weights)

    def full_precision_layers(self) -> set[str]:
        last = self.config.stages - 1
        return {"encoder.0.conv", f"encoder.{last}.conv", f"decoder.{last}.conv"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        skips = skips[:-1]  # the bottleneck output is not a skip
        for stage in self.decoder:
            x = stage(x, skips.pop() if skips else None)
        return x


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        if not module.weight.is_meta:  # meta: shapes only (and normal_ there is slow to load)
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
