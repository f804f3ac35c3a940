"""quant.telemetry: SQNR and zero-scale fractions per layer and operand, only when enabled."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import quant
from quant import nvfp4
from quant.telemetry import collect, quantization_report


def model_and_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    return model, torch.randn(48, 32, requires_grad=True)


def sqnr_db(x, x_hat):
    return 10 * math.log10(float(x.square().sum()) / float((x - x_hat).square().sum()))


def test_nothing_is_recorded_unless_enabled():
    model, x = model_and_input()
    quant.prepare(model, "nvfp4")
    model(x).sum().backward()
    assert quantization_report(model) == []


def test_report_rows_cover_every_quantized_operand_of_a_step():
    model, x = model_and_input()
    quant.prepare(model, "2d_rht_sr", generator=torch.Generator().manual_seed(0))
    with collect(model):
        model(x).square().mean().backward()
    rows = quantization_report(model)
    assert {(r["layer"], r["operand"]) for r in rows} == {
        (layer, f"{gemm}_{role}")
        for layer in ("0", "2")
        for gemm, role in [
            ("fprop", "input"),
            ("fprop", "weight"),
            ("dgrad", "grad_output"),
            ("wgrad", "grad_output"),
            ("wgrad", "input"),
        ]
    }
    for row in rows:
        assert set(row) == {"layer", "operand", "sqnr_db", "zero_scale_fraction"}
        assert 10 < row["sqnr_db"] < 40 and 0 <= row["zero_scale_fraction"] <= 1
    # after the context, collection is off again but the last values are kept
    model(x).sum().backward()
    assert len(quantization_report(model)) == len(rows)


def test_values_match_an_independent_computation():
    model, x = model_and_input()
    quant.prepare(model, "nvfp4")
    with collect(model):
        model(x)
    by_operand = {(r["layer"], r["operand"]): r for r in quantization_report(model)}
    q = nvfp4.quantize(x.detach())
    assert by_operand[("0", "fprop_input")]["sqnr_db"] == pytest.approx(
        sqnr_db(x.detach(), q.dequantize()), rel=1e-4
    )
    w = model[2].weight.detach()
    assert by_operand[("2", "fprop_weight")]["sqnr_db"] == pytest.approx(
        sqnr_db(w, nvfp4.quantize(w).dequantize()), rel=1e-4
    )


def test_zero_scale_fraction_counts_underflowed_blocks():
    """Rows 1e-12 x smaller than one outlier underflow the E4M3 scale: their blocks are lost."""
    layer = nn.Linear(32, 16)
    quant.prepare(layer, "nvfp4")
    x = torch.randn(16, 32)
    x[1:] *= 1e-12
    x[0, 0] = 1e4
    with collect(layer):
        layer(x)
    (row,) = [r for r in quantization_report(layer) if r["operand"] == "fprop_input"]
    expected = float((nvfp4.quantize(x).scales == 0).float().mean())
    assert row["zero_scale_fraction"] == pytest.approx(expected) and expected > 0.9


def test_conv_tapped_wgrad_slices_add_up_to_one_row():
    conv = nn.Conv2d(16, 16, 4, stride=2, padding=1)
    quant.prepare(conv, "2d_rht")
    with collect(conv):
        conv(torch.randn(2, 16, 32, 32)).square().sum().backward()
    rows = {r["operand"]: r for r in quantization_report(conv)}
    assert set(rows) == {"fprop_input", "fprop_weight", "wgrad_grad_output", "wgrad_input"}
    assert 10 < rows["wgrad_input"]["sqnr_db"] < 40
