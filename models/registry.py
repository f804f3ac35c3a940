"""The model registry: architectures x scale presets, the presets kept as data.

``PRESETS[arch][scale]`` holds the config fields that define a scale; everything else comes from
the arch's config dataclass defaults (dropout rates, img_size 256, ...). ``build_model`` merges
``overrides`` on top, validates through the config dataclass, and builds the model.

Scales 500k / 4m / 15m are the paper's (docs/study.md, "Models"); their parameter counts are pinned
by tests/models/test_param_counts.py. ``tiny`` is ours: a preset per arch well under 100k parameters
that runs at 64x64 so tests and the CPU quickstart are fast. Its widths are multiples of 16 like
the paper's, so every quantized layer tiles into NVFP4 blocks, and its transformer heads are 16
wide like the 500k Swin's.

The sweep's two ViT variants (vit_adamw, vit_adamax) differ only in the optimizer and both build
``arch="vit"`` here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from models.cnn import CNN, CNNConfig
from models.swin import Swin, SwinConfig
from models.vit import ViT, ViTConfig

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cnn": {
        "tiny": {"stages": 4, "channels": 16, "img_size": 64},
        "500k": {"stages": 4, "channels": 64},
        "4m": {"stages": 6, "channels": 128},
        "15m": {"stages": 7, "channels": 224},
    },
    "vit": {
        "tiny": {"dim": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0, "img_size": 64},
        "500k": {"dim": 64, "depth": 10, "heads": 2, "mlp_ratio": 3.0},
        "4m": {"dim": 192, "depth": 9, "heads": 6, "mlp_ratio": 3.0},
        "15m": {"dim": 448, "depth": 8, "heads": 14, "mlp_ratio": 2.0},
    },
    "swin": {
        "tiny": {"dim": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0, "window": 2, "img_size": 64},
        "500k": {"dim": 64, "depth": 10, "heads": 4, "mlp_ratio": 3.0, "window": 4},
        "4m": {"dim": 192, "depth": 9, "heads": 6, "mlp_ratio": 3.0, "window": 8},
        "15m": {"dim": 448, "depth": 8, "heads": 14, "mlp_ratio": 2.0, "window": 16},
    },
}


@dataclass(frozen=True)
class Arch:
    config: type
    build: Callable[[Any], nn.Module]


ARCHS: dict[str, Arch] = {
    "cnn": Arch(CNNConfig, CNN),
    "vit": Arch(ViTConfig, ViT),
    "swin": Arch(SwinConfig, Swin),
}


def list_archs() -> list[str]:
    """Architectures the registry builds: cnn, vit, swin."""
    return list(ARCHS)


def list_scales(arch: str) -> list[str]:
    """Scale presets of `arch`, smallest first (tiny, 500k, 4m, 15m)."""
    return list(PRESETS[_check_arch(arch)])


def all_scales() -> list[str]:
    """Every scale preset of any arch, smallest first (each arch has the same ones today)."""
    return list(dict.fromkeys(scale for presets in PRESETS.values() for scale in presets))


def get_config(arch: str, scale: str, **overrides: Any):
    """The validated, frozen config of (arch, scale) with `overrides` applied."""
    spec = ARCHS[_check_arch(arch)]
    if scale not in PRESETS[arch]:
        raise ValueError(
            f"unknown scale {scale!r} for arch {arch!r}; valid scales: {list_scales(arch)}"
        )
    fields = [f.name for f in dataclasses.fields(spec.config)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown} for arch {arch!r}; valid overrides: {fields}"
        )
    return spec.config(**{**PRESETS[arch][scale], **overrides})


def build_model(arch: str, scale: str, **overrides: Any) -> nn.Module:
    """Build the (arch, scale) model, e.g. ``build_model("swin", "4m", img_size=512)``.

    Weights are initialized from torch's global RNG: seed it first for reproducible weights. Build
    under ``with torch.device("meta"):`` to inspect shapes and counts without allocating.
    """
    return ARCHS[_check_arch(arch)].build(get_config(arch, scale, **overrides))


@functools.cache
def quantized_layer_kinds(arch: str) -> frozenset[str]:
    """{"linear", "conv"}: the kinds of layer a recipe quantizes in `arch` (any scale)."""
    from models.layers import quantized_layers

    model = build_model(arch, list_scales(arch)[0])
    return frozenset(
        "linear" if isinstance(m, nn.Linear) else "conv" for m in quantized_layers(model).values()
    )


def _check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {list_archs()}")
    return arch
