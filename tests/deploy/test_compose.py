"""docker/compose.yaml, its opt-in override and its .env.example, validated offline.

- Both compose files against the Compose Specification schema that check-jsonschema vendors
  (`--builtin-schema vendor.compose-spec`: no download), as written and after interpolating the
  variables the way `docker compose` does, with the values of .env.example.
- Every variable compose reads is documented in .env.example, and nothing there is stale.
- Secure by default: no published port and only internal networks in compose.yaml; the override
  publishes on 127.0.0.1 only; every secret comes from .env, none has a default or a value in
  .env.example.
- Every sweep spec a compose command runs is shipped in sweep/specs/ and loads.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
OVERRIDE = DOCKER / "compose.override.example.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE", re.IGNORECASE)
SPEC_IN_IMAGE = re.compile(r"/app/(sweep/specs/[\w.-]+\.ya?ml)")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ escapes a $.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def _interpolate(text: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match) -> str:
        name, operator, argument = match.groups()
        value = env.get(name)
        if operator in (":-", "-"):
            unset = value is None or (operator == ":-" and value == "")
            return argument if unset else value
        if operator in (":?", "?") and (value is None or (operator == ":?" and value == "")):
            raise KeyError(f"${{{name}}} is required: {argument}")
        return value or ""

    return VARIABLE.sub(substitute, text).replace("$$", "$")


@functools.cache
def _compose_validator() -> jsonschema.protocols.Validator:
    """The Compose Specification schema check-jsonschema vendors, as an in-process validator."""
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(vendored.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


# --------------------------------------------------------------------------- schema


def test_compose_files_match_the_compose_specification():
    # The check-jsonschema CLI with its vendored schema: no download, one process for both files.
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
        + [str(COMPOSE), str(OVERRIDE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_schema_rejects_an_unknown_service_key():
    broken = _load(COMPOSE)
    broken["services"]["ray-head"]["shm_sise"] = "2gb"
    errors = [e.message for e in _compose_validator().iter_errors(broken)]
    assert any("shm_sise" in message for message in errors)


def test_the_interpolated_compose_files_are_valid():
    # Empty secrets in .env.example stand for the values the user generates.
    env = {name: value or "0123456789abcdef" for name, value in _env_example().items()}
    for path in (COMPOSE, OVERRIDE):
        _compose_validator().validate(yaml.safe_load(_interpolate(path.read_text(), env)))


def test_compose_refuses_to_start_without_its_secrets():
    with pytest.raises(KeyError, match="RAY_AUTH_TOKEN"):
        _interpolate(COMPOSE.read_text(), {})


# --------------------------------------------------------------------------- .env.example


def _variables(path: Path) -> dict[str, set[str]]:
    """Every variable a compose file reads, with the operators it is read with."""
    found: dict[str, set[str]] = {}
    for name, operator, _ in VARIABLE.findall(path.read_text()):
        found.setdefault(name, set()).add(operator)
    return found


def test_env_example_documents_every_variable_and_nothing_else():
    used = set(_variables(COMPOSE)) | set(_variables(OVERRIDE))
    documented = set(_env_example())
    assert used - documented == set(), "read by compose, missing from .env.example"
    assert documented - used == set(), "in .env.example, read by no compose file"


def test_env_example_holds_no_secret_value():
    for name, value in _env_example().items():
        if SECRETISH.search(name):
            assert value == "", f"{name} has a value in .env.example: leave it empty"


def test_secrets_are_required_and_never_defaulted():
    for name, operators in _variables(COMPOSE).items():
        if SECRETISH.search(name):
            assert operators <= {":?", "?"}, f"${{{name}}} must be required, without a default"


def test_compose_inlines_no_secret():
    for service_name, service in _load(COMPOSE)["services"].items():
        environment = service.get("environment", {})
        for name, value in environment.items():
            if SECRETISH.search(name):
                assert VARIABLE.fullmatch(str(value)), f"{service_name}.{name} is not from .env"
            # Each ${...} becomes one marker, so a password must be exactly one variable.
            masked = VARIABLE.sub("\x00", str(value))
            for userinfo in re.findall(r"://([^/@\s]+)@", masked):
                password = userinfo.partition(":")[2]
                assert password == "\x00", f"{service_name}.{name}: credentials in a URI"


# --------------------------------------------------------------------------- exposure


def test_compose_publishes_no_port_and_uses_internal_networks_only():
    compose = _load(COMPOSE)
    internal = {name for name, net in compose["networks"].items() if (net or {}).get("internal")}
    assert internal == set(compose["networks"]), "every network must be internal"
    for name, service in compose["services"].items():
        assert "ports" not in service, f"{name} publishes a port: use the override instead"
        # A service without `networks` joins `default`, which is not internal.
        assert service.get("networks") and set(service["networks"]) <= internal, name


def test_the_override_publishes_on_localhost_only():
    override = _load(OVERRIDE)
    published = [p for s in override["services"].values() for p in s.get("ports", [])]
    assert published, "the override exists to publish the dashboard and the UI"
    for port in published:
        assert str(port).startswith("127.0.0.1:"), f"{port} binds beyond this machine"


def test_ray_token_auth_is_on_for_every_ray_node_and_the_cli():
    for name, service in _load(COMPOSE)["services"].items():
        if name.startswith("ray-") or name == "sweep":
            environment = service["environment"]
            assert environment["RAY_AUTH_MODE"] == "token", name
            assert VARIABLE.fullmatch(environment["RAY_AUTH_TOKEN"]), name


def test_mlflow_serves_artifacts_with_basic_auth_on_postgres_and_minio():
    mlflow = _load(COMPOSE)["services"]["mlflow"]
    command = mlflow["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1].startswith("s3://")
    environment = mlflow["environment"]
    assert environment["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    assert environment["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_every_long_running_service_has_a_healthcheck():
    for name, service in _load(COMPOSE)["services"].items():
        if service.get("restart") == "unless-stopped":
            assert "healthcheck" in service, name


# --------------------------------------------------------------------------- specs


def test_every_sweep_spec_a_compose_command_runs_is_shipped_and_loads():
    spec_module = pytest.importorskip("sweep.spec")
    referenced = set()
    for service in _load(COMPOSE)["services"].values():
        for field in ("command", "entrypoint"):
            value = service.get(field) or []
            words = value if isinstance(value, list) else [value]
            referenced.update(SPEC_IN_IMAGE.findall(" ".join(map(str, words))))
    assert referenced, "no compose command names a shipped spec"
    for relative in sorted(referenced):
        assert (ROOT / relative).is_file(), f"{relative} is not shipped in sweep/specs/"
        spec_module.load_spec(ROOT / relative)
