"""What running on a cluster of several machines asks of a sweep, checked before it runs.

Storage every node sees. A trial moved to another node (its node was lost, or Tune retried it
elsewhere) resumes from its last checkpoint, so every node must read and write the same storage:
an `s3://` URI (MinIO, S3, any S3-compatible store), or a folder on a filesystem every node mounts
at the same path (NFS, EFS, CephFS...), which a spec declares with `storage_shared: true` (or the
cluster's environment with SWEEP_STORAGE_SHARED=1). A local path on a cluster of more than one node
is refused before anything runs: each node would checkpoint to its own disk. Likewise a tracking
store in a local file (sqlite): each node would log to its own; use an MLflow server.

Credentials come from the environment, never from the spec (a spec is saved to the sweep's storage
and logged to MLflow): S3 keys as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL
for MinIO), MLflow's as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or
MLFLOW_TRACKING_TOKEN, Ray's cluster token as below. `credential_fields` finds what looks like a
credential in a raw spec, so that the spec is refused naming it.

Ray token auth (Ray 2.60): a cluster started with RAY_AUTH_MODE=token answers its dashboard and
Jobs API only to requests carrying `Authorization: Bearer <token>`. `sweep submit/status/logs/stop`
send the token Ray's own clients would use: RAY_AUTH_TOKEN, else the file named by
RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token when RAY_AUTH_MODE=token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sweep.spec import SpecError

if TYPE_CHECKING:
    from sweep.spec import SweepSpec

SHARED_ENV = "SWEEP_STORAGE_SHARED"
# Keys that name a secret, wherever they appear in a spec (e.g. protocol.aws_secret_access_key):
# any of these words, or one of these pairs of consecutive words ("cls_token" is not a secret).
_SECRET_PARTS = ("secret", "password", "passwd", "credential", "apikey")  # also inside a word
_SECRET_PAIRS = {("access", "key"), ("api", "key"), ("private", "key"), ("secret", "key")}
_SECRET_PAIRS |= {(w, "token") for w in ("auth", "access", "api", "session", "bearer", "ray")}
_USERINFO = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@]+@", re.I)  # scheme://user[:pass]@host
_URI_FIELDS = ("storage", "storage_endpoint", "tracking_uri")
CREDENTIALS_HELP = (
    "credentials come from the environment, never from the spec: S3 keys as AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, MLflow's as MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
    "MLFLOW_TRACKING_TOKEN), Ray's cluster token as RAY_AUTH_TOKEN"
)


def _names_a_secret(key: str) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", key.lower()) if w]
    pairs = set(zip(words, words[1:], strict=False))
    if words == ["token"] or any(part in key.lower() for part in _SECRET_PARTS):
        return True
    return bool(_SECRET_PAIRS & pairs)


def credential_fields(raw: Mapping, prefix: str = "") -> list[str]:
    """Dotted paths of the fields of a raw spec that hold (or name) a credential."""
    found = []
    for key, value in raw.items():
        where = f"{prefix}{key}"
        if _names_a_secret(str(key)):
            found.append(where)
        elif isinstance(value, Mapping):
            found += credential_fields(value, f"{where}.")
        elif not prefix and key in _URI_FIELDS and _USERINFO.match(str(value)):
            found.append(f"{where} (user or password in the URI)")
    return found


def is_local_storage(storage: str) -> bool:
    return "://" not in storage or storage.startswith("file://")


def storage_shared(spec_flag: bool, env: Mapping[str, str] | None = None) -> bool:
    """Declared shared by the spec, or by the cluster's environment (SWEEP_STORAGE_SHARED=1)."""
    env = os.environ if env is None else env
    return spec_flag or env.get(SHARED_ENV, "").strip().lower() in ("1", "true", "yes")


def check_cluster_storage(storage: str, *, shared: bool, nodes: int) -> None:
    """Refuse a local storage path on a cluster of more than one node, saying why and how."""
    if nodes <= 1 or not is_local_storage(storage) or shared:
        return
    raise SpecError(
        f"storage: {storage!r} is a local path, and this Ray cluster has {nodes} nodes: each node "
        "would write its trials' checkpoints to its own disk, and a trial moved to another node "
        "(a node lost, a retry) could not resume. Use storage every node sees: an s3:// URI "
        "(storage: s3://bucket/prefix, endpoint in storage_endpoint or AWS_ENDPOINT_URL), or a "
        "folder every node mounts at the same path, declared with `storage_shared: true` in the "
        f"spec (or {SHARED_ENV}=1 in the cluster's environment)."
    )


def is_local_tracking(uri: str) -> bool:
    """A store in a file of one machine (sqlite, file:, a bare path), not a server or a database."""
    return "://" not in uri or uri.split("://", 1)[0].lower() in ("sqlite", "file")


def check_cluster_tracking(uri: str, *, nodes: int) -> None:
    """Refuse a tracking store in a local file on a cluster of more than one node (even on a
    shared filesystem: sqlite's locking is not safe across machines over NFS)."""
    if nodes <= 1 or not is_local_tracking(uri):
        return
    raise SpecError(
        f"tracking_uri: {uri!r} is a file on one machine, and this Ray cluster has {nodes} "
        "nodes: trials on the other nodes would each log to a file of their own. Use an MLflow "
        "tracking server (tracking_uri: http://HOST:5000 in the spec, or MLFLOW_TRACKING_URI in "
        "the nodes' environment)."
    )


def check_cluster_spec(spec: SweepSpec, nodes: int, *, resolve: bool = True) -> None:
    """Both checks for `spec` on a cluster of `nodes` nodes. With resolve=False (the client of
    `sweep submit`), only what the spec itself says is checked: the defaults are the cluster's."""
    from trainables.mlflow_store import resolve_tracking_uri

    shared = storage_shared(spec.storage_shared)
    storage = spec.resolved_storage() if resolve else spec.storage
    tracking = resolve_tracking_uri(spec.tracking_uri) if resolve else spec.tracking_uri
    if storage:
        check_cluster_storage(storage, shared=shared, nodes=nodes)
    if tracking:
        check_cluster_tracking(tracking, nodes=nodes)


def ray_nodes_alive() -> int:
    """Alive nodes of the cluster this process is connected to (ray.init done)."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


# --------------------------------------------------------------------------- Ray token auth


def ray_token(env: Mapping[str, str] | None = None) -> str | None:
    """The cluster token Ray's clients would send, from `env` (default: this process's)."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip()
    path = env.get("RAY_AUTH_TOKEN_PATH")
    if not path and env.get("RAY_AUTH_MODE", "").lower() == "token":
        path = str(Path(env.get("HOME", str(Path.home()))) / ".ray" / "auth_token")
    if path and Path(path).expanduser().is_file():
        return Path(path).expanduser().read_text().strip() or None
    if env.get("RAY_AUTH_TOKEN_PATH"):
        raise SpecError(f"RAY_AUTH_TOKEN_PATH: {path!r} is not a file holding the cluster token")
    return None


def auth_headers(env: Mapping[str, str] | None = None) -> dict[str, str]:
    token = ray_token(env)
    return {"Authorization": f"Bearer {token}"} if token else {}


def alive_nodes(address: str, env: Mapping[str, str] | None = None) -> int:
    """How many nodes of the cluster behind this dashboard URL are alive (state API)."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    headers = {"Content-Type": "application/json", **auth_headers(env)}
    client = StateApiClient(address=address, headers=headers)
    nodes = client.list(
        StateResource.NODES,
        options=ListApiOptions(filters=[("state", "=", "ALIVE")], limit=10_000),
        raise_on_missing_output=False,
    )
    return len(nodes)
