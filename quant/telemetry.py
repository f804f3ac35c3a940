"""Quantization error per layer and operand: SQNR in dB and the fraction of zero-scale blocks.

For an operand x quantized to x_hat (in the domain it is quantized in: after the RHT for a
rotated operand, with the same zero padding of tokens the GEMM sees),

    SQNR = 10 log10( sum x^2 / sum (x - x_hat)^2 )  dB,      x_hat = blocks * a / 2688

(about 6 dB per bit of effective precision; a well-scaled NVFP4 tensor lands near 20 dB), and
the zero-scale fraction is the share of blocks (16x16 tiles for 2D weights) whose E4M3 scale
underflowed to 0, which flushes the whole block to zero. It is read off the decoded blocks: a
block decodes to all zeros exactly when its scale is 0 (with a non-zero scale the block's
largest element lands on code 3 or above, see quant/nvfp4.py), so no codes are needed.

Collection is off by default and costs nothing then (the layers pass no observer). Inside
`with collect(model):`, which installs the observer on the converted layers (quant.modules
calls it and never imports this module), every quantized operand of every converted layer is
measured, forward and backward: a layer's statistics restart at each forward, so after one
training step the report covers that step's FPROP, DGRAD and WGRAD operands (per-tap WGRAD
slices of a convolution add up into one row). Meant for once per epoch, e.g. on one batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from quant.gemm import Observer
from quant.modules import converted_layers, is_quantized
from quant.nvfp4 import FP4_E4M3_MAX

__all__ = ["collect", "quantization_report"]

_STATS = "_quant_stats"


def _start_observing(layer: nn.Module) -> Observer:
    """Installed on a converted layer while collecting (`start_observing`): each forward starts
    a new record on the layer and returns the hook its GEMMs report every operand to."""
    stats: dict[str, dict[str, float]] = {}
    setattr(layer, _STATS, stats)

    def observe(
        slot: str,
        reference: Tensor,
        blocks: Tensor,
        amax: Tensor,
        block,
        tensor_scale: float = FP4_E4M3_MAX,
    ) -> None:
        row = stats.setdefault(slot, {"signal": 0.0, "noise": 0.0, "zero": 0, "blocks": 0})
        _accumulate(row, reference, blocks, amax, tuple(block), tensor_scale)

    return observe


@torch.no_grad()
def _accumulate(
    row: dict, reference: Tensor, blocks: Tensor, amax: Tensor, block, tensor_scale: float
) -> None:
    reference = reference.float()
    per_row = amax[:, None] if amax.dim() == 1 else amax  # a row-scaled operand's amax vector
    dequantized = blocks * (per_row / tensor_scale)
    row["signal"] += float(reference.square().sum())
    row["noise"] += float((reference - dequantized).square().sum())
    rows, cols = blocks.shape[-2:] if blocks.dim() > 1 else (1, blocks.shape[-1])
    tiles = blocks.reshape(-1, block[0], cols // block[1], block[1])
    block_max = tiles.abs().amax(dim=(1, 3))
    row["zero"] += int((block_max == 0).sum())
    row["blocks"] += block_max.numel()


def _enable(model: nn.Module, on: bool = True) -> None:
    """Switch collection on or off for every converted layer of `model`."""
    for module in model.modules():
        if is_quantized(module):
            module.start_observing = _start_observing if on else None


@contextlib.contextmanager
def collect(model: nn.Module) -> Iterator[None]:
    """Measure every quantized operand inside the block; the report keeps the last values."""
    _enable(model, True)
    try:
        yield
    finally:
        _enable(model, False)


def quantization_report(model: nn.Module) -> list[dict]:
    """Rows {layer, operand, sqnr_db, zero_scale_fraction} from the last collected forward
    (and backward) of each converted layer; operand is the slot, e.g. "fprop_input"."""
    rows = []
    for name, layer in converted_layers(model).items():
        for slot, s in getattr(layer, _STATS, {}).items():
            rows.append(
                {
                    "layer": name,
                    "operand": slot,
                    "sqnr_db": _sqnr_db(s["signal"], s["noise"]),
                    "zero_scale_fraction": s["zero"] / s["blocks"] if s["blocks"] else 0.0,
                }
            )
    return rows


def _sqnr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
