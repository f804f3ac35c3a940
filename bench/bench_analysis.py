"""`sweep analyze` on 1000 synthetic runs in a sqlite MLflow store (target: < 20 s end to end).

The store holds the paper's grid: 4 arch variants x 3 scales x 8 recipes x 10 seeds (960 trials),
the 5-fold CV study (2 archs x 2 recipes x 5 folds, 20 trials) and 20 reruns (a FAILED run then a
FINISHED one for the same trial), so 1000 runs; every finished run has final metrics, per-epoch
metrics, a PR curve and a prediction histogram, like the trainer logs them. Populating is not timed.

Printed: the end-to-end wall time of `python -m sweep analyze` in a fresh process (imports
included) against the 20 s target, the in-process time of each stage, and the paged read of the
runs table against a reference measured in the same run: MLflow's own `mlflow.search_runs` into a
DataFrame (default page size), the obvious way to do the same read.

    python -m bench.bench_analysis [--store DIR] [--runs-only]

--store keeps the populated store in DIR and reuses it on the next call.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from quant.recipes import PAPER_RECIPES
from sweep.plan import plan_row
from trainables.vocabulary import ARCHS, N_FOLDS, scales

SWEEP = "bench-analysis"
SCALES = tuple(s for s in scales() if s != "tiny")  # the paper's three
RECIPES = PAPER_RECIPES
SEEDS = range(2026, 2036)
TARGET_S = 20.0


def _trials():
    for arch in ARCHS:
        for scale in SCALES:
            for rid, recipe in enumerate(RECIPES):
                for seed in SEEDS:
                    yield arch, scale, recipe, rid, seed, "holdout"
    for arch in ("swin", "cnn"):
        for rid, recipe in ((0, "baseline"), (5, "2d_rht_sr")):
            for fold in range(N_FOLDS):
                yield arch, "4m", recipe, rid, 2026, f"f{fold}"


def _histogram(rng, spiky: bool) -> dict:
    edges = np.linspace(0, 1, 101)
    if spiky:  # attention discretized: a handful of predicted values
        counts = np.zeros(100, dtype=int)
        counts[[0, 99]] = 600_000, 40_000
        counts[rng.choice(np.arange(5, 95), 6, replace=False)] = 20_000
    else:
        mids = (edges[:-1] + edges[1:]) / 2
        counts = rng.poisson(4000 / np.sqrt(mids * (1 - mids)))
    return {"bin_edges": edges.round(4).tolist(), "counts": counts.tolist()}


def _pr_curve(rng, auprc: float) -> dict:
    recall = np.sort(rng.uniform(0, 1, 256))
    precision = np.clip(1 - (1 - auprc) * 2 * recall + rng.normal(0, 0.01, 256), 0, 1)
    return {"precision": precision.round(5).tolist(), "recall": recall.round(5).tolist()}


def _log_run(client, exp_id, parent, trial, rng, status="FINISHED") -> dict:
    from mlflow.entities import Metric, RunTag

    arch, scale, recipe, rid, seed, fold = trial
    row = plan_row(arch=arch, scale=scale, recipe=recipe, seed=seed, fold=fold)
    key = row["trial_key"]
    tags = {
        "sweep": SWEEP,
        "trial_key": key,
        "arch": arch,
        "scale": scale,
        "recipe": recipe,
        "recipe_id": str(rid),
        "seed": str(seed),
        "fold": fold,
        "split_seed": "2026",
        "config_hash": f"{abs(hash(key)):016x}"[:16],
        "git_sha": "0" * 40,
        "mlflow.parentRunId": parent,
        "mlflow.runName": key,
    }
    run_id = client.create_run(exp_id, run_name=key).info.run_id
    now = int(time.time() * 1000)
    level = 0.55 + 0.08 * SCALES.index(scale) + (0.03 if arch == "swin" else 0.0)
    auprc = float(np.clip(level - 0.01 * rid * (arch == "cnn") + rng.normal(0, 0.02), 0.05, 1))
    metrics = [
        Metric(m, float(v), now, e)
        for e in range(20)
        for m, v in (
            ("train_loss", 1 / (e + 1)),
            ("val_loss", 1.1 / (e + 1)),
            ("val_auprc", auprc * e / 20),
            ("lr", 1e-4),
        )
    ]
    spiky = scale == "500k" and arch.startswith("vit") and recipe in ("nvfp4", "fwd_only")
    if status == "FINISHED":
        final = {
            "test_auprc": auprc,
            "val_auprc": auprc + 0.01,
            "best_epoch": 14,
            "test_roc_auc": 0.97,
            "test_dice": auprc - 0.1,
            "test_iou": auprc - 0.2,
            "test_distinct_pred_values": 40 if spiky else 12_000,
        }
        metrics += [Metric(k, float(v), now, 20) for k, v in final.items()]
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
    if status == "FINISHED":
        client.log_dict(run_id, _pr_curve(rng, auprc), "pr_curve.json")
        client.log_dict(run_id, _histogram(rng, spiky), "pred_hist.json")
    client.set_terminated(run_id, status)
    return row


def populate(root: Path) -> str:
    """Create (or reuse) the 1000-run store under `root`; returns its tracking URI."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    if client.get_experiment_by_name(SWEEP) is not None:
        return uri
    exp_id = client.create_experiment(SWEEP, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(
        exp_id, run_name=SWEEP, tags={"sweep": SWEEP, "sweep_parent": "true"}
    ).info.run_id
    rng = np.random.default_rng(0)
    trials = list(_trials())
    plan = []
    started = time.perf_counter()
    for i, trial in enumerate(trials):
        if i % 49 == 0:  # a rerun: the first attempt failed
            _log_run(client, exp_id, parent, trial, rng, status="FAILED")
        plan.append(_log_run(client, exp_id, parent, trial, rng))
        if (i + 1) % 200 == 0:
            print(
                f"  populated {i + 1}/{len(trials)} trials ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    client.log_dict(parent, plan, "plan.json")
    client.set_terminated(parent)
    return uri


def _timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    elapsed = time.perf_counter() - start
    print(f"  {label:<44s} {elapsed:7.2f} s", flush=True)
    return out, elapsed


def bench_read(uri: str) -> None:
    """Our paged read vs mlflow.search_runs, same store, same process."""
    import mlflow

    from sweep import runs

    mlflow.set_tracking_uri(uri)
    reference, t_ref = _timed(
        "reference: mlflow.search_runs -> DataFrame", mlflow.search_runs, experiment_names=[SWEEP]
    )
    ours, t_ours = _timed(
        "ours: runs.read_sweep (no artifacts)", runs.read_sweep, uri, SWEEP, histograms=False
    )
    print(
        f"  rows: reference {len(reference)} runs, ours {len(ours.table)} trials; "
        f"ours / reference = {t_ours / t_ref:.2f}x"
    )


def bench_stages(uri: str, out: Path) -> float:
    """Each stage of `analyze`, in process (imports already warm)."""
    from sweep import figures, report, runs
    from sweep.analysis import analyze_table

    total = 0.0
    swept, t = _timed("read runs + histogram artifacts", runs.read_sweep, uri, SWEEP)
    total += t
    _, t = _timed(
        "Fig 5 curves (artifacts)", runs.fetch_curves, swept, figures.fig5_trials(swept.table)
    )
    total += t
    _, t = _timed("snapshot (parquet + csv)", runs.save_snapshot, swept, out)
    total += t
    result, t = _timed(
        "statistics (10k bootstrap per cell)", analyze_table, swept.table, swept.plan
    )
    total += t
    _, t = _timed("CSV tables", report.write_tables, result, out)
    total += t
    figs, t = _timed(
        "figures (PNG + PDF)",
        figures.render_figures,
        result,
        swept.table,
        swept.curves,
        swept.plan,
        out / "figures",
    )
    total += t
    _, t = _timed(
        "report.md", report.write_report, result, out, name=SWEEP, source=uri, figures=figs
    )
    total += t
    _, t = _timed(
        "log folder to the parent run", report.log_to_parent, uri, swept.parent_run_id, out
    )
    total += t
    print(f"  {'sum of stages':<44s} {total:7.2f} s")
    return total


def bench_end_to_end(uri: str, out: Path) -> float:
    """`python -m sweep analyze` in a fresh process, imports included.

    Also prints the child's CPU time (user + sys): on a shared, busy machine the wall time
    stretches with the load, while the CPU time is what an idle machine would roughly take (the
    command is single-threaded apart from artifact reads).
    """
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "sweep", "analyze", SWEEP, "--out", str(out)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(
        f"  end to end, fresh process: {elapsed:.2f} s wall, {cpu:.2f} s CPU "
        f"(target < {TARGET_S:.0f} s: wall {elapsed / TARGET_S:.2f}x, CPU {cpu / TARGET_S:.2f}x "
        f"of the budget; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_analysis")
    parser.add_argument("--store", type=Path, help="keep/reuse the populated store here")
    parser.add_argument("--runs-only", action="store_true", help="only the read comparison")
    args = parser.parse_args(argv if argv is not None else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = args.store or Path(tmp) / "store"
        root.mkdir(parents=True, exist_ok=True)
        print(f"store: {root}", flush=True)
        uri, t_pop = _timed("populate (not part of the benchmark)", populate, root)
        bench_read(uri)
        if args.runs_only:
            return
        bench_end_to_end(uri, Path(tmp) / "e2e")
        bench_stages(uri, Path(tmp) / "stages")


if __name__ == "__main__":
    main(sys.argv[1:])
