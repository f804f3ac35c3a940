"""The `sweep` command line: one table of commands.

Each entry of COMMANDS names a command, the function that runs it ("module:function"), its
one-line help and its arguments, as data. A command is imported only when it is run, so
`sweep --help` stays fast and a missing optional dependency of one command never breaks the
others. Sub-command groups (`sweep data check`) are entries whose name has two words.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sweep


@dataclass(frozen=True)
class Arg:
    """One `add_argument` call: the argument's names and options."""

    names: tuple[str, ...]
    options: dict[str, Any]

    def add_to(self, parser) -> None:
        parser.add_argument(*self.names, **self.options)


@dataclass(frozen=True)
class OneOf:
    """Arguments of which at most one may be given."""

    args: tuple[Arg, ...]

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_mutually_exclusive_group()
        for a in self.args:
            a.add_to(group)


@dataclass(frozen=True)
class Command:
    name: str  # "run" or, for a group, "data check"
    target: str  # "module:function" taking (args) and returning an exit code
    help: str
    args: tuple[Arg | OneOf, ...] = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        for a in self.args:
            a.add_to(parser)


def arg(*names: str, **options: Any) -> Arg:
    return Arg(names, options)


# --------------------------------------------------------------------------- the command table
# Each command's arguments are declared in its entry; its behaviour lives in `target`. Arguments
# several commands share are declared once, here.

SPEC = arg("spec", help="sweep spec (YAML)")
SWEEP_NAME = (  # how commands find a sweep that already exists
    arg("name", help="the sweep's name"),
    arg(
        "--storage",
        help="storage root, a folder or s3://bucket/prefix (endpoint and keys from AWS_* in the "
        "environment; default: $SWEEP_STORAGE or ./sweeps)",
    ),
)
RAY_ADDRESS = arg("--address", help="a running Ray cluster (default: an embedded local Ray)")
JOB = arg("name", help="the sweep's name (or a job submission id)")
DASHBOARD = arg(
    "--address",
    required=True,
    help="Ray dashboard URL, e.g. http://HEAD:8265 (a cluster with token auth: its token in "
    "$RAY_AUTH_TOKEN or the file $RAY_AUTH_TOKEN_PATH)",
)
TRACKING_URI = arg(
    "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)"
)


def json_flag(help: str) -> Arg:
    return arg("--json", action="store_true", help=help)


def _train_one_args() -> tuple[Arg | OneOf, ...]:
    from trainables.vocabulary import ARCHS, N_FOLDS

    return (
        arg("--arch", required=True, help=" | ".join(ARCHS)),
        arg("--scale", required=True, help="a scale preset (sweep list models)"),
        arg("--recipe", required=True, help="a recipe name (sweep list recipes)"),
        arg("--seed", type=int, required=True),
        OneOf(
            (
                arg("--data", metavar="PATH", help="the LGG kaggle_3m folder"),
                arg(
                    "--synthetic",
                    nargs="?",
                    const=12,
                    type=int,
                    metavar="PATIENTS",
                    help="train on generated synthetic data (default 12 patients)",
                ),
            )
        ),
        arg("--epochs", type=int, help="default: the paper's 100"),
        arg("--fold", default="holdout", help=f"holdout | f0..f{N_FOLDS - 1}"),
        arg("--image-size", type=int, help="default 256, or 64 with --synthetic"),
        arg("--batch-size", type=int, help="default: the paper's 32"),
        arg("--lr", type=float, help="default: the paper's value for the arch"),
        arg("--num-workers", type=int, default=0, help="data-loader processes"),
        arg("--threads", type=int, help="torch CPU threads (default: torch's choice)"),
        arg("--device", help="cpu | cuda (default: cuda when available)"),
        arg(
            "--compile", choices=("off", "on", "auto"), help="torch.compile the step (default auto)"
        ),
        arg("--out", metavar="DIR", help="default: results/train-one/<trial_key>"),
        arg("--fresh", action="store_true", help="discard a checkpoint found in --out"),
        arg("--tracking-uri", help="log to MLflow at this URI (sqlite:///... or http://)"),
        arg("--experiment", default="train-one", help="MLflow experiment name"),
    )


