"""The emulated NVFP4 GEMM, its operands, and how a Linear layer maps onto it.

Convolutions map onto the same GEMM in quant.conv; quant.functional runs either kind per recipe.

One GEMM (docs/nvfp4.md s4)
----------------------
`out = A @ B^T` contracts over K. With both operands quantized along K (1x16 blocks, or 16x16
tiles for a weight), each is a tensor of decoded blocks times its tensor scale:

    A  ~  (a_A / 2688) * A_hat,     A_hat = value(code) * s_e4m3     (exact in bf16 and fp32)

so the tensor-core result is

    out = alpha * (A_hat @ B_hat^T),     alpha = a_A * a_B / (6*6*448*448)

`nvfp4.fake_quantize` returns exactly (A_hat, a_A); the product runs in fp32 and alpha multiplies
the output once, which equals the hardware result up to fp32 summation order. A high-precision
(HP) operand enters as itself with no factor, so a mixed GEMM (HP dY times the forward's Q(W)
in `chain_rule`) gets alpha = a_W / 2688. Outputs are never quantized.

TE 2.20's options change alpha in two ways (its qgemm: alpha = a_A a_B / (36 E_A E_B)):
a 4over6 operand may use E = 256 (`GemmOperand.tensor_scale` is 6E), and a row-scaled operand
has one amax per row of its (rows, contraction) matrix, so alpha becomes a vector: A's rows are
the output's rows, B's rows its columns, alpha = a_A[:, None] * a_B[None, :] / (36 E_A E_B).
That holds for every Linear GEMM (FPROP X, W; DGRAD dY, W^T; WGRAD dY^T, X^T); row scaling of a
convolution operand is refused (an im2col row mixes input pixels).

Operand layouts: "contraction last"
-----------------------------------
The quantizer blocks the last dimension, so every operand is permuted to put its GEMM's
contraction dimension last, quantized, and permuted back: the decoded tensor is then fed to the
*ordinary* torch op (F.linear, conv2d, conv_transpose2d or their input/weight gradients), which
performs the same multiply-adds as the GEMM. Each layer kind's `layouts` table lists the
permutation of every (GEMM, role): for a Linear `Y = X W^T` (X: M x K, W: N x K, dY: M x N)

    FPROP  X along K, W along K      DGRAD  dY along N, W^T along N      WGRAD  dY^T, X^T along M

For 16x16 weight tiles the rows before the contraction dim are ordered (kernel taps, other
channel) so a tile never straddles a tap. A tile is transpose-invariant (same 256 elements, same
amax, same scale), so Q2(W^T) == Q2(W)^T exactly and DGRAD reuses the forward's tiles (docs/nvfp4.md
s5: "Q2(W)^T same tiles"). WGRAD contracts over tokens; a token count that is not a multiple of
16 (a batch of 257-token ViT images, the last batch of an epoch) is zero-padded: zero rows add
nothing to the product and change no amax.

"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from quant import nvfp4
from quant.nvfp4 import BLOCK, FP4_E4M3_MAX
from quant.recipes import Operand

__all__ = [
    "GemmOperand",
    "LayerGemms",
    "Layout",
    "LinearGemms",
    "Observer",
    "alpha",
    "as_token_matrix",
    "check_generator",
    "quantize_along",
    "rounding_of",
    "run_gemm",
]

#: observe(slot, reference, blocks, amax, block, tensor_scale): telemetry hook, called with an
#: operand in its "contraction last" 2-D layout (reference rotated when the operand is), see
#: quant.telemetry.
Observer = Callable[[str, Tensor, Tensor, Tensor, tuple[int, int], float], None]


class GemmOperand(NamedTuple):
    """One GEMM operand in its layer's natural layout.

    values: decoded blocks value(code) * s_e4m3 (fp32) when quantized, else the HP tensor.
    amax:   the tensor amax of a quantized operand (0-d fp32), or one per row of its (rows,
            contraction) matrix when row-scaled; None for an HP operand.
    tensor_scale: 6E, the tensor-level decode denominator (2688; 1536 for a 4over6 E = 256).
    """

    values: Tensor
    amax: Tensor | None
    tensor_scale: float = FP4_E4M3_MAX


class Layout(NamedTuple):
    """How an operand is put in "contraction last" form: permute, then flatten the trailing
    `contract` dims into the contraction axis and all others into rows."""

    perm: tuple[int, ...]
    contract: int = 1


# --------------------------------------------------------------------------- the GEMM itself


def alpha(a: GemmOperand, b: GemmOperand) -> Tensor | None:
    """The output factor of `A @ B^T`: a_A a_B / (6E_A 6E_B) (2688^2 by default), a / 6E if one
    operand is HP, None if both are; a row-scaled amax broadcasts over A's rows (output rows)
    or B's rows (output columns)."""
    a_amax = None if a.amax is None else (a.amax[:, None] if a.amax.dim() else a.amax)
    b_amax = None if b.amax is None else (b.amax[None, :] if b.amax.dim() else b.amax)
    if a_amax is not None and b_amax is not None:
        return (a_amax * b_amax) / (a.tensor_scale * b.tensor_scale)
    if a_amax is not None:
        return a_amax / a.tensor_scale
    return None if b_amax is None else b_amax / b.tensor_scale


