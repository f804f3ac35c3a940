"""The slow, obviously correct NVFP4 quantizer: explicit loops and tables. Tests only.

quant/nvfp4.py is the fast path (bit tricks, whole-tensor ops). This module writes the same
algorithm (docs/nvfp4.md s2-3) the way the specification reads, one block and one element
at a time, so that a test comparing the two on many shapes checks the fast path's tricks:

- every fp32 operation is done on Python floats (doubles) and rounded to fp32 by `fl`; for one
  +, -, *, / of fp32 inputs the double result rounded to single is the correctly rounded single
  result (53 >= 2*24 + 2 bits), so fl() in the specification is exactly what happens here;
- E2M1 rounding walks the threshold table below (round-to-nearest-even written out as
  "<= 0.25 -> 0, < 0.75 -> 0.5, ...");
- the E4M3 cast of the block scale picks the nearest entry of a table of all 127 finite E4M3
  magnitudes, ties to the even code, instead of trusting torch's float8 conversion;
- the RHT sums its 16 products in index order in fp32 and rounds to bf16 by hand;
- stochastic rounding takes its uniform draws as an argument, so a test can hand it the very
  draws the fast path takes from a seeded generator.

It is far too slow for training: keep inputs to a few thousand elements.
"""

from __future__ import annotations

import bisect
import math
import struct
from dataclasses import dataclass

import torch

from quant.nvfp4_options import check_options

FLT_MAX = torch.finfo(torch.float32).max

E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

# Round-to-nearest-even onto E2M1, as a table: (upper bound, bound included?, magnitude code).
# Ties go to the even mantissa: .25->0, .75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4.
E2M1_THRESHOLDS = (
    (0.25, True, 0),
    (0.75, False, 1),
    (1.25, True, 2),
    (1.75, False, 3),
    (2.5, True, 4),
    (3.5, False, 5),
    (5.0, True, 6),
)

RHT_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)


