"""The cost of TE 2.20's 4over6 and row-scaled options, and no regression for the existing modes.

    .venv/bin/python -m bench.bench_4over6 [--size 2048] [--rounds 11] [--threads 2]
                                           [--against main]

One size x size fp32 tensor through `nvfp4.fake_quantize` (the QAT hot path), every variant
interleaved round by round so that load on a shared machine hits all alike. Printed: median
milliseconds and the ratio to plain 1x16 (or 16x16) fake-quantize measured in the same run:

- 4over6 (MAE / MSE, exact / fast error path) on 1x16 blocks and 16x16 tiles: two candidate
  scales, each encoded, rounded and scored element by element, then the chosen one encoded
  again;
- row-scaled 1x16 (one tensor scale per row).

With `--against REF`, the existing modes (1x16, 16x16, RHT, SR) are also timed against
quant/nvfp4.py as it is at git revision REF (loaded from `git show`, in the same process): an A/B
loop of its own, the two alternating and swapping who goes first every round (whoever runs
second after a large allocation is measurably favoured, so a fixed order biases the ratio), and
the ratio ours / REF of the medians and of the minima is printed: about 1.0 means the new
options cost the old modes nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from bench.bench_quantize import interleaved_medians
from quant import nvfp4

FOUR_OVER_SIX = [
    ("4/6 MAE", {"four_over_six": "mae"}),
    ("4/6 MSE", {"four_over_six": "mse"}),
    ("4/6 MAE fast", {"four_over_six": "mae", "four_over_six_fast": True}),
]
EXISTING = [
    ("1x16", {}),
    ("16x16", {"block": (16, 16)}),
    ("RHT 1x16", {"rht": True}),
    ("1x16 SR", {"rounding": "stochastic"}),
]


def _module_at(ref: str) -> ModuleType | None:
    """quant/nvfp4.py as of git revision `ref`, imported under another name; None if absent."""
    root = Path(__file__).resolve().parents[1]
    try:
        source = subprocess.run(
            ["git", "-C", str(root), "show", f"{ref}:quant/nvfp4.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"(no comparison: cannot read quant/nvfp4.py at {ref!r}: {err})")
        return None
    path = Path(tempfile.mkdtemp()) / f"nvfp4_at_{ref.replace('/', '_')}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _runs(x: torch.Tensor) -> dict[str, Callable[[], object]]:
    runs: dict[str, Callable[[], object]] = {}
    for block_name, block in [("1x16", (1, 16)), ("16x16", (16, 16))]:
        runs[block_name] = lambda b=block: nvfp4.fake_quantize(x, b)
        for name, kw in FOUR_OVER_SIX:
            runs[f"{block_name} {name}"] = lambda b=block, kw=kw: nvfp4.fake_quantize(x, b, **kw)
    runs["1x16 row-scaled"] = lambda: nvfp4.fake_quantize(x, row_scaled=True)
    return runs


def _ab(x: torch.Tensor, old: ModuleType, rounds: int, sync: Callable) -> dict[str, tuple]:
    """Existing mode -> (ours median, old median, ours min, old min) in ms, alternating order."""
    out = {}
    for name, kw in EXISTING:
        sides = {"ours": nvfp4, "old": old}
        times: dict[str, list[float]] = {"ours": [], "old": []}
        for r in range(rounds + 1):
            for side in ("ours", "old") if r % 2 else ("old", "ours"):
                extra = {"generator": torch.Generator(device=x.device).manual_seed(r)}
                extra = extra if "rounding" in kw else {}
                sync()
                start = time.perf_counter()
                sides[side].fake_quantize(x, **kw, **extra)
                sync()
                if r:  # round 0 warms both up
                    times[side].append(time.perf_counter() - start)
        med = [statistics.median(times[s]) * 1e3 for s in ("ours", "old")]
        out[name] = (*med, min(times["ours"]) * 1e3, min(times["old"]) * 1e3)
    return out


def _report(device: str, size: int, rounds: int, against: str | None) -> None:
    x = torch.randn(size, size, device=device, generator=None)
    old = _module_at(against) if against else None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ms = interleaved_medians(_runs(x), rounds, sync)
    print(f"\n{device}: fake_quantize of a {size}x{size} fp32 tensor, median of {rounds} rounds")
    print(f"{'variant':<24}{'ms':>10}{'x plain':>10}")
    for name, value in ms.items():
        plain = ms["16x16" if name.startswith("16x16") else "1x16"]
        print(f"{name:<24}{value:>10.2f}{value / plain:>10.2f}")
    if old is not None:
        ab = _ab(x, old, rounds, sync)
        print(f"\nexisting modes, ours vs quant/nvfp4.py at {against!r} (ratio < 1: faster)")
        print(f"{'mode':<12}{'ours ms':>10}{'old ms':>10}{'median':>10}{'min':>10}")
        for name, (ours, before, ours_min, before_min) in ab.items():
            ratios = f"{ours / before:>10.2f}{ours_min / before_min:>10.2f}"
            print(f"{name:<12}{ours:>10.2f}{before:>10.2f}{ratios}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--against", default="main", help="git revision to compare with ('' off)")
    args = parser.parse_args(argv if argv is not None else [])
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    _report("cpu", args.size, args.rounds, args.against or None)
    if torch.cuda.is_available():
        _report("cuda", args.size, args.rounds, args.against or None)


if __name__ == "__main__":
    main(sys.argv[1:])
