"""Exhaustive proof that the Inductor-compiled quantizer rounds exactly as eager code does.

    .venv/bin/python -m bench.exhaustive_compiled [--items 1,2,3,4] [--chunk-log2 24]
                                                  [--threads 2]

Not a benchmark and not part of the test suite (a few minutes on 2 cores); run once after
changing the element-wise steps of quant/nvfp4.py, and the result goes to BENCHMARKS.md.
Inductor's C++ backend compiles the quantizer's ops itself, with its own vectorized
reinterpretations, reductions and conversions, so "the same Python code" is not a proof.
Checked, for every input in the domain, compiled (quant.compile settings, Inductor) against
eager, bit for bit (NaN: NaN in both):

1. block amax: the compiled quantizer reduces fp32 magnitudes with a float max, eager code the
   int32 bit patterns. They agree iff the non-negative fp32 patterns 0 .. +inf order like
   their int32 values: checked over all 2^31 of them (strictly increasing), plus NaN.
2. round-to-nearest (step 6, `_round_nearest_`): every one of the 2^32 fp32 bit patterns.
3. bf16 rounding of the RHT output (`_round_to_bf16`, compiled code only) against eager
   `t.to(bfloat16).float()`: every one of the 2^32 patterns.
4. stochastic rounding (`_round_stochastic_`): every (value, byte) pair for the values
   +-k * q and their two fp32 neighbours for every multiple k * q of every binade's quantum
   q = step / 256 in [0, 6] (all carry boundaries), plus every 2^10-th fp32 pattern in
   [-6, 6] (every binade down to the subnormals), each with all 256 bytes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator

import torch

from quant import nvfp4
from quant.compile import compile_function

_PATTERNS = 1 << 32


class _Scratch:
    """`_round_stochastic_`'s scratch interface: fresh buffers (compiled code fuses them)."""

    def like(self, name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(t.shape, dtype=dtype, device=t.device)


def _nearest(v: torch.Tensor) -> torch.Tensor:
    return nvfp4._round_nearest_(v.clone())


def _stochastic(v: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    return nvfp4._round_stochastic_(v.clone(), bits, _Scratch())


def _bf16_by_bits(v: torch.Tensor) -> torch.Tensor:
    return nvfp4._round_to_bf16(v)


def _bf16_by_cast(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.bfloat16).to(torch.float32)


def _block_amax(v: torch.Tensor) -> torch.Tensor:
    return v.abs().view(-1, 16).amax(dim=1)


def _all_patterns(chunk: int) -> Iterator[torch.Tensor]:
    """Every fp32 bit pattern, `chunk` at a time, as fp32 tensors."""
    for start in range(-(2**31), 2**31, chunk):
        yield (
            torch.arange(start, start + chunk, dtype=torch.int64)
            .to(torch.int32)
            .view(torch.float32)
        )


def _same(a: torch.Tensor, b: torch.Tensor) -> int:
    """Elements whose bits differ, NaN matching any NaN."""
    both_nan = torch.isnan(a) & torch.isnan(b)
    return int(((a.view(torch.int32) != b.view(torch.int32)) & ~both_nan).sum())


def check_order(chunk: int) -> str:
    """The non-negative fp32 patterns 0 .. 0x7F800000 (+inf) increase strictly as floats, so a
    max over int32 patterns and a max over floats pick the same element (item 1)."""
    previous = torch.tensor([-1.0])
    top = 0x7F800000
    for start in range(0, top + 1, chunk):
        ints = torch.arange(start, min(start + chunk, top + 1), dtype=torch.int32)
        floats = torch.cat([previous, ints.view(torch.float32)])
        if not bool((floats[1:] > floats[:-1]).all()):
            return "FAIL"
        previous = floats[-1:]
    compiled = compile_function(_block_amax)
    probe = torch.full((16,), 1.0)
    probe[5] = float("nan")
    if not bool(torch.isnan(compiled(probe)).all()):
        return "FAIL (NaN block amax not NaN)"
    return f"ok: {top + 1} patterns increase strictly; a NaN block's amax is NaN"


def check_all_patterns(name: str, eager: Callable, compiled: Callable, chunk: int) -> str:
    """eager(v) == compiled(v) bitwise for every fp32 pattern v (items 2 and 3)."""
    bad = 0
    for v in _all_patterns(chunk):
        bad += _same(eager(v), compiled(v))
    return f"{'ok' if bad == 0 else 'FAIL'}: {name}: {bad} of {_PATTERNS} patterns differ"


def _stochastic_values() -> torch.Tensor:
    """Item 4's values: every carry boundary k * q (with neighbours) and a dense sweep."""
    edges = []
    for low, high, quantum in ((0.0, 2.0, 2.0**-9), (2.0, 4.0, 2.0**-8), (4.0, 6.0, 2.0**-7)):
        edges.append(torch.arange(low, high + quantum / 2, quantum, dtype=torch.float64))
    points = torch.cat(edges).to(torch.float32)
    up = torch.nextafter(points, torch.full_like(points, 7.0))
    down = torch.nextafter(points, torch.zeros_like(points))
    boundary = torch.cat([points, up, down])
    six_bits = torch.tensor(6.0).view(torch.int32).item()
    dense = torch.arange(0, six_bits + 1, 1 << 10, dtype=torch.int32).view(torch.float32)
    magnitudes = torch.cat([boundary, dense]).unique()
    return torch.cat([magnitudes, -magnitudes])


def check_stochastic(chunk: int) -> str:
    """Every (value, byte) pair of `_stochastic_values` x 0..255, compiled vs eager (item 4)."""
    values = _stochastic_values()
    compiled = compile_function(_stochastic)
    per = chunk // 256
    bad = pairs = 0
    byte_row = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    for start in range(0, values.numel(), per):
        v = values[start : start + per]
        v = torch.cat([v, v.new_zeros(per - v.numel())])  # one static shape for the compiler
        grid = v[:, None].expand(per, 256).contiguous()
        bits = byte_row.expand(per, 256).contiguous()
        bad += _same(_stochastic(grid, bits), compiled(grid, bits))
        pairs += grid.numel()
    return f"{'ok' if bad == 0 else 'FAIL'}: stochastic: {bad} of {pairs} pairs differ"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bench.exhaustive_compiled", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--chunk-log2", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--items", default="1,2,3,4", help="which checks (see the docstring)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chunk = 1 << args.chunk_log2
    checks: dict[str, Callable[[], str]] = {
        "1": lambda: "block amax order: " + check_order(chunk),
        "2": lambda: check_all_patterns("nearest", _nearest, compile_function(_nearest), chunk),
        "3": lambda: check_all_patterns(
            "bf16", _bf16_by_cast, compile_function(_bf16_by_bits), chunk
        ),
        "4": lambda: check_stochastic(chunk),
    }
    start = time.perf_counter()
    print(f"torch {torch.__version__}, {args.threads} threads, chunks of 2^{args.chunk_log2}")
    for item in args.items.split(","):
        print(f"{item}.", checks[item](), flush=True)
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
