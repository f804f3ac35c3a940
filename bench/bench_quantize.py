"""NVFP4 quantization speed: quant.nvfp4 vs torchao 0.18's nvfp4_quantize and vs x.clone().

    .venv/bin/python -m bench.bench_quantize [--size 2048] [--rounds 15] [--threads 2]

One 2048x2048 fp32 tensor; quantize, quantize+dequantize and fake_quantize (the QAT hot path)
for 1x16 blocks, 16x16 tiles and RHT+1x16, plus stochastic rounding. References, measured in
the same run and interleaved with ours round by round so that load on a shared machine hits
all alike:
- torchao 0.18 `nvfp4_quantize(x, 16, per_tensor_scale)` with the per-tensor scale from the
  tensor amax (two-level scaling, as ours); its only block shape is 1x16 and it has no RHT, so
  every row is compared with that one number;
- `x.clone()`: one read and one write of the tensor, the memory-bound floor.
Reported: median milliseconds, speed-up over torchao (higher is better), cost in clones.
Torch threads default to 2 (the development machine has 2 cores). On CUDA, when present, the
same table is printed for the GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from quant import nvfp4


def _torchao_quantize() -> tuple[Callable, Callable] | None:
    try:
        from torchao.prototype.mx_formats.nvfp4_tensor import (
            NVFP4Tensor,
            nvfp4_quantize,
            per_tensor_amax_to_scale,
        )
    except ImportError:
        return None

    def quantize(x):
        return nvfp4_quantize(x, 16, per_tensor_amax_to_scale(x.abs().amax()))

    def quantize_dequantize(x):
        scale = per_tensor_amax_to_scale(x.abs().amax())
        return NVFP4Tensor.to_nvfp4(x, 16, scale).dequantize(torch.float32)

    return quantize, quantize_dequantize


def _candidates(x: torch.Tensor) -> dict[str, Callable[[], object]]:
    gen = torch.Generator(device=x.device).manual_seed(0)
    runs: dict[str, Callable[[], object]] = {"x.clone()": x.clone}
    ao = _torchao_quantize()
    if ao is not None:
        runs["torchao quantize 1x16"] = lambda: ao[0](x)
        runs["torchao quantize+dequantize 1x16"] = lambda: ao[1](x)
    for name, kw in [
        ("1x16", {}),
        ("16x16", {"block": (16, 16)}),
        ("RHT 1x16", {"rht": True}),
        ("1x16 SR", {"rounding": "stochastic", "generator": gen}),
    ]:
        runs[f"quantize {name}"] = lambda kw=kw: nvfp4.quantize(x, **kw)
        runs[f"quantize+dequantize {name}"] = lambda kw=kw: nvfp4.quantize(x, **kw).dequantize()
        runs[f"fake_quantize {name}"] = lambda kw=kw: nvfp4.fake_quantize(x, **kw)
    return runs


def interleaved_medians(runs: dict[str, Callable], rounds: int, sync: Callable) -> dict:
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up: allocator, lazy constants, torchao import paths
        fn()
    for _ in range(rounds):
        for name, fn in runs.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) * 1e3 for name, times in samples.items()}


def _report(title: str, medians: dict[str, float]) -> None:
    clone = medians["x.clone()"]
    ao = medians.get("torchao quantize 1x16")
    print(f"\n{title}")
    print(f"{'':36s} {'ms':>9s} {'x faster than torchao':>22s} {'clones':>8s}")
    for name, ms in medians.items():
        speedup = f"{ao / ms:22.2f}" if ao else f"{'n/a':>22s}"
        print(f"{name:36s} {ms:9.2f} {speedup} {ms / clone:8.1f}")


def bench(device: str, size: int, rounds: int) -> dict[str, float]:
    x = torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    medians = interleaved_medians(_candidates(x), rounds, sync)
    threads = f"{torch.get_num_threads()} torch threads" if device == "cpu" else "CUDA"
    _report(f"{size}x{size} fp32 on {device} ({threads}), median of {rounds} rounds", medians)
    return medians


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv if argv is not None else [])
    torch.set_num_threads(args.threads)
    bench("cpu", args.size, args.rounds)
    if torch.cuda.is_available():
        bench("cuda", args.size, args.rounds)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
