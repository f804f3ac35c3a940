"""quant.nvfp4 against Transformer Engine's golden outputs, the E2M1 table, SR, RHT, errors.

Golden vectors: ../shared/golden/nvfp4_golden.npz (see its README). Every comparison is exact.
"""

from __future__ import annotations

import pytest
import torch

from quant import nvfp4

CASES = [
    "randn_32x64",
    "randn_128x256",
    "zeros_32x64",
    "outlier_32x64",
    "e4m3sub_32x64",
    "fp32sub_32x64",
    "negative_32x64",
    "ties_32x64",
]
RHT_CASES = ["randn_32x64", "outlier_32x64", "randn_128x256"]
BLOCKS = {"1d": (1, 16), "2d": (16, 16)}
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.gpu),
]


def _t(array, device="cpu") -> torch.Tensor:
    return torch.from_numpy(array).to(device)


def _scale_rows(golden, case, tag) -> torch.Tensor:
    """Each element's block scale, (M, N/16): 1x16 as is, 16x16 repeated on the tile's rows."""
    key = f"{case}__te1d_scales" if tag == "1d" else f"{case}__te2d_scales_rows"
    return _t(golden[key])


# --------------------------------------------------------------------------- golden: 1x16, 16x16


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tag", ["1d", "2d"])
@pytest.mark.parametrize("case", CASES)
def test_golden_quantize_matches_transformer_engine(golden, case, tag, device):
    x = _t(golden[f"{case}__input"], device)
    q = nvfp4.quantize(x, block=BLOCKS[tag])
    codes = _t(golden[f"{case}__te{tag}_codes"], device)

    nonzero = _scale_rows(golden, case, tag).repeat_interleave(16, dim=1).to(device) != 0
    assert torch.equal(q.codes[nonzero], codes[nonzero])
    # Where the E4M3 scale underflowed to 0, TE's codes saturate to +-6; ours do the same.
    assert torch.equal(q.codes, codes)
    assert q.amax.shape == ()
    assert q.amax.item() == golden[f"{case}__te_global_amax"][0]
    assert torch.equal(q.dequantize(), _t(golden[f"{case}__te{tag}_dequant"], device))

    if tag == "1d":
        assert torch.equal(q.scales, _t(golden[f"{case}__te1d_scales"], device))
        assert torch.equal(q.scale_bits, _t(golden[f"{case}__te1d_scales_e4m3bits"], device))
    else:
        assert torch.equal(q.scales, _t(golden[f"{case}__te2d_scales_blocks"], device))
        rows = q.scales.repeat_interleave(16, dim=0)
        assert torch.equal(rows, _t(golden[f"{case}__te2d_scales_rows"], device))


@pytest.mark.parametrize("tag", ["1d", "2d"])
@pytest.mark.parametrize("case", CASES)
def test_fake_quantize_is_decode_blocks_without_codes(golden, case, tag):
    x = _t(golden[f"{case}__input"])
    q = nvfp4.quantize(x, block=BLOCKS[tag])
    blocks, amax = nvfp4.fake_quantize(x, block=BLOCKS[tag])
    assert blocks.dtype == torch.float32 and blocks.shape == x.shape
    assert torch.equal(blocks, q.decode_blocks())
    assert torch.equal(amax, q.amax)


def test_decode_blocks_times_tensor_scale_is_close_to_dequantize(golden):
    # decode_blocks() is value * s; the tensor-level factor a/2688 turns it into x_hat (up to
    # the order of the fp32 roundings, docs/nvfp4.md s2.7 vs s4).
    x = _t(golden["randn_128x256__input"])
    q = nvfp4.quantize(x)
    approx, exact = q.decode_blocks() * q.global_scale, q.dequantize()
    assert ((approx - exact).abs() <= exact.abs() * 2**-22).all()
    assert not torch.equal(approx, exact)  # the order of the roundings does matter


