"""Submit a sweep to a Ray cluster through the Jobs API, and follow or stop it.

The job's driver runs `sweep run spec.yaml --address auto` on the cluster; the spec travels in the
job's runtime environment (a working_dir holding only the spec), the package itself is on the
cluster's image. Every job of a sweep carries `{"sweep": NAME}` in its metadata, so `sweep logs`,
`sweep stop` and `sweep status --address` find the latest job of a sweep by name. Submitting the
same spec again after the driver died simply runs the sweep again, which resumes it (the sweep's
state lives in its storage, not in the job).

A cluster with token auth (RAY_AUTH_MODE=token) gets its token with every request
(`sweep.cluster.auth_headers`); a refused or unreachable cluster is a `ClusterError` that says
which, and what to set.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sweep.spec import SweepSpec, spec_to_yaml

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 60.0  # how long a submission waits for a just-started head's job agent


class ClusterError(RuntimeError):
    """The cluster could not be reached, or refused the request."""


@contextlib.contextmanager
def talking_to(address: str) -> Iterator[None]:
    """Turn the Ray client's errors into one ClusterError naming the address and the fix."""
    from ray.exceptions import AuthenticationError
    from ray.util.state.exception import ServerUnavailable

    try:
        yield
    except AuthenticationError as err:
        reason = str(err).strip().splitlines()[0]
        raise ClusterError(
            f"{address} refused the request ({reason}). The cluster runs with token auth: set "
            "RAY_AUTH_TOKEN to its token (or RAY_AUTH_TOKEN_PATH to a file holding it)."
        ) from None
    except (OSError, ServerUnavailable) as err:  # ConnectionError and requests' are OSErrors
        reason = str(err).split(". ")[0]
        raise ClusterError(f"cannot reach the Ray dashboard at {address}: {reason}") from None
    except ClusterError:
        raise
    except RuntimeError as err:  # the Jobs API answered with an error status
        raise ClusterError(f"{address}: {str(err).strip()}") from None


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    from sweep.cluster import auth_headers

    # The token goes in explicitly: Ray's client adds it only when this process itself runs with
    # RAY_AUTH_MODE=token, and a client of a remote cluster need not.
    return JobSubmissionClient(address, headers=auth_headers() or None)


def submit(spec: SweepSpec, address: str, *, env: dict[str, str] | None = None) -> str:
    """Submit the sweep as a job; returns its submission id."""
    workdir = Path(tempfile.mkdtemp(prefix="sweep-submit-"))
    try:
        (workdir / "spec.yaml").write_text(spec_to_yaml(spec))
        job_id = f"sweep-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        env_vars = {"NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        client = _client(address)
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                return client.submit_job(
                    entrypoint="sweep run spec.yaml --address auto",
                    submission_id=job_id,
                    runtime_env={"working_dir": str(workdir), "env_vars": env_vars},
                    metadata={"sweep": spec.name},
                )
            except RuntimeError as err:
                # A cluster that has just started answers before its job agent is up.
                if "No available agent" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(2.0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def latest_job(address: str, name: str):
    """The most recent job of sweep `name`, or of that exact submission id."""
    jobs = [
        j
        for j in _client(address).list_jobs()
        if (j.metadata or {}).get("sweep") == name or j.submission_id == name
    ]
    if not jobs:
        raise LookupError(f"no job of sweep {name!r} on {address}")
    return max(jobs, key=lambda j: j.start_time or 0)


def job_status(address: str, name: str) -> str:
    job = latest_job(address, name)
    return f"job {job.submission_id}: {job.status}" + (f" ({job.message})" if job.message else "")


def job_logs(address: str, name: str) -> str:
    return _client(address).get_job_logs(latest_job(address, name).submission_id)


def stop_job(address: str, name: str) -> str:
    job = latest_job(address, name)
    _client(address).stop_job(job.submission_id)
    return job.submission_id


def wait(address: str, job_id: str, timeout: float = 600.0, poll: float = 2.0) -> str:
    deadline = time.monotonic() + timeout
    client = _client(address)
    while True:
        status = str(client.get_job_status(job_id))
        status = status.rsplit(".", 1)[-1]
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(poll)
