"""The GPU check: one command, one table, under 8 minutes on an H100/H200.

    python -m bench.gpu                      # on a CUDA machine
    python -m bench.gpu --device cpu --quick # every code path on the CPU, tiny (a test runs it)
    python -m bench.gpu --only golden,step --models cnn:500k --recipes nvfp4   # narrower, faster

Sections (each row: eager | compiled | note; ratios are measured side by side in this run):
1. golden   the CUDA tests of tests/quant (`pytest -m gpu`: golden vectors,
            reference vs fast, compiled vs eager) in a subprocess: passed/failed counts.
2. quantize fake_quantize of a 64M-element fp32 tensor per block mode, as a share of the memory
            bandwidth: bytes that must move (read x, write the result) per second, over the
            same for a device-to-device copy measured now (and over the GPU's nominal peak
            when its name is known).
3. step     one QAT optimizer step per recipe vs the baseline step: 500k and 4m CNN and Swin,
            256 px, batch 32, bf16 autocast; eager and compiled (quant.compile). Compiling
            every (model, recipe) takes longer than the time limit allows, so compiled steps
            run recipe by recipe in priority order (baseline, 2d_rht_sr, nvfp4, then the
            rest), every model each, within a 150 s budget; what did not fit says so.
4. train    `sweep train-one` of the 500k Swin under 2d_rht_sr, 3 epochs, synthetic 256 px data,
            in a subprocess (--compile on; eager with --quick): finishes, finite metrics.
5. packing  Ray: four trials of 0.25 GPU each on one GPU vs one trial alone, training steps of
            the 500k CNN under 2d_rht_sr: total throughput ratio (quick mode: two of 0.5).

Exit code 0 when every section passed, 1 when one failed (the table says which), 2 when the
device is missing. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
PRIORITY = ("baseline", "2d_rht_sr", "nvfp4", "fwd_only", "chain_rule", "2d_rht", "sr_only")
NOMINAL_TBPS = {"H100 HBM3": 3.35, "H100 NVL": 3.9, "H100 PCIe": 2.0, "H200": 4.8}


@dataclass
class Sizes:
    quantize_elements: int
    models: list[tuple[str, str]]
    image: int
    batch: int
    recipes: tuple[str, ...]
    steps: int
    compile_budget_s: float
    train: dict = field(default_factory=dict)
    pack_steps: int = 20
    pack_trials: int = 4  # trials sharing one GPU, each asking for 1 / pack_trials of it
    golden_args: tuple[str, ...] = ()
    backend: str = "inductor"


FULL = Sizes(
    quantize_elements=1 << 26,
    models=[("cnn", "500k"), ("cnn", "4m"), ("swin", "500k"), ("swin", "4m")],
    image=256,
    batch=32,
    recipes=(*PRIORITY, "fwd_rht"),
    steps=10,
    compile_budget_s=150.0,
    train={"arch": "swin", "scale": "500k", "synthetic": 8, "image": 256, "epochs": 3},
    pack_steps=30,
    golden_args=("-m", "gpu", "tests/quant"),
)
QUICK = Sizes(
    quantize_elements=1 << 14,
    models=[("cnn", "tiny")],
    image=32,
    batch=2,
    recipes=("baseline", "2d_rht_sr"),
    steps=2,
    compile_budget_s=600.0,
    train={"arch": "cnn", "scale": "tiny", "synthetic": 4, "image": 32, "epochs": 1},
    pack_steps=2,
    pack_trials=2,  # the same code path with fewer worker processes to start
    golden_args=("-m", "not gpu and not slow", "-k", "golden", "tests/quant/test_nvfp4.py"),
    backend="eager",  # dynamo capture only: the same code path, seconds instead of minutes
)


@dataclass
class Row:
    section: str
    item: str
    eager: str = ""
    compiled: str = ""
    note: str = ""
    ok: bool = True


class Bench:
    def __init__(self, device: torch.device, sizes: Sizes):
        self.device, self.sizes = device, sizes

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self, fn: Callable[[], object], repeat: int) -> float:
        """Median wall time of fn over `repeat` runs (after one more, not timed)."""
        fn()
        times = []
        for _ in range(repeat):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def compile(self, target, *, function: bool = False):
        from quant.compile import compile_function, compile_model

        compile_fn = compile_function if function else compile_model
        return compile_fn(target, backend=self.sizes.backend)


# --------------------------------------------------------------------------- 1. golden


def golden(b: Bench) -> list[Row]:
    if not (ROOT / "tests" / "quant").is_dir():
        return [Row("golden", "tests/quant", note="not in this checkout: skipped")]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *b.sizes.golden_args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    counts = dict(
        (k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)
    )
    ok = done.returncode == 0 and counts.get("passed", 0) > 0
    return [Row("golden", " ".join(b.sizes.golden_args[-1:]), note=summary, ok=ok)]


# --------------------------------------------------------------------------- 2. quantize


def quantize_bandwidth(b: Bench) -> list[Row]:
    from quant import nvfp4

    x = torch.randn(b.sizes.quantize_elements // 1024, 1024, device=b.device)
    gen = torch.Generator(device=b.device).manual_seed(0)
    nvfp4.register_generator(gen)
    moved = x.numel() * (4 + 4)  # read x, write the fp32 result
    copy_s = b.seconds(lambda: torch.empty_like(x).copy_(x), 20)
    rows = [Row("quantize", "copy (reference)", f"{moved / copy_s / 1e9:.0f} GB/s", "", "")]
    nominal = _nominal_bandwidth(b.device)
    modes = {
        "1x16": {},
        "16x16": {"block": (16, 16)},
        "RHT 1x16": {"rht": True},
        "1x16 SR": {"rounding": "stochastic", "generator": gen},
    }
    compiled_fq = b.compile(nvfp4.fake_quantize, function=True)
    for name, kw in modes.items():
        eager_s = b.seconds(lambda kw=kw: nvfp4.fake_quantize(x, **kw), 10)
        compiled_s = b.seconds(lambda kw=kw: compiled_fq(x, **kw), 10)
        cells = [_bandwidth_cell(moved, s, copy_s, nominal) for s in (eager_s, compiled_s)]
        rows.append(Row("quantize", f"fake_quantize {name}", *cells, note="of copy | of peak"))
    return rows


def _nominal_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tbps in NOMINAL_TBPS.items():
        if all(part in name for part in key.split()):
            return tbps * 1e12
    return None


def _bandwidth_cell(moved: int, seconds: float, copy_s: float, nominal: float | None) -> str:
    rate = moved / seconds
    cell = f"{rate / 1e9:.0f} GB/s {copy_s / seconds:.0%}"
    return cell + (f" | {rate / nominal:.0%}" if nominal else "")


# --------------------------------------------------------------------------- 3. step


class Stepper:
    """One recipe's copy of a model, its optimizer, a fixed batch: one QAT step per call."""

    def __init__(self, b: Bench, base, arch: str, recipe: str, batch):
        import quant
        from quant import nvfp4

        self.gen = torch.Generator(device=b.device).manual_seed(0)
        self.model = quant.prepare(copy.deepcopy(base), recipe, generator=self.gen)
        self.run = self.model
        cls = torch.optim.Adamax if arch == "cnn" else torch.optim.AdamW
        self.optimizer = cls(self.model.parameters(), lr=1e-4)
        self.batch, self.device = batch, b.device
        self.check = nvfp4.FiniteCheck(b.device)

    def __call__(self) -> None:
        from quant import nvfp4

        images, masks = self.batch
        self.optimizer.zero_grad(set_to_none=True)
        with nvfp4.deferred(self.check), _autocast(self.device):
            logits = self.run(images)
        with nvfp4.deferred(self.check):
            F.binary_cross_entropy_with_logits(logits.float(), masks).backward()
        self.optimizer.step()


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _progress(arch: str, scale: str, recipe: str, how: str, seconds: float) -> float:
    """Print one measurement as it is made (a run cut short by a time limit keeps them)."""
    print(f"[bench.gpu] step {arch} {scale} {recipe} {how} {seconds * 1e3:.1f} ms", flush=True)
    return seconds


