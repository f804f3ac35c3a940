"""`sweep run` refuses bad input before it writes anything: exit 2, a short message naming the
file and the field or path, no storage folder, no MLflow store. (No Ray: every check here runs
before Ray starts.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from sweep.cli import main
from tests.support.ports import free_port


def _spec(root: Path, **overrides) -> dict:
    spec = {
        "name": "refused",
        "data": {"synthetic": {"patients": 6, "size": 32}, "image_size": 32},
        "grid": {"arch": ["cnn"], "scale": ["tiny"], "recipe": ["baseline"], "seed": [1]},
        "protocol": {"epochs": 2, "batch_size": 8},
        "storage": str(root / "storage"),
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
    }
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value} if isinstance(spec.get(key), dict) else value
    return spec


def _run(root: Path, spec: dict, capsys) -> tuple[int, str, Path]:
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = main(["run", str(path)])
    err = capsys.readouterr().err.strip()
    return code, err, path


@pytest.mark.parametrize(
    ("protocol", "field"),
    [({"bogus": 1}, "bogus: unknown key"), ({"epochs": -1}, "epochs:"), ({"lr": 0}, "lr:")],
    ids=["unknown-key", "negative-epochs", "zero-lr"],
)
def test_invalid_protocol_settings(tmp_path, capsys, protocol, field):
    code, err, path = _run(tmp_path, _spec(tmp_path, protocol=protocol), capsys)
    assert code == 2
    assert err.startswith(f"error: {path}: protocol: invalid trial config")
    assert field in err and "Traceback" not in err
    assert not (tmp_path / "storage").exists() and not (tmp_path / "mlflow.db").exists()


def test_storage_under_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    spec = _spec(tmp_path, storage=str(tmp_path / "afile" / "sweeps"))
    code, err, _ = _run(tmp_path, spec, capsys)
    assert code == 2
    storage = str(tmp_path / "afile" / "sweeps")
    assert err == f"error: storage: {storage!r}: {tmp_path / 'afile'} is not a folder"


def test_unwritable_storage(tmp_path, capsys):
    # /proc refuses new folders even to root, for whom permission bits mean nothing.
    code, err, _ = _run(tmp_path, _spec(tmp_path, storage="/proc/nvfp4-sweeps"), capsys)
    assert code == 2
    assert err.startswith("error: storage: '/proc/nvfp4-sweeps' is not writable (/proc: ")
    assert len(err.splitlines()) == 1 and not (tmp_path / "mlflow.db").exists()


def test_corrupt_ledger_is_named(tmp_path, capsys):
    ledger = tmp_path / "storage" / "refused" / "ledger.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"cnn-tiny-baseline-s1-holdout": {"config_hash": ')
    (ledger.parent / "spec.yaml").write_text(yaml.safe_dump(_spec(tmp_path)))  # it ran before
    code, err, _ = _run(tmp_path, _spec(tmp_path), capsys)
    assert code == 2
    assert err.startswith(f"error: {ledger}: corrupt ledger (")
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in ledger.parent.iterdir()) == ["ledger.json", "spec.yaml"]
    assert not (tmp_path / "mlflow.db").exists()

    assert main(["status", "refused", "--storage", str(tmp_path / "storage")]) == 2
    assert str(ledger) in capsys.readouterr().err


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    spec = _spec(tmp_path, data={"synthetic": None, "path": str(tmp_path / "data")})
    code, err, _ = _run(tmp_path, spec, capsys)
    assert code == 2
    assert err.startswith(f"error: data.path: {tmp_path / 'data'}: no patients found: ")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "storage").exists()


def test_unreachable_tracking_server_is_named_at_once(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    code, err, _ = _run(tmp_path, _spec(tmp_path, tracking_uri=uri), capsys)
    took = time.monotonic() - start
    assert code == 2
    assert err.startswith(f"error: tracking_uri: MLflow server {uri} unreachable (")
    assert len(err.splitlines()) == 1 and not (tmp_path / "storage").exists()
    print(f"refused in {took:.1f}s")  # not asserted: a connection refused returns at once
