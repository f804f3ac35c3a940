"""Conv2d and ConvTranspose2d as NVFP4 GEMMs: the implicit GEMM without im2col.

The GEMM itself, its operands and their "contraction last" layouts are quant.gemm's; this module
maps the two convolutions onto it (docs/nvfp4.md s4).

A Conv2d is the GEMM `Y (T x Cout) = A (T x K) @ W_mat^T` with T = batch x output pixels, A the
channels-last im2col of X and K ordered (kh, kw, cin) (docs/nvfp4.md s4). Blocks of 16 along K then
lie inside one kernel tap, along cin, at one input pixel, so:

- FPROP: quantizing A along K == quantizing X along C at every pixel (NHWC), once; W along cin
  per tap. The global amax of A is X's over the pixels the kernel reads (pixels it never reads
  are zeroed first); padding zeros stay zero. Then conv2d(X_hat, W_hat) * alpha.
- DGRAD: dA = dY @ W_mat contracts over Cout: dY along C per pixel, W along Cout per tap, then
  col2im, which is exactly conv2d's input gradient of the decoded tensors (times alpha).
- WGRAD: dW_mat = dY^T @ A contracts over tokens. dY is blocked along tokens once; A^T is blocked
  along tokens *per tap*: tap (i, j) reads the strided slice X[:, :, i*d::s, j*d::s], and its
  blocks differ from other taps', so the slices are quantized separately (a few at a time,
  never the whole im2col) with the amax of the whole im2col, and dW[:, :, i, j] = dY_hat^T @
  slice_hat. When Wo is a multiple of 16, taps that read interleaved rows share their blocks and
  are quantized once (`_Slab`), and a slab's taps are multiplied together as one convolution
  weight gradient, so the products run in torch's convolution kernels like the baseline
  layer's backward. With the RHT the rotation runs along tokens in both operands, and the amax
  is taken after rotation over all taps (a first pass).

ConvTranspose2d is the adjoint: its FPROP is a Conv2d DGRAD (X along Cin per pixel, W along Cin
per tap, then conv_transpose2d), its DGRAD a Conv2d FPROP of dY, and its WGRAD the same per-tap
GEMM with the roles swapped (dY is the sliced operand, X is blocked along tokens once).
tests/quant/test_conv.py checks all of this against unfold -> quantized Linear GEMMs -> fold.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from quant import nvfp4
from quant.gemm import (
    GemmOperand,
    LayerGemms,
    Layout,
    Observer,
    alpha,
    as_token_matrix,
    check_generator,
    quantize_along,
    rounding_of,
    run_gemm,
)
from quant.nvfp4 import BLOCK
from quant.recipes import Operand

__all__ = ["Conv2dGemms", "ConvGeometry", "ConvTranspose2dGemms"]


class ConvGeometry(NamedTuple):
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    output_padding: tuple[int, int] = (0, 0)


def _conv_output_hw(hw, kernel: tuple[int, int], geo: ConvGeometry) -> tuple[int, int]:
    """Output size of a Conv2d (equally: a ConvTranspose2d's input size from its output's)."""
    return tuple(
        (hw[d] + 2 * geo.padding[d] - geo.dilation[d] * (kernel[d] - 1) - 1) // geo.stride[d] + 1
        for d in range(2)
    )


def _conv_transpose_output_hw(hw, kernel: tuple[int, int], geo: ConvGeometry) -> tuple[int, int]:
    """The smallest input size of a Conv2d with output `hw` (a ConvTranspose2d's output size
    without output_padding); the rows and columns beyond it are ones no kernel tap reads."""
    return tuple(
        (hw[d] - 1) * geo.stride[d] - 2 * geo.padding[d] + geo.dilation[d] * (kernel[d] - 1) + 1
        for d in range(2)
    )


def _read_positions(
    size: int, out: int, kernel: int, stride: int, pad: int, dilation: int
) -> tuple[bool, ...]:
    """Which input positions (along one spatial dim) some kernel tap reads.

    Pure Python on the layer's geometry, memoized: no tensor, so no host sync and nothing for a
    compiler to trace beyond a dict lookup."""
    key = (size, out, kernel, stride, pad, dilation)
    known = _READ_POSITIONS.get(key)
    if known is not None:
        return known
    used = [False] * size
    for tap in range(kernel):
        for o in range(out):
            index = o * stride + tap * dilation - pad
            if 0 <= index < size:
                used[index] = True
    if not torch.compiler.is_compiling():  # a traced insertion inside a backward breaks Dynamo
        _READ_POSITIONS[key] = tuple(used)
    return tuple(used)


_READ_POSITIONS: dict[tuple[int, ...], tuple[bool, ...]] = {}


def _zero_unread(t: Tensor, kernel: tuple[int, int], geo: ConvGeometry) -> Tensor:
    """`t` (B, C, H, W) with the pixels no kernel tap reads set to 0: its amax is the im2col's.

    The usual layers read every pixel and `t` comes back unchanged (no copy).
    """
    out_hw = _conv_output_hw(t.shape[2:], kernel, geo)
    rows, cols = (
        _read_positions(
            t.shape[2 + d], out_hw[d], kernel[d], geo.stride[d], geo.padding[d], geo.dilation[d]
        )
        for d in range(2)
    )
    if all(rows) and all(cols):
        return t
    mask = [[float(r and c) for c in cols] for r in rows]
    return t * torch.tensor(mask, dtype=t.dtype, device=t.device)


#: Upper bound on the elements quantized in one call by `_tapped_weight_grad` (at least one slab
#: is always taken), so the extra memory stays small and the full im2col never exists.
_TAP_BATCH_ELEMENTS = 1 << 22


class _Slab(NamedTuple):
    """Rows of the zero-padded source that some kernel taps read, as quantized together.

    The slab holds padded rows `first_row + stride * m` (m < rows) at the columns of kernel
    column `j`; tap (i, j) reads its rows `offset .. offset + Ho - 1`. When Wo is a multiple of
    16, token blocks never straddle an output row, so taps whose rows interleave by whole
    strides (kernel rows i and i + stride for stride 2, every i for stride 1) share blocks:
    one slab quantizes them all (about half the elements of per-tap slicing for the CNN's
    4x4 / stride-2 layers, a third for 3x3 / stride 1).
    """

    j: int
    first_row: int
    rows: int
    taps: tuple[tuple[int, int], ...]  # (i, offset)


def _tap_slabs(kernel: tuple[int, int], geo: ConvGeometry, out_hw: tuple[int, int]) -> list[_Slab]:
    """The slabs covering every kernel tap (one tap per slab when blocks cannot be shared)."""
    (kh, kw), sh, dh = kernel, geo.stride[0], geo.dilation[0]
    ho, wo = out_hw
    classes: dict[int, list[int]] = {}
    for i in range(kh):
        classes.setdefault(i * dh % sh, []).append(i)
    starts = {c: [i * dh // sh for i in members] for c, members in classes.items()}
    shared = wo % BLOCK == 0 and all(
        b - a <= ho for s in starts.values() for a, b in zip(s, s[1:], strict=False)
    )
    slabs = []
    for j in range(kw):
        if not shared:
            slabs += [_Slab(j, i * dh, ho, ((i, 0),)) for i in range(kh)]
            continue
        for c, members in classes.items():
            lo = min(starts[c])
            taps = tuple((i, s - lo) for i, s in zip(members, starts[c], strict=True))
            slabs.append(_Slab(j, c + sh * lo, ho + max(starts[c]) - lo, taps))
    return slabs


def _tapped_weight_grad(
    plain: GemmOperand,
    source: Tensor,
    op: Operand,
    kernel: tuple[int, int],
    geo: ConvGeometry,
    generator: torch.Generator | None = None,
    *,
    slot: str = "wgrad",
    observe: Observer | None = None,
) -> Tensor:
    """WGRAD of a convolution whose im2col operand is quantized along tokens, slab by slab.

    plain:  the other operand as a (Co, padded tokens) matrix, blocked along tokens or HP.
    source: the HP tensor read through the taps, (B, Ci, H, W) (X of a Conv2d, dY of a
            ConvTranspose2d). Returns dW (Co, Ci, kh, kw) in fp32 with alpha applied.

    Every slab (see `_Slab`) is quantized with the amax of the whole im2col (`amax=`): the
    pixels the kernel reads, or, with the RHT, the largest rotated value over all slabs (a first
    pass). Slabs of equal size go through the quantizer and the GEMM in batches.

    The GEMM: when Wo is a multiple of 16, a token block is 16 output columns of one row, so a
    slab stays an image (B, Ci, rows, Wo) blocked along its width, and its taps' products are
    one convolution weight gradient with a (taps x 1) kernel (`_slab_weight_grad`): torch's
    convolution kernels (oneDNN on CPU, as the baseline layer's own backward), and no copy of
    the slab per tap. Otherwise token blocks straddle rows, a slab is one tap's flat (Ci,
    tokens) matrix, and the product is a matrix multiply.
    """
    check_generator(op, generator, slot)
    ho, wo = _conv_output_hw(source.shape[2:], kernel, geo)
    batch, ci = source.shape[:2]
    g = plain.values.float()
    co = g.shape[0]
    (ph, pw), (sh, sw), dw = geo.padding, geo.stride, geo.dilation[1]
    as_images = wo % BLOCK == 0
    padded = F.pad(source.float(), (pw, pw, ph, ph))  # (B, Ci, Hp, Wp)

    def load(slabs: list[_Slab]) -> Tensor:
        """The slabs' rows: images (B, len * Ci, rows, Wo) flattened to (B * len * Ci, rows *
        Wo), or (len * Ci, tokens) matrices with tokens (B, Ho, Wo) zero-padded to a multiple
        of 16."""
        rows = slabs[0].rows
        if as_images:
            out = padded.new_empty((batch, len(slabs), ci, rows, wo))
        else:
            length = batch * rows * wo
            out = padded.new_zeros((len(slabs), ci, length + (-length % BLOCK)))
        for k, s in enumerate(slabs):
            src = padded[
                :,
                :,
                s.first_row : s.first_row + sh * (rows - 1) + 1 : sh,
                s.j * dw : s.j * dw + sw * (wo - 1) + 1 : sw,
            ]
            if as_images:
                out[:, k].copy_(src)
            else:
                out[k, :, :length].view(ci, batch, rows, wo).copy_(src.transpose(0, 1))
        # images are quantized as (B * len * Ci, rows * Wo): the same blocks in long rows,
        # which the compiled quantizer's loops handle far better than rows of Wo
        out = out.view(-1, rows * wo) if as_images else out.view(len(slabs) * ci, -1)
        return nvfp4.rht(out) if op.rht else out

    batches = _slab_batches(_tap_slabs(kernel, geo, (ho, wo)), ci * batch * wo)
    cache: list[Tensor] | None = None
    if op.rht:  # the rotated im2col's amax needs every slab rotated first; keep them if small
        cache, amaxes = [], []
        for slabs in batches:
            rotated = load(slabs)
            amaxes.append(rotated.abs().amax())
            if cache is not None and (len(cache) + 1) * rotated.numel() <= 2 * source.numel():
                cache.append(rotated)
            else:
                cache = None
        amax = torch.stack(amaxes).amax().float()
    else:
        amax = _zero_unread(source, kernel, geo).abs().amax().float()
    grad = g.new_empty((co, ci, kernel[0], kernel[1]))
    step = _tap_row_step(geo)
    for n, slabs in enumerate(batches):
        rows = cache[n] if cache is not None else load(slabs)
        blocks, _ = nvfp4.fake_quantize(
            rows,
            rounding=rounding_of(op),
            generator=generator if op.stochastic else None,
            amax=amax,
            **op.quantizer_options(),
        )
        if observe is not None:
            observe(slot, rows, blocks, amax, (1, BLOCK), op.tensor_scale)
        if as_images:
            images = blocks.view(batch, len(slabs) * ci, -1, wo)
            _slab_weight_grad(grad, g.view(co, batch, ho, wo), images, slabs, step)
        else:  # one tap per slab (token blocks straddle rows): the blocks are the tap matrix
            products = (g @ blocks.T).view(co, len(slabs), ci)
            for k, s in enumerate(slabs):
                ((i, _),) = s.taps
                grad[:, :, i, s.j] = products[:, k]
    return grad.mul_(alpha(plain, GemmOperand(source, amax, op.tensor_scale)))


def _tap_row_step(geo: ConvGeometry) -> int:
    """How many slab rows apart the taps of one slab start: kernel rows i and i + p (p =
    stride / gcd) share a slab and start d * p / stride = dilation / gcd rows apart."""
    (sh, _), (dh, _) = geo.stride, geo.dilation
    return dh // math.gcd(dh, sh)


def _slab_weight_grad(grad: Tensor, g: Tensor, blocks: Tensor, slabs: list[_Slab], step: int):
    """dW of a batch of image slabs, into `grad` (Co, Ci, kh, kw): one weight gradient of a
    (taps x 1) convolution with row dilation `step` over the slabs stacked along channels.

    g: the other operand as (Co, B, Ho, Wo); blocks: (B, len * Ci, rows, Wo). Output row o of
    tap t reads slab row o + t * step, exactly the rows that tap's im2col slice holds, so
    weight-gradient entry (co, k * Ci + ci, t) is that tap's product for slab k. The sum over
    tokens is the GEMM's, in the convolution's own order (fp32 summation order only).
    """
    co, batch, ho, wo = g.shape
    ci = blocks.shape[1] // len(slabs)
    taps = (blocks.shape[2] - ho) // step + 1
    products = torch.nn.grad.conv2d_weight(
        blocks, (co, blocks.shape[1], taps, 1), g.transpose(0, 1), dilation=(step, 1)
    ).view(co, len(slabs), ci, taps)
    for k, s in enumerate(slabs):
        for i, offset in s.taps:
            grad[:, :, i, s.j] = products[:, k, :, offset // step]


def _slab_batches(slabs: list[_Slab], elements_per_row: int) -> list[list[_Slab]]:
    """Consecutive slabs of equal size, at most _TAP_BATCH_ELEMENTS elements per batch."""
    batches: list[list[_Slab]] = []
    for slab in slabs:
        last = batches[-1] if batches else None
        size = elements_per_row * slab.rows
        if last and last[0].rows == slab.rows and (len(last) + 1) * size <= _TAP_BATCH_ELEMENTS:
            last.append(slab)
        else:
            batches.append([slab])
    return batches


# --------------------------------------------------------------------------- the two layer kinds

#: An activation (B, C, H, W) blocked along C at every pixel (NHWC): FPROP's X, DGRAD's dY.
_CHANNELS_LAST = Layout((0, 2, 3, 1))
#: A (B, C, H, W) WGRAD operand as a (C, tokens) matrix blocked along tokens (B, Ho, Wo).
_TOKENS = Layout((1, 0, 2, 3), contract=3)
#: A weight (d0, d1, kh, kw) blocked per kernel tap along d1 or along d0.
_WEIGHT_ALONG = {1: Layout((2, 3, 0, 1)), 0: Layout((2, 3, 1, 0))}


def _conv_layouts(fprop_weight_dim: int, plain_role: str) -> dict[tuple[str, str], Layout]:
    """A convolution's layouts: FPROP blocks the weight along `fprop_weight_dim` (its input
    channels), DGRAD along the other dim; `plain_role` is the WGRAD operand blocked along tokens
    once (the other one is read through the kernel taps, `_tapped_weight_grad`)."""
    return {
        ("fprop", "input"): _CHANNELS_LAST,
        ("fprop", "weight"): _WEIGHT_ALONG[fprop_weight_dim],
        ("dgrad", "grad_output"): _CHANNELS_LAST,
        ("dgrad", "weight"): _WEIGHT_ALONG[1 - fprop_weight_dim],
        ("wgrad", plain_role): _TOKENS,
    }


class _ConvGemms(LayerGemms):
    """Shared by Conv2d and ConvTranspose2d: kernel geometry, the tapped WGRAD, the bias.

    A subclass names its `tapped_role` (the WGRAD operand read through the kernel taps), its
    `zeroed_source` (the (gemm, role) operand whose unread pixels are dropped from its amax) and
    the torch ops `_forward_op` and `_input_grad_op` that run its FPROP and DGRAD.
    """

    tapped_role: str
    zeroed_source: tuple[str, str]

    def __init__(
        self,
        weight_shape,
        kernel: tuple[int, int],
        geometry: ConvGeometry,
        generator: torch.Generator | None = None,
        observe: Observer | None = None,
    ) -> None:
        super().__init__(generator, observe)
        self.weight_shape = tuple(weight_shape)
        self.kernel = tuple(kernel)
        self.geometry = geometry

    @abstractmethod
    def _forward_op(self, a: Tensor, b: Tensor) -> Tensor:
        """The layer's forward on decoded operands (no bias)."""

    @abstractmethod
    def _input_grad_op(self, g: Tensor, b: Tensor, x_shape) -> Tensor:
        """The layer's input gradient from dY and the decoded weight."""

    def prepare_source(self, gemm: str, role: str, t: Tensor) -> Tensor:
        # Rows/cols of the operand no kernel tap reads are zeroed, so its amax ignores them.
        if (gemm, role) == self.zeroed_source:
            return _zero_unread(t, self.kernel, self.geometry)
        return t

    def fprop(self, x: GemmOperand, w: GemmOperand, out_dtype: torch.dtype | None) -> Tensor:
        return run_gemm(self._forward_op, x, w, out_dtype)

    def dgrad(
        self, dy: GemmOperand, w: GemmOperand, x_shape, out_dtype: torch.dtype | None
    ) -> Tensor:
        return run_gemm(lambda g, b: self._input_grad_op(g, b, x_shape), dy, w, out_dtype)

    def wgrad(
        self, dy: Tensor, x: Tensor | GemmOperand, ops: tuple[Operand, Operand], out_dtype
    ) -> Tensor:
        tensors = {"grad_output": dy, "input": x}
        op_of = {"grad_output": ops[0], "input": ops[1]}
        tapped = self.tapped_role
        plain = "input" if tapped == "grad_output" else "grad_output"
        if op_of[tapped].mode == "quantize":
            plain_2d = self._token_matrix(tensors[plain], plain, op_of[plain])
            grad = _tapped_weight_grad(
                plain_2d,
                tensors[tapped],
                op_of[tapped],
                self.kernel,
                self.geometry,
                self.generator,
                slot=f"wgrad_{tapped}",
                observe=self.observe,
            )
            return grad.to(out_dtype)
        operands = {
            role: t if isinstance(t, GemmOperand) else self.operand("wgrad", role, t, op_of[role])
            for role, t in tensors.items()
        }
        return run_gemm(self._weight_grad, operands[tapped], operands[plain], out_dtype)

    def broadcast_bias(self, bias: Tensor) -> Tensor:
        return bias[:, None, None]

    def bias_grad(self, dy: Tensor) -> Tensor:
        return dy.sum(dim=(0, 2, 3))

    def _token_matrix(self, t, role: str, op: Operand) -> GemmOperand:
        """The non-tapped WGRAD operand as a (channels, padded tokens) matrix."""
        if isinstance(t, GemmOperand):
            return GemmOperand(as_token_matrix(t.values, _TOKENS), t.amax, t.tensor_scale)
        if op.mode == "hp":
            return GemmOperand(as_token_matrix(t, _TOKENS), None)
        return quantize_along(
            t, _TOKENS, op, self.generator, slot=f"wgrad_{role}", observe=self.observe, keep_2d=True
        )

    def _weight_grad(self, source: Tensor, plain: Tensor) -> Tensor:
        """dW from the tapped tensor and the other operand, both unsliced (torch's kernel)."""
        geo = self.geometry
        return torch.nn.grad.conv2d_weight(
            source, self.weight_shape, plain, geo.stride, geo.padding, geo.dilation
        )