# (tensor amax a, block amax b, E4M3 scale by TE >= 2.14's fl(b * fl(S_enc * fl(1/6))), by
# TE <= 2.13's fl(fl(b / 6) * S_enc)): bf16 pairs where the order lands on opposite sides of an
# E4M3 rounding tie (docs/nvfp4.md s2.3). The golden cases contain none, so this pins the order.
FOLDED_SIXTH = [
    (0.5703125, 0.427734375, 352.0, 320.0),
    (0.02294921875, 0.00860595703125, 176.0, 160.0),
    (0.046875, 0.03515625, 352.0, 320.0),
    (15.75, 4.78125, 144.0, 128.0),
]


@pytest.mark.parametrize("a, b, scale, te213_scale", FOLDED_SIXTH)
def test_block_scale_multiplies_by_the_folded_sixth(a, b, scale, te213_scale):
    x = torch.zeros(2, 16)
    x[0, 0], x[1, 5] = a, -b
    q = nvfp4.quantize(x)
    assert q.scales[1, 0].item() == scale != te213_scale
    assert q.scales[0, 0].item() == 448.0
    tiles = torch.zeros(32, 16)
    tiles[0, 0], tiles[19, 5] = a, -b
    assert nvfp4.quantize(tiles, block=(16, 16)).scales.view(-1).tolist() == [448.0, scale]


def test_fp32_subnormal_inputs_stay_finite_and_match_te(golden):
    """Recorded behaviour (module docstring): 2688/amax overflows, S_enc clamps to FLT_MAX;
    we follow TE's arithmetic, so codes/scales/dequant equal TE's and nothing is NaN or inf."""
    x = _t(golden["fp32sub_32x64__input"])
    assert x.abs().max() < torch.finfo(torch.float32).tiny  # the whole tensor is subnormal
    for tag, block in BLOCKS.items():
        q = nvfp4.quantize(x, block=block)
        blocks, _ = nvfp4.fake_quantize(x, block=block)
        for t in (q.scales, q.dequantize(), q.decode_blocks(), blocks):
            assert torch.isfinite(t).all()
        assert torch.equal(q.dequantize(), _t(golden[f"fp32sub_32x64__te{tag}_dequant"]))


# --------------------------------------------------------------------------- golden: RHT


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", RHT_CASES)
def test_golden_rht_column_path(golden, case, device):
    x = _t(golden[f"{case}__bf16_input"], device).to(torch.bfloat16)
    xt = x.t()  # the WGRAD operand is rotated along M: transpose, then the last dim

    rotated = nvfp4.rht(xt)
    assert rotated.dtype == torch.bfloat16
    assert torch.equal(rotated.float(), _t(golden[f"{case}__rht_xt_bf16"], device))

    q = nvfp4.quantize(xt, rht=True)
    assert q.rotated
    assert torch.equal(q.codes, _t(golden[f"{case}__rht_col_codes"], device))
    assert torch.equal(q.scales, _t(golden[f"{case}__rht_col_scales"], device))
    assert q.amax.item() == golden[f"{case}__rht_col_global_amax"][0]

    blocks, amax = nvfp4.fake_quantize(xt, rht=True)
    assert torch.equal(blocks, q.decode_blocks()) and torch.equal(amax, q.amax)

    row = nvfp4.quantize(x)  # the rowwise copy: no rotation
    assert torch.equal(row.codes, _t(golden[f"{case}__rht_row_codes"], device))
    assert torch.equal(row.scales, _t(golden[f"{case}__rht_row_scales"], device))
    assert row.amax.item() == golden[f"{case}__rht_row_global_amax"][0]


def test_rht_matrix_and_sign_vector_match_te(golden):
    assert torch.equal(
        torch.tensor(nvfp4.RHT_SIGNS, dtype=torch.float32), _t(golden["sign_vector"])
    )
    assert torch.equal(nvfp4.rht_matrix(), _t(golden["rht_matrix_16x16"]))


def test_rht_matrix_is_orthogonal():
    r = nvfp4.rht_matrix()
    assert set(r.abs().unique().tolist()) == {0.25}
    assert torch.equal(r @ r.T, torch.eye(16))  # exact: sums of sixteen +-1/16


