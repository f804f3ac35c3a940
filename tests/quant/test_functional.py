"""quant.functional.linear: each recipe's three GEMMs, checked against explicit references.

References are written with `nvfp4.fake_quantize` directly: quantize each operand along the
GEMM's contraction dim (transposing so it is the last dim), multiply in fp32, scale by alpha.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quant import functional as qf
from quant import nvfp4
from quant.recipes import list_recipes

ALPHA = 2688.0 * 2688.0


def fq(t, *, block=(1, 16), rht=False, rounding="nearest", generator=None):
    return nvfp4.fake_quantize(t, block=block, rht=rht, rounding=rounding, generator=generator)


def gemm(a, b):
    """NVFP4 GEMM a @ b^T of two (values, amax) operands, contraction along their last dims."""
    return (a[0] @ b[0].T) * ((a[1] * b[1]) / ALPHA)


def run(recipe, x, w, dy, bias=None, generator=None):
    """(y, dx, dw, db) of quant.functional.linear under `recipe` for upstream gradient dy."""
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = None if bias is None else bias.detach().clone().requires_grad_()
    y = qf.linear(x, w, b, recipe=recipe, generator=generator)
    y.backward(dy)
    return y.detach(), x.grad, w.grad, None if b is None else b.grad


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(48, 64, generator=g)
    w = torch.randn(32, 64, generator=g) * 0.1
    dy = torch.randn(48, 32, generator=g) * 1e-3
    return x, w, dy


def close(actual, expected, rtol=1e-5):
    """Equal up to fp32 summation order: rtol relative to the tensor's magnitude."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


# --------------------------------------------------------------------------- golden vectors


def test_2d_rht_reproduces_transformer_engine_gemms(golden):
    """The three GEMMs of one Linear under 2d_rht equal TE's reference (golden gemm__*)."""
    x = torch.from_numpy(golden["gemm__X_bf16"])
    w = torch.from_numpy(golden["gemm__W_bf16"])
    dy = torch.from_numpy(golden["gemm__DY_bf16"])
    y, dx, dw, _ = run("2d_rht", x, w, dy)
    close(y, torch.from_numpy(golden["gemm__fprop_Y"]))
    close(dx, torch.from_numpy(golden["gemm__dgrad_DX"]))
    close(dw, torch.from_numpy(golden["gemm__wgrad_DW"]))


# --------------------------------------------------------------------------- recipe by recipe


def test_baseline_is_bitwise_nn_linear(tensors):
    x, w, dy = tensors
    bias = torch.randn(32)
    layer = torch.nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(bias)
    xr = x.clone().requires_grad_()
    yr = layer(xr)
    yr.backward(dy)
    y, dx, dw, db = run("baseline", x, w, dy, bias)
    assert torch.equal(y, yr) and torch.equal(dx, xr.grad)
    assert torch.equal(dw, layer.weight.grad) and torch.equal(db, layer.bias.grad)


def test_nvfp4_requantizes_every_operand_along_each_contraction(tensors):
    x, w, dy = tensors
    y, dx, dw, _ = run("nvfp4", x, w, dy)
    close(y, gemm(fq(x), fq(w)))
    close(dx, gemm(fq(dy), fq(w.T.contiguous())))  # contract N: W^T blocked along N
    close(dw, gemm(fq(dy.T.contiguous()), fq(x.T.contiguous())))  # contract M


def test_fwd_only_gradients_are_the_high_precision_backward(tensors):
    """Straight-through: the backward of the quantized forward, with the original X and W."""
    x, w, dy = tensors
    y, dx, dw, _ = run("fwd_only", x, w, dy)
    close(y, gemm(fq(x), fq(w)))
    close(dx, dy @ w, rtol=1e-6)
    close(dw, dy.T @ x, rtol=1e-6)


def test_chain_rule_backward_uses_the_forward_quantized_tensors(tensors):
    """HP dY times exactly the forward's Q(W) (blocks along K) and Q(X)."""
    x, w, dy = tensors
    _, dx, dw, _ = run("chain_rule", x, w, dy)
    (wb, wa), (xb, xa) = fq(w), fq(x)
    close(dx, (dy @ wb) * (wa / 2688.0), rtol=1e-6)
    close(dw, (dy.T @ xb) * (xa / 2688.0), rtol=1e-6)
    # ... which is the backward through the dequantized forward tensors, not through X, W
    assert not torch.allclose(dx, dy @ w, rtol=1e-3)


def test_2d_rht_uses_tiles_and_rotates_wgrad(tensors):
    x, w, dy = tensors
    y, dx, dw, _ = run("2d_rht", x, w, dy)
    w2 = fq(w, block=(16, 16))
    close(y, gemm(fq(x), w2))
    close(dx, gemm(fq(dy), (w2[0].T, w2[1])))  # the same tiles, transposed
    close(dw, gemm(fq(dy.T.contiguous(), rht=True), fq(x.T.contiguous(), rht=True)))