def qat_steps(b: Bench) -> list[Row]:
    import models

    steppers: dict[tuple[str, str], dict[str, Stepper]] = {}
    eager: dict[tuple[str, str], dict[str, float]] = {}
    for arch, scale in b.sizes.models:
        torch.manual_seed(0)
        overrides = {"img_size": b.sizes.image} if arch == "swin" else {}
        base = models.build_model(arch, scale, **overrides).to(b.device).train()
        s = b.sizes.image
        images = torch.randn(b.sizes.batch, 3, s, s, device=b.device)
        masks = (torch.rand(b.sizes.batch, 1, s, s, device=b.device) > 0.7).float()
        mine = {r: Stepper(b, base, arch, r, (images, masks)) for r in b.sizes.recipes}
        steppers[arch, scale] = mine
        eager[arch, scale] = {r: _progress(arch, scale, r, "eager", b.seconds(st, b.sizes.steps))
                              for r, st in mine.items()}  # fmt: skip
    # Compiled: recipe by recipe in priority order, every model, until the budget is spent.
    compiled: dict[tuple[str, str], dict[str, float]] = {key: {} for key in steppers}
    deadline = time.perf_counter() + b.sizes.compile_budget_s
    for recipe in b.sizes.recipes:
        for key, mine in steppers.items():
            if time.perf_counter() > deadline:
                break
            mine[recipe].run = b.compile(mine[recipe].model)
            seconds = b.seconds(mine[recipe], b.sizes.steps)
            compiled[key][recipe] = _progress(*key, recipe, "compiled", seconds)
    rows = []
    for (arch, scale), mine in steppers.items():
        e, c = eager[arch, scale], compiled[arch, scale]
        for recipe in b.sizes.recipes:
            cell = "not compiled (time budget)"
            if recipe in c and "baseline" in c:
                cell = f"{c[recipe] * 1e3:.1f} ms {c[recipe] / c['baseline']:.2f}x"
            ratio = e[recipe] / e["baseline"]
            rows.append(
                Row("step", f"{arch} {scale} {recipe}", f"{e[recipe] * 1e3:.1f} ms {ratio:.2f}x",
                    cell, "x baseline")
            )  # fmt: skip
        if any(bool(st.check.flag) for st in mine.values()):
            rows.append(Row("step", f"{arch} {scale}", note="non-finite operand", ok=False))
    return rows