def test_rotating_both_operands_leaves_the_product_unchanged():
    gen = torch.Generator().manual_seed(0)
    # Small integers: c @ R is a multiple of 1/4 below 256, exact in bf16, so rht() is exact
    # and the fp32 products are exact too.
    a = torch.randint(-8, 9, (32, 64), generator=gen).float()
    b = torch.randint(-8, 9, (48, 64), generator=gen).float()
    assert torch.equal(nvfp4.rht(a).float() @ nvfp4.rht(b).float().T, a @ b.T)
    # General fp32 data without the bf16 rounding: equal up to fp32 summation.
    a, b = torch.randn(32, 64, generator=gen), torch.randn(48, 64, generator=gen)
    r = nvfp4.rht_matrix()
    ra, rb = (a.view(-1, 16) @ r).view(a.shape), (b.view(-1, 16) @ r).view(b.shape)
    assert ((ra @ rb.T) - a @ b.T).abs().max() < 1e-4


# --------------------------------------------------------------------------- the E2M1 table

# (scaled value v, code): every grid point, every tie, both signs, -0 and saturation.
E2M1_TABLE = [
    (0.0, 0), (0.5, 1), (1.0, 2), (1.5, 3), (2.0, 4), (3.0, 5), (4.0, 6), (6.0, 7),
    (-0.5, 9), (-1.0, 10), (-1.5, 11), (-2.0, 12), (-3.0, 13), (-4.0, 14), (-6.0, 15),
    (-0.0, 0),  # -0.0 is not < 0: code 0, as TE's reference
    # ties to even mantissa
    (0.25, 0), (0.75, 2), (1.25, 2), (1.75, 4), (2.5, 4), (3.5, 6), (5.0, 6),
    (-0.25, 8), (-0.75, 10), (-1.25, 10), (-1.75, 12), (-2.5, 12), (-3.5, 14), (-5.0, 14),
    # just off the ties
    (0.2500001, 1), (0.7499999, 1), (1.2500001, 3), (1.7499999, 3), (2.5000002, 5),
    (3.4999998, 5), (5.0000005, 7), (-5.0000005, 15), (-0.2500001, 9),
    # negative values rounding to zero are -0 (code 8)
    (-0.1, 8), (-1e-30, 8), (0.1, 0),
    # saturation
    (6.5, 7), (7.0, 7), (1e30, 7), (float("inf"), 7), (-7.0, 15), (float("-inf"), 15),
]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_e2m1_encode_table(device):
    values = torch.tensor([v for v, _ in E2M1_TABLE], device=device)
    expected = torch.tensor([c for _, c in E2M1_TABLE], dtype=torch.uint8, device=device)
    assert torch.equal(nvfp4.encode_e2m1(values), expected)


def test_e2m1_decode_table():
    values = nvfp4.decode_e2m1(torch.arange(16, dtype=torch.uint8))
    expected = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    assert values.tolist() == expected
    assert torch.signbit(values[8]) and not torch.signbit(values[0])  # code 8 is -0


def test_bf16_and_fp16_inputs_are_computed_in_fp32():
    x = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.bfloat16, torch.float16):
        low = x.to(dtype)
        for block in BLOCKS.values():
            q, ref = nvfp4.quantize(low, block=block), nvfp4.quantize(low.float(), block=block)
            assert torch.equal(q.codes, ref.codes) and torch.equal(q.scales, ref.scales)
            assert torch.equal(q.amax, ref.amax)


def test_leading_dims_and_non_contiguous_inputs():
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    q1 = nvfp4.quantize(x)
    flat = nvfp4.quantize(x.reshape(-1, 48))
    assert q1.codes.shape == x.shape and q1.scales.shape == (2, 3, 32, 3)
    assert torch.equal(q1.codes.reshape(-1, 48), flat.codes)
    # 16x16 tiles over the last two dims; M % 16 == 0 makes them the tiles of the (L*M, N) view
    q2 = nvfp4.quantize(x, block=(16, 16))
    flat2 = nvfp4.quantize(x.reshape(-1, 48), block=(16, 16))
    assert q2.scales.shape == (2, 3, 2, 3)
    assert torch.equal(q2.scales.reshape(-1, 3), flat2.scales)
    assert torch.equal(q2.dequantize().reshape(-1, 48), flat2.dequantize())
    xt = x[0, 0].t()  # non-contiguous
    assert torch.equal(nvfp4.quantize(xt).codes, nvfp4.quantize(xt.contiguous()).codes)


