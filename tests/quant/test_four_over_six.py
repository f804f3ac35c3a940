"""TE 2.20's 4over6 and row-scaled NVFP4, bit for bit: golden vectors, reference, refusals.

Golden vectors: ../shared/golden/nvfp4_4over6_golden.npz (README_4over6.md): 9 cases x every mode,
rowwise on x and columnwise on x.t().contiguous(). Every comparison is exact: codes, E4M3 scale
bytes and values, amax (a vector when row-scaled).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant import nvfp4, reference

CASES = [
    "randn_64x128",
    "outlier_64x128",
    "ties256_64x128",
    "ties448_64x128",
    "e4m3sub_64x128",
    "bf16randn_64x128",
    "neartie256_64x128",
    "neartie448_64x128",
]
ROW_SCALED_CASES = ["randn_64x128", "outlier_64x128", "bf16randn_64x128"]


def mode_options(mode: str) -> tuple[tuple[int, int], dict]:
    """A golden mode name -> (block, quantizer keywords): e.g. 'rs_4o6_1d_mse_g256_fast'."""
    parts = mode.split("_")
    options: dict = {}
    if parts[0] == "rs":
        options["row_scaled"] = True
        parts = parts[1:]
    if parts[0] == "4o6":
        _, dims, err, e, path = parts
        options.update(four_over_six=err, e4m3_max=int(e[1:]), four_over_six_fast=path == "fast")
    else:
        dims = parts[1] if len(parts) > 1 else "1d"
    return ((16, 16) if dims == "2d" else (1, 16)), options


def golden_modes(golden: dict, case: str) -> list[str]:
    return sorted(
        {
            k.split("__")[1]
            for k in golden
            if k.startswith(f"{case}__") and "__" in k[len(case) + 2 :]
        }
    )


def golden_directions(golden: dict, case: str, mode: str):
    """(suffix, tensor) for the rowwise (x) and, when stored, the columnwise (x^T) outputs."""
    x = torch.from_numpy(golden[f"{case}__input"])
    if "bf16" in case:
        x = x.to(torch.bfloat16)
    yield "", x
    if f"{case}__{mode}__codes_t" in golden:
        yield "_t", x.t().contiguous()


def assert_golden(golden, case, mode, suffix, codes, scales, scale_bits, amax, block) -> None:
    key = f"{case}__{mode}__"
    where = f"{case} {mode} {'columnwise' if suffix else 'rowwise'}"
    assert np.array_equal(codes.numpy(), golden[f"{key}codes{suffix}"]), where
    assert np.array_equal(scales.numpy(), golden[f"{key}scales{suffix}"][:: block[0]]), where
    bits = golden[f"{key}scales{suffix}_e4m3bits"][:: block[0]]
    assert np.array_equal(scale_bits.numpy(), bits), where
    assert np.array_equal(amax.reshape(-1).numpy(), golden[f"{key}amax{suffix}"]), where


def test_the_golden_file_holds_the_promised_cases_and_modes(golden_4over6):
    modes = golden_modes(golden_4over6, "randn_64x128")
    assert len(modes) == 16 + 2 + 1 + 8
    for case in CASES:
        expected = 27 if case in ROW_SCALED_CASES else 18
        assert len(golden_modes(golden_4over6, case)) == expected, case


# --------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("case", CASES)
def test_reference_reproduces_every_golden_array(golden_4over6, case):
    for mode in golden_modes(golden_4over6, case):
        block, options = mode_options(mode)
        for suffix, x in golden_directions(golden_4over6, case, mode):
            ref = reference.quantize_reference(x, block, **options)
            assert_golden(
                golden_4over6,
                case,
                mode,
                suffix,
                ref.codes,
                ref.scales,
                ref.scale_codes,
                ref.amax,
                block,
            )


# --------------------------------------------------------------------------- the fast path


@pytest.mark.parametrize("case", CASES)
def test_quantize_and_fake_quantize_reproduce_every_golden_array(golden_4over6, case):
    """quantize in every mode, both directions; fake_quantize on the same inputs, including
    the columnwise one as a transposed view (the layout DGRAD/WGRAD hand over, no copy)."""
    for mode in golden_modes(golden_4over6, case):
        block, options = mode_options(mode)
        for suffix, x in golden_directions(golden_4over6, case, mode):
            q = nvfp4.quantize(x, block, **options)
            assert_golden(
                golden_4over6, case, mode, suffix, q.codes, q.scales, q.scale_bits, q.amax, block
            )
            expected_amax_shape = x.shape[:-1] if options.get("row_scaled") else ()
            assert q.amax.shape == expected_amax_shape
            inputs = [x]
            if suffix and x.dtype == torch.float32:
                inputs.append(x.t().contiguous().t())  # x^T as a view: the transposed layout
            for inp in inputs:
                blocks, amax = nvfp4.fake_quantize(inp, block, **options)
                assert torch.equal(blocks, q.decode_blocks()), (case, mode, suffix)
                assert torch.equal(amax, q.amax)