class Conv2dGemms(_ConvGemms):
    """x (B, Ci, H, W), w (Co, Ci, kh, kw), dy (B, Co, Ho, Wo); groups = 1."""

    tapped_role = "input"
    zeroed_source = ("fprop", "input")
    layouts = _conv_layouts(fprop_weight_dim=1, plain_role="grad_output")

    def _forward_op(self, a: Tensor, b: Tensor) -> Tensor:
        geo = self.geometry
        return F.conv2d(a, b, None, geo.stride, geo.padding, geo.dilation)

    def _input_grad_op(self, g: Tensor, b: Tensor, x_shape) -> Tensor:
        # The input gradient is the transposed convolution of dY: the same oneDNN kernel as
        # torch.nn.grad.conv2d_input (bitwise), without that function's copy of an expanded
        # stand-in for X (measured 41 -> 26 ms for the CNN's largest layer, 19 channels-last).
        geo = self.geometry
        reached = _conv_transpose_output_hw(g.shape[2:], self.kernel, geo)
        extra = tuple(x_shape[2 + d] - reached[d] for d in range(2))
        return F.conv_transpose2d(g, b, None, geo.stride, geo.padding, extra, 1, geo.dilation)


class ConvTranspose2dGemms(_ConvGemms):
    """x (B, Ci, H, W), w (Ci, Co, kh, kw), dy (B, Co, Ho, Wo); groups = 1.

    The adjoint of a Conv2d whose input is dY and whose output is X: FPROP is that conv's
    input gradient, DGRAD that conv's forward, WGRAD its weight gradient with dY tapped.
    """

    tapped_role = "grad_output"
    # output_padding rows/cols of Y get no contribution: no tap reads them.
    zeroed_source = ("dgrad", "grad_output")
    layouts = _conv_layouts(fprop_weight_dim=0, plain_role="input")

    def _forward_op(self, a: Tensor, b: Tensor) -> Tensor:
        geo = self.geometry
        return F.conv_transpose2d(
            a, b, None, geo.stride, geo.padding, geo.output_padding, 1, geo.dilation
        )

    def _input_grad_op(self, g: Tensor, b: Tensor, x_shape) -> Tensor:
        geo = self.geometry
        return F.conv2d(g, b, None, geo.stride, geo.padding, geo.dilation)