def test_a_slice_with_the_whole_tensors_amax_quantizes_as_inside_the_whole():
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(3))
    for kw in ({}, {"block": (16, 16)}, {"rht": True}):
        whole = nvfp4.quantize(x, **kw)
        part = nvfp4.quantize(x[16:48], amax=whole.amax, **kw)
        assert torch.equal(part.codes, whole.codes[16:48])
        assert torch.equal(part.dequantize(), whole.dequantize()[16:48])
        blocks, amax = nvfp4.fake_quantize(x[16:48], amax=float(whole.amax), **kw)
        assert torch.equal(blocks, whole.decode_blocks()[16:48]) and torch.equal(amax, whole.amax)
    with pytest.raises(ValueError, match="amax must be finite and >= 0"):
        nvfp4.fake_quantize(x, amax=float("nan"))
    with pytest.raises(ValueError, match="single number"):
        nvfp4.fake_quantize(x, amax=torch.ones(2))


def test_quantize_does_not_modify_or_track_its_input():
    x = torch.randn(16, 32, requires_grad=True)
    before = x.detach().clone()
    blocks, amax = nvfp4.fake_quantize(x)
    assert torch.equal(x.detach(), before)
    assert not blocks.requires_grad and not amax.requires_grad


# --------------------------------------------------------------------------- stochastic rounding


def _exact_scale_tensor(values: torch.Tensor) -> torch.Tensor:
    """Rows of 16: [6, 15 values]; plus one row with amax 2688 so S_enc = 1. A block whose amax
    is 6 then has scale 1 and encode factor 1, so the E2M1 rounder sees the values unchanged."""
    body = values.reshape(-1, 15)
    rows = torch.cat([torch.full((body.shape[0], 1), 6.0), body], dim=1)
    anchor = torch.zeros(1, 16)
    anchor[0, 0] = 2688.0
    return torch.cat([anchor, rows])


