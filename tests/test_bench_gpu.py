"""bench.gpu, the one-command GPU check, kept from rotting: its CPU quick mode runs every section
(golden tests, quantize bandwidth, QAT steps eager and compiled, train-one, Ray packing) with
tiny sizes, and without CUDA the default mode exits 2 saying what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_how_to_run_instead():
    done = _run(timeout=120)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "--device cpu --quick" in done.stderr


@pytest.mark.slow
def test_quick_cpu_mode_runs_every_section():
    done = _run("--device", "cpu", "--quick", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout[done.stdout.index("bench.gpu on CPU") :]
    for section in ("golden", "quantize", "step", "train", "packing"):
        assert f"\n{section}" in table, section
    assert "FAILED" not in table and "error" not in table
    assert "passed" in table  # the golden subset ran
    assert "cnn tiny 2d_rht_sr" in table and "x throughput" in table


def test_the_step_section_narrows_to_the_models_and_recipes_asked_for():
    """A GPU lent for minutes: --models / --recipes pick the rows; baseline is always timed."""
    done = _run("--device", "cpu", "--quick", "--only", "step", "--models", "cnn:tiny",
                "--recipes", "nvfp4", timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout[done.stdout.index("bench.gpu on CPU") :]
    assert "cnn tiny baseline" in table and "cnn tiny nvfp4" in table
    assert "2d_rht_sr" not in table


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "cnn:huge"], "unknown scale 'huge' for arch 'cnn'; valid scales"),
        (["--models", "cnn"], "'cnn' is not arch:scale"),
        (["--recipes", "nvfp5"], "unknown recipe 'nvfp5'; valid: baseline"),
    ],
)
def test_a_bad_narrowing_is_refused_naming_the_choices(args, message, capsys):
    from bench import gpu

    assert gpu.main(["--device", "cpu", "--quick", *args]) == 2
    assert message in capsys.readouterr().err
