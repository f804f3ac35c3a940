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