def _sr_values(x: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q = nvfp4.quantize(x, rounding="stochastic", generator=gen)
    return nvfp4.decode_e2m1(q.codes[1:, 1:]).reshape(-1)


GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def test_sr_keeps_grid_points_fixed():
    grid = torch.cat([GRID, -GRID[1:]])  # 15 values
    x = _exact_scale_tensor(grid.repeat(200))
    for seed in range(3):
        assert torch.equal(_sr_values(x, seed), grid.repeat(200))


def test_sr_only_produces_the_two_neighbouring_grid_points():
    gen = torch.Generator().manual_seed(3)
    v = (torch.rand(15 * 400, generator=gen) * 12 - 6).clamp(-5.999, 5.999)
    out = _sr_values(_exact_scale_tensor(v), seed=4)
    mag = v.abs()
    lo = GRID[torch.searchsorted(GRID, mag, right=True) - 1]
    hi = GRID[torch.searchsorted(GRID, mag, right=True).clamp(max=7)]
    assert ((out.abs() == lo) | (out.abs() == hi)).all()
    assert ((torch.sign(out) == torch.sign(v)) | (out == 0)).all()
    # both neighbours do occur
    assert (out.abs() == lo).any() and (out.abs() == hi).any()


def test_sr_is_unbiased():
    targets = torch.tensor(
        [0.3, 1.1, 1.9, 2.7, 4.9, -0.1, -3.3, -5.5, 0.7, 2.2, 3.9, -1.4, 5.2, -4.4, 0.05]
    )
    n = 4000
    x = _exact_scale_tensor(targets.repeat(n))
    draws = _sr_values(x, seed=5).view(n, 15)
    mean = draws.mean(0)
    mag = targets.abs()
    idx = torch.searchsorted(GRID, mag, right=True)
    gap = GRID[idx.clamp(max=7)] - GRID[idx - 1]
    sigma = gap * 0.5 / n**0.5  # std of the mean is at most gap/2/sqrt(n)
    resolution = gap / 256  # 8 random bits: P(up) is p truncated to a multiple of 1/256
    assert ((mean - targets).abs() <= 5 * sigma + resolution).all(), mean - targets


def test_sr_rounds_up_with_probability_p_truncated_to_8_bits():
    """Exhaustively over the 256 bytes: a value at p = m/256 + tiny goes up for exactly m of them
    (one draw per byte value, no sampling noise), whatever its sign and binade."""
    steps = {0.25: 0.5, 1.0: 0.5, 2.0: 1.0, 4.0: 2.0}  # lo -> step (0.25: lo 0, p from 0.5)
    for lo, step in steps.items():
        base = 0.0 if lo == 0.25 else lo
        for m in (0, 1, 77, 128, 255):
            for sign in (1.0, -1.0):
                p = m / 256 + 2.0**-12
                v = sign * (base + step * p)
                x = _exact_scale_tensor(torch.full((15 * 256,), v))  # 16 rows of 16 bytes each
                gen = torch.Generator().manual_seed(m)
                bits = nvfp4.stochastic_bits(x.shape, gen).clone()
                gen.manual_seed(m)
                out = nvfp4.quantize(x, rounding="stochastic", generator=gen)
                values = nvfp4.decode_e2m1(out.codes[1:, 1:]).reshape(-1)
                up = (values.abs() > base).sum().item()
                body = bits[1:, 1:].reshape(-1).long()
                expected = (body >= 256 - m).sum() if sign > 0 else (body < m).sum()
                assert up == expected.item(), (lo, m, sign)


def test_sr_bits_are_full_bytes():
    bits = nvfp4.stochastic_bits((8192,), torch.Generator().manual_seed(0)).view(-1, 8)
    for position in range(8):  # every byte of a 64-bit word, the top one included
        assert bits[:, position].max() >= 250 and bits[:, position].min() <= 5


def test_sr_equals_the_reference_at_the_edges():
    """p exactly on the 1/256 edges of the carry test, both signs: the reference given
    `stochastic_thresholds` decides like the fast path, bit for bit."""
    from quant import reference

    m = torch.arange(0, 256, 5, dtype=torch.float32)
    p = torch.cat([m / 256, (m + 1) / 256 - 2.0**-20])
    v = torch.cat([p * 0.5, 1 + p * 0.5, 2 + p, 4 + 2 * p]).repeat(2)[: 15 * 30]
    v = v * torch.where(torch.arange(v.numel()) % 2 == 0, 1.0, -1.0)
    x = _exact_scale_tensor(v)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        bits = nvfp4.stochastic_bits(x.shape, gen)
        q = nvfp4.quantize(x, rounding="stochastic", generator=gen.manual_seed(seed))
        ref = reference.quantize_reference(x, uniforms=nvfp4.stochastic_thresholds(bits, x))
        assert torch.equal(q.codes, ref.codes)


def test_mean_of_50_sr_draws_beats_round_to_nearest():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(64, 256, generator=gen)
    rtn = nvfp4.quantize(x).dequantize()
    mean = (
        sum(nvfp4.quantize(x, rounding="stochastic", generator=gen).dequantize() for _ in range(50))
        / 50
    )
    rmse = lambda y: (y - x).pow(2).mean().sqrt()  # noqa: E731
    assert rmse(mean) < 0.5 * rmse(rtn)


def test_sr_same_seed_same_bits_different_seeds_differ():
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(7))
    run = lambda seed, **kw: nvfp4.quantize(  # noqa: E731
        x, rounding="stochastic", generator=torch.Generator().manual_seed(seed), **kw
    )
    for kw in ({}, {"block": (16, 16)}, {"rht": True}):
        assert torch.equal(run(11, **kw).codes, run(11, **kw).codes)
        assert not torch.equal(run(11, **kw).codes, run(12, **kw).codes)
    a = nvfp4.fake_quantize(x, rounding="stochastic", generator=torch.Generator().manual_seed(11))[
        0
    ]
    assert torch.equal(a, run(11).decode_blocks())


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_transposed_input_equals_its_contiguous_copy(rounding):
    """A transposed matrix (the DGRAD/WGRAD layouts) is quantized in its own memory layout;
    values, amax and even the SR bits per element are those of x.contiguous()."""
    base = torch.randn(80, 48, generator=torch.Generator().manual_seed(12))
    x = base.t()  # (48, 80), blocks along 80, stored column-major
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    blocks, amax = nvfp4.fake_quantize(x, rounding=rounding, generator=gen())
    kw = {"rounding": rounding}
    expected, expected_amax = nvfp4.fake_quantize(x.contiguous(), generator=gen(), **kw)
    assert torch.equal(blocks, expected) and torch.equal(amax, expected_amax)
    q = nvfp4.quantize(x, rounding=rounding, generator=gen())
    assert torch.equal(q.decode_blocks(), blocks)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        nvfp4.fake_quantize(torch.randn(40, 48).t())


