"""One optimizer step under every QAT recipe, as a ratio to the baseline step, in one run.

    .venv/bin/python -m bench.bench_step [--archs cnn,swin] [--recipes ...] [--rounds 5]
                                         [--threads 2] [--batch 8] [--size 128] [--profile R]
                                         [--compile] [--clock cpu]

A step is forward + backward + optimizer update (Adamax for the CNN, AdamW for Swin, as in the
paper) of the ~4M-parameter models (`models.build_model(arch, "4m")`) at batch 8, 128x128, on
the CPU, with BCE-with-logits on a random mask, run as the training loop runs it (quantizers
under `nvfp4.deferred`). Every recipe gets its own copy of the same initial weights. The
recipes are timed round-robin (one step each per round) so that machine noise hits them alike,
and each recipe's time is the median over rounds after one warm-up step. The figure that
matters is the ratio to `baseline` measured in the same run. On a shared, noisy machine
`--clock cpu --threads 1` (process CPU time of a single-threaded step) gives far steadier
ratios than wall time.

Per recipe it also reports, from torch.profiler over one step: the host synchronizations the
quantization adds to the step (aten::_local_scalar_dense / aten::item beyond the baseline's;
the goal is 0) and the aten ops per step. `--compile` adds the step compiled with
quant.compile (Inductor, fullgraph) next to eager, each against its own baseline; the compile
itself (minutes per recipe on 2 cores) is not timed.

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
from quant import nvfp4

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
        self.run = self.model
        cls, lr, wd = OPTIMIZERS[arch]
        self.optimizer = cls(self.model.parameters(), lr=lr, weight_decay=wd)
        self.batch = batch
        self.check = nvfp4.FiniteCheck()

    def step(self, clock=time.perf_counter) -> float:
        images, masks = self.batch
        start = clock()
        self.optimizer.zero_grad(set_to_none=True)
        with nvfp4.deferred(self.check):
            loss = F.binary_cross_entropy_with_logits(self.run(images), masks)
            loss.backward()
        self.optimizer.step()
        return clock() - start


def _batch(args) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    masks = (torch.rand(args.batch, 1, args.size, args.size, generator=generator) > 0.7).float()
    return images, masks


def build_steppers(arch: str, recipes: list[str], args) -> dict[str, Stepper]:
    torch.manual_seed(0)
    base = build(arch, args.size).train()
    images, masks = _batch(args)
    if args.channels_last:
        base = base.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    return {r: Stepper(base, arch, r, (images, masks)) for r in recipes}


def time_steppers(steppers: dict[str, Stepper], args) -> dict[str, float]:
    for stepper in steppers.values():
        stepper.step()  # warm-up: allocator, oneDNN primitives, lazy imports, compilation
    times: dict[str, list[float]] = {r: [] for r in steppers}
    for _ in range(args.rounds):
        for recipe, stepper in steppers.items():
            times[recipe].append(stepper.step(CLOCKS[args.clock]))
    return {r: statistics.median(t) for r, t in times.items()}


def op_counts(stepper: Stepper) -> tuple[int, int]:
    """(host syncs, aten ops) of one step, from torch.profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        stepper.step()
    events = {e.key: e.count for e in prof.key_averages()}
    syncs = sum(events.get(k, 0) for k in ("aten::_local_scalar_dense", "aten::item"))
    return syncs, sum(n for k, n in events.items() if k.startswith("aten::"))


def profile(arch: str, recipe: str, args) -> None:
    from torch.profiler import profile as torch_profile

    stepper = build_steppers(arch, [recipe], args)[recipe]
    stepper.step()
    with torch_profile() as prof:
        stepper.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def report(arch: str, recipes: list[str], args) -> None:
    steppers = build_steppers(arch, recipes, args)
    counts = {r: op_counts(st) for r, st in steppers.items()}
    eager = time_steppers(steppers, args)
    compiled: dict[str, float] = {}
    if args.compile:
        from quant.compile import compile_model

        torch._dynamo.config.recompile_limit = 64  # one entry per prepared copy of the model
        for stepper in steppers.values():
            stepper.run = compile_model(stepper.model)
        compiled = time_steppers(steppers, args)
    base_syncs = counts["baseline"][0]
    print(
        f"\n{arch} 4m: {'recipe':<12} {'+syncs':>6} {'aten ops':>9} {'eager ms':>9} "
        f"{'x base':>7}" + (f" {'compiled ms':>12} {'x base':>7}" if compiled else "")
    )
    for recipe in recipes:
        syncs, ops = counts[recipe]
        line = (
            f"{'':<9}{recipe:<12} {syncs - base_syncs:>6} {ops:>9} "
            f"{eager[recipe] * 1e3:>9.0f} {eager[recipe] / eager['baseline']:>7.2f}"
        )
        if compiled:
            ratio = compiled[recipe] / compiled["baseline"]
            line += f" {compiled[recipe] * 1e3:>12.0f} {ratio:>7.2f}"
        print(line, flush=True)


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
    parser.add_argument("--compile", action="store_true", help="also time the compiled step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipes = args.recipes.split(",")
    if "baseline" not in recipes:
        recipes.insert(0, "baseline")
    print(
        f"one optimizer step, batch {args.batch}, {args.size}x{args.size}, CPU, "
        f"{args.threads} threads, {args.clock} clock, median of {args.rounds} round-robin rounds"
        + (", channels-last" if args.channels_last else "")
        + (", eager and compiled (Inductor)" if args.compile else "")
    )
    for arch in args.archs.split(","):
        if args.profile:
            profile(arch, args.profile, args)
        else:
            report(arch, recipes, args)


if __name__ == "__main__":
    main()
