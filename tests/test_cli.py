import subprocess
import sys

import pytest

import sweep
from sweep.cli import COMMANDS, build_parser, main


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert sweep.__version__ in capsys.readouterr().out


def test_python_dash_m_runs_the_same_cli():
    out = subprocess.run(
        [sys.executable, "-m", "sweep", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"sweep {sweep.__version__}"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: sweep" in capsys.readouterr().err


def test_every_command_in_the_table_parses_help():
    parser = build_parser()
    for cmd in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*cmd.name.split(), "--help"])
        assert exc.value.code == 0, cmd.name


def test_every_command_target_resolves():
    import importlib

    for cmd in COMMANDS:
        module_name, func_name = cmd.target.split(":")
        assert callable(getattr(importlib.import_module(module_name), func_name)), cmd.name