def run_gemm(
    op: Callable[[Tensor, Tensor], Tensor],
    a: GemmOperand,
    b: GemmOperand,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """op(a, b) on decoded operands, in fp32, times alpha; both HP: the plain op in their dtype.

    The result is cast to `out_dtype` when given (None keeps fp32 for a quantized GEMM).
    """
    factor = alpha(a, b)
    if factor is None:
        out = op(a.values, b.values)
    else:
        out = op(a.values.float(), b.values.float()).mul_(factor)
    return out if out_dtype is None else out.to(out_dtype)


# --------------------------------------------------------------------------- operands


def rounding_of(op: Operand) -> str:
    return "stochastic" if op.stochastic else "nearest"


def check_generator(op: Operand, generator: torch.Generator | None, slot: str) -> None:
    if op.stochastic and generator is None:
        raise ValueError(
            f"{slot} uses stochastic rounding and needs a torch.Generator: pass generator=... "
            "(quant.prepare(model, recipe, generator=...)); the trial owns and checkpoints it"
        )


def quantize_along(
    t: Tensor,
    layout: Layout,
    op: Operand,
    generator: torch.Generator | None = None,
    *,
    slot: str = "operand",
    observe: Observer | None = None,
    keep_2d: bool = False,
) -> GemmOperand:
    """Quantize `t` along the contraction dim that `layout` names.

    Values come back in t's layout, or with `keep_2d` as the (rows, contraction) matrix, where
    a contraction length that is not a multiple of 16 is zero-padded (token dims only: WGRAD).
    """
    check_generator(op, generator, slot)
    permuted = t.permute(layout.perm)
    lead = permuted.dim() - layout.contract
    length = math.prod(permuted.shape[lead:])
    flat = permuted.reshape(-1, length)
    short = -length % BLOCK
    if short:
        flat = F.pad(flat, (0, short))
    blocks, amax = nvfp4.fake_quantize(
        flat,
        block=op.block,
        rounding=rounding_of(op),
        generator=generator if op.stochastic else None,
        rht=op.rht,
        **op.quantizer_options(),
    )
    if observe is not None:
        reference = nvfp4.rht(flat) if op.rht else flat
        observe(slot, reference, blocks, amax, op.block, op.tensor_scale)
    if keep_2d:
        return GemmOperand(blocks, amax, op.tensor_scale)
    if short:
        if op.rht:  # the rotation mixed the padding into the real positions: it must stay
            raise ValueError(f"{slot}: a rotated operand with a padded contraction stays 2-D")
        blocks = blocks[:, :length]
    values = blocks.reshape(permuted.shape).permute(_inverse(layout.perm))
    return GemmOperand(values, amax, op.tensor_scale)


def as_token_matrix(t: Tensor, layout: Layout) -> Tensor:
    """An HP (or already decoded) operand in the same (rows, padded tokens) form, unquantized."""
    permuted = t.permute(layout.perm)
    length = math.prod(permuted.shape[permuted.dim() - layout.contract :])
    flat = permuted.reshape(-1, length)
    return F.pad(flat, (0, -length % BLOCK)) if length % BLOCK else flat


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inverse = [0] * len(perm)
    for position, axis in enumerate(perm):
        inverse[axis] = position
    return tuple(inverse)


# --------------------------------------------------------------------------- layer kinds


class LayerGemms(ABC):
    """The three GEMMs of one layer kind on natural-layout operands.

    A kind (`LinearGemms` here; `Conv2dGemms` and `ConvTranspose2dGemms` in quant.conv) gives
    `layouts`, which maps (gemm, role) to the operand's "contraction last" layout, and overrides
    the steps that differ by kind: the GEMMs `fprop` and `dgrad` (on prepared operands,
    GemmOperand), `wgrad` (which prepares its own, because convolutions quantize the im2col side
    per kernel tap), how the bias is added and reduced, and `prepare_source` where an
    operand's amax must ignore elements. One instance serves one layer call: it holds the SR
    generator and the telemetry observer its operands are quantized with.
    """

    layouts: dict[tuple[str, str], Layout] = {}

    def __init__(
        self, generator: torch.Generator | None = None, observe: Observer | None = None
    ) -> None:
        self.generator = generator  # stochastic rounding draws from it
        self.observe = observe  # quant.telemetry's hook, or None

    def operand(self, gemm: str, role: str, t: Tensor, op: Operand) -> GemmOperand:
        """`t` as the (gemm, role) operand: HP as is, or quantized along that GEMM's contraction."""
        if op.mode == "hp":
            return GemmOperand(t, None)
        if op.mode != "quantize":
            raise ValueError(f"{gemm}_{role}: mode {op.mode!r} needs the forward's saved operand")
        layout = self.layouts[(gemm, role)]
        return quantize_along(
            self.prepare_source(gemm, role, t),
            layout,
            op,
            self.generator,
            slot=f"{gemm}_{role}",
            observe=self.observe,
        )

    def prepare_source(self, gemm: str, role: str, t: Tensor) -> Tensor:
        """Hook: the tensor whose amax is the GEMM operand's (convolutions drop unread pixels)."""
        return t

    @abstractmethod
    def fprop(self, x: GemmOperand, w: GemmOperand, out_dtype: torch.dtype | None) -> Tensor:
        """Y from the prepared FPROP operands."""

    @abstractmethod
    def dgrad(
        self, dy: GemmOperand, w: GemmOperand, x_shape, out_dtype: torch.dtype | None
    ) -> Tensor:
        """dX (shaped `x_shape`) from the prepared DGRAD operands."""

    @abstractmethod
    def wgrad(
        self, dy: Tensor, x: Tensor | GemmOperand, ops: tuple[Operand, Operand], out_dtype
    ) -> Tensor:
        """dW from HP dY and X (or the forward's decoded X), operands prepared per `ops`."""

    @abstractmethod
    def broadcast_bias(self, bias: Tensor) -> Tensor:
        """The bias shaped to add onto the output."""

    @abstractmethod
    def bias_grad(self, dy: Tensor) -> Tensor:
        """db: dY summed over everything but the output channels."""


class LinearGemms(LayerGemms):
    """Y = X W^T: x (M, K), w (N, K), dy (M, N); leading dims of x are flattened by the caller."""

    layouts = {
        ("fprop", "input"): Layout((0, 1)),
        ("fprop", "weight"): Layout((0, 1)),
        ("dgrad", "grad_output"): Layout((0, 1)),
        ("dgrad", "weight"): Layout((1, 0)),
        ("wgrad", "grad_output"): Layout((1, 0)),
        ("wgrad", "input"): Layout((1, 0)),
    }

    def fprop(self, x: GemmOperand, w: GemmOperand, out_dtype: torch.dtype | None) -> Tensor:
        return run_gemm(F.linear, x, w, out_dtype)

    def dgrad(
        self, dy: GemmOperand, w: GemmOperand, x_shape, out_dtype: torch.dtype | None
    ) -> Tensor:
        return run_gemm(torch.mm, dy, w, out_dtype)

    def wgrad(
        self, dy: Tensor, x: Tensor | GemmOperand, ops: tuple[Operand, Operand], out_dtype
    ) -> Tensor:
        dy_op, x_op = ops
        x_operand = x if isinstance(x, GemmOperand) else None
        x_tensor = x.values if x_operand is not None else x
        short = -dy.shape[0] % BLOCK
        if short and (dy_op.mode == "quantize" or x_op.mode == "quantize"):
            # Zero token rows: the product and every amax are unchanged (see module docstring).
            dy = F.pad(dy, (0, 0, 0, short))
            x_tensor = F.pad(x_tensor, (0, 0, 0, short))
        a = self.operand("wgrad", "grad_output", dy, dy_op)
        if x_operand is not None:
            b = GemmOperand(x_tensor, x_operand.amax, x_operand.tensor_scale)
        else:
            b = self.operand("wgrad", "input", x_tensor, x_op)
        return run_gemm(lambda g, i: g.t() @ i, a, b, out_dtype)

    def broadcast_bias(self, bias: Tensor) -> Tensor:
        return bias

    def bias_grad(self, dy: Tensor) -> Tensor:
        return dy.sum(dim=0)
