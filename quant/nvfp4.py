"""NVFP4: 4-bit floats with two-level scaling, emulated bit-exactly in plain PyTorch.

This is the fast path that every quantized GEMM of QAT goes through. It reproduces NVIDIA
Transformer Engine (TE >= 2.14, recipe `NVFP4BlockScaling`) bit for bit; the contract is
docs/nvfp4.md, and quant/reference.py is the same algorithm written as slow explicit loops.

The format (docs/nvfp4.md s1)
------------------------
An element is FP4 E2M1: one sign bit and eight magnitudes

    code & 7 :  0    1    2    3    4    5    6    7
    value    :  0   0.5   1   1.5   2    3    4    6        (code 8 is -0, bit 3 is the sign)

so a tensor needs scaling to use that tiny range. NVFP4 scales twice:

- every block of 16 consecutive elements along the GEMM's contraction dimension ("1x16"; for
  weights in the 2D recipes a 16x16 tile) carries a *decode* scale s stored as FP8 E4M3;
- the whole tensor carries one FP32 scale derived from its amax a = max|x| ("current scaling":
  recomputed on every call, no history).

A real value is approximately value(code) * s * a / (6 * 448): s in [0, 448] stretches the block
and a / 2688 maps E4M3's range back onto the tensor's.

The arithmetic, in float32, step by step (docs/nvfp4.md s2; fl() is fp32 rounding)
------------------------------------------------------------------------------
1. a     = max|x|                                   (for an RHT operand: after the rotation)
2. S_enc = min(fl(2688 / a), FLT_MAX), 1 if a == 0;  S_dec = fl(1 / S_enc)
           The division must be a true division: in PyTorch `2688.0 / t` with a Python numerator
           is computed as a reciprocal then a multiply and differs in ~1/4 of cases, so the
           numerator is a tensor here.
3. s     = e4m3_rne(min(fl(b * fl(S_enc * fl(1/6))), 448))   b = block (or tile) amax
           (multiply by a folded constant, never divide by 6: that was TE <= 2.13). E4M3
           subnormals are kept, anything below 2^-10 becomes 0; no lower clamp.
4. e     = min(fl(1 / fl(s * S_dec)), FLT_MAX)       a zero scale gives FLT_MAX: its elements
           saturate to +-6 but dequantize to 0 (see the golden README)
5. v     = clamp(fl(x * e), -6, 6)                   a multiply, not a division
6. code  = E2M1 round-to-nearest-even of v: ties .25->0, .75->1, 1.25->1, 1.75->2, 2.5->2,
           3.5->4, 5->4. A value < 0 that rounds to zero gets code 8 (-0); -0.0 itself gets 0.
7. x_hat = value(code) * fl(fl(s * a) * fl(1/2688))  TE's dequantize kernel (`dequantize()`)

For GEMMs the operand is `value(code) * s` (`decode_blocks()`, exact in fp32) and the product is
multiplied once by alpha = a_A * a_B / (6*6*448*448) (docs/nvfp4.md s4); `fake_quantize` returns
exactly that operand plus a.

Fast E2M1 rounding without comparisons
---------------------------------------
Rounding v to E2M1 is rounding to a multiple of a step that depends on |v|'s binade: 0.5 below 2,
1 in [2, 4), 2 in [4, 8). Adding the magic number m = 1.5 * 2^(23 + log2 step) to v pushes v into
a binade whose fp32 spacing *is* that step, so the hardware addition rounds v to nearest, ties to
even, and subtracting m again is exact. "Even multiple of the step" is exactly E2M1's "even
mantissa" (5 -> 4 = 2*2, not 6 = 3*2), so the ties come out right for both signs, and clamping
to +-6 afterwards gives the saturation. m is built from v's own exponent bits with integer ops,
so the whole rounding is five element-wise ops and no Python loop (several times faster than
torch.bucketize with the tie rules on a 2-core CPU).

Two passes, chunk by chunk
--------------------------
Step 1 needs the whole tensor before any element can be encoded, so x is read twice: pass 1
takes the block amaxes (rotating first for the RHT), pass 2 encodes, rounds and decodes. On CPU
both run over chunks of rows sized to the L2 cache (`_CHUNK_ELEMENTS`) with small reused scratch:
the chain of element-wise ops on a chunk then stays in cache. `fake_quantize` writes the
rotation (or an fp32 copy of a bf16 input) into its own output buffer and works in place there,
so it allocates nothing tensor-sized beyond its result. A transposed fp32 matrix (x.t()
contiguous, the layout of W^T, dY^T and X^T in DGRAD/WGRAD) is quantized in its own memory
layout, blocks running down its columns, and returned transposed: no transposing copies.

Random Hadamard transform and stochastic rounding (docs/nvfp4.md s3)
---------------------------------------------------------------
`rht(x)` multiplies every contiguous 16-chunk c of the last dimension by R = diag(sign) H16 / 4
(H16 the Sylvester Hadamard matrix, fixed sign vector), in fp32, then rounds to bf16 as TE keeps
the rotated tensor in bf16. R is orthogonal, so rotating both GEMM operands along the contraction
dimension leaves the product unchanged and no inverse is ever applied.

Stochastic rounding replaces step 6: |v| goes up to the next grid point with probability
(|v| - lo) / (hi - lo) = p. Like TE on the GPU, each element gets 8 random bits (docs/nvfp4.md s3
asks for TE's distribution, not its bit stream), and the decision is the hardware's: add the byte to
the 8 bits below the kept grid position and carry, i.e. round up with probability floor(256 p)
/ 256, p truncated to 8 bits (bias below 1/256 of a step, toward zero; grid points, p = 0, never
move). `_round_stochastic_` does it in fixed point with integer ops. The bytes are 8 per 64-bit
word of `torch.Tensor.random_` from an explicit `torch.Generator` (torch's global generator when
none is given), drawn in x's row-major order, so a seeded run is reproducible and does not
depend on chunking or layout. One byte costs about 1/8 of a `torch.rand` float on CPU.
`stochastic_bits` and `stochastic_thresholds` hand the same decisions to quant/reference.py.

4over6 and row-scaled amax (TE 2.20; docs/nvfp4.md s7)
----------------------------------------------------
`four_over_six="mae" | "mse"`: every block (or tile) is quantized with two candidate scales and
keeps the one with the smaller error:

    S_enc = min(fl(6E / a), FLT_MAX)        E = e4m3_max: 448, or 256 (TE's 4over6 default)
    base  = fl(fl(b / 6) * S_enc)           a true division: TE <= 2.13's chain, not step 3's
    s6 = e4m3(min(base, 448)),  s4 = e4m3(min(fl(base * 1.5), 448))     (448 also when E = 256)
    error (exact, TE's default):  d = fl(fl(fl(fl(val(q) * s) * a) / fl(6E)) - x)
    error (`four_over_six_fast`): d = fl(val(q) * s - fl(x * S_enc))     (val * s is exact)

summed as |d| (MAE) or fl(d * d) (MSE) one fp32 add at a time, in element order from +0 over
each 16-element row segment (`_sum_in_order`, never torch.sum, whose order is its own); a 16x16
tile adds its 16 row errors in TE's fixed tree r_i = e_i + e_(i+8), then 4, 2, 1. Map-to-4 wins
only with a strictly lower error. The columnwise copy is this on x^T, so its tile sums run down
the original's columns and may pick differently near ties: a 4over6 weight's DGRAD copy is
quantized on its own, never taken as the FPROP tiles transposed (quant.functional). The cost is
two candidate passes (encode, round, score) before the usual encode (bench/bench_4over6.py).

`row_scaled=True`: a = max|x| per row (1x16 blocks only), S_enc and S_dec per row, the rest of
the chain unchanged; `.amax` is then one value per row and a GEMM's alpha a vector (quant.gemm).
quant/nvfp4_options.py lists the combinations Transformer Engine refuses, refused here too.

The scale chain stays on the device
-----------------------------------
Steps 2-4 are small tensor functions (`tensor_scales`, `block_scales`, `encode_factors`) on the
device-side amax: nothing is read back to the host, so a quantized training step never waits for
the GPU and torch.compile sees one graph. They broadcast, so a per-row amax vector (one S_enc per
row) or a second candidate scale goes through the same functions.

Inputs and errors
-----------------
fp32, bf16 and fp16 inputs are computed in fp32. A blocked dimension that is not a multiple of
16, a non-floating dtype and an empty tensor raise errors that say what is wrong. Non-finite
values (NaN/inf would poison the tensor amax) raise too when the quantizer is called directly;
inside a training step they are recorded in a device-side flag instead (`FiniteCheck`,
`deferred`) that the loop reads once per step with the loss, and the operand's decoded blocks
become NaN, so nothing downstream can mistake them for finite values.

FP32-subnormal inputs (the golden `fp32sub` case): when a is an fp32 subnormal, 2688 / a
overflows and S_enc is clamped to FLT_MAX, so the block scales and encode factors lose their
meaning. This module follows the same arithmetic as TE, never produces NaN or inf there, and
`tests/quant/test_nvfp4.py` checks that; the values themselves are not meaningful (TE's are
not either) and nothing trains on such tensors.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch

from quant.nvfp4_options import check_options

FP4_MAX = 6.0
E4M3_MAX = 448.0
FP4_E4M3_MAX = FP4_MAX * E4M3_MAX  # 2688: the amax that maps onto the largest representable
FLT_MAX = torch.finfo(torch.float32).max
BLOCK = 16
BLOCK_1D = (1, 16)
BLOCK_2D = (16, 16)
ROUNDINGS = ("nearest", "stochastic")

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
"""Magnitudes indexed by the low three bits of a code."""

RHT_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)
"""TE's fixed sign vector for the 16-point random Hadamard transform (docs/nvfp4.md s3)."""

