"""Quantized Conv2d / ConvTranspose2d against "unfold -> quantized Linear GEMMs -> fold".

The reference builds the explicit implicit-GEMM view of docs/nvfp4.md section 4 on small inputs: the
channels-last im2col A (tokens x K, K ordered (kh, kw, cin)) and the weight matrix, runs them
through quant.functional.linear (whose GEMMs test_functional.py checks) and folds back; torch's
autograd through unfold/fold then gives the reference gradients. The fast path never builds A.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quant import functional as qf
from quant.recipes import get_recipe, list_recipes

DETERMINISTIC = [r for r in list_recipes() if not get_recipe(r).stochastic]

# (B, Cin, Cout, H, W, kernel, stride, padding, dilation, output_padding)
CONV_CASES = {
    "k4s2p1": (2, 32, 16, 8, 8, 4, 2, 1, 1, 0),  # the CNN's layers
    "k3s1p1": (1, 16, 32, 6, 6, 3, 1, 1, 1, 0),  # 36 tokens: WGRAD pads to 48
    "k1s2": (2, 16, 16, 6, 6, 1, 2, 0, 1, 0),  # odd rows/cols never read
    "dilated": (1, 16, 16, 9, 9, 3, 1, 2, 2, 0),
    "patch": (2, 16, 32, 8, 8, 4, 4, 0, 1, 0),  # ViT-style patch embedding
    # Wo a multiple of 16: kernel taps share token blocks (quant.conv._Slab)
    "k4s2p1_wide": (1, 16, 16, 32, 32, 4, 2, 1, 1, 0),
    "k3s1p1_wide": (1, 16, 16, 16, 16, 3, 1, 1, 1, 0),
    "k3s2p1_wide": (1, 16, 16, 31, 32, 3, 2, 1, 1, 0),  # classes of unequal size
    # a slab's taps start 2 rows apart: its weight gradient runs with row dilation 2
    "dilated_wide": (1, 16, 16, 16, 16, 3, 1, 2, 2, 0),
    "k3s2d2_wide": (2, 16, 16, 32, 32, 3, 2, 2, 2, 0),  # dilation = stride: taps 1 row apart
}
CONVT_CASES = {
    "k4s2p1": (2, 32, 16, 4, 4, 4, 2, 1, 1, 0),
    "k2s2": (2, 16, 32, 3, 3, 2, 2, 0, 1, 0),  # the ViT decoder's layers; 18 tokens
    "k3s2p1op1": (1, 16, 16, 5, 5, 3, 2, 1, 1, 1),  # output padding: unread rows of dY
    "k4s2p1_wide": (1, 16, 16, 8, 16, 4, 2, 1, 1, 0),
}


def _cols_to_tokens(cols, cin, taps):
    """unfold's (B, Cin*kh*kw, L), ordered (cin, kh, kw), -> (B*L, K) ordered (kh, kw, cin)."""
    b, _, length = cols.shape
    return cols.view(b, cin, taps, length).permute(0, 3, 2, 1).reshape(b * length, taps * cin)


def _tokens_to_cols(tokens, b, cout, taps):
    """Inverse of _cols_to_tokens for fold's input."""
    length = tokens.shape[0] // b
    return tokens.view(b, length, taps, cout).permute(0, 3, 2, 1).reshape(b, cout * taps, length)


def conv2d_reference(x, w, recipe, stride, padding, dilation):
    b, cin, h, wd = x.shape
    cout, _, kh, kw = w.shape
    geo = {"dilation": dilation, "padding": padding, "stride": stride}
    a = _cols_to_tokens(F.unfold(x, (kh, kw), **geo), cin, kh * kw)
    w_mat = w.permute(0, 2, 3, 1).reshape(cout, kh * kw * cin)
    y = qf.linear(a, w_mat, recipe=recipe)  # (tokens, Cout)
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    return y.view(b, ho, wo, cout).permute(0, 3, 1, 2)


def conv_transpose2d_reference(x, w, recipe, stride, padding, dilation, output_padding):
    """Y = fold(X @ W_mat): the GEMM contracts Cin; its output columns are (kh, kw, cout)."""
    b, cin, h, wd = x.shape
    _, cout, kh, kw = w.shape
    tokens = x.permute(0, 2, 3, 1).reshape(-1, cin)
    w_lin = w.permute(2, 3, 1, 0).reshape(kh * kw * cout, cin)  # (N = (kh, kw, cout), K = cin)
    cols = _tokens_to_cols(qf.linear(tokens, w_lin, recipe=recipe), b, cout, kh * kw)
    out = [
        (n - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1
        for n, k in ((h, kh), (wd, kw))
    ]
    return F.fold(cols, out, (kh, kw), dilation=dilation, padding=padding, stride=stride)


def _grads(fn, x, w, dy_seed=5):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    y = fn(x, w)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed)) * 1e-2
    y.backward(dy)
    return y.detach(), x.grad, w.grad


def _inputs(b, cin, cout, h, wd, k, weight_shape):
    g = torch.Generator().manual_seed(hash((b, cin, cout, h, k)) % 2**31)
    return torch.randn(b, cin, h, wd, generator=g), torch.randn(weight_shape, generator=g) * 0.1