COMMANDS: tuple[Command, ...] = (
    Command(
        "plan",
        "sweep.run_cli:plan",
        "Show the trials a spec expands to, without running anything.",
        (
            SPEC,
            json_flag("trials, counts per axis and cost as JSON"),
            arg("--all", action="store_true", help="list every trial, not the first 20"),
        ),
    ),
    Command(
        "run",
        "sweep.run_cli:run",
        "Run a sweep; running it again resumes it and skips finished trials.",
        (SPEC, RAY_ADDRESS),
    ),
    Command(
        "resume",
        "sweep.run_cli:resume",
        "Continue an interrupted sweep from its storage.",
        (*SWEEP_NAME, RAY_ADDRESS),
    ),
    Command(
        "status",
        "sweep.run_cli:status",
        "Per-state counts and a table of the sweep's trials (or its job's state).",
        (
            *SWEEP_NAME,
            arg("--address", help="Ray dashboard URL: show the state of the sweep's latest job"),
            json_flag("counts and per-trial rows as JSON"),
        ),
    ),
    Command(
        "sync",
        "sweep.sync:main",
        "Deliver the MLflow records a sweep's trials kept in its storage during an outage.",
        (
            *SWEEP_NAME,
            arg(
                "--timeout",
                type=float,
                default=0.0,
                help="seconds to keep retrying (default: one try)",
            ),
        ),
    ),
    Command(
        "submit",
        "sweep.run_cli:submit",
        "Submit a sweep to a Ray cluster through the Jobs API.",
        (
            arg("spec", help="sweep spec (YAML); it travels with the job"),
            DASHBOARD,
            arg("--wait", action="store_true", help="wait for the job to end"),
            arg("--timeout", type=float, default=3600.0, help="seconds to --wait at most"),
        ),
    ),
    Command(
        "logs", "sweep.run_cli:logs", "Print the logs of a sweep's latest job.", (JOB, DASHBOARD)
    ),
    Command("stop", "sweep.run_cli:stop", "Stop a sweep's latest job.", (JOB, DASHBOARD)),
    Command(
        "list recipes",
        "sweep.recipes_cli:main",
        "List the QAT recipes, GEMM by GEMM.",
        (
            json_flag("one JSON object per recipe, in a list"),
            arg(
                "--spec",
                help="also list the recipes this sweep spec declares (its `recipes:` section)",
            ),
        ),
    ),
    Command(
        "list models",
        "sweep.models_cli:main",
        "List the models with parameter counts per scale.",
        (json_flag("rows {arch, scale, params, quantized_params} as JSON"),),
    ),
    Command(
        "train-one",
        "sweep.train_one_cli:run",
        "Train one run (arch, scale, recipe, seed) in this process, without Ray.",
        _train_one_args(),
    ),
    Command(
        "analyze",
        "sweep.analyze_cli:main",
        "Tables, statistics and figures of a sweep from its tracked runs.",
        (
            arg("name", help="the sweep's name (= its MLflow experiment)"),
            arg("--out", help="output folder (default: ./results/NAME/analysis)"),
            arg(
                "--metric",
                choices=("test_auprc", "val_auprc"),
                default="test_auprc",
                help="the AUPRC the statistics use (default: test_auprc)",
            ),
            TRACKING_URI,
            arg(
                "--from-snapshot",
                metavar="PATH",
                help="analyse a saved runs.parquet/runs.csv (or its folder) offline",
            ),
        ),
    ),
    Command(
        "data check",
        "sweep.data_cli:check",
        "Validate an LGG (kaggle_3m layout) folder; exit 2 listing every problem.",
        (
            arg("path", help="the dataset folder (one sub-folder per patient)"),
            json_flag("print {patients, slices, positive_slices, ..., problems} as JSON"),
        ),
    ),
    Command(
        "data synth",
        "sweep.data_cli:synth",
        "Write a synthetic LGG-like dataset in the exact kaggle_3m layout.",
        (
            arg("out", help="output folder (must be empty or absent, unless --force)"),
            arg("--patients", type=int, default=20, help="number of patients (default 20)"),
            arg("--size", type=int, default=256, help="image side in pixels (default 256)"),
            arg("--seed", type=int, default=0, help="generator seed (default 0)"),
            arg(
                "--slices",
                type=int,
                default=None,
                metavar="N",
                help="slices per patient (default: 24-48, varying like LGG)",
            ),
            arg("--force", action="store_true", help="replace a non-empty OUT"),
        ),
    ),
    Command(
        "ui",
        "sweep.ui_cli:main",
        "Start the MLflow UI on the configured tracking store.",
        (
            arg(
                "sweep",
                nargs="?",
                help="a sweep's name or spec (YAML): print the URL of its experiment page",
            ),
            arg("--storage", help="storage root (default: $SWEEP_STORAGE or ./sweeps)"),
            TRACKING_URI,
            arg("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)"),
            arg("--port", type=int, default=5000, help="port to listen on (default 5000)"),
        ),
    ),
)


# --------------------------------------------------------------------------- dispatch


def _set_environment_defaults() -> None:
    # albumentations phones home at import (Ray's token auth is the runner's: sweep.runner).
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep",
        description="Ray Tune sweep service for NVFP4 quantization-aware training studies.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {sweep.__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in COMMANDS:
        words = cmd.name.split()
        if len(words) == 1:
            sub = top.add_parser(words[0], help=cmd.help, description=cmd.help)
        else:
            group, leaf = words
            if group not in groups:
                gp = top.add_parser(group, help=f"{group} commands")
                groups[group] = gp.add_subparsers(dest=f"{group}_command", metavar="COMMAND")
                gp.set_defaults(_group_parser=gp)
            sub = groups[group].add_parser(leaf, help=cmd.help, description=cmd.help)
        cmd.add_arguments(sub)
        sub.set_defaults(_target=cmd.target)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _set_environment_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    target = getattr(args, "_target", None)
    if target is None:
        group_parser = getattr(args, "_group_parser", parser)
        group_parser.print_help(sys.stderr)
        return 2
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
