"""Quantized linear, conv2d and conv_transpose2d: the three GEMMs, run as the recipe says.

`linear(x, weight, bias, recipe=..., generator=...)` is differentiable like F.linear, but its
forward and both backward GEMMs are NVFP4 GEMMs (quant.gemm; convolutions: quant.conv) whose
operands are prepared per the recipe's six slots (quant.recipes):

    forward    Y  = FPROP(fprop_input(X), fprop_weight(W)) (+ bias, in high precision)
    backward   dX = DGRAD(dgrad_grad_output(dY), dgrad_weight(W))
               dW = WGRAD(wgrad_grad_output(dY), wgrad_input(X));   db = sum(dY)

What the forward keeps for the backward follows from the recipe, not from its name:

- a backward slot in mode "hp" or "quantize" needs the original high-precision tensor: X is
  saved (W is a Parameter and always at hand); "quantize" re-quantizes it along the backward
  GEMM's own contraction dim (`nvfp4`, `sr_only`, `2d_rht`), "hp" uses it as is (`fwd_only`:
  the straight-through estimator, `fwd_rht`);
- mode "fprop" keeps the forward's decoded blocks and amax instead of X or W (`chain_rule`);
- a DGRAD weight slot with the same 16x16 tiles as FPROP reuses the forward's tiles, which is
  exact because a tile is transpose-invariant (`2d_rht`, `2d_rht_sr`); under 4over6 it is
  not (near-ties can pick the other candidate), so W^T is quantized on its own, as TE does.

How the rows of docs/nvfp4.md section 5 come out of this (all through the same code):

    baseline    nothing quantized -> the plain torch op (bitwise nn.Linear/Conv2d/ConvT2d)
    nvfp4       six "quantize" slots: X, W along K; dY, W^T along N; dY^T, X^T along M
    fwd_only    FPROP quantized; backward slots "hp": dY @ W and dY^T @ X with the saved X, W
    chain_rule  backward weight/input slots "fprop": the forward's decoded blocks (still blocked
                along K) and amax are saved and multiplied with the HP dY, alpha = a / 2688
    2d_rht      W as 16x16 tiles in FPROP, the same tiles transposed in DGRAD (reused, exact);
                WGRAD operands rotated along M (`rht=True`) then quantized 1x16
    2d_rht_sr   as 2d_rht, dY rounded stochastically in DGRAD and WGRAD (generator draws)
    sr_only     as nvfp4, dY rounded stochastically in DGRAD and WGRAD
    fwd_rht     FPROP operands rotated along K then quantized; backward "hp" like fwd_only

The one autograd Function below serves every recipe and all three layer kinds: a ninth recipe
is data. A recipe that quantizes nothing (`baseline`) never reaches it: the plain torch op runs,
bit-identical to nn.Linear / nn.Conv2d / nn.ConvTranspose2d forward and backward.

Dtypes: quantization and quantized GEMMs run in fp32; HP GEMMs run in their operands' dtype (fp32
on CPU, bf16 under autocast on a GPU). Under autocast the inputs are first cast to the autocast
dtype exactly as autocast would cast them for F.linear/F.conv2d, and the output has that dtype.
Stochastic rounding draws from the explicit `generator` (owned by the trial), in a fixed order:
DGRAD's dY, then WGRAD's dY.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from quant.conv import Conv2dGemms, ConvGeometry, ConvTranspose2dGemms
from quant.gemm import GemmOperand, LayerGemms, LinearGemms, Observer
from quant.nvfp4 import BLOCK
from quant.recipes import SLOTS, Recipe, get_recipe


class _QuantizedGemms(torch.autograd.Function):
    """Forward: FPROP. Backward: DGRAD and WGRAD, with operands prepared per the recipe."""

    @staticmethod
    def forward(ctx, x, weight, bias, gemms: LayerGemms, recipe: Recipe):
        x_q = gemms.operand("fprop", "input", x, recipe.fprop_input)
        w_q = gemms.operand("fprop", "weight", weight, recipe.fprop_weight)
        y = gemms.fprop(x_q, w_q, None)
        if bias is not None:
            y = y + gemms.broadcast_bias(bias.to(y.dtype))
        keep_x_q = recipe.wgrad_input.mode == "fprop"
        keep_w_q = recipe.dgrad_weight.mode == "fprop" or _same_tiles(recipe)
        ctx.save_for_backward(
            None if keep_x_q else x,
            weight,
            *(x_q[:2] if keep_x_q else (None, None)),
            *(w_q[:2] if keep_w_q else (None, None)),
        )
        ctx.gemms, ctx.recipe = gemms, recipe
        ctx.x_shape, ctx.x_dtype, ctx.has_bias = x.shape, x.dtype, bias is not None
        return _fresh_output(y, x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, x_values, x_amax, w_values, w_amax = ctx.saved_tensors
        gemms, recipe = ctx.gemms, ctx.recipe
        if not dy.is_contiguous():  # first, see `_autocast_off`
            dy = dy.contiguous()
        dx = dw = db = None
        with _autocast_off(dy):
            if ctx.needs_input_grad[0]:
                dy_q = gemms.operand("dgrad", "grad_output", dy, recipe.dgrad_grad_output)
                if w_values is not None:
                    w_q = GemmOperand(w_values, w_amax, recipe.fprop_weight.tensor_scale)
                else:
                    w_q = gemms.operand("dgrad", "weight", weight, recipe.dgrad_weight)
                dx = gemms.dgrad(dy_q, w_q, ctx.x_shape, ctx.x_dtype)
            if ctx.needs_input_grad[1]:
                x_in = x
                if x_values is not None:
                    x_in = GemmOperand(x_values, x_amax, recipe.fprop_input.tensor_scale)
                ops = (recipe.wgrad_grad_output, recipe.wgrad_input)
                dw = gemms.wgrad(dy, x_in, ops, weight.dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = gemms.bias_grad(dy)
        return dx, dw, db, None, None


def _fresh_output(y: Tensor, dtype: torch.dtype) -> Tensor:
    """y in `dtype`, compiled as a tensor that no other op of the forward returns or writes.

    torch 2.11's Dynamo binds the incoming gradient of an autograd.Function to the wrong
    tensor when the output is also one of the forward's intermediates: returned as-is (`.to`
    an equal dtype returns y itself) or written in place (`run_gemm`'s `mul_` when there is no
    bias). Every gradient of such a layer came out zero on an H200 (BENCHMARKS.md, issue 18);
    torch 2.13 is not affected. Compiled, the copy fuses into the op that makes y; eager code
    does not copy.
    """
    if y.dtype != dtype:
        return y.to(dtype)
    return y.clone() if torch.compiler.is_compiling() else y


def _same_tiles(recipe: Recipe) -> bool:
    """DGRAD's weight operand is FPROP's 16x16 tiles, transposed: reuse them (exact).

    Not under 4over6: TE quantizes the columnwise copy of W on its own, and its tile errors,
    summed down columns, can pick the other candidate at near-ties (docs/nvfp4.md s7.1), so
    DGRAD re-quantizes W^T itself, exactly like TE's columnwise copy.
    """
    op = recipe.fprop_weight
    plain = op.four_over_six is None
    return plain and op.mode == "quantize" and op.block == (16, 16) and recipe.dgrad_weight == op


def _autocast_off(t: Tensor):
    """Autocast off around our GEMMs (they pick their dtypes; autocast would re-cast the fp32
    operands), whatever autocast state the caller runs in.

    Unconditional: compiled, a backward is traced once in the forward's state (autocast
    already off, so a conditional would add nothing to the graph) and then run in the
    caller's state (autocast on).

    Dynamo traces a backward twice when it queries strides (`is_contiguous`, which the
    quantizer's layout checks do): the first attempt stops at the first such query and the
    second runs with contiguous gradients. An autocast context entered before that first
    query is never left by the abandoned attempt (torch 2.13 then fails with "Global autocast
    state changed while dynamo tracing"), so `backward` queries dy's layout before entering.
    """
    return torch.autocast(t.device.type, enabled=False)


def _autocast_inputs(x: Tensor, weight: Tensor, bias: Tensor | None):
    """Cast like autocast casts F.linear/F.conv2d inputs (they then run with autocast off)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device)
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _check_generator(recipe: Recipe, generator: torch.Generator | None, name: str) -> None:
    if recipe.stochastic and generator is None:
        raise ValueError(
            f"{name}: recipe {recipe.name!r} uses stochastic rounding and needs generator="
            "torch.Generator(...) (the trial owns it and checkpoints its state)"
        )


def check_block_dims(dims: dict[str, int], name: str) -> None:
    """Raise naming the layer and dimension when a contraction dim is not a multiple of 16."""
    for what, size in dims.items():
        if size % BLOCK:
            raise ValueError(
                f"{name}: {what} = {size} is not a multiple of {BLOCK}, but NVFP4 blocks of "
                f"{BLOCK} run along it; keep this layer in full precision "
                "(model.full_precision_layers() or quant.prepare(..., skip=...))"
            )


def _apply(x, weight, bias, gemms: LayerGemms, recipe: Recipe) -> Tensor:
    x, weight, bias = _autocast_inputs(x, weight, bias)
    with _autocast_off(x):
        return _QuantizedGemms.apply(x, weight, bias, gemms, recipe)


# --------------------------------------------------------------------------- public ops


def linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    recipe: Recipe | str,
    generator: torch.Generator | None = None,
    observe: Observer | None = None,
    name: str = "linear",
) -> Tensor:
    """F.linear with NVFP4 GEMMs per `recipe`; x (..., K), weight (N, K); K, N multiples of 16."""
    recipe = get_recipe(recipe)
    if not recipe.quantized:
        return F.linear(x, weight, bias)
    check_block_dims({"in_features": weight.shape[1], "out_features": weight.shape[0]}, name)
    _check_generator(recipe, generator, name)
    lead = x.shape[:-1]
    gemms = LinearGemms(generator, observe)
    y = _apply(x.reshape(-1, x.shape[-1]), weight, bias, gemms, recipe)
    return y.reshape(*lead, weight.shape[0])


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    recipe: Recipe | str,
    generator: torch.Generator | None = None,
    observe: Observer | None = None,
    name: str = "conv2d",
) -> Tensor:
    """F.conv2d with NVFP4 implicit GEMMs per `recipe` (groups=1; channels multiples of 16)."""
    recipe = get_recipe(recipe)
    if not recipe.quantized:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    _check_conv(recipe, generator, groups, weight.shape[1], weight.shape[0], name)
    kernel = tuple(weight.shape[2:])
    padding = _conv_padding(padding, kernel, dilation, name)
    geo = ConvGeometry(_pair(stride), padding, _pair(dilation))
    gemms = Conv2dGemms(weight.shape, kernel, geo, generator, observe)
    return _unbatched(x, lambda xb: _apply(xb, weight, bias, gemms, recipe))


