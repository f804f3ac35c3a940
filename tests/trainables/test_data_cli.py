"""`sweep data check` and `sweep data synth`: exit codes, messages naming files, nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.cli import main
from tests.trainables.test_lgg import CORRUPTIONS


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "lgg"
    args = ["data", "synth", str(out), "--patients", "10", "--size", "32", "--slices", "20"]
    assert main([*args, "--seed", "4"]) == 0
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """The 3 patients x 3 slices of 16 px that the corruptions of test_lgg expect."""
    out = tmp_path_factory.mktemp("cli-small") / "lgg"
    assert (
        main(["data", "synth", str(out), "--patients", "3", "--size", "16", "--slices", "3"]) == 0
    )
    return out


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: to prove a command wrote nothing."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_synthetic_dataset_passes_check_with_35_percent_tumour(synthetic, capsys):
    capsys.readouterr()
    assert main(["data", "check", str(synthetic)]) == 0
    out = capsys.readouterr().out
    assert "10 patients, 200 slices" in out and "(35.0%)" in out and "32x32" in out


def test_check_json_has_the_contract_keys(synthetic, capsys):
    capsys.readouterr()
    assert main(["data", "check", str(synthetic), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["patients"], report["slices"], report["positive_slices"]) == (10, 200, 70)
    assert report["problems"] == [] and report["image_size"] == [32, 32]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_each_bad_dataset_exits_2_naming_the_file_and_writes_nothing(
    small, tmp_path, capsys, corrupt
):
    root = Path(shutil.copytree(small, tmp_path / "lgg"))
    bad_file, fragment = corrupt(root)
    before = tree(tmp_path)
    capsys.readouterr()
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{bad_file}: " in err and fragment in err
    assert tree(tmp_path) == before


def test_every_problem_is_listed_in_text_and_json(small, tmp_path, capsys):
    root = Path(shutil.copytree(small, tmp_path / "lgg"))
    bad = {str(corrupt(root)[0]) for corrupt in CORRUPTIONS[:3]}
    capsys.readouterr()
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert "3 problem(s)" in err and all(f in err for f in bad)
    assert main(["data", "check", str(root), "--json"]) == 2
    assert {p["file"] for p in json.loads(capsys.readouterr().out)["problems"]} == bad


def test_no_patients_exits_2(tmp_path, capsys):
    (tmp_path / "data.csv").write_text("Patient\n")
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "no patients found" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "missing")]) == 2


def test_synth_refuses_a_non_empty_folder_unless_forced(small, tmp_path, capsys):
    out = Path(shutil.copytree(small, tmp_path / "lgg"))
    before = tree(out)
    capsys.readouterr()
    assert main(["data", "synth", str(out), "--patients", "3", "--size", "16"]) == 2
    assert "not empty" in capsys.readouterr().err and tree(out) == before
    args = ["data", "synth", str(out), "--patients", "3", "--size", "16", "--slices", "2"]
    assert main([*args, "--force"]) == 0
    assert "3 patients, 6 slices" in capsys.readouterr().out
    assert len([p for p in out.iterdir() if p.is_dir()]) == 3


@pytest.mark.parametrize("bad", [["--size", "4"], ["--patients", "0"], ["--seed", "-3"]])
def test_synth_rejects_bad_arguments(tmp_path, capsys, bad):
    assert main(["data", "synth", str(tmp_path / "out"), *bad]) == 2
    assert "must be" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_console_entry_point_returns_the_exit_code(small, tmp_path):
    root = Path(shutil.copytree(small, tmp_path / "lgg"))
    CORRUPTIONS[0](root)
    run = subprocess.run(
        [sys.executable, "-m", "sweep", "data", "check", str(root), "--json"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and json.loads(run.stdout)["problems"]