def close(actual, expected, rtol=1e-5):
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("recipe", DETERMINISTIC)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_matches_unfold_linear_fold(case, recipe):
    b, cin, cout, h, wd, k, s, p, d, _ = CONV_CASES[case]
    x, w = _inputs(b, cin, cout, h, wd, k, (cout, cin, k, k))
    ours = _grads(lambda x, w: qf.conv2d(x, w, None, s, p, d, recipe=recipe), x, w)
    ref = _grads(lambda x, w: conv2d_reference(x, w, recipe, s, p, d), x, w)
    for actual, expected in zip(ours, ref, strict=True):
        close(actual, expected)


@pytest.mark.parametrize("recipe", DETERMINISTIC)
@pytest.mark.parametrize("case", list(CONVT_CASES))
def test_conv_transpose2d_matches_unfold_linear_fold(case, recipe):
    b, cin, cout, h, wd, k, s, p, d, op = CONVT_CASES[case]
    x, w = _inputs(b, cin, cout, h, wd, k, (cin, cout, k, k))
    ours = _grads(lambda x, w: qf.conv_transpose2d(x, w, None, s, p, op, 1, d, recipe=recipe), x, w)
    ref = _grads(lambda x, w: conv_transpose2d_reference(x, w, recipe, s, p, d, op), x, w)
    for actual, expected in zip(ours, ref, strict=True):
        close(actual, expected)


def test_baseline_is_bitwise_nn_conv2d_and_conv_transpose2d():
    torch.manual_seed(0)
    for layer, x in (
        (torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.randn(2, 16, 9, 9)),
        (torch.nn.ConvTranspose2d(16, 32, 4, stride=2, padding=1), torch.randn(2, 16, 5, 5)),
    ):
        xr = x.clone().requires_grad_()
        yr = layer(xr)
        dy = torch.randn_like(yr)
        yr.backward(dy)
        reference = (yr.detach(), xr.grad, layer.weight.grad, layer.bias.grad)
        layer.zero_grad()
        xq = x.clone().requires_grad_()
        fn = qf.conv2d if isinstance(layer, torch.nn.Conv2d) else qf.conv_transpose2d
        yq = fn(xq, layer.weight, layer.bias, layer.stride, layer.padding, recipe="baseline")
        yq.backward(dy)
        ours = (yq.detach(), xq.grad, layer.weight.grad, layer.bias.grad)
        assert all(torch.equal(a, b) for a, b in zip(ours, reference, strict=True))


@pytest.mark.parametrize("recipe", ["2d_rht_sr", "sr_only"])
def test_sr_conv_is_seeded(recipe):
    x, w = _inputs(2, 16, 32, 8, 8, 4, (32, 16, 4, 4))

    def grads(seed):
        gen = torch.Generator().manual_seed(seed)
        return _grads(lambda x, w: qf.conv2d(x, w, None, 2, 1, recipe=recipe, generator=gen), x, w)

    a, b, c = grads(1), grads(1), grads(2)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert torch.equal(a[0], c[0]) and not torch.equal(a[2], c[2])


def test_bias_unbatched_input_and_bf16():
    x, w = _inputs(1, 16, 32, 8, 8, 3, (32, 16, 3, 3))
    bias = torch.randn(32)
    batched = qf.conv2d(x, w, bias, 1, 1, recipe="nvfp4")
    single = qf.conv2d(x[0], w, bias, 1, 1, recipe="nvfp4")
    assert torch.equal(batched[0], single)
    unbiased = qf.conv2d(x, w, None, 1, 1, recipe="nvfp4")
    close(batched - unbiased, bias[None, :, None, None].expand_as(batched))
    y = qf.conv2d(x.bfloat16(), w.bfloat16(), bias.bfloat16(), 1, "same", recipe="2d_rht")
    assert y.dtype == torch.bfloat16 and y.shape == (1, 32, 8, 8)


def test_conv_errors_name_the_layer_dimension():
    with pytest.raises(ValueError, match="stem: in_channels = 3 is not a multiple of 16"):
        qf.conv2d(torch.randn(1, 3, 8, 8), torch.randn(16, 3, 3, 3), recipe="nvfp4", name="stem")
    with pytest.raises(ValueError, match="out_channels = 1 "):
        qf.conv_transpose2d(torch.randn(1, 16, 4, 4), torch.randn(16, 1, 2, 2), recipe="nvfp4")
    with pytest.raises(NotImplementedError, match="groups=2"):
        qf.conv2d(torch.randn(1, 32, 8, 8), torch.randn(32, 16, 3, 3), groups=2, recipe="nvfp4")


@pytest.mark.parametrize("recipe", ["nvfp4", "2d_rht"])
def test_small_tap_batches_give_the_same_gradients(monkeypatch, recipe):
    """One slab per quantizer call (and, with the RHT, a second rotation pass) changes nothing."""
    from quant import conv

    b, cin, cout, h, wd, k, s, p, d, _ = CONV_CASES["k4s2p1_wide"]
    x, w = _inputs(b, cin, cout, h, wd, k, (cout, cin, k, k))
    assert len(conv._tap_slabs((k, k), conv.ConvGeometry((s, s), (p, p), (d, d)), (16, 16))) == 8
    fn = lambda x, w: qf.conv2d(x, w, None, s, p, d, recipe=recipe)  # noqa: E731
    batched = _grads(fn, x, w)
    monkeypatch.setattr(conv, "_TAP_BATCH_ELEMENTS", 1)
    for actual, expected in zip(_grads(fn, x, w), batched, strict=True):
        close(actual, expected, rtol=1e-6)
