"""`sweep list models [--json]`: every registry entry with its parameter counts.

JSON: a list of rows ``{"arch", "scale", "params", "quantized_params"}``, one per (arch, scale) of
the registry in registry order, where

- ``params`` is the number of scalar parameters (``models.count_parameters``);
- ``quantized_params`` is the number of weight values a recipe quantizes to NVFP4: the weights
  (not biases) of every Linear / Conv2d / ConvTranspose2d not listed in the model's
  ``full_precision_layers()`` (``models.count_quantized_parameters``).

Models are built on the meta device: shapes only, no memory and no init cost, so listing the 15m
presets is instant.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from models import (
    build_model,
    count_parameters,
    count_quantized_parameters,
    list_archs,
    list_scales,
)


def model_rows() -> list[dict[str, Any]]:
    """One row per (arch, scale) in the registry."""
    rows = []
    for arch in list_archs():
        for scale in list_scales(arch):
            with torch.device("meta"):
                model = build_model(arch, scale)
            rows.append(
                {
                    "arch": arch,
                    "scale": scale,
                    "params": count_parameters(model),
                    "quantized_params": count_quantized_parameters(model),
                }
            )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table; counts with thousands separators and the quantized share."""
    header = ("arch", "scale", "params", "quantized", "share")
    cells = [
        (
            r["arch"],
            r["scale"],
            f"{r['params']:,}",
            f"{r['quantized_params']:,}",
            f"{100 * r['quantized_params'] / r['params']:.1f}%",
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]

    def line(cols: tuple[str, ...]) -> str:
        # text columns left-aligned, numbers right-aligned
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        )

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, cells)])


def main(args: argparse.Namespace) -> int:
    rows = model_rows()
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0