def fl(x: float) -> float:
    """Round a double to the nearest fp32 value (ties to even), overflowing to +-inf."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:  # CPython raises exactly when the rounded value is infinite
        return math.copysign(math.inf, x)


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def _e4m3_table() -> list[float]:
    """All finite non-negative E4M3 (fn) values by code 0..126: 4 exponent bits (bias 7), 3
    mantissa bits, subnormals at exponent 0, code 127 is NaN, no infinities; max 448."""
    values = []
    for code in range(127):
        exponent, mantissa = code >> 3, code & 7
        if exponent == 0:
            values.append(mantissa / 8 * 2.0**-6)
        else:
            values.append((1 + mantissa / 8) * 2.0 ** (exponent - 7))
    return values


E4M3_VALUES = _e4m3_table()


def e4m3_round(x: float) -> tuple[float, int]:
    """Round a float in [0, 448] to E4M3, nearest, ties to the even code: (value, code)."""
    if not 0 <= x <= 448:
        raise ValueError(f"e4m3_round expects 0 <= x <= 448, got {x}")
    i = bisect.bisect_right(E4M3_VALUES, x) - 1  # E4M3_VALUES[i] <= x
    if i == len(E4M3_VALUES) - 1 or E4M3_VALUES[i] == x:
        return E4M3_VALUES[i], i
    below, above = x - E4M3_VALUES[i], E4M3_VALUES[i + 1] - x  # exact: fp32 inputs in doubles
    if below < above or (below == above and i % 2 == 0):
        return E4M3_VALUES[i], i
    return E4M3_VALUES[i + 1], i + 1


def e2m1_code(v: float) -> int:
    """Nearest-even E2M1 code of v (already clamped to [-6, 6]) by walking the threshold table.

    Sign bit 8 when v < 0, so a negative value rounding to zero is -0 (code 8); -0.0 is not < 0
    and gets code 0, as in TE's reference.
    """
    magnitude = abs(v)
    code = 7
    for bound, included, candidate in E2M1_THRESHOLDS:
        if magnitude < bound or (included and magnitude == bound):
            code = candidate
            break
    return code | (8 if v < 0 else 0)


def e2m1_code_stochastic(v: float, u: float) -> int:
    """Stochastic E2M1 code of v in [-6, 6] given one uniform draw u in [0, 1).

    lo/hi are the grid points around |v|; round up when u < (|v| - lo) / (hi - lo).
    """
    magnitude = abs(v)
    lo_index = max(i for i, g in enumerate(E2M1_GRID) if g <= magnitude)
    code = lo_index
    if lo_index < 7:
        lo, hi = E2M1_GRID[lo_index], E2M1_GRID[lo_index + 1]
        if u < fl(fl(magnitude - lo) / (hi - lo)):
            code = lo_index + 1
    return code | (8 if v < 0 else 0)


def e2m1_value(code: int) -> float:
    value = E2M1_GRID[code & 7]
    return -value if code & 8 else value


def bf16_round(x: float) -> float:
    """Round an fp32 value to bf16 (returned as a float): keep the top 16 bits, nearest-even."""
    bits = f32_bits(x)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000) & 0xFFFFFFFF
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def rht_matrix_reference() -> list[list[float]]:
    """diag(sign) @ H16 / 4 with H16[i][j] = (-1)^popcount(i & j)."""
    return [
        [RHT_SIGNS[i] * (-1) ** bin(i & j).count("1") / 4 for j in range(16)] for i in range(16)
    ]


def rht_reference(x: torch.Tensor) -> torch.Tensor:
    """c @ R for every 16-chunk c of the last dim, summed in index order in fp32, then bf16.

    Returned as float32 holding bf16 values.
    """
    r = rht_matrix_reference()
    flat = x.detach().to(torch.float32).reshape(-1).tolist()
    out = []
    for start in range(0, len(flat), 16):
        chunk = flat[start : start + 16]
        for j in range(16):
            acc = 0.0
            for k in range(16):
                acc = fl(acc + fl(chunk[k] * r[k][j]))
            out.append(bf16_round(acc))
    return torch.tensor(out, dtype=torch.float32).view(x.shape)


@dataclass
class ReferenceResult:
    codes: torch.Tensor  # uint8, x's shape
    scales: torch.Tensor  # float32 E4M3 values, one per block / tile
    scale_codes: torch.Tensor  # uint8 E4M3 bytes
    amax: torch.Tensor  # 0-d float32, or (M,) when row-scaled
    dequant: torch.Tensor  # value(code) * fl(fl(s * a) * fl(1/(6E)))
    blocks: torch.Tensor  # value(code) * s


ONE_SIXTH = fl(1 / 6)
INV_2688 = fl(1 / 2688)


def _tensor_scales(amax: float, e4m3_max: int = 448) -> tuple[float, float]:
    """Step 2: S_enc = min(fl(6E / a), FLT_MAX), 1 when a == 0; S_dec = fl(1 / S_enc).

    (TE's reference leaves S_enc = FLT_MAX for a == 0 under 4over6; every output is 0 either
    way, because every block amax is then 0 too.)
    """
    s_enc = FLT_MAX if amax == 0 else min(fl(6 * e4m3_max / amax), FLT_MAX)
    if amax == 0 or s_enc == 0:
        s_enc = 1.0
    return s_enc, fl(1 / s_enc)


def _block_scale(block_amax: float, s_enc: float) -> tuple[float, int]:
    """Step 3: e4m3_rne(min(fl(b * fl(S_enc * fl(1/6))), 448))."""
    scaled = fl(block_amax * fl(s_enc * ONE_SIXTH))
    return e4m3_round(min(scaled, 448.0))


def _encode_factor(scale: float, s_dec: float) -> float:
    """Step 4: min(fl(1 / fl(s * S_dec)), FLT_MAX)."""
    denominator = fl(scale * s_dec)
    return FLT_MAX if denominator == 0 else min(fl(1 / denominator), FLT_MAX)


def _tiles(m: int, n: int, rows: int):
    """Yield ((i, j), rows of element positions) for every block (rows = 1) or tile (16)."""
    for i in range(m // rows):
        for j in range(n // 16):
            yield (i, j), [[(i * rows + r, j * 16 + c) for c in range(16)] for r in range(rows)]


# --------------------------------------------------------------------------- 4over6


@dataclass(frozen=True)
class _FourOverSix:
    """The 4over6 settings of one call: error mode, fast path, E (TE 2.20)."""

    mode: str  # "mae" | "mse"
    fast: bool
    e4m3_max: int


def _segment_error(
    data, codes, row: list, scale: float, a: float, s_enc: float, opt: _FourOverSix
) -> float:
    """The candidate's error over one 16-element row segment, summed in index order from +0.

    exact: d = fl(fl(fl(fl(val * s) * a) / fl(6E)) - x), a true division by 6E (not the
    dequantize kernel's multiply by fl(1/(6E))); fast: d = fl(val * s - fl(x * S_enc)).
    """
    denominator = fl(6 * opt.e4m3_max)
    err = 0.0
    for r, c in row:
        x = data[r][c]
        decoded = fl(e2m1_value(codes[(r, c)]) * scale)  # exact: <= 8 significant bits
        exact = not opt.fast
        d = fl(fl(fl(decoded * a) / denominator) - x) if exact else fl(decoded - fl(x * s_enc))
        err = fl(err + (abs(d) if opt.mode == "mae" else fl(d * d)))
    return err


def _tree_sum(errors: list[float]) -> float:
    """A 16x16 tile's error from its 16 row errors: TE's fixed pairwise tree (warp shuffles)."""
    while len(errors) > 1:
        half = len(errors) // 2
        errors = [fl(errors[i] + errors[i + half]) for i in range(half)]
    return errors[0]


def _four_over_six_block(data, rows: list, a: float, s_enc: float, s_dec: float, opt):
    """Both candidates of one block or tile; returns (scale, scale code, {cell: code}).

    base = fl(fl(b / 6) * S_enc) (TE <= 2.13's chain, a true division), map-to-6 scale
    e4m3(min(base, 448)), map-to-4 e4m3(min(fl(base * 1.5), 448)) (448 also when E = 256).
    Map-to-4 wins only with a strictly lower error.
    """
    b = max(abs(data[r][c]) for row in rows for r, c in row)
    base = fl(fl(b / 6) * s_enc)
    picked = {}
    for name, pre in (("6", base), ("4", fl(base * 1.5))):
        scale, code = e4m3_round(min(pre, 448.0))
        factor = _encode_factor(scale, s_dec)
        codes = {
            (r, c): e2m1_code(min(max(fl(data[r][c] * factor), -6.0), 6.0))
            for row in rows
            for r, c in row
        }
        errors = [_segment_error(data, codes, row, scale, a, s_enc, opt) for row in rows]
        picked[name] = (_tree_sum(errors), scale, code, codes)
    best = picked["4"] if picked["4"][0] < picked["6"][0] else picked["6"]
    return best[1:]


# --------------------------------------------------------------------------- the quantizer


def quantize_reference(
    x: torch.Tensor,
    block=(1, 16),
    uniforms: torch.Tensor | None = None,
    rht: bool = False,
    *,
    four_over_six: str | None = None,
    four_over_six_fast: bool = False,
    e4m3_max: int = 448,
    row_scaled: bool = False,
) -> ReferenceResult:
    """Quantize a 2-D tensor block by block, element by element (docs/nvfp4.md s2, steps 1-7).

    Round-to-nearest-even, or stochastic rounding when `uniforms` (one U[0, 1) draw per
    element, x's shape) is given. rht=True rotates first (`rht_reference`). The TE 2.20 options
    (`four_over_six`, `four_over_six_fast`, `e4m3_max`, `row_scaled`) mean what they mean for
    quant.nvfp4.quantize, and the same combinations are refused.
    """
    if x.dim() != 2:
        raise ValueError(f"the reference takes 2-D tensors, got shape {tuple(x.shape)}")
    check_options(
        block=tuple(block),
        stochastic=uniforms is not None,
        rht=rht,
        four_over_six=four_over_six,
        four_over_six_fast=four_over_six_fast,
        e4m3_max=e4m3_max,
        row_scaled=row_scaled,
        amax_given=False,
        what="quantize_reference",
    )
    rows = tuple(block)[0]
    data = rht_reference(x) if rht else x.detach().to(torch.float32)
    a = data.tolist()
    m, n = data.shape
    u = None if uniforms is None else uniforms.to(torch.float32).reshape(m, n).tolist()
    opt = (
        None if four_over_six is None else _FourOverSix(four_over_six, four_over_six_fast, e4m3_max)
    )

    if row_scaled:  # one tensor scale per row (1x16 only, so a block lies in one row)
        amaxes = [max(abs(value) for value in row) for row in a]
    else:
        amaxes = [max(abs(value) for row in a for value in row)] * m
    scales_of_row = [_tensor_scales(amax, e4m3_max) for amax in amaxes]
    inv_6e = fl(1 / (6 * e4m3_max))
    codes = [[0] * n for _ in range(m)]
    dequant = [[0.0] * n for _ in range(m)]
    blocks = [[0.0] * n for _ in range(m)]
    scales = [[0.0] * (n // 16) for _ in range(m // rows)]
    scale_codes = [[0] * (n // 16) for _ in range(m // rows)]

    for (i, j), cells in _tiles(m, n, rows):
        first = cells[0][0][0]
        amax, (s_enc, s_dec) = amaxes[first], scales_of_row[first]
        if opt is None:
            block_amax = max(abs(a[r][c]) for row in cells for r, c in row)
            scale, scale_codes[i][j] = _block_scale(block_amax, s_enc)
            factor = _encode_factor(scale, s_dec)
            for row in cells:
                for r, c in row:
                    v = min(max(fl(a[r][c] * factor), -6.0), 6.0)
                    codes[r][c] = e2m1_code(v) if u is None else e2m1_code_stochastic(v, u[r][c])
        else:
            scale, scale_codes[i][j], chosen = _four_over_six_block(
                a, cells, amax, s_enc, s_dec, opt
            )
            for (r, c), code in chosen.items():
                codes[r][c] = code
        scales[i][j] = scale
        decode = fl(fl(scale * amax) * inv_6e)
        for row in cells:
            for r, c in row:
                dequant[r][c] = fl(e2m1_value(codes[r][c]) * decode)
                blocks[r][c] = fl(e2m1_value(codes[r][c]) * scale)

    amax_out = amaxes if row_scaled else amaxes[0]
    return ReferenceResult(
        torch.tensor(codes, dtype=torch.uint8),
        torch.tensor(scales, dtype=torch.float32),
        torch.tensor(scale_codes, dtype=torch.uint8),
        torch.tensor(amax_out, dtype=torch.float32),
        torch.tensor(dequant, dtype=torch.float32),
        torch.tensor(blocks, dtype=torch.float32),
    )