def test_sr_continues_the_generator_stream():
    x = torch.randn(32, 64)
    gen = torch.Generator().manual_seed(9)
    first = nvfp4.quantize(x, rounding="stochastic", generator=gen).codes
    second = nvfp4.quantize(x, rounding="stochastic", generator=gen).codes
    assert not torch.equal(first, second)  # each call advances the stream


# --------------------------------------------------------------------------- packing


def test_pack_unpack_roundtrip_and_layout():
    codes = torch.randint(
        0, 16, (6, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    packed = nvfp4.pack_codes(codes)
    assert packed.shape == (6, 16) and packed.dtype == torch.uint8
    assert torch.equal(nvfp4.unpack_codes(packed), codes)
    # element 2i in the low nibble, as TE's cast_to_fp4x2
    assert nvfp4.pack_codes(torch.tensor([[1, 2, 15, 8]], dtype=torch.uint8)).tolist() == [
        [0x21, 0x8F]
    ]


def test_nvfp4_tensor_pack_roundtrip():
    x = torch.randn(32, 64)
    for block in BLOCKS.values():
        q = nvfp4.quantize(x, block=block)
        back = nvfp4.NVFP4Tensor.unpack(q.pack(), q.scales, q.amax, block=block)
        assert torch.equal(back.codes, q.codes)
        assert torch.equal(back.dequantize(), q.dequantize())
    assert "NVFP4Tensor(shape=(32, 64)" in repr(q)


# --------------------------------------------------------------------------- errors


def test_blocked_dim_not_a_multiple_of_16_says_which_and_by_how_much():
    with pytest.raises(ValueError, match=r"dimension -1 .* size 40.* 8 over 32 and 8 short of 48"):
        nvfp4.quantize(torch.randn(4, 40))
    with pytest.raises(ValueError, match=r"dimension -2 .* size 20.* 4 over 16 and 12 short of 32"):
        nvfp4.quantize(torch.randn(20, 32), block=(16, 16))
    with pytest.raises(ValueError, match="dimension -1"):
        nvfp4.rht(torch.randn(3, 24))


def test_non_floating_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="floating-point.*torch.int32"):
        nvfp4.quantize(torch.ones(16, 16, dtype=torch.int32))
    with pytest.raises(TypeError, match="floating-point"):
        nvfp4.fake_quantize(torch.ones(16, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        nvfp4.quantize([1.0] * 16)


def test_non_finite_values_are_counted_never_silently_nan():
    x = torch.randn(8, 32)
    x[0, 3], x[5, 7], x[7, 31] = float("nan"), float("inf"), float("-inf")
    for fn in (nvfp4.quantize, nvfp4.fake_quantize):
        with pytest.raises(ValueError, match=r"3 non-finite value\(s\) \(NaN or inf\) out of 256"):
            fn(x)
    y = torch.zeros(16, 16)
    y[3, 3] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        nvfp4.quantize(y, block=(16, 16))


def test_bad_arguments_name_the_valid_choices():
    x = torch.randn(16, 16)
    with pytest.raises(ValueError, match=r"block must be \(1, 16\) or \(16, 16\), got \(1, 32\)"):
        nvfp4.quantize(x, block=(1, 32))
    with pytest.raises(ValueError, match=r"rounding must be one of \('nearest', 'stochastic'\)"):
        nvfp4.quantize(x, rounding="up")
    with pytest.raises(ValueError, match="rht=True needs block=\\(1, 16\\)"):
        nvfp4.quantize(x, block=(16, 16), rht=True)
    with pytest.raises(ValueError, match="at least 2 dims"):
        nvfp4.quantize(torch.randn(32), block=(16, 16))
    with pytest.raises(ValueError, match="empty tensor"):
        nvfp4.quantize(torch.randn(0, 16))
    with pytest.raises(TypeError, match="torch.Generator"):
        nvfp4.quantize(x, rounding="stochastic", generator=123)
    with pytest.raises(TypeError, match="uint8"):
        nvfp4.pack_codes(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="even"):
        nvfp4.pack_codes(torch.zeros(2, 3, dtype=torch.uint8))


@pytest.mark.gpu
def test_generator_must_be_on_the_tensors_device():
    x = torch.randn(16, 16, device="cuda")
    with pytest.raises(ValueError, match="generator is on cpu but the tensor is on cuda"):
        nvfp4.quantize(x, rounding="stochastic", generator=torch.Generator())
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = nvfp4.quantize(x, rounding="stochastic", generator=gen).codes
    gen.manual_seed(0)
    assert torch.equal(a, nvfp4.quantize(x, rounding="stochastic", generator=gen).codes)


def test_rht_is_exact_whatever_the_fp32_matmul_precision(golden):
    x = _t(golden["randn_128x256__bf16_input"]).t()
    expected = _t(golden["randn_128x256__rht_xt_bf16"])
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert torch.equal(nvfp4.rht(x).float(), expected)
        assert torch.get_float32_matmul_precision() == "medium"  # restored
    finally:
        torch.set_float32_matmul_precision(before)


def test_non_finite_count_is_of_the_input_even_with_rht():
    x = torch.randn(4, 32)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        nvfp4.fake_quantize(x, rht=True)
    with pytest.raises(ValueError, match="RHT of this input overflows"):
        nvfp4.fake_quantize(torch.full((2, 16), 3e38), rht=True)


@pytest.mark.parametrize("kw", [{}, {"block": (16, 16)}, {"rht": True}], ids=["1d", "2d", "rht"])
def test_chunked_cpu_path_equals_one_chunk(monkeypatch, kw):
    """The CPU path runs the element-wise steps in chunks of rows; results must not depend on it."""
    x = torch.randn(96, 64, generator=torch.Generator().manual_seed(8)) * torch.logspace(
        0, -12, 96
    ).unsqueeze(1)
    sr = {"rounding": "stochastic"}
    whole = nvfp4.quantize(x, **kw)
    whole_sr = nvfp4.quantize(x, generator=torch.Generator().manual_seed(1), **sr, **kw)
    monkeypatch.setattr(nvfp4, "_CHUNK_ELEMENTS", 300)  # 1 or 16 rows of blocks per chunk
    assert len(nvfp4._row_chunks(torch.empty(96, 64))) > 4
    chunked = nvfp4.quantize(x, **kw)
    assert torch.equal(chunked.codes, whole.codes) and torch.equal(chunked.scales, whole.scales)
    assert torch.equal(nvfp4.fake_quantize(x, **kw)[0], whole.decode_blocks())
    chunked_sr = nvfp4.quantize(x, generator=torch.Generator().manual_seed(1), **sr, **kw)
    assert torch.equal(chunked_sr.codes, whole_sr.codes)