def conv_transpose2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    output_padding=0,
    groups: int = 1,
    dilation=1,
    *,
    recipe: Recipe | str,
    generator: torch.Generator | None = None,
    observe: Observer | None = None,
    name: str = "conv_transpose2d",
) -> Tensor:
    """F.conv_transpose2d with NVFP4 GEMMs per `recipe` (groups=1; channels multiples of 16)."""
    recipe = get_recipe(recipe)
    if not recipe.quantized:
        return F.conv_transpose2d(
            x, weight, bias, stride, padding, output_padding, groups, dilation
        )
    _check_conv(recipe, generator, groups, weight.shape[0], weight.shape[1], name)
    geo = ConvGeometry(_pair(stride), _pair(padding), _pair(dilation), _pair(output_padding))
    gemms = ConvTranspose2dGemms(weight.shape, tuple(weight.shape[2:]), geo, generator, observe)
    return _unbatched(x, lambda xb: _apply(xb, weight, bias, gemms, recipe))


def _check_conv_recipe(recipe: Recipe, name: str) -> None:
    """Row scaling is defined on a GEMM operand's rows; an im2col row mixes input pixels, so a
    per-row amax of X is not a per-row amax of the convolution's operand: refuse."""
    scaled = [f"{g}_{r}" for g, r in SLOTS if recipe.operand(g, r).row_scaled]
    if scaled:
        raise NotImplementedError(
            f"{name}: recipe {recipe.name!r} row-scales {', '.join(scaled)}, which is defined "
            "for Linear layers only (an im2col row mixes input pixels); keep this layer in full "
            "precision or use a recipe without row_scaled"
        )


