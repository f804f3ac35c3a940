"""Parameter counts of every registry entry, pinned like a golden table.

The 500k / 4m / 15m counts are the paper's (docs/study.md, "Models"): a faithful build of the
architecture it describes hits them exactly. Models are built on the meta device (shapes only),
so the 15m presets cost nothing here.
"""

import pytest
import torch
from torch import nn

from models import build_model, count_parameters, count_quantized_parameters, list_archs
from models.layers import gemm_layers, quantized_layers
from quant.nvfp4 import BLOCK

PAPER_PARAMS = {
    ("cnn", "500k"): 530_753,
    ("cnn", "4m"): 3_684_481,
    ("cnn", "15m"): 13_674_529,
    ("vit", "500k"): 494_473,
    ("vit", "4m"): 3_634_921,
    ("vit", "15m"): 13_880_777,
    ("swin", "500k"): 496_305,
    ("swin", "4m"): 3_646_687,
    ("swin", "15m"): 13_987_513,
}
# Weights of the quantized GEMM layers (no biases); hand-derived from the layer shapes below.
PAPER_QUANTIZED_PARAMS = {
    # CNN: (S-2) C->C convs + 1 C->C transposed conv + (S-2) 2C->C transposed convs, 4x4 kernels
    ("cnn", "500k"): 16 * 64 * 64 * (2 + 1 + 2 * 2),
    ("cnn", "4m"): 16 * 128 * 128 * (4 + 1 + 2 * 4),
    ("cnn", "15m"): 16 * 224 * 224 * (5 + 1 + 2 * 5),
    # ViT / Swin: depth x (qkv 3D^2 + proj D^2 + fc1, fc2 2 r D^2)
    ("vit", "500k"): 10 * (4 + 2 * 3) * 64 * 64,
    ("vit", "4m"): 9 * (4 + 2 * 3) * 192 * 192,
    ("vit", "15m"): 8 * (4 + 2 * 2) * 448 * 448,
    ("swin", "500k"): 10 * (4 + 2 * 3) * 64 * 64,
    ("swin", "4m"): 9 * (4 + 2 * 3) * 192 * 192,
    ("swin", "15m"): 8 * (4 + 2 * 2) * 448 * 448,
}
ALL_ENTRIES = [*PAPER_PARAMS, *((arch, "tiny") for arch in list_archs())]


def meta_model(arch: str, scale: str, **overrides) -> nn.Module:
    with torch.device("meta"):
        return build_model(arch, scale, **overrides)


@pytest.mark.parametrize(("arch", "scale"), list(PAPER_PARAMS))
def test_paper_parameter_count_is_exact(arch, scale):
    assert count_parameters(meta_model(arch, scale)) == PAPER_PARAMS[(arch, scale)]


@pytest.mark.parametrize(("arch", "scale"), list(PAPER_QUANTIZED_PARAMS))
def test_quantized_parameter_count(arch, scale):
    model = meta_model(arch, scale)
    assert count_quantized_parameters(model) == PAPER_QUANTIZED_PARAMS[(arch, scale)]


@pytest.mark.parametrize("arch", list_archs())
def test_tiny_preset_is_well_under_100k(arch):
    assert count_parameters(meta_model(arch, "tiny")) < 60_000


@pytest.mark.parametrize("flag", [True, False])
def test_swin_shift_option_changes_no_parameter(flag):
    model = meta_model("swin", "15m", shift_when_window_covers_grid=flag)
    assert count_parameters(model) == PAPER_PARAMS[("swin", "15m")]


def test_img_size_only_resizes_position_tables():
    # 512 px -> 32x32 tokens: (1024 - 256) more position rows, nothing else changes.
    d = 64
    assert count_parameters(meta_model("vit", "500k", img_size=512)) == 494_473 + 768 * d
    assert count_parameters(meta_model("swin", "500k", img_size=512)) == 496_305 + 768 * d
    assert count_parameters(meta_model("cnn", "500k", img_size=512)) == 530_753


@pytest.mark.parametrize(("arch", "scale"), ALL_ENTRIES)
def test_quantized_layers_tile_into_nvfp4_blocks(arch, scale):
    """Every quantized GEMM layer's input and output widths are multiples of 16."""
    layers = quantized_layers(meta_model(arch, scale))
    assert layers
    for name, layer in layers.items():
        if isinstance(layer, nn.Linear):
            dims = (layer.in_features, layer.out_features)
        else:
            dims = (layer.in_channels, layer.out_channels)
        assert all(d % BLOCK == 0 for d in dims), (name, dims)


@pytest.mark.parametrize(("arch", "scale"), ALL_ENTRIES)
def test_full_precision_layers_are_the_papers(arch, scale):
    model = meta_model(arch, scale)
    keep = model.full_precision_layers()
    assert keep <= set(gemm_layers(model)), "full_precision_layers names a non-GEMM module"
    if arch == "cnn":
        last = model.config.stages - 1
        assert keep == {"encoder.0.conv", f"encoder.{last}.conv", f"decoder.{last}.conv"}
        assert isinstance(dict(model.named_modules())[f"decoder.{last}.conv"], nn.ConvTranspose2d)
    else:
        depth = model.config.depth
        expected = {
            f"blocks.{i}.{leaf}"
            for i in range(depth)
            for leaf in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
        }
        assert set(quantized_layers(model)) == expected
        assert keep == {"patch_embed.proj", "decoder.head"} | {
            f"decoder.stages.{i}.up" for i in range(4)
        }