# Step 6 magic: keep only v's exponent bits, clamp them to the binades [1,2) .. [4,8) (anything
# smaller rounds with step 0.5 like [1,2); anything larger saturates anyway): that is 2^e as a
# float; m = 1.5 * 2^22 * 2^e has an fp32 ulp of 2^(e - 1), the E2M1 step of v's binade.
_EXP_MASK = 0x7F800000
_EXP_LO = 127 << 23
_EXP_HI = 129 << 23
_MAGIC = 1.5 * 2.0**22
_I32 = torch.int32
_SR_SHIFT = 9 << 23  # exponent field minus 9: 2^e -> 2^(e - 9), a 256th of the E2M1 step


def _constant(name: str, device: torch.device) -> torch.Tensor:
    """A small lookup tensor, built once per device; compiled code gets it as a graph constant
    from the plain Python values (tracing the builders again would cost seconds per call)."""
    if torch.compiler.is_compiling():
        values, dtype = _CONSTANT_VALUES[name]
        return torch.tensor(values, dtype=dtype, device=device)
    return _cached_constants(device)[name]


@functools.cache
def _cached_constants(device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in _build_constants().items()}


def _build_constants() -> dict[str, torch.Tensor]:
    mags = torch.tensor(E2M1_VALUES, dtype=torch.float32)
    return {
        "values": torch.cat([mags, -mags]),  # -mags[0] is -0.0, code 8
        "code_of_key": _code_of_key(),
        "rht": _build_rht_matrix(),
        "numerator": torch.tensor(FP4_E4M3_MAX, dtype=torch.float32),
        "numerator_256": torch.tensor(FP4_MAX * 256, dtype=torch.float32),
        "six": torch.tensor(FP4_MAX, dtype=torch.float32),
        "inv_1536": torch.tensor(1.0 / (FP4_MAX * 256), dtype=torch.float32),
        "one": torch.tensor(1.0, dtype=torch.float32),
        "flt_max": torch.tensor(FLT_MAX, dtype=torch.float32),
        "one_sixth": torch.tensor(1.0 / 6.0, dtype=torch.float32),
        "inv_2688": torch.tensor(1.0 / FP4_E4M3_MAX, dtype=torch.float32),
    }


def _code_of_key() -> torch.Tensor:
    """Table from (fp32 bits of an E2M1 magnitude) >> 22, i.e. exponent and top mantissa bit,
    to its code: 0 -> 0, 0.5 -> 252 -> 1, 1 -> 254 -> 2, ..., 6 -> 259 -> 7; key + 512 (the
    sign) to code + 8."""
    mags = torch.tensor(E2M1_VALUES, dtype=torch.float32)
    keys = (mags.view(torch.int32) >> 22).long()
    table = torch.zeros(1024, dtype=torch.uint8)
    table[keys] = torch.arange(8, dtype=torch.uint8)
    table[keys + 512] = torch.arange(8, 16, dtype=torch.uint8)
    return table


def _build_rht_matrix() -> torch.Tensor:
    """R = diag(sign) @ H16 / 4 with H[i][j] = (-1)^popcount(i & j) (Sylvester order)."""
    idx = torch.arange(BLOCK)
    parity = torch.zeros(BLOCK, BLOCK, dtype=torch.int64)
    bits = idx[:, None] & idx[None, :]
    for shift in range(4):
        parity ^= (bits >> shift) & 1
    hadamard = 1.0 - 2.0 * parity.to(torch.float32)
    signs = torch.tensor(RHT_SIGNS, dtype=torch.float32)
    return signs[:, None] * hadamard * 0.25


_CONSTANT_VALUES = {k: (v.tolist(), v.dtype) for k, v in _build_constants().items()}


def rht_matrix(device: torch.device | str | None = None) -> torch.Tensor:
    """The 16x16 fp32 RHT matrix diag(sign) @ H16 / 4 (orthogonal; entries +-1/4)."""
    return _constant("rht", torch.device(device or "cpu")).clone()


# --------------------------------------------------------------------------- validation


