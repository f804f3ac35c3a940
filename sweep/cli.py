"""The `sweep` command line: one table of commands.

Each entry of COMMANDS names a command, its one-line help, a function that adds its arguments and
the function that runs it. A command is imported only when it is run, so `sweep --help` stays fast
and a missing optional dependency of one command never breaks the others. Sub-command groups
(`sweep data check`) are entries whose name has two words.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sweep


@dataclass(frozen=True)
class Command:
    name: str  # "run" or, for a group, "data check"
    help: str
    target: str  # "module:function" taking (args) and returning an exit code
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None


# --------------------------------------------------------------------------- the command table
# Each command's arguments are declared here, next to its name; its behaviour lives in `target`.

COMMANDS: list[Command] = []


def command(name: str, help: str, target: str):
    """Decorator: register `add_arguments` as the argument builder of a command."""

    def register(add_arguments: Callable[[argparse.ArgumentParser], None]):
        COMMANDS.append(Command(name, help, target, add_arguments))
        return add_arguments

    return register


# Commands: one decorated function each, adding that command's arguments.
# (Each issue adds its commands here; the behaviour lives in the module named by `target`.)
# Arguments several commands share are declared once, by the helpers below.

_TRACKING_HELP = "MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)"


def _sweep_name(p: argparse.ArgumentParser) -> None:
    """NAME plus --storage: how commands find a sweep that already exists."""
    p.add_argument("name", help="the sweep's name")
    p.add_argument(
        "--storage",
        help="storage root, a folder or s3://bucket/prefix (endpoint and keys from AWS_* in the "
        "environment; default: $SWEEP_STORAGE or ./sweeps)",
    )


def _ray_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="a running Ray cluster (default: an embedded local Ray)")


def _dashboard(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        required=True,
        help="Ray dashboard URL, e.g. http://HEAD:8265 (a cluster with token auth: its token in "
        "$RAY_AUTH_TOKEN or the file $RAY_AUTH_TOKEN_PATH)",
    )


def _json_flag(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--json", action="store_true", help=help)


@command(
    "plan", "Show the trials a spec expands to, without running anything.", "sweep.run_cli:plan"
)
def _plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec (YAML)")
    _json_flag(p, "trials, counts per axis and cost as JSON")
    p.add_argument("--all", action="store_true", help="list every trial, not the first 20")


@command(
    "run",
    "Run a sweep; running it again resumes it and skips finished trials.",
    "sweep.run_cli:run",
)
def _run(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec (YAML)")
    _ray_address(p)


@command("resume", "Continue an interrupted sweep from its storage.", "sweep.run_cli:resume")
def _resume(p: argparse.ArgumentParser) -> None:
    _sweep_name(p)
    _ray_address(p)


@command(
    "status",
    "Per-state counts and a table of the sweep's trials (or its job's state).",
    "sweep.run_cli:status",
)
def _status(p: argparse.ArgumentParser) -> None:
    _sweep_name(p)
    p.add_argument("--address", help="Ray dashboard URL: show the state of the sweep's latest job")
    _json_flag(p, "counts and per-trial rows as JSON")


@command(
    "sync",
    "Deliver the MLflow records a sweep's trials kept in its storage during an outage.",
    "sweep.sync:main",
)
def _sync(p: argparse.ArgumentParser) -> None:
    _sweep_name(p)
    p.add_argument(
        "--timeout", type=float, default=0.0, help="seconds to keep retrying (default: one try)"
    )


@command("submit", "Submit a sweep to a Ray cluster through the Jobs API.", "sweep.run_cli:submit")
def _submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="sweep spec (YAML); it travels with the job")
    _dashboard(p)
    p.add_argument("--wait", action="store_true", help="wait for the job to end")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to --wait at most")


@command("logs", "Print the logs of a sweep's latest job.", "sweep.run_cli:logs")
def _logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the sweep's name (or a job submission id)")
    _dashboard(p)


@command("stop", "Stop a sweep's latest job.", "sweep.run_cli:stop")
def _stop(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the sweep's name (or a job submission id)")
    _dashboard(p)


@command("list recipes", "List the QAT recipes, GEMM by GEMM.", "sweep.recipes_cli:main")
def _list_recipes(p: argparse.ArgumentParser) -> None:
    _json_flag(p, "one JSON object per recipe, in a list")
    p.add_argument(
        "--spec", help="also list the recipes this sweep spec declares (its `recipes:` section)"
    )


@command("list models", "List the models with parameter counts per scale.", "sweep.models_cli:main")
def _list_models(p: argparse.ArgumentParser) -> None:
    _json_flag(p, "rows {arch, scale, params, quantized_params} as JSON")


@command(
    "train-one",
    "Train one run (arch, scale, recipe, seed) in this process, without Ray.",
    "sweep.train_one_cli:run",
)
def _train_one(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True, help="cnn | vit_adamw | vit_adamax | swin")
    p.add_argument("--scale", required=True, help="tiny | 500k | 4m | 15m")
    p.add_argument("--recipe", required=True, help="a recipe name (sweep list recipes)")
    p.add_argument("--seed", type=int, required=True)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="PATH", help="the LGG kaggle_3m folder")
    source.add_argument(
        "--synthetic",
        nargs="?",
        const=12,
        type=int,
        metavar="PATIENTS",
        help="train on generated synthetic data (default 12 patients)",
    )
    p.add_argument("--epochs", type=int, help="default: the paper's 100")
    p.add_argument("--fold", default="holdout", help="holdout | f0..f4")
    p.add_argument("--image-size", type=int, help="default 256, or 64 with --synthetic")
    p.add_argument("--batch-size", type=int, help="default: the paper's 32")
    p.add_argument("--lr", type=float, help="default: the paper's value for the arch")
    p.add_argument("--num-workers", type=int, default=0, help="data-loader processes")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--out", metavar="DIR", help="default: results/train-one/<trial_key>")
    p.add_argument("--fresh", action="store_true", help="discard a checkpoint found in --out")
    p.add_argument("--tracking-uri", help="log to MLflow at this URI (sqlite:///... or http://)")
    p.add_argument("--experiment", default="train-one", help="MLflow experiment name")


@command(
    "analyze",
    "Tables, statistics and figures of a sweep from its tracked runs.",
    "sweep.analyze_cli:main",
)
def _analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the sweep's name (= its MLflow experiment)")
    p.add_argument("--out", help="output folder (default: ./results/NAME/analysis)")
    p.add_argument(
        "--metric",
        choices=("test_auprc", "val_auprc"),
        default="test_auprc",
        help="the AUPRC the statistics use (default: test_auprc)",
    )
    p.add_argument("--tracking-uri", help=_TRACKING_HELP)
    p.add_argument(
        "--from-snapshot",
        metavar="PATH",
        help="analyse a saved runs.parquet/runs.csv (or its folder) offline",
    )


@command(
    "data check",
    "Validate an LGG (kaggle_3m layout) folder; exit 2 listing every problem.",
    "sweep.data_cli:check",
)
def _data_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="the dataset folder (one sub-folder per patient)")
    _json_flag(p, "print {patients, slices, positive_slices, ..., problems} as JSON")


@command(
    "data synth",
    "Write a synthetic LGG-like dataset in the exact kaggle_3m layout.",
    "sweep.data_cli:synth",
)
def _data_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output folder (must be empty or absent, unless --force)")
    p.add_argument("--patients", type=int, default=20, help="number of patients (default 20)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument(
        "--slices",
        type=int,
        default=None,
        metavar="N",
        help="slices per patient (default: 24-48, varying like LGG)",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT")


@command("ui", "Start the MLflow UI on the configured tracking store.", "sweep.ui_cli:main")
def _ui(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sweep",
        nargs="?",
        help="a sweep's name or spec (YAML): print the URL of its experiment page",
    )
    p.add_argument("--storage", help="storage root (default: $SWEEP_STORAGE or ./sweeps)")
    p.add_argument("--tracking-uri", help=_TRACKING_HELP)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")


# --------------------------------------------------------------------------- dispatch


def _set_environment_defaults() -> None:
    # Ray 2.60 turns token auth on by default; albumentations phones home at import.
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
