"""The GEMMs under TE 2.20's options: E in alpha, vector alpha for row-scaled operands, DGRAD
taking TE's own columnwise copy of a 16x16 4over6 weight, convolutions refusing row scaling."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from quant import functional as qf
from quant import nvfp4
from quant.recipes import Q2_4O6, SLOTS, Operand, Q, Recipe, get_recipe

RS = Operand("quantize", row_scaled=True)
SLOT_NAMES = [f"{gemm}_{role}" for gemm, role in SLOTS]
# Every slot row-scaled; and nvfp4 (every slot Q) with 16x16 4over6 tiles in the weight slots.
ALL_ROW_SCALED = Recipe("rs_all", None, "row-scaled everywhere", **dict.fromkeys(SLOT_NAMES, RS))
FOUR_OVER_SIX_2D = replace(
    get_recipe("nvfp4"),
    name="w4o6_2d",
    paper_id=None,
    display_name="2D 4over6 weights",
    fprop_weight=Q2_4O6,
    dgrad_weight=Q2_4O6,
)


def _close(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to fp32 summation order: scaled before (dequantize) or after (alpha) the GEMM;
    a wrongly oriented alpha would be off by the ratio of two rows' amaxes."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(ours.detach(), expected, rtol=0, atol=2e-6 * scale)


def _dequantized(t: torch.Tensor, op: Operand) -> torch.Tensor:
    """t quantized along its last dim with op's options, then dequantized (TE's formula)."""
    return nvfp4.quantize(t, op.block, **op.quantizer_options()).dequantize()


def test_row_scaled_gemms_use_a_vector_alpha_oriented_per_operand():
    """Every GEMM of a Linear under a recipe that row-scales all six operands equals the product
    of the dequantized operands (each row with its own amax): A's rows are the output's rows,
    B's rows its columns, in FPROP (X, W), DGRAD (dY, W^T) and WGRAD (dY^T, X^T)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(48, 64, generator=gen) * torch.logspace(-2, 2, 48)[:, None]
    w = torch.randn(32, 64, generator=gen) * torch.logspace(1, -1, 32)[:, None]
    dy = torch.randn(48, 32, generator=gen)
    xq, wq = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = qf.linear(xq, wq, recipe=ALL_ROW_SCALED)
    y.backward(dy)

    expected_y = _dequantized(x, RS) @ _dequantized(w, RS).t()
    expected_dx = _dequantized(dy, RS) @ _dequantized(w.t().contiguous(), RS).t()
    expected_dw = _dequantized(dy.t().contiguous(), RS) @ _dequantized(x.t().contiguous(), RS).t()
    # The same products, scaled before (dequantize) or after (alpha) the fp32 GEMM.
    for ours, expected in [(y, expected_y), (xq.grad, expected_dx), (wq.grad, expected_dw)]:
        _close(ours, expected)


def test_four_over_six_alpha_uses_e_256():
    gen = torch.Generator().manual_seed(4)
    x, w = torch.randn(32, 64, generator=gen), torch.randn(16, 64, generator=gen)
    op = Operand("quantize", four_over_six="mse")  # E = 256 by default
    recipe = Recipe("x4o6", None, "x4o6", fprop_input=op, fprop_weight=Q)
    y = qf.linear(x, w, recipe=recipe)
    expected = _dequantized(x, op) @ _dequantized(w, Q).t()
    _close(y, expected)


def test_dgrad_under_16x16_4over6_takes_tes_columnwise_copy(golden_4over6):
    """W = the neartie256 case, whose columnwise 16x16 4over6 copy is not its rowwise copy
    transposed (8 tiles pick the other candidate): DGRAD must multiply TE's columnwise copy."""
    mode = "neartie256_64x128__4o6_2d_mae_g256_exact__"
    w = torch.from_numpy(golden_4over6["neartie256_64x128__input"])  # (N, K) = (64, 128)
    codes_t = torch.from_numpy(golden_4over6[mode + "codes_t"])
    scales_t = torch.from_numpy(golden_4over6[mode + "scales_t"]).repeat_interleave(16, dim=1)
    w_col = nvfp4.decode_e2m1(codes_t) * scales_t  # (K, N): TE's W^T copy, decoded blocks
    w_row = nvfp4.decode_e2m1(torch.from_numpy(golden_4over6[mode + "codes"]))
    w_row = w_row * torch.from_numpy(golden_4over6[mode + "scales"]).repeat_interleave(16, dim=1)
    assert not torch.equal(w_col, w_row.t())

    gen = torch.Generator().manual_seed(5)
    x, dy = torch.randn(32, 128, generator=gen), torch.randn(32, 64, generator=gen)
    xq = x.clone().requires_grad_()
    qf.linear(xq, w, recipe=FOUR_OVER_SIX_2D).backward(dy)

    dy_hat, dy_amax = nvfp4.fake_quantize(dy)
    amax_t = float(golden_4over6[mode + "amax_t"][0])
    expected = (dy_hat @ w_col.t()) * (dy_amax * amax_t / (2688.0 * 1536.0))
    transposed_rowwise = (dy_hat @ w_row) * (dy_amax * amax_t / (2688.0 * 1536.0))
    torch.testing.assert_close(xq.grad, expected, rtol=0, atol=0)
    assert not torch.equal(xq.grad, transposed_rowwise)


@pytest.mark.parametrize("fn", ["conv2d", "conv_transpose2d"])
def test_convolutions_refuse_row_scaled_operands(fn):
    x = torch.randn(2, 16, 8, 8)
    w = torch.randn(16, 16, 3, 3)
    with pytest.raises(NotImplementedError, match="row-scales fprop_input, fprop_weight.*Linear"):
        getattr(qf, fn)(x, w, recipe=ALL_ROW_SCALED)


def test_goldens_neartie_case_is_a_real_columnwise_difference(golden_4over6):
    """The premise of the DGRAD test: the stored decisions differ for some tile."""
    mode = "neartie256_64x128__4o6_2d_mae_g256_exact__"
    rows = golden_4over6[mode + "scales"][::16]
    cols = golden_4over6[mode + "scales_t"][::16]
    assert not np.array_equal(rows, cols.T)
