"""A real sqlite MLflow store holding small sweeps laid out exactly as the trainers log them.

`sweep_store` (session scope, built once: creating the sqlite schema alone takes seconds) holds:

Sweep names are prefixed with `analysis-` (the store is shared with other tests):

- "complete": cnn and swin at 500k and 4m, recipes baseline / nvfp4 / 2d_rht_sr, seeds 2026-2028,
  holdout, every run FINISHED with metrics, a PR curve and a prediction histogram; plus a 3-fold CV
  study (4m, swin and cnn, baseline and 2d_rht_sr). Its plan.json lists exactly these trials.
- "incomplete": cnn only; the plan also has seed 2028 and the 4m scale, which were never tracked;
  one baseline FAILED (so its seed's recipes have no normalized value), one trial RUNNING, one
  trial tracked twice (FAILED, then FINISHED), one run with a comb-shaped histogram (discretized),
  one finished run without test_auprc, and a stray run without a trial_key tag.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sweep.plan import plan_row
from trainables.vocabulary import trial_key

COMPLETE, INCOMPLETE = "analysis-complete", "analysis-incomplete"
RECIPES = {"baseline": 0, "nvfp4": 1, "2d_rht_sr": 5}
EFFECT = {"baseline": 0.0, "nvfp4": -0.03, "2d_rht_sr": 0.01}
LEVEL = {("cnn", "500k"): 0.60, ("cnn", "4m"): 0.70, ("swin", "500k"): 0.55, ("swin", "4m"): 0.78}


@dataclass
class Store:
    uri: str
    root: Path
    parents: dict[str, str]  # sweep name -> parent run id
    expected: dict[str, dict[str, float]]  # sweep name -> trial_key -> logged test_auprc
    complete: str = COMPLETE
    incomplete: str = INCOMPLETE


def smooth_histogram(rng) -> dict:
    edges = np.linspace(0, 1, 101)
    mids = (edges[:-1] + edges[1:]) / 2
    density = 1 / np.sqrt(mids * (1 - mids))  # U-shaped, like a trained segmenter's output
    counts = rng.poisson(2000 * density / density.mean())
    return {"bin_edges": edges.tolist(), "counts": counts.tolist()}


def comb_histogram() -> dict:
    counts = np.zeros(100, dtype=int)
    counts[0], counts[-1] = 50_000, 9_000
    counts[[12, 37, 61, 88]] = 4_000  # four discrete predicted values
    return {"bin_edges": np.linspace(0, 1, 101).tolist(), "counts": counts.tolist()}


def pr_curve(auprc: float, steps: int | None = None) -> dict:
    recall = np.linspace(0, 1, steps or 50)
    precision = np.clip(1 - (1 - auprc) * 2 * recall, 0, 1)
    return {"precision": precision.tolist(), "recall": recall.tolist()}


def log_trial(
    client,
    exp_id,
    sweep,
    parent,
    *,
    arch,
    scale,
    recipe,
    seed,
    fold="holdout",
    status="FINISHED",
    test_auprc=None,
    histogram=None,
    extra_metrics=None,
) -> str:
    from mlflow.entities import Metric

    key = trial_key(arch, scale, recipe, seed, fold)
    tags = {
        "sweep": sweep,
        "trial_key": key,
        "arch": arch,
        "scale": scale,
        "recipe": recipe,
        "recipe_id": str(RECIPES[recipe]),
        "seed": str(seed),
        "fold": fold,
        "split_seed": "2026",
        "config_hash": f"h{abs(hash(key)) % 10**8}",
        "git_sha": "abc123",
        "mlflow.parentRunId": parent,
    }
    run = client.create_run(exp_id, run_name=key, tags=tags)
    now = int(time.time() * 1000)
    metrics = [Metric("val_loss", 1.0 / (e + 1), now, e) for e in range(3)]
    metrics += [Metric("val_auprc", 0.1 * e, now, e) for e in range(3)]  # per-epoch, step=epoch
    if test_auprc is not None:
        final = {
            "test_auprc": test_auprc,
            "val_auprc": test_auprc - 0.02,
            "best_epoch": 2,
            "test_roc_auc": 0.95,
            "test_dice": test_auprc - 0.1,
            **(extra_metrics or {}),
        }
        metrics += [Metric(k, v, now, 3) for k, v in final.items()]  # final, after the epochs
    client.log_batch(run.info.run_id, metrics=metrics)
    if histogram is not None:
        client.log_dict(run.info.run_id, histogram, "pred_hist.json")
        client.log_dict(run.info.run_id, pr_curve(test_auprc or 0.5), "pr_curve.json")
    client.set_terminated(run.info.run_id, status)
    return key


def _new_sweep(client, root: Path, name: str):
    exp_id = client.create_experiment(name, artifact_location=(root / name).as_uri())
    parent = client.create_run(exp_id, run_name=name, tags={"sweep": name, "sweep_parent": "true"})
    return exp_id, parent.info.run_id


def _complete(client, root: Path, expected: dict) -> str:
    name = COMPLETE
    exp_id, parent = _new_sweep(client, root, name)
    rng = np.random.default_rng(0)
    plan = []
    for fold_list, scales, seeds in (
        (["holdout"], ["500k", "4m"], [2026, 2027, 2028]),
        (["f0", "f1", "f2"], ["4m"], [2026]),
    ):
        for arch in ("cnn", "swin"):
            for scale in scales:
                for recipe in RECIPES:
                    if fold_list != ["holdout"] and recipe == "nvfp4":
                        continue
                    for seed in seeds:
                        for fold in fold_list:
                            value = round(
                                LEVEL[arch, scale] + EFFECT[recipe] + rng.normal(0, 0.02), 4
                            )
                            axes = {"arch": arch, "scale": scale, "recipe": recipe}
                            axes |= {"seed": seed, "fold": fold}
                            key = log_trial(
                                client,
                                exp_id,
                                name,
                                parent,
                                **axes,
                                test_auprc=value,
                                histogram=smooth_histogram(rng),
                                extra_metrics={"test_distinct_pred_values": 9000},
                            )
                            expected[key] = value
                            plan.append(plan_row(**axes))
    client.log_dict(parent, plan, "plan.json")
    client.set_terminated(parent)
    return parent


def _incomplete(client, root: Path, expected: dict) -> str:
    name = INCOMPLETE
    exp_id, parent = _new_sweep(client, root, name)
    rng = np.random.default_rng(1)
    plan = [
        plan_row(arch="cnn", scale=s, recipe=r, seed=seed, fold="holdout")
        for s in ("500k", "4m")
        for r in RECIPES
        for seed in (2026, 2027, 2028)
    ]

    def log(recipe, seed, status="FINISHED", value=0.6, histogram=None, **kw):
        key = log_trial(
            client,
            exp_id,
            name,
            parent,
            arch="cnn",
            scale="500k",
            recipe=recipe,
            seed=seed,
            status=status,
            test_auprc=value,
            histogram=histogram or smooth_histogram(rng),
            **kw,
        )
        if status == "FINISHED" and value is not None:
            expected[key] = value

    log("baseline", 2026, value=0.60)
    log(
        "nvfp4",
        2026,
        value=0.57,
        histogram=comb_histogram(),
        extra_metrics={"test_distinct_pred_values": 12},
    )
    log("2d_rht_sr", 2026, status="FAILED", value=None)  # tracked twice: failed ...
    log("2d_rht_sr", 2026, value=0.63)  # ... then finished on the rerun
    log("baseline", 2027, status="FAILED", value=None)
    log("nvfp4", 2027, value=0.58)
    log("2d_rht_sr", 2027, status="RUNNING", value=None)
    log("baseline", 2028, value=None)  # finished, but test_auprc never arrived
    client.create_run(exp_id, run_name="stray", tags={"sweep": name})  # not a trial
    client.log_dict(parent, plan, "plan.json")
    return parent


@pytest.fixture()
def stored_sweep(tmp_path):
    """make(name): a two-trial sweep (cnn tiny baseline, seeds 1 and 2) whose spec is saved in its
    storage under tmp_path/sweeps, as `sweep run` leaves it; returns (spec, store)."""
    from sweep.runner import open_store
    from sweep.spec import parse_spec, spec_to_yaml

    def make(name: str):
        spec = parse_spec(
            {
                "name": name,
                "data": {"synthetic": {"patients": 6, "size": 32}, "image_size": 32},
                "grid": {
                    "arch": ["cnn"],
                    "scale": ["tiny"],
                    "recipe": ["baseline"],
                    "seed": [1, 2],
                },
                "storage": str(tmp_path / "sweeps"),
            }
        )
        store = open_store(spec)
        store.write_text(spec_to_yaml(spec), store.SPEC_FILE)
        return spec, store

    return make


@pytest.fixture(scope="session")
def sweep_store(tmp_path_factory) -> Store:
    from mlflow.tracking import MlflowClient

    # The session's store (tests/conftest.py): its schema is created once for every test using it.
    uri = os.environ["MLFLOW_TRACKING_URI"]
    root = tmp_path_factory.mktemp("analysis_artifacts")
    client = MlflowClient(uri)
    expected = {COMPLETE: {}, INCOMPLETE: {}}
    parents = {
        COMPLETE: _complete(client, root, expected[COMPLETE]),
        INCOMPLETE: _incomplete(client, root, expected[INCOMPLETE]),
    }
    return Store(uri, root, parents, expected)
