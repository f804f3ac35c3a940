"""A trial's data and caches: one cache root ($SWEEP_DATA_CACHE, or the trial's cache_dir), and
every cached thing in a subfolder of it (trainables.cache.cache_root)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.support.trials import tiny_config
from trainables.data import build_datasets_for, resolve_data_root
from trainables.factories import step_model_for


@pytest.mark.slow  # torch.compile's import, a few seconds
def test_every_cache_of_a_trial_is_a_subfolder_of_the_one_root(tmp_path, monkeypatch):
    root = tmp_path / "root"
    monkeypatch.setenv("SWEEP_DATA_CACHE", str(root))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    config = tiny_config(None, compile="on")

    data_root = resolve_data_root(config)
    assert data_root.parent == root / "synthetic" and (data_root / "data.csv").is_file()
    build_datasets_for(config, data_root)
    assert [p.name.split("-")[0] for p in (root / "data").iterdir() if p.is_dir()] == [
        data_root.name
    ]
    step_model_for(config, torch.nn.Linear(2, 2), torch.device("cpu"))  # compiles lazily
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(root / "inductor")


def test_a_missing_data_path_is_named(tmp_path):
    config = tiny_config(tmp_path, synthetic=None, data_path=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"data_path .*nowhere is not a folder"):
        resolve_data_root(config)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_compile_auto_is_off_on_every_device_until_a_gpu_run_verifies_it(device):
    """issue 18: the one GPU measured gave compiled quantized layers zero gradients (fixed and
    checked on the CPU only); `on` compiles, on any device."""
    from trainables.factories import compile_enabled

    device = torch.device(device)  # no tensor is made: a CUDA device object needs no GPU
    assert not compile_enabled(tiny_config(None, compile="auto"), device)
    assert compile_enabled(tiny_config(None, compile="on"), device)