def test_fwd_rht_rotates_the_forward_only(tensors):
    x, w, dy = tensors
    y, dx, dw, _ = run("fwd_rht", x, w, dy)
    y_plain, *_ = run("fwd_only", x, w, dy)
    close(y, gemm(fq(x, rht=True), fq(w, rht=True)))
    assert not torch.allclose(y, y_plain)
    # ... and the rotation cancels: the forward still approximates X W^T
    close(y, x @ w.T, rtol=0.2)
    close(dx, dy @ w, rtol=1e-6)
    close(dw, dy.T @ x, rtol=1e-6)


@pytest.mark.parametrize(("sr", "rtn"), [("sr_only", "nvfp4"), ("2d_rht_sr", "2d_rht")])
def test_stochastic_rounding_is_seeded_and_only_on_gradients(tensors, sr, rtn):
    x, w, dy = tensors
    a = run(sr, x, w, dy, generator=torch.Generator().manual_seed(7))
    b = run(sr, x, w, dy, generator=torch.Generator().manual_seed(7))
    c = run(sr, x, w, dy, generator=torch.Generator().manual_seed(8))
    nearest = run(rtn, x, w, dy)
    assert all(torch.equal(p, q) for p, q in zip(a[:3], b[:3], strict=True))
    assert not torch.equal(a[1], c[1]) and not torch.equal(a[2], c[2])
    assert torch.equal(a[0], nearest[0])  # the forward never rounds stochastically
    assert not torch.equal(a[1], nearest[1])


def test_sr_only_matches_an_explicit_reference(tensors):
    """SR draws come from the generator in a fixed order: DGRAD's dY, then WGRAD's dY^T."""
    x, w, dy = tensors
    _, dx, dw, _ = run("sr_only", x, w, dy, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    dy_dgrad = fq(dy, rounding="stochastic", generator=g)
    dy_wgrad = fq(dy.T.contiguous(), rounding="stochastic", generator=g)
    close(dx, gemm(dy_dgrad, fq(w.T.contiguous())))
    close(dw, gemm(dy_wgrad, fq(x.T.contiguous())))


def test_token_count_not_a_multiple_of_16_is_zero_padded_in_wgrad():
    g = torch.Generator().manual_seed(0)
    x, w, dy = (
        torch.randn(20, 32, generator=g),
        torch.randn(16, 32, generator=g),
        torch.randn(20, 16),
    )
    _, _, dw, _ = run("2d_rht", x, w, dy)
    pad = (0, 0, 0, 12)
    xp, dyp = F.pad(x, pad), F.pad(dy, pad)
    close(dw, gemm(fq(dyp.T.contiguous(), rht=True), fq(xp.T.contiguous(), rht=True)))


def test_leading_dims_and_bias(tensors):
    x, w, dy = tensors
    bias = torch.randn(32)
    y3, dx3, dw3, db3 = run("nvfp4", x.view(3, 16, 64), w, dy.view(3, 16, 32), bias)
    y2, dx2, dw2, db2 = run("nvfp4", x, w, dy, bias)
    assert y3.shape == (3, 16, 32) and dx3.shape == (3, 16, 64)
    assert torch.equal(y3.view(48, 32), y2) and torch.equal(dw3, dw2)
    torch.testing.assert_close(db3, dy.sum(0))


@pytest.mark.parametrize("recipe", list_recipes())
def test_bf16_inputs_give_bf16_outputs_and_finite_grads(tensors, recipe):
    x, w, dy = (t.to(torch.bfloat16) for t in tensors)
    y, dx, dw, db = run(recipe, x, w, dy, torch.zeros(32, dtype=torch.bfloat16), torch.Generator())
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == torch.bfloat16
    assert all(torch.isfinite(t).all() for t in (y, dx, dw, db))


def test_cpu_autocast_casts_like_f_linear(tensors):
    x, w, dy = tensors
    x = x.requires_grad_()
    w = w.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = qf.linear(x, w, recipe="nvfp4")
        reference = F.linear(x, w)
    assert y.dtype == reference.dtype == torch.bfloat16
    y.float().backward(dy)
    assert x.grad.dtype == w.grad.dtype == torch.float32
    # quantization saw the bf16-rounded operands
    expected = gemm(fq(x.detach().bfloat16()), fq(w.detach().bfloat16())).bfloat16()
    assert torch.equal(y, expected)


def test_errors_name_the_dimension_and_the_fix(tensors):
    x, w, _ = tensors
    with pytest.raises(ValueError, match=r"proj: in_features = 40 is not a multiple of 16"):
        qf.linear(torch.randn(4, 40), torch.randn(32, 40), recipe="nvfp4", name="proj")
    with pytest.raises(ValueError, match="out_features = 10.*full_precision_layers"):
        qf.linear(x, torch.randn(10, 64), recipe="fwd_only")
    with pytest.raises(ValueError, match="stochastic rounding and needs generator"):
        qf.linear(x, w, recipe="2d_rht_sr")
    with pytest.raises(ValueError, match="unknown recipe"):
        qf.linear(x, w, recipe="fp8")
    # the baseline is the plain op: any shape goes
    assert qf.linear(torch.randn(4, 40), torch.randn(10, 40), recipe="baseline").shape == (4, 10)
