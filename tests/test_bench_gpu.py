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