def _check_floating(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{what}: expected a floating-point tensor (float32, bfloat16 or float16), "
            f"got {x.dtype}"
        )
    if x.numel() == 0:
        raise ValueError(f"{what}: cannot quantize an empty tensor of shape {tuple(x.shape)}")


def _check_multiple_of_16(x: torch.Tensor, dim: int, what: str) -> None:
    size = x.shape[dim]
    if size % BLOCK:
        below = size - size % BLOCK
        raise ValueError(
            f"{what}: the blocked dimension {dim} of a tensor of shape {tuple(x.shape)} has "
            f"size {size}, not a multiple of {BLOCK}: it is {size % BLOCK} over {below} and "
            f"{BLOCK - size % BLOCK} short of {below + BLOCK}"
        )


def _normalize_block(block) -> tuple[int, int]:
    block = tuple(block)
    if block not in (BLOCK_1D, BLOCK_2D):
        raise ValueError(f"block must be (1, 16) or (16, 16), got {block}")
    return block


def _check_args(x: torch.Tensor, block, rounding: str, generator, rht: bool, what: str):
    _check_floating(x, what)
    block = _normalize_block(block)
    if rounding not in ROUNDINGS:
        raise ValueError(f"{what}: rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if rht and block != BLOCK_1D:
        raise ValueError(f"{what}: rht=True needs block=(1, 16); 16x16 tiles are never rotated")
    if block == BLOCK_2D and x.dim() < 2:
        raise ValueError(f"{what}: block=(16, 16) needs at least 2 dims, got {tuple(x.shape)}")
    _check_multiple_of_16(x, -1, what)
    if block == BLOCK_2D:
        _check_multiple_of_16(x, -2, what)
    if generator is not None:
        _check_generator(generator, x.device, what)
    return block


def _check_generator(generator: torch.Generator, device: torch.device, what: str) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{what}: generator must be a torch.Generator, got {type(generator)}")
    gen = generator.device
    same = gen.type == device.type and (gen.index is None or device.index in (None, gen.index))
    if not same:
        raise ValueError(f"{what}: generator is on {gen} but the tensor is on {device}")


def _raise_non_finite(x: torch.Tensor, what: str) -> None:
    """The amax of what is quantized (x, or its rotation) is not finite: say why. The amax is
    NaN or inf exactly when some element is, so finite inputs pay for no extra pass."""
    bad = int((~torch.isfinite(x)).sum())
    if bad == 0:
        raise ValueError(f"{what}: the RHT of this input overflows to inf (|x| near FLT_MAX)")
    raise ValueError(
        f"{what}: input has {bad} non-finite value(s) (NaN or inf) out of {x.numel()}; "
        "NVFP4 cannot encode them and they would poison the tensor scale"
    )


# --------------------------------------------------------------------------- non-finite operands


class FiniteCheck:
    """A device-side record of non-finite operands, read once per training step.

    A NaN or inf element makes the tensor amax non-finite (and the operand's decoded blocks
    NaN, see `_poisoned`). Called directly, the quantizers raise at once, which costs a host
    synchronization per call; inside a training step that would stall the GPU's launch queue
    once per operand. Under `deferred(check)` they instead OR "this amax was not finite" into
    `check.flag`, a bool tensor on the device, and the training loop reads it together with
    the loss in one transfer (`failed`). So does torch.compile'd code (`deferred` around the
    compiled call; compiled code cannot raise on a device value without a sync).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.flag = torch.zeros((), dtype=torch.bool, device=device)

    def record(self, bad: torch.Tensor) -> None:
        """OR a bool tensor (any shape) into the flag, on the device."""
        self.flag.logical_or_(bad.any())

    def reset(self) -> None:
        self.flag.zero_()


_DEFERRED: FiniteCheck | None = None
"""The check that quantizers record into instead of raising; module-global rather than
thread-local because the CUDA backward runs on autograd's device thread."""


@contextlib.contextmanager
def deferred(check: FiniteCheck):
    """Quantizers called inside record non-finite operands into `check` instead of raising."""
    global _DEFERRED
    previous, _DEFERRED = _DEFERRED, check
    try:
        yield check
    finally:
        _DEFERRED = previous


def check_finite(amax: torch.Tensor, what: str, x: torch.Tensor | None) -> None:
    """Fail on a non-finite (or negative) amax: recorded on the device under `deferred` or
    while compiling, else raised here (one host sync). x: the tensor it is the amax of, to
    count its bad values; None for an amax given by the caller."""
    bad = ~(torch.isfinite(amax) & (amax >= 0))
    if _DEFERRED is not None:
        _DEFERRED.record(bad)
    elif not torch.compiler.is_compiling() and bool(bad):
        if x is None:
            raise ValueError(f"{what}: amax must be finite and >= 0, got {amax.item()}")
        _raise_non_finite(x, what)


# --------------------------------------------------------------------------- the element codec


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8 0..15) -> float32 values; code 8 decodes to -0.0."""
    # index_select with int32 indices is several times faster than advanced indexing on CPU.
    flat = codes.reshape(-1).to(torch.int32)
    return _constant("values", codes.device).index_select(0, flat).view(codes.shape)


def encode_e2m1(v: torch.Tensor) -> torch.Tensor:
    """Round already-scaled values to E2M1 codes, nearest-even, saturating at +-6 (step 6).

    Values beyond +-6 saturate (the caller clamps in the real chain); a value < 0 that rounds to
    zero gets code 8, while -0.0 gets code 0 as in TE's reference.
    """
    v = v.to(torch.float32)
    codes = (v < 0).to(torch.uint8)
    return _codes_from_rounded_(_round_nearest_(v.clone()), codes)


def _round_nearest_(v: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """In place: round fp32 v to the E2M1 grid, ties to even, saturate at +-6 (see docstring).

    scratch: an int32 tensor of v's shape for the magic numbers (allocated when None).
    """
    binade = torch.bitwise_and(v.view(torch.int32), _EXP_MASK, out=scratch)
    binade = binade.clamp_(_EXP_LO, _EXP_HI).view(torch.float32)  # 2^e, e in {0, 1, 2}
    # m = 1.5 * 2^22 * 2^e is exact, and so is folding it into the add as alpha * binade
    return v.add_(binade, alpha=_MAGIC).sub_(binade, alpha=_MAGIC).clamp_(-FP4_MAX, FP4_MAX)


def _round_stochastic_(v: torch.Tensor, bits: torch.Tensor, work: _Work) -> torch.Tensor:
    """In place: stochastic rounding of fp32 v onto the E2M1 grid with one random byte each.

    With q = 2^(e - 9) = step / 256 (a power of two from v's clamped exponent, as for nearest),
    v / q is |v| in 1/256ths of its step, exactly; truncated to an integer F it holds the grid
    point below in its high bits and floor(256 p) in its low 8 bits. Adding the byte and
    clearing the low 8 bits carries into the next grid point iff floor(256 p) + byte >= 256.
    Truncation is toward zero, so a negative v works the same way on -F (its carry test reads
    floor(256 p) + 255 - byte >= 256). v is clamped to +-6 first: 6 is the top of the [4, 8)
    binade (F = 768) and nothing ever rounds past it.
    """
    v = v.clamp_(-FP4_MAX, FP4_MAX)
    quantum = torch.bitwise_and(v.view(torch.int32), _EXP_MASK, out=work.like("int", v, _I32))
    quantum = quantum.clamp_(_EXP_LO, _EXP_HI).sub_(_SR_SHIFT).view(torch.float32)
    scaled = torch.div(v, quantum, out=work.like("float", v, torch.float32))
    fixed = work.like("fixed", v, _I32).copy_(scaled)  # the cast truncates toward zero
    fixed.add_(bits).bitwise_and_(-256)
    return torch.mul(fixed, quantum, out=v)


def _codes_from_rounded_(rounded: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """E2M1 values -> codes, in place in `codes` (uint8), which holds 1 where v < 0 on entry.

    Consumes `rounded` (its bits are reused as the index). The exponent and top mantissa bit of
    |r|, (bits >> 22) & 0x1FF, plus 512 for the sign index a small table. The sign comes from
    v, not r, because r is +0 for a negative v that rounds to zero (code 8) while v = -0.0
    must keep code 0.
    """
    key = rounded.view(torch.int32).bitwise_right_shift_(22).bitwise_and_(0x1FF)
    key.add_(codes.to(torch.int32), alpha=512)  # widened first: 1 * 512 does not fit a uint8
    lut = _constant("code_of_key", rounded.device)
    return torch.index_select(lut, 0, key.view(-1), out=codes.view(-1)).view(codes.shape)


# --------------------------------------------------------------------------- chunks


_CHUNK_ELEMENTS = 1 << 17
"""Elements per chunk and per torch thread on CPU (512 KiB of fp32 each). Both passes over a
tensor (block amax, then encode-round-decode) run chunk by chunk, so that the chain of
element-wise ops on a chunk works in the core's L2 cache instead of streaming the whole tensor
through memory once per op: on the 2-core development box this made the 1x16 fake-quantize
about 2.5x faster than whole-tensor ops, while chunks much smaller than this lose again to the
per-op dispatch. Scratch is a chunk's worth, so peak memory beyond input and output stays
small however large the tensor. On GPUs the whole tensor is one chunk."""


def _blocked(x32: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """View x as (T, r, C, 16): r = 1 row per 1x16 block, r = 16 rows per 16x16 tile."""
    rows = block[0]
    return x32.view(-1, rows, x32.shape[-1] // BLOCK, BLOCK)


def _row_chunks(t: torch.Tensor) -> list[slice]:
    rows, per_row = t.shape[0], math.prod(t.shape[1:])
    if t.device.type != "cpu" or torch.compiler.is_compiling():
        return [slice(0, rows)]  # the compiler fuses the whole tensor's chain instead
    step = max(1, _CHUNK_ELEMENTS * torch.get_num_threads() // per_row)
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _part(t: torch.Tensor, rows: slice) -> torch.Tensor:
    """A chunk's rows of t, and t itself (no slicing op) when the chunk is all of it."""
    return t if rows.start == 0 and rows.stop == t.shape[0] else t[rows]


class _Work:
    """Chunk-sized scratch buffers, each allocated on first use and reused for every chunk."""

    def __init__(self, t: torch.Tensor, chunks: list[slice]):
        self.size = max(c.stop - c.start for c in chunks) * math.prod(t.shape[1:])
        self.device = t.device
        self._buffers: dict[str, torch.Tensor] = {}

    def like(self, name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Buffer `name` (of `dtype`) viewed with t's shape."""
        buffer = self._buffers.get(name)
        if buffer is None:
            buffer = torch.empty(self.size, dtype=dtype, device=self.device)
            self._buffers[name] = buffer
        return (buffer if t.numel() == self.size else buffer[: t.numel()]).view(t.shape)


def _amax_dtype() -> torch.dtype:
    """The dtype `_chunk_amax` reduces in: int32 bit patterns in eager code, fp32 compiled."""
    return torch.float32 if torch.compiler.is_compiling() else _I32


def _chunk_amax(chunk: torch.Tensor, work: _Work, out: torch.Tensor) -> torch.Tensor:
    """(t, r, C, 16) -> block (or tile) amax, written to out (t, C) of `_amax_dtype()`.

    Eager code reduces the int32 bit patterns: for non-negative floats they order like the
    values (NaN's pattern is above inf's, so a NaN still surfaces), and the integer max kernel
    skips the NaN bookkeeping of the float one: about 1.5x faster on CPU. Compiled code
    reduces the floats (the same maxima; a NaN surfaces as NaN): Inductor's C++ backend
    reduces a bit-reinterpreted tensor one 16-element block at a time through a scalar
    bit_cast loop, about 15x slower than its float max (BENCHMARKS.md, issue 18).
    """
    magnitudes = torch.abs(chunk, out=work.like("float", chunk, torch.float32))
    if out.dtype == torch.float32:
        return torch.amax(magnitudes, dim=(1, 3), out=out)
    return out.copy_(magnitudes.view(torch.int32).amax(dim=(1, 3)))


# --------------------------------------------------------------------------- scales


def tensor_scales(amax: torch.Tensor, e4m3_max: int = 448) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: (S_enc, S_dec) from the tensor amax, as fp32 tensors of amax's shape.

    S_enc = 6E / amax with E = `e4m3_max` (448; 256 for a 4over6 tensor under TE's default).

    Elementwise, so a vector of per-row amaxes gives per-row scales. The numerator is a tensor:
    `2688.0 / t` with a Python numerator is a reciprocal and a multiply in PyTorch, not the
    correctly rounded division TE does.
    """
    one = _constant("one", amax.device)
    numerator = "numerator" if e4m3_max == 448 else "numerator_256"
    s_enc = torch.div(_constant(numerator, amax.device), amax)
    s_enc = torch.minimum(s_enc, _constant("flt_max", amax.device))
    s_enc = torch.where((amax == 0) | (s_enc == 0), one, s_enc)
    return s_enc, torch.div(one, s_enc)


def block_scales(block_amax: torch.Tensor, s_enc: torch.Tensor) -> torch.Tensor:
    """Step 3: E4M3 decode scales (returned as exact fp32 values) from block amaxes.

    s_enc: fp32, 0-d or broadcastable against block_amax (one value per row of blocks).
    """
    folded = s_enc * _constant("one_sixth", s_enc.device)
    return e4m3_round(block_amax * folded)


def e4m3_round(scaled: torch.Tensor) -> torch.Tensor:
    """Clamp to <= 448, then round to E4M3 (nearest even, subnormals kept), as exact fp32.

    The explicit clamp: older torch versions turn out-of-range values into NaN, not 448.
    """
    return scaled.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).to(torch.float32)


def encode_factors(scales: torch.Tensor, s_dec: torch.Tensor) -> torch.Tensor:
    """Step 4: e = min(1 / fl(s * S_dec), FLT_MAX); zero scales give FLT_MAX.

    s_dec: fp32, 0-d or broadcastable against scales. A true division, never a reciprocal
    approximation (see quant.compile for the compiler settings that keep it so on GPUs).
    """
    return torch.div(_constant("one", scales.device), scales * s_dec).clamp(max=FLT_MAX)


def _poisoned(scale: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """scale, or NaN when the tensor amax is not finite, so that every block scale, encode
    factor and decoded block of such an operand is NaN: a NaN/inf input can never come out as
    finite values, whether or not anyone reads the finiteness flag. A select on the device (no
    branch, no host sync), not arithmetic: `scale + amax * 0` does the same in eager code, but
    Inductor folds `amax * 0` to 0 and compiled code then decoded an inf operand as finite
    values (tests/quant/test_compile.py pins this through Inductor)."""
    return torch.where(torch.isfinite(amax), scale, torch.nan)


def _dequant_factors(scales: torch.Tensor, amax: torch.Tensor, e4m3_max: int = 448):
    """Step 7's per-block factor fl(fl(s * a) * fl(1/(6E))); a per-row amax broadcasts."""
    inverse = _constant("inv_2688" if e4m3_max == 448 else "inv_1536", scales.device)
    return (scales * amax) * inverse


# --------------------------------------------------------------------------- RHT


def rht(x: torch.Tensor) -> torch.Tensor:
    """Rotate every 16-chunk c of the last dimension to c @ R, in fp32, rounded to bf16.

    Returns a bfloat16 tensor of x's shape (TE keeps the rotated operand in bf16).
    """
    _check_floating(x, "rht")
    _check_multiple_of_16(x, -1, "rht")
    xb = x.reshape(-1, BLOCK)
    out = torch.empty(xb.shape, dtype=torch.bfloat16, device=x.device)
    work = _Work(xb, _row_chunks(xb))
    with _full_fp32_matmul():
        for rows in _row_chunks(xb):
            _rotate_chunk(_part(xb, rows), _part(out, rows), work)
    return out.view(x.shape)


def _rotate_chunk(x: torch.Tensor, out: torch.Tensor, work: _Work) -> torch.Tensor:
    """out = bf16(x @ R) for a chunk of x; out has x's shape and any float dtype."""
    x16 = x.reshape(-1, BLOCK)
    r = _constant("rht", x.device)
    if x16.dtype != torch.float32:
        x16 = x16.to(torch.float32)
    if torch.compiler.is_compiling():
        return out.copy_(_round_to_bf16(torch.mm(x16, r)).view(out.shape))
    product = torch.mm(x16, r, out=work.like("float", x16, torch.float32))
    return out.copy_(product.to(torch.bfloat16).view(out.shape))


def _round_to_bf16(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> the nearest bf16 value (ties to even), still as fp32, with integer ops only.

    What `t.to(bfloat16).float()` computes, but compilers keep it: Inductor drops a
    down-then-up cast pair and would quantize the unrounded rotation. The magnitude's low 16
    bits round into bit 16 (adding 0x7FFF plus bit 16 carries exactly when RNE rounds up); a
    NaN's magnitude is first replaced by the quiet NaN's, so no payload carries into the sign
    bit and none rounds down onto inf (checked over all 2^32 patterns by
    bench/exhaustive_compiled.py).
    """
    bits = t.view(torch.int32)
    sign = torch.bitwise_and(bits, -(2**31))
    magnitude = torch.bitwise_and(bits, 0x7FFFFFFF)
    magnitude = torch.where(magnitude > 0x7F800000, 0x7FC00000, magnitude)
    magnitude = magnitude + torch.bitwise_and(magnitude >> 16, 1) + 0x7FFF
    return torch.bitwise_or(torch.bitwise_and(magnitude, -65536), sign).view(torch.float32)


@contextlib.contextmanager
def _full_fp32_matmul():
    """TF32 (CUDA) or bf16 (oneDNN) fp32 matmuls would truncate x before the exact products.

    Compiled code cannot switch the setting inside the graph: quant.compile checks it is
    "highest" when it compiles."""
    if torch.compiler.is_compiling() or torch.get_float32_matmul_precision() == "highest":
        yield
        return
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)


# --------------------------------------------------------------------------- the tensor


@dataclass(frozen=True, eq=False)
class NVFP4Tensor:
    """A quantized tensor: E2M1 codes, E4M3 block decode scales and the FP32 tensor amax.

    codes:  uint8, x's shape, one code (0..15) per element (use `pack()` for 2 per byte)
    scales: float32 holding exact E4M3 values; (*lead, N/16) for 1x16 blocks along the last
            dim, (*lead, M/16, N/16) for 16x16 tiles over the last two dims
    amax:   0-d float32, the tensor amax a (after the RHT when `rotated`); for a row-scaled
            tensor one value per row, (*lead,)
    block:  (1, 16) or (16, 16); rotated: whether the codes encode rht(x) rather than x
    e4m3_max: E of the tensor scale 6E / a (448; 256 for a 4over6 tensor with TE's default)
    """

    codes: torch.Tensor
    scales: torch.Tensor
    amax: torch.Tensor
    block: tuple[int, int] = BLOCK_1D
    rotated: bool = False
    e4m3_max: int = 448

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def global_scale(self) -> torch.Tensor:
        """fl(a * fl(1/(6E))): the tensor-level decode factor of TE's dequantize formula."""
        key = "inv_2688" if self.e4m3_max == 448 else "inv_1536"
        return self.amax * _constant(key, self.amax.device)

    @property
    def scales_e4m3(self) -> torch.Tensor:
        """The block scales as torch.float8_e4m3fn (lossless: they are E4M3 values)."""
        return self.scales.to(torch.float8_e4m3fn)

    @property
    def scale_bits(self) -> torch.Tensor:
        """The raw E4M3 bytes of the block scales (uint8)."""
        return self.scales_e4m3.view(torch.uint8)

    def _per_element(self, per_block: torch.Tensor) -> torch.Tensor:
        values = decode_e2m1(self.codes).view(-1, self.block[0], self.shape[-1] // BLOCK, BLOCK)
        factors = per_block.reshape(-1, 1, self.shape[-1] // BLOCK, 1)
        return values.mul_(factors).view(self.shape)

    def decode_blocks(self) -> torch.Tensor:
        """value(code) * s as float32: the GEMM operand of docs/nvfp4.md s4 (exact)."""
        return self._per_element(self.scales)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """value(code) * fl(fl(s * a) * fl(1/(6E))): TE's dequantize kernel (docs/nvfp4.md s2.7),
        with the row's amax when row-scaled."""
        amax = self.amax[..., None] if self.amax.dim() else self.amax
        factors = _dequant_factors(self.scales, amax, self.e4m3_max)
        return self._per_element(factors).to(dtype)

    def pack(self) -> torch.Tensor:
        """Two codes per byte along the last dim: element 2i in the low nibble (TE's layout)."""
        return pack_codes(self.codes)

    @classmethod
    def unpack(
        cls,
        packed: torch.Tensor,
        scales: torch.Tensor,
        amax: torch.Tensor,
        block=BLOCK_1D,
        rotated: bool = False,
        e4m3_max: int = 448,
    ) -> NVFP4Tensor:
        """Rebuild a tensor from `pack()`ed codes and its scales and amax."""
        block = _normalize_block(block)
        return cls(unpack_codes(packed), scales, amax, block, rotated, e4m3_max)

    def __repr__(self) -> str:
        return (
            f"NVFP4Tensor(shape={tuple(self.shape)}, block={self.block}, "
            f"amax={_describe_amax(self.amax)}, rotated={self.rotated}, "
            f"e4m3_max={self.e4m3_max}, device={self.codes.device})"
        )


def _describe_amax(amax: torch.Tensor) -> str:
    return f"{float(amax):.6g}" if amax.dim() == 0 else f"<{amax.numel()} rows>"


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (..., N) with N even -> uint8 bytes (..., N/2), low nibble first."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"pack_codes: codes must be uint8, got {codes.dtype}")
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_codes: last dim must be even, got shape {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError("pack_codes: codes must be 4-bit values in 0..15")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_codes: uint8 bytes (..., N/2) -> uint8 codes (..., N)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_codes: packed must be uint8, got {packed.dtype}")
    pairs = torch.stack([packed & 15, packed >> 4], dim=-1)
    return pairs.view(*packed.shape[:-1], packed.shape[-1] * 2)


# --------------------------------------------------------------------------- SR random bits


_GENERATORS: dict[int, torch.Generator] = {}
_TOKENS: dict[int, torch.Tensor] = {}


def register_generator(generator: torch.Generator) -> int:
    """Let compiled code draw SR bytes from `generator` (quant.prepare does it for a model's).

    torch.compile cannot trace a torch.Generator, so compiled quantizers draw through the
    custom op `nvfp4_emulation::draw_bytes`, which finds the generator by this key. Each draw
    also bumps a small token tensor of the generator's, which the op declares it mutates:
    that orders the draws in the compiled graph exactly as eager code makes them, so compiled
    and eager SR see the very same bytes.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    key = id(generator)
    if _GENERATORS.get(key) is not generator:
        _GENERATORS[key] = generator
        _TOKENS[key] = torch.zeros((), dtype=torch.int64, device=generator.device)
    return key


@torch.library.custom_op("nvfp4_emulation::draw_bytes", mutates_args=("token",))
def _draw_bytes_op(token: torch.Tensor, n: int, key: int) -> torch.Tensor:
    token.add_(1)
    return _draw_words(n, _GENERATORS[key], token.device).view(torch.uint8)


@_draw_bytes_op.register_fake
def _(token: torch.Tensor, n: int, key: int) -> torch.Tensor:
    return torch.empty(n, dtype=torch.uint8, device=token.device)


def _compiled_draw(n: int, generator: torch.Generator | None) -> torch.Tensor:
    key = id(generator)
    if generator is None or _GENERATORS.get(key) is not generator:
        raise ValueError(
            "compiled stochastic rounding needs an explicit generator registered with "
            "quant.nvfp4.register_generator(generator) before compiling (quant.prepare "
            "registers the model's)"
        )
    return _draw_bytes_op(_TOKENS[key], n, key)


def _draw_bytes(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """n random bytes (n a multiple of 8), eight per 64-bit word from `generator`."""
    if torch.compiler.is_compiling():
        return _compiled_draw(n, generator)
    return _draw_words(n, generator, device).view(torch.uint8)


def _draw_words(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    words = torch.empty(n // 8, dtype=torch.int64, device=device)
    # random_()'s default range on int64 is [0, 2^63), which would leave every 8th byte 7-bit;
    # from=-2^63 with no upper bound asks for all 64 bits.
    return words.random_(-(2**63), None, generator=generator)


def stochastic_bits(
    shape, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """The random bytes (uint8, `shape`) that stochastic rounding of a tensor of that shape draws.

    The quantizer draws them chunk by chunk in memory order; the generator is a serial stream,
    so this one call returns the very same bytes and leaves the generator in the same state.
    """
    n = math.prod(shape)
    if n % 8:
        raise ValueError(f"stochastic_bits: {n} elements is not a multiple of 8")
    return _draw_bytes(n, generator, device).view(shape)


def stochastic_thresholds(bits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-element u in (0, 1) with which the rule "round |v| up iff u < p" decides as we do.

    p = (|v| - lo) / (hi - lo), the rule of docs/nvfp4.md s3 and of quant/reference.py, which takes
    u as its draws. `bits` are the bytes of `stochastic_bits`, `values` the tensor quantized (x,
    or rht(x)), whose signs pick the form of the carry test (see `_round_stochastic_`): a
    positive v rounds up iff p >= (256 - byte) / 256, a negative one iff p >= (byte + 1) / 256;
    u is the float just below that edge, so u < p iff p >= edge. For tests.
    """
    k = bits.to(torch.float32)
    edge = torch.where(values < 0, k + 1, 256 - k) / 256
    return torch.nextafter(edge, torch.zeros_like(edge))


# --------------------------------------------------------------------------- 4over6, row-scaled


@dataclass(frozen=True)
class ScaleOptions:
    """TE 2.20's quantizer options (see the module docstring); the defaults are plain NVFP4."""

    four_over_six: str | None = None
    four_over_six_fast: bool = False
    e4m3_max: int = 448
    row_scaled: bool = False

    def check(self, block, rounding: str, rht: bool, amax_given: bool, what: str) -> None:
        check_options(
            block=block,
            stochastic=rounding == "stochastic",
            rht=rht,
            four_over_six=self.four_over_six,
            four_over_six_fast=self.four_over_six_fast,
            e4m3_max=self.e4m3_max,
            row_scaled=self.row_scaled,
            amax_given=amax_given,
            what=what,
        )


def _row_amax(block_amax: torch.Tensor, transposed: bool) -> torch.Tensor:
    """Per-row amax of x from its (T, C) block amaxes, shaped to broadcast against them: rows
    are T ((T, 1)) for 1x16 blocks along x's last dim, C ((1, C)) in the transposed layout."""
    return block_amax.amax(dim=0, keepdim=True) if transposed else block_amax.amax(1, True)


def _four_over_six_scales(src, b, s_enc, s_dec, amax, opts: ScaleOptions, chunks: list[slice]):
    """4over6: each block's (scale, encode factor), map-to-4 where its error is lower.

    src: (T, r, C, w) what is quantized; b: (T, C) block (tile) amaxes; s_enc, s_dec, amax: 0-d,
    or per row broadcasting against b. base = fl(fl(b / 6) * S_enc); the candidates are
    e4m3(base) and e4m3(fl(base * 1.5)) (both clamped to 448). The errors are computed chunk by
    chunk of rows (the chunks of pass 1), so the element-wise chain stays in cache.
    """
    base = torch.div(b, _constant("six", b.device)) * s_enc
    s6, s4 = e4m3_round(base), e4m3_round(base * 1.5)
    e6, e4 = encode_factors(s6, s_dec), encode_factors(s4, s_dec)
    err6, err4 = torch.empty_like(b), torch.empty_like(b)
    for rows in chunks:

        def part(t: torch.Tensor, rows=rows) -> torch.Tensor:
            return t if t.dim() == 0 or t.shape[0] == 1 else _part(t, rows)

        chunk = _part(src, rows)
        for scale, factor, err in ((s6, e6, err6), (s4, e4, err4)):
            error = _candidate_error(
                chunk, part(scale), part(factor), part(s_enc), part(amax), opts
            )
            _part(err, rows).copy_(error)
    four = err4 < err6  # strictly: ties (and NaN) go to map-to-6
    return torch.where(four, s4, s6), torch.where(four, e4, e6)


def _per_element_view(t: torch.Tensor) -> torch.Tensor:
    """A (T, C)-broadcastable tensor viewed against (T, r, C, w); 0-d stays 0-d."""
    return t if t.dim() == 0 else t.reshape(t.shape[0], 1, t.shape[1], 1)


def _candidate_error(src, scale, factor, s_enc, amax, opts: ScaleOptions) -> torch.Tensor:
    """(T, C): one candidate's error per block, summed as TE sums it (see the docstring).

    exact: d = fl(fl(fl(val * s) * a) / fl(6E)) - x), a true division by 6E; fast: d =
    val * s - fl(x * S_enc). MAE sums |d|, MSE fl(d * d), in element order from +0 per
    16-element row segment; a 16x16 tile then adds its 16 row errors in a fixed tree.
    """
    rounded = _round_nearest_(torch.mul(src, _per_element_view(factor)))
    decoded = rounded.mul_(_per_element_view(scale))  # exact: <= 8 significant bits
    if opts.four_over_six_fast:
        d = decoded.sub_(src * _per_element_view(s_enc))
    else:
        denominator = _constant(
            "numerator" if opts.e4m3_max == 448 else "numerator_256", src.device
        )
        d = decoded.mul_(_per_element_view(amax)).div_(denominator).sub_(src)
    per_element = d.abs_() if opts.four_over_six == "mae" else d.mul_(d)
    return _block_error(per_element)


def _block_error(e: torch.Tensor) -> torch.Tensor:
    """(T, r, C, w) element errors -> (T, C) block errors in TE's summation order."""
    if e.shape[3] == 1:  # the transposed layout: a block's 16 elements run along dim 1
        return _sum_in_order(e[:, :, :, 0].unbind(1))
    # (T, r, C): each row segment in element order; the element index first, so that each of
    # the 15 adds reads contiguous memory (about 1.5x faster than strided slices on CPU)
    rows = _sum_in_order(e.movedim(3, 0).contiguous().unbind(0))
    while rows.shape[1] > 1:  # a tile: r_i = e_i + e_(i+8), then 4, 2, 1 (TE's warp tree)
        half = rows.shape[1] // 2
        rows = rows[:, :half] + rows[:, half:]
    return rows[:, 0]


def _sum_in_order(terms) -> torch.Tensor:
    """fl(...fl(fl(0 + t0) + t1)... + t15): one rounding per add, in order (not torch.sum)."""
    total = terms[0] + 0.0  # +0 + t0: a copy, and -0 becomes +0 as in TE
    for term in terms[1:]:
        total = total + term
    return total


# --------------------------------------------------------------------------- quantizers


@dataclass
class _Prepared:
    """Pass 1 done (steps 1-4): what the element-wise steps 5-6 need, chunk by chunk."""

    src: torch.Tensor  # (T, r, C, 16) fp32: what is quantized (x, or its rotation / fp32 copy)
    scales: torch.Tensor  # (T, 1, C, 1) E4M3 decode scales as fp32
    factors: torch.Tensor  # (T, 1, C, 1) encode factors e
    amax: torch.Tensor  # 0-d fp32
    block: tuple[int, int]
    chunks: list[slice]
    work: _Work
    generator: torch.Generator | None
    stochastic: bool
    bits: torch.Tensor | None = None  # SR bytes drawn up front (transposed layout), src's shape


def _is_transposed(x: torch.Tensor, block, rht_first: bool) -> bool:
    """x is a transposed fp32 matrix (x.t() contiguous) to quantize 1x16 without rotation.

    The GEMM layouts hand over such views for every operand blocked along a dimension that is
    not innermost in memory (W^T in DGRAD, dY^T and X^T in WGRAD). Their 1x16 blocks are 16
    consecutive rows of the contiguous x.t() at one column, so x.t() viewed (K/16, 16, M, 1)
    is already blocked: no transposing copy in, none out (the result is returned transposed).
    """
    return (
        isinstance(x, torch.Tensor)
        and isinstance(block, (tuple, list))
        and tuple(block) == BLOCK_1D
        and not rht_first
        and x.dim() == 2
        and x.dtype == torch.float32
        and min(x.shape) > 1
        and not x.is_contiguous()
        and x.t().is_contiguous()
    )


def _blocked_input(x, block, rht_first, transposed: bool) -> torch.Tensor:
    """x as a (T, r, C, w) view with r * w = 16 (1x16) or 256 (tiles): blocks over dims 1, 3."""
    if transposed:
        return x.t().view(x.shape[1] // BLOCK, BLOCK, x.shape[0], 1)
    return _blocked(x.contiguous(), block)


def _prepare(
    x, block, rounding, generator, rht_first, amax, what, staging, transposed=False, opts=None
) -> _Prepared:
    """Pass 1: (rotate,) block amax chunk by chunk, then the tensor and block scales.

    staging(shape) returns the fp32 buffer that receives the rotation (or the fp32 copy of a
    bf16/fp16 x), a new tensor when None; fake_quantize passes its output buffer, so this costs
    no extra tensor. transposed: x qualifies for `_is_transposed` and is quantized in place of
    its memory layout.
    """
    block = _check_args(x, block, rounding, generator, rht_first, what)
    opts = opts or ScaleOptions()
    opts.check(block, rounding, rht_first, amax is not None, what)
    xb = _blocked_input(x, block, rht_first, transposed)
    src = xb
    if rht_first or x.dtype != torch.float32:
        src = torch.empty(xb.shape, device=x.device) if staging is None else staging(xb.shape)
    chunks = _row_chunks(xb)
    work = _Work(xb, chunks)
    block_amax = torch.empty(xb.shape[0], xb.shape[2], dtype=_amax_dtype(), device=x.device)
    with _full_fp32_matmul() if rht_first else contextlib.nullcontext():
        for rows in chunks:
            if rht_first:
                chunk = _rotate_chunk(_part(xb, rows), _part(src, rows), work)
            elif src is not xb:
                chunk = _part(src, rows).copy_(_part(xb, rows))
            else:
                chunk = _part(xb, rows)
            _chunk_amax(chunk, work, _part(block_amax, rows))
    b = block_amax.view(torch.float32)
    own_amax = b.amax()
    check_finite(own_amax, what, x)
    if amax is not None:
        given = _given_amax(amax, x.device, what)
        # given, but NaN if x is not finite
        own_amax = torch.maximum(given, _poisoned(torch.zeros_like(given), own_amax))
    scale_amax = _row_amax(b, transposed) if opts.row_scaled else own_amax
    s_enc, s_dec = tensor_scales(scale_amax, opts.e4m3_max)
    s_enc, s_dec = _poisoned(s_enc, own_amax), _poisoned(s_dec, own_amax)
    if opts.four_over_six is None:
        scales = block_scales(b, s_enc)
        factors = encode_factors(scales, s_dec)
    else:
        scales, factors = _four_over_six_scales(src, b, s_enc, s_dec, scale_amax, opts, chunks)
    if opts.row_scaled:
        own_amax = scale_amax.reshape(x.shape[:-1])
    bits = None
    if transposed and rounding == "stochastic":
        # SR bytes go to elements in x's row-major order whatever the layout, so a transposed
        # x gets the same bits as x.contiguous(): draw them all, then view them like src.
        bits = stochastic_bits(x.shape, generator, x.device).t().view(xb.shape)
    per_block = (xb.shape[0], 1, xb.shape[2], 1)
    return _Prepared(
        src,
        scales.view(per_block),
        factors.view(per_block),
        own_amax,
        block,
        chunks,
        work,
        generator,
        rounding == "stochastic",
        bits,
    )


def _round_chunk_(p: _Prepared, rows: slice, v: torch.Tensor) -> torch.Tensor:
    """Step 6 in place on one chunk of v = fl(x * e), nearest or stochastic."""
    if not p.stochastic:
        return _round_nearest_(v, p.work.like("int", v, _I32))
    if p.bits is not None:
        bits = _part(p.bits, rows)
    else:
        bits = _draw_bytes(v.numel(), p.generator, v.device).view(v.shape)
    return _round_stochastic_(v, bits, p.work)


def _given_amax(amax, device: torch.device, what: str) -> torch.Tensor:
    amax = torch.as_tensor(amax, dtype=torch.float32, device=device)
    if amax.numel() != 1:
        raise ValueError(f"{what}: amax must be a single number, got shape {tuple(amax.shape)}")
    amax = amax.reshape(())
    check_finite(amax, what, None)
    return amax


def _scales_shape(shape: torch.Size, block: tuple[int, int]) -> tuple[int, ...]:
    if block == BLOCK_1D:
        return (*shape[:-1], shape[-1] // BLOCK)
    return (*shape[:-2], shape[-2] // BLOCK, shape[-1] // BLOCK)


@torch.no_grad()
def quantize(
    x: torch.Tensor,
    block=BLOCK_1D,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
    rht: bool = False,
    *,
    amax: torch.Tensor | float | None = None,
    four_over_six: str | None = None,
    four_over_six_fast: bool = False,
    e4m3_max: int = 448,
    row_scaled: bool = False,
) -> NVFP4Tensor:
    """Quantize x to NVFP4 along its last dim (1x16) or over 16x16 tiles of its last two dims.

    rounding="stochastic" draws one random byte per element from `generator` (torch's global
    generator when None; see `stochastic_bits`). rht=True rotates the last dim first (`rht`),
    then quantizes 1x16 with the post-rotation amax. Blocks always run along the last dim:
    callers transpose.

    amax: the tensor amax to scale with instead of x's own (post-rotation) max|x|, for x a
    slice of a larger tensor whose blocks are quantized with that tensor's scale (e.g. one
    kernel tap of an im2col); blocks are independent given the tensor scale, so the slice
    comes out exactly as inside the whole. It should be >= max|x| (else blocks saturate).

    TE 2.20's options (module docstring, "4over6 and row-scaled amax"; quant.nvfp4_options says
    which combinations are refused): `four_over_six="mae" | "mse"` picks each block's scale
    from the map-to-6 and map-to-4 candidates, `four_over_six_fast` with TE's fast error path;
    `e4m3_max` is E in S_enc = 6E / a (256 only with 4over6); `row_scaled=True` scales each
    row with its own amax, and `.amax` is then one value per row, shape x.shape[:-1].
    """
    opts = ScaleOptions(four_over_six, four_over_six_fast, e4m3_max, row_scaled)
    p = _prepare(x, block, rounding, generator, rht, amax, "quantize", None, opts=opts)
    codes = torch.empty(p.src.shape, dtype=torch.uint8, device=x.device)
    for rows in p.chunks:
        src = _part(p.src, rows)
        v = torch.mul(src, _part(p.factors, rows), out=p.work.like("v", src, torch.float32))
        # the sign before rounding: -0.0 and underflows to -0.0 get code 0, as in TE (a copy:
        # Inductor cannot lower a comparison written into a bool view of uint8 on CUDA)
        _part(codes, rows).copy_(v < 0)
        _codes_from_rounded_(_round_chunk_(p, rows, v), _part(codes, rows))
    scales = p.scales.view(_scales_shape(x.shape, p.block))
    return NVFP4Tensor(codes.view(x.shape), scales, p.amax, p.block, rht, e4m3_max)


@torch.no_grad()
def fake_quantize(
    x: torch.Tensor,
    block=BLOCK_1D,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
    rht: bool = False,
    *,
    amax: torch.Tensor | float | None = None,
    four_over_six: str | None = None,
    four_over_six_fast: bool = False,
    e4m3_max: int = 448,
    row_scaled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The QAT hot path: (value(code) * s as float32 of x's shape, amax as a 0-d fp32 tensor).

    Equals `q = quantize(...)` then `(q.decode_blocks(), q.amax)` without building codes. A GEMM
    of two such operands times alpha = a_A * a_B / (6*6*448*448) is the NVFP4 GEMM (docs/nvfp4.md
    s4). `amax` as for `quantize`; the returned amax is then that one. Two passes over x, each chunk
    by chunk: block amax (rotating into the output buffer first for rht=True), then
    encode, round and decode in place in the output. The TE 2.20 options as for `quantize`
    (the amax is then one value per row when `row_scaled`).
    """
    opts = ScaleOptions(four_over_six, four_over_six_fast, e4m3_max, row_scaled)
    transposed = _is_transposed(x, block, rht)
    shape = x.shape[::-1] if transposed else x.shape
    blocks = torch.empty(shape, dtype=torch.float32, device=x.device)
    staging = lambda shape: blocks.view(shape)  # noqa: E731
    p = _prepare(
        x, block, rounding, generator, rht, amax, "fake_quantize", staging, transposed, opts
    )
    out = blocks.view(p.src.shape)
    for rows in p.chunks:
        v = torch.mul(_part(p.src, rows), _part(p.factors, rows), out=_part(out, rows))
        _round_chunk_(p, rows, v).mul_(_part(p.scales, rows))
    return (blocks.t() if transposed else blocks), p.amax