# --------------------------------------------------------------------------- 4. train-one


class TrainOne:
    """`sweep train-one` in a subprocess, started early: it only has to finish with finite
    metrics, so it runs while the golden tests do (neither is a timing)."""

    def __init__(self, b: Bench):
        t = b.sizes.train
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-gpu-")
        tmp = Path(self.tmp.name)
        cmd = [
            sys.executable, "-m", "sweep", "train-one", "--arch", t["arch"], "--scale",
            t["scale"], "--recipe", "2d_rht_sr", "--seed", "0", "--synthetic",
            str(t["synthetic"]), "--image-size", str(t["image"]), "--epochs", str(t["epochs"]),
            "--device", b.device.type, "--out", str(tmp / "run"),
            "--compile", "off" if b.sizes.backend == "eager" else "on",
        ]  # fmt: skip
        env = {**os.environ, "SWEEP_DATA_CACHE": str(tmp / "cache")}
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env["PYTHONPATH"] = path
        self.item = f"{t['arch']} {t['scale']} 2d_rht_sr {t['epochs']} ep {t['image']} px"
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def result(self, timeout: float = 420) -> list[Row]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            self.tmp.cleanup()
            return [Row("train", self.item, note=f"timed out after {timeout:.0f} s", ok=False)]
        elapsed = time.perf_counter() - self.start
        metrics_file = Path(self.tmp.name) / "run" / "final_metrics.json"
        final = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        self.tmp.cleanup()
        if self.proc.returncode != 0 or final is None:
            tail = (err or out).strip().splitlines()[-3:]
            return [Row("train", self.item, note=f"rc {self.proc.returncode}: {tail}", ok=False)]
        finite = all(math.isfinite(v) for k, v in final.items() if not k.startswith("test_hist"))
        note = f"{elapsed:.0f} s, test_auprc {final.get('test_auprc', float('nan')):.3f}"
        return [Row("train", self.item, note=note + ("" if finite else ", NON-FINITE"), ok=finite)]


def train_one(b: Bench) -> list[Row]:
    return TrainOne(b).result()


# --------------------------------------------------------------------------- 5. packing


def _trial_steps(device: str, steps: int, image: int, batch: int) -> float:
    """A stand-in trial: `steps` QAT steps of the 500k CNN (tiny on CPU); samples per second."""
    import models

    device_ = torch.device(device)
    b = Bench(device_, QUICK if device == "cpu" else FULL)
    torch.manual_seed(0)
    base = models.build_model("cnn", "tiny" if device == "cpu" else "500k").to(device_)
    images = torch.randn(batch, 3, image, image, device=device_)
    masks = (torch.rand(batch, 1, image, image, device=device_) > 0.7).float()
    stepper = Stepper(b, base, "cnn", "2d_rht_sr", (images, masks))
    stepper()
    b.sync()
    start = time.perf_counter()
    for _ in range(steps):
        stepper()
    b.sync()
    return steps * batch / (time.perf_counter() - start)


