"""One optimizer step under every QAT recipe, as a ratio to the baseline step, in one run.

    .venv/bin/python -m bench.bench_step [--archs cnn,swin] [--recipes ...] [--rounds 5]
                                         [--threads 2] [--batch 8] [--size 128] [--profile R]

A step is forward + backward + optimizer update (Adamax for the CNN, AdamW for Swin, as in the
paper) of the ~4M-parameter models (`models.build_model(arch, "4m")`) at batch 8, 128x128, on
the CPU, with BCE-with-logits on a random mask. Every recipe gets its own copy of the same
initial weights. The recipes are timed round-robin (one step each per round) so that machine
noise hits them alike, and each recipe's time is the median over rounds after one warm-up step.
The figure that matters is the ratio to `baseline` measured in the same run. On a shared,
noisy machine `--clock cpu --threads 1` (process CPU time of a single-threaded step) gives far
steadier ratios than wall time.

`--profile RECIPE` prints torch.profiler's top operators for one step of that recipe instead.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import quant

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
OPTIMIZERS = {"cnn": (torch.optim.Adamax, 5e-4, 0.0), "swin": (torch.optim.AdamW, 1e-4, 1e-4)}


def build(arch: str, size: int) -> torch.nn.Module:
    import models

    overrides = {} if arch == "cnn" else {"img_size": size}
    return models.build_model(arch, "4m", **overrides)


class Stepper:
    """A model prepared for one recipe, its optimizer and a fixed batch."""

    def __init__(self, base: torch.nn.Module, arch: str, recipe: str, batch):
        self.model = quant.prepare(
            copy.deepcopy(base), recipe, generator=torch.Generator().manual_seed(0)
        )
        cls, lr, wd = OPTIMIZERS[arch]
        self.optimizer = cls(self.model.parameters(), lr=lr, weight_decay=wd)
        self.batch = batch

    def step(self, clock=time.perf_counter) -> float:
        images, masks = self.batch
        start = clock()
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(self.model(images), masks)
        loss.backward()
        self.optimizer.step()
        return clock() - start


def time_recipes(arch: str, recipes: list[str], args) -> dict[str, float]:
    torch.manual_seed(0)
    base = build(arch, args.size).train()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    masks = (torch.rand(args.batch, 1, args.size, args.size, generator=generator) > 0.7).float()
    if args.channels_last:
        base = base.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    steppers = {r: Stepper(base, arch, r, (images, masks)) for r in recipes}
    for stepper in steppers.values():
        stepper.step()  # warm-up: allocator, oneDNN primitives, lazy imports
    times: dict[str, list[float]] = {r: [] for r in recipes}
    for _ in range(args.rounds):
        for recipe, stepper in steppers.items():
            times[recipe].append(stepper.step(CLOCKS[args.clock]))
    return {r: statistics.median(t) for r, t in times.items()}


def profile(arch: str, recipe: str, args) -> None:
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size)
    masks = (torch.rand(args.batch, 1, args.size, args.size) > 0.7).float()
    stepper = Stepper(build(arch, args.size).train(), arch, recipe, (images, masks))
    stepper.step()
    with torch_profile() as prof:
        stepper.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.bench_step", description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="cnn,swin")
    parser.add_argument("--recipes", default=",".join(quant.list_recipes()))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument(
        "--channels-last", action="store_true", help="model and input in channels-last memory"
    )
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--profile", metavar="RECIPE", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipes = args.recipes.split(",")
    if "baseline" not in recipes:
        recipes.insert(0, "baseline")
    print(
        f"one optimizer step, batch {args.batch}, {args.size}x{args.size}, CPU, "
        f"{args.threads} threads, {args.clock} clock, median of {args.rounds} round-robin rounds"
        + (", channels-last" if args.channels_last else "")
    )
    for arch in args.archs.split(","):
        if args.profile:
            profile(arch, args.profile, args)
            continue
        medians = time_recipes(arch, recipes, args)
        print(f"\n{arch} 4m: {'recipe':<12} {'step (ms)':>10} {'x baseline':>11}")
        for recipe, seconds in medians.items():
            ratio = seconds / medians["baseline"]
            print(f"{'':<9}{recipe:<12} {seconds * 1e3:>10.0f} {ratio:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