def _check_conv(
    recipe: Recipe, generator, groups: int, in_channels: int, out_channels: int, name: str
) -> None:
    """What a quantized convolution needs: groups=1, channels in whole blocks, a recipe without
    row scaling, and a generator for stochastic rounding."""
    if groups != 1:
        raise NotImplementedError(
            f"{name}: groups={groups}; quantized convolutions support groups=1 only "
            "(keep grouped/depthwise convolutions in full precision)"
        )
    check_block_dims({"in_channels": in_channels, "out_channels": out_channels}, name)
    _check_conv_recipe(recipe, name)
    _check_generator(recipe, generator, name)


def _conv_padding(padding, kernel: tuple[int, int], dilation, name: str) -> tuple[int, int]:
    """Numeric padding; 'valid' is 0 and 'same' is resolved when it is symmetric."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(_pair(dilation), kernel, strict=True)]
        if any(t % 2 for t in total):
            raise NotImplementedError(f"{name}: padding='same' would be asymmetric here")
        return tuple(t // 2 for t in total)
    return _pair(padding)


def _unbatched(x: Tensor, run) -> Tensor:
    """Accept (C, H, W) like torch's convolutions do."""
    if x.dim() == 3:
        return run(x.unsqueeze(0)).squeeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected a 3-D or 4-D input, got shape {tuple(x.shape)}")
    return run(x)


__all__ = ["check_block_dims", "conv2d", "conv_transpose2d", "linear"]