def packing(b: Bench) -> list[Row]:
    import ray

    s = b.sizes
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private, local, short-lived cluster
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        num_cpus=4,
        num_gpus=1,  # on the CPU a logical GPU: the 0.25 shares pack the same way
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    try:
        n = s.pack_trials
        trial = ray.remote(num_gpus=1 / n, num_cpus=1)(_trial_steps)
        args = (b.device.type, s.pack_steps, s.image, s.batch)
        alone = ray.get(trial.remote(*args))
        packed = ray.get([trial.remote(*args) for _ in range(n)])
    finally:
        ray.shutdown()
    ratio = sum(packed) / alone
    cells = (f"1 trial: {alone:.0f} samples/s", f"{n} x {1 / n:.2g}: {sum(packed):.0f} samples/s")
    return [Row("packing", f"{n} trials / 1 GPU", *cells, note=f"{ratio:.2f}x throughput")]


# --------------------------------------------------------------------------- main

SECTIONS = {
    "golden": golden,
    "quantize": quantize_bandwidth,
    "step": qat_steps,
    "train": train_one,
    "packing": packing,
}


def _narrowed(sizes: Sizes, args: argparse.Namespace) -> Sizes:
    """The step section's models, recipes and compile budget as the command line narrows them
    (a GPU lent for minutes cannot run every model and recipe); ValueError names a bad one."""
    import models
    from quant import get_recipe

    changes: dict = {}
    if args.models:
        pairs = [tuple(item.split(":", 1)) for item in args.models.split(",")]
        for pair in pairs:
            if len(pair) != 2:
                raise ValueError(f"--models: {':'.join(pair)!r} is not arch:scale (e.g. cnn:500k)")
            models.get_config(*pair)  # raises naming the valid archs / scales
        changes["models"] = pairs
    if args.recipes:
        names = [get_recipe(name).name for name in args.recipes.split(",")]  # raises if unknown
        changes["recipes"] = tuple(dict.fromkeys(["baseline", *names]))  # the ratios' reference
    if args.compile_budget is not None:
        changes["compile_budget_s"] = args.compile_budget
    return dataclasses.replace(sizes, **changes)


def print_table(rows: list[Row], header: str) -> None:
    widths = [9, 30, 26, 30]
    print(f"\n{header}")
    cols = ("section", "item", "eager", "compiled")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + "  note")
    for r in rows:
        cells = (r.section, r.item, r.eager, r.compiled)
        line = "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
        print(f"{line}  {'' if r.ok else 'FAILED '}{r.note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU self-test)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument(
        "--models", help="step section: arch:scale,... (default: 500k, 4m CNN, Swin)"
    )
    parser.add_argument("--recipes", help="step section: recipes,... (baseline is always added)")
    parser.add_argument("--compile-budget", type=float, help="step section: seconds (default 150)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench.gpu: no CUDA device here (torch.cuda.is_available() is False). Run it on a "
            "GPU machine, or `python -m bench.gpu --device cpu --quick` to exercise it on the CPU.",
            file=sys.stderr,
        )
        return 2
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        print(f"bench.gpu: unknown section(s) {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
        return 2
    try:
        sizes = _narrowed(QUICK if args.quick else FULL, args)
    except ValueError as err:
        print(f"bench.gpu: {err}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    # Many compiled copies of one model class and of fake_quantize (one graph per mode) may
    # exceed Dynamo's default of 8 entries per code object, a hard error under fullgraph.
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.accumulated_recompile_limit = 1024
    b = Bench(device, sizes)
    rows: list[Row] = []
    start = time.perf_counter()
    names = args.only.split(",")
    # train-one starts first and is collected right after the golden tests it overlaps, so it
    # is done before anything is timed.
    pending = TrainOne(b) if "train" in names else None
    order = [n for n in names if n != "train"]
    if pending is not None:
        order.insert(order.index("golden") + 1 if "golden" in order else 0, "train")
    for name in order:
        section_start = time.perf_counter()
        try:
            rows += pending.result() if name == "train" else SECTIONS[name](b)
        except Exception as err:  # one broken section must not hide the others' figures
            rows.append(Row(name, "error", note=f"{type(err).__name__}: {err}"[:300], ok=False))
        print(f"[bench.gpu] {name} done in {time.perf_counter() - section_start:.0f} s", flush=True)
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print_table(rows, f"bench.gpu on {what}, {time.perf_counter() - start:.0f} s, torch "
                f"{torch.__version__}{' (quick)' if args.quick else ''}")  # fmt: skip
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
