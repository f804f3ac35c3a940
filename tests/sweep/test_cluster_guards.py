"""Guard rails of running on a cluster (sweep.cluster): storage and tracking every node shares,
no credentials in a spec, Ray's cluster token sent with every request. No cluster needed here;
tests/cluster runs the same checks against a real one."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from sweep.cluster import (
    SHARED_ENV,
    auth_headers,
    check_cluster_spec,
    check_cluster_storage,
    check_cluster_tracking,
    credential_fields,
    ray_token,
)
from sweep.spec import SpecError, parse_spec


def spec_dict(**overrides) -> dict:
    spec = {
        "name": "guarded",
        "data": {"synthetic": {"patients": 4}},
        "grid": {"arch": ["cnn"], "scale": ["tiny"], "recipe": ["baseline"], "seed": [1]},
    }
    return spec | overrides


# --------------------------------------------------------------------------- shared storage


def test_a_local_path_on_several_nodes_is_refused_saying_why_and_how():
    with pytest.raises(SpecError) as err:
        check_cluster_storage("/data/sweeps", shared=False, nodes=3)
    message = str(err.value)
    assert "'/data/sweeps' is a local path" in message and "3 nodes" in message
    assert "could not resume" in message  # why
    assert "s3://" in message and "storage_shared: true" in message and SHARED_ENV in message


@pytest.mark.parametrize(
    ("storage", "shared", "nodes"),
    [
        ("/data/sweeps", False, 1),  # one machine: its disk is the shared storage
        ("s3://bucket/prefix", False, 5),
        ("/mnt/nfs/sweeps", True, 5),  # declared shared
    ],
)
def test_storage_every_node_sees_is_accepted(storage, shared, nodes):
    check_cluster_storage(storage, shared=shared, nodes=nodes)


def test_a_file_tracking_store_on_several_nodes_is_refused():
    with pytest.raises(SpecError, match="MLflow tracking server"):
        check_cluster_tracking("sqlite:////tmp/mlflow.db", nodes=2)
    check_cluster_tracking("http://mlflow:5000", nodes=2)
    check_cluster_tracking("sqlite:////tmp/mlflow.db", nodes=1)


def test_the_spec_flag_and_the_cluster_environment_declare_shared_storage(monkeypatch):
    local = spec_dict(storage="/mnt/nfs/sweeps", tracking_uri="http://mlflow:5000")
    monkeypatch.delenv(SHARED_ENV, raising=False)
    with pytest.raises(SpecError, match="local path"):
        check_cluster_spec(parse_spec(local), nodes=2)
    check_cluster_spec(parse_spec(local | {"storage_shared": True}), nodes=2)
    monkeypatch.setenv(SHARED_ENV, "1")
    check_cluster_spec(parse_spec(local), nodes=2)


def test_the_client_checks_only_what_the_spec_says(monkeypatch):
    # `sweep submit`: storage and tracking left unset are the cluster's to decide (its
    # SWEEP_STORAGE, MLFLOW_TRACKING_URI), whatever this shell's defaults are.
    monkeypatch.delenv(SHARED_ENV, raising=False)
    monkeypatch.delenv("SWEEP_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    check_cluster_spec(parse_spec(spec_dict()), nodes=3, resolve=False)
    with pytest.raises(SpecError):  # resolved here, ./sweeps and ./mlflow.db are local files
        check_cluster_spec(parse_spec(spec_dict()), nodes=3)


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"protocol": {"aws_secret_access_key": "x"}}, "protocol.aws_secret_access_key"),
        ({"model_overrides": {"AWS_ACCESS_KEY_ID": "x"}}, "model_overrides.AWS_ACCESS_KEY_ID"),
        ({"protocol": {"mlflowTrackingPassword": "x"}}, "protocol.mlflowTrackingPassword"),
        ({"ray_auth_token": "x"}, "ray_auth_token"),
        ({"storage": "s3://key:secret@bucket/sweeps"}, "storage (user or password in the URI)"),
        ({"tracking_uri": "http://admin:pw@mlflow:5000"}, "tracking_uri (user or password"),
    ],
)
def test_credentials_in_a_spec_are_refused_naming_the_field(changes, field):
    with pytest.raises(SpecError) as err:
        parse_spec(spec_dict(**changes), source="lab.yaml")
    message = str(err.value)
    assert message.startswith("lab.yaml: invalid sweep spec") and field in message
    assert "AWS_SECRET_ACCESS_KEY" in message and "MLFLOW_TRACKING_PASSWORD" in message


def test_words_that_only_resemble_credentials_are_accepted():
    raw = spec_dict(model_overrides={"cls_token": True, "tokens_to_map": 4}, protocol={"lr": 1e-3})
    assert credential_fields(raw) == []
    parse_spec(raw)


def test_the_cli_refuses_a_spec_with_a_credential_with_exit_2(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(spec_dict(protocol={"aws_secret_access_key": "abc"})))
    out = subprocess.run(
        [sys.executable, "-m", "sweep", "plan", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "protocol.aws_secret_access_key: looks like a credential" in out.stderr
    assert "abc" not in out.stderr + out.stdout  # the secret itself is never echoed


# --------------------------------------------------------------------------- Ray's token


def test_the_token_comes_from_the_environment_as_rays_own_clients_read_it(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "token").write_text("from-path\n")
    assert ray_token({"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")})
    assert ray_token({"RAY_AUTH_TOKEN": " from-env "}) == "from-env"
    assert ray_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}) == "from-path"
    assert ray_token({"HOME": str(home), "RAY_AUTH_MODE": "token"}) == "from-home"
    # The default token file is sent only to clusters the user said use tokens.
    assert ray_token({"HOME": str(home)}) is None
    assert auth_headers({"RAY_AUTH_TOKEN": "t0k"}) == {"Authorization": "Bearer t0k"}
    assert auth_headers({"HOME": str(home)}) == {}


def test_a_token_path_that_is_not_a_file_is_an_error(tmp_path):
    with pytest.raises(SpecError, match="RAY_AUTH_TOKEN_PATH"):
        ray_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


def test_an_unreachable_cluster_exits_2_naming_it(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(spec_dict(storage="s3://bucket/sweeps")))
    address = f"http://127.0.0.1:{port}"
    for args in (["submit", str(path)], ["status", "guarded"], ["logs", "guarded"]):
        out = subprocess.run(
            [sys.executable, "-m", "sweep", *args, "--address", address],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 2, out.stderr
        assert f"cannot reach the Ray dashboard at {address}" in out.stderr
