"""The Kubernetes manifests in deploy/, validated offline.

- Core kinds (Namespace, Secret, StatefulSet, Deployment, Service, NetworkPolicy...) against the
  strict schemas kubernetes-validate ships, for the oldest and the newest Kubernetes we support.
- KubeRay kinds (RayCluster, RayJob) against `kuberay_schema`: the KubeRay fields written down,
  every embedded pod template checked as a strict core PodTemplateSpec.
- Then what a schema cannot see: every Secret, ConfigMap and volume claim a workload names exists
  with the keys it reads; the cluster's autoscaling bounds and resource requests; Ray token auth
  wired to a Secret; nothing exposed outside the cluster; no secret value written in a manifest;
  and every sweep spec a RayJob runs is shipped in sweep/specs/ and loads.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from . import kuberay_schema

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NAMESPACE = "nvfp4-sweep"
# The oldest and the newest Kubernetes minor the manifests are checked against.
K8S_VERSIONS = ("1.31.0", "1.37.0")
KUBERAY_KINDS = ("RayCluster", "RayJob")
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE", re.IGNORECASE)
PLACEHOLDER = "CHANGE_ME"
SPEC_IN_IMAGE = re.compile(r"/app/(sweep/specs/[\w.-]+\.ya?ml)")


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFEST_FILES = sorted(DEPLOY.glob("*.yaml"))
DOCUMENTS = [(path.name, doc) for path in MANIFEST_FILES for doc in _documents(path)]
WORKLOADS = [(name, doc) for name, doc in DOCUMENTS if doc["kind"] != "Secret"]


def _by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in DOCUMENTS if doc["kind"] == kind]


def _doc_id(item: tuple[str, dict]) -> str:
    name, doc = item
    return f"{name}:{doc['kind']}/{doc['metadata']['name']}"


def _pod_specs(doc: dict) -> Iterator[dict]:
    """Every pod spec a resource carries: workloads, Ray head and worker groups, RayJob pods."""
    spec = doc.get("spec", {})
    if "template" in spec:
        yield spec["template"]["spec"]
    for cluster in (spec, spec.get("rayClusterSpec") or {}):
        if "headGroupSpec" in cluster:
            yield cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield group["template"]["spec"]
    if "submitterPodTemplate" in spec:
        yield spec["submitterPodTemplate"]["spec"]


def _containers(doc: dict) -> Iterator[dict]:
    for pod in _pod_specs(doc):
        yield from pod.get("initContainers", [])
        yield from pod["containers"]


def _walk(node) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _strings(node) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


# --------------------------------------------------------------------------- schemas


def test_the_deployment_is_complete():
    kinds = {doc["kind"] for _, doc in DOCUMENTS}
    assert {"RayCluster", "RayJob", "Deployment", "Service", "StatefulSet", "Secret"} <= kinds


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("item", DOCUMENTS, ids=_doc_id)
def test_every_manifest_is_valid(item, k8s_version):
    _, doc = item
    if doc["kind"] in KUBERAY_KINDS:
        errors = list(kuberay_schema.validator(doc["kind"], k8s_version).iter_errors(doc))
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    else:
        # Strict: unknown fields are errors. A kind without a schema raises, never passes.
        kubernetes_validate.validate(doc, k8s_version, strict=True)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda rc: rc["spec"]["workerGroupSpecs"][0].update(replica=2),
        lambda rc: rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
            resource={}
        ),
        lambda rc: rc["spec"]["authOptions"].update(mode="tokens"),
        lambda rc: rc["spec"]["workerGroupSpecs"][0].update(minReplicas=-1),
    ],
    ids=["worker-field-typo", "container-field-typo", "bad-auth-mode", "negative-bound"],
)
def test_the_kuberay_schema_rejects_a_broken_cluster(mutate):
    cluster = copy.deepcopy(_by_kind("RayCluster")[0])
    mutate(cluster)
    with pytest.raises(jsonschema.ValidationError):
        kuberay_schema.validator("RayCluster", K8S_VERSIONS[0]).validate(cluster)


# --------------------------------------------------------------------------- references


def _defined(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in _by_kind(kind)}


def _keys(doc: dict) -> set[str]:
    return set(doc.get("data", {})) | set(doc.get("stringData", {}))


def _references(doc: dict) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key or None) of every Secret, ConfigMap and claim a resource reads."""
    for node in _walk(doc):
        for ref_field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if ref_field in node:
                ref = node[ref_field]
                if not ref.get("optional"):
                    yield kind, ref["name"], ref["key"]
        for ref_field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
            if ref_field in node and not node[ref_field].get("optional"):
                yield kind, node[ref_field]["name"], None
        if "secret" in node and "secretName" in node["secret"]:
            for item in node["secret"].get("items", [{"key": None}]):
                yield "Secret", node["secret"]["secretName"], item["key"]
        if "configMap" in node and "name" in node["configMap"]:
            yield "ConfigMap", node["configMap"]["name"], None
        if "persistentVolumeClaim" in node:
            yield "PersistentVolumeClaim", node["persistentVolumeClaim"]["claimName"], None
    auth = doc.get("spec", {}).get("authOptions", {})
    if auth.get("mode") == "token" and "secretName" in auth:
        yield "Secret", auth["secretName"], "auth_token"


@pytest.mark.parametrize("item", WORKLOADS, ids=_doc_id)
def test_every_referenced_secret_configmap_and_claim_exists(item):
    _, doc = item
    missing = []
    for kind, name, key in _references(doc):
        target = _defined(kind).get(name)
        if target is None:
            missing.append(f"{kind} {name}")
        elif key is not None and key not in _keys(target):
            missing.append(f"key {key!r} of {kind} {name} (has {sorted(_keys(target))})")
    assert not missing, f"{_doc_id(item)} reads what deploy/ does not define: {missing}"


def test_everything_lives_in_one_namespace():
    for name, doc in DOCUMENTS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, _doc_id((name, doc))


# --------------------------------------------------------------------------- the Ray cluster


def _ray_cluster() -> dict:
    (cluster,) = _by_kind("RayCluster")
    return cluster


def test_the_gpu_worker_group_autoscales_within_bounds():
    spec = _ray_cluster()["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["workerGroupSpecs"], "a cluster without workers runs no trials"
    for group in spec["workerGroupSpecs"]:
        low, high = group["minReplicas"], group["maxReplicas"]
        assert 0 <= low <= group.get("replicas", low) <= high and high >= 1, group["groupName"]
    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if all(
            "nvidia.com/gpu" in c["resources"]["limits"]
            for c in g["template"]["spec"]["containers"]
        )
    ]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"


def test_every_ray_container_requests_and_limits_cpu_and_memory():
    for container in _containers(_ray_cluster()):
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), container["name"]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        # Extended resources cannot be overcommitted: a request must equal its limit.
        assert container["resources"]["requests"].get("nvidia.com/gpu") == gpus


def test_ray_token_auth_reads_its_token_from_a_secret():
    cluster = _ray_cluster()
    auth = cluster["spec"]["authOptions"]
    assert auth["mode"] == "token"
    secret = _defined("Secret")[auth["secretName"]]
    assert "auth_token" in _keys(secret)
    # KubeRay sets RAY_AUTH_MODE and RAY_AUTH_TOKEN itself; a container must not override them.
    for container in _containers(cluster):
        names = {env["name"] for env in container.get("env", [])}
        assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, container["name"]


def test_every_rayjob_runs_on_the_cluster_defined_here():
    cluster = _ray_cluster()
    for job in _by_kind("RayJob"):
        selector = job["spec"].get("clusterSelector")
        if selector is not None:
            assert selector == {"ray.io/cluster": cluster["metadata"]["name"]}


def test_every_sweep_spec_a_rayjob_runs_is_shipped_and_loads():
    spec_module = pytest.importorskip("sweep.spec")
    jobs = _by_kind("RayJob")
    assert jobs
    for job in jobs:
        referenced = SPEC_IN_IMAGE.findall(job["spec"]["entrypoint"])
        assert referenced, f"RayJob {job['metadata']['name']} runs no spec shipped in the image"
        for relative in referenced:
            path = ROOT / relative
            assert path.is_file(), f"RayJob {job['metadata']['name']}: {relative} is not shipped"
            spec_module.load_spec(path)


# --------------------------------------------------------------------------- security defaults


def test_nothing_is_exposed_outside_the_cluster():
    assert not _by_kind("Ingress")
    for service in _by_kind("Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
    assert _ray_cluster()["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"


@pytest.mark.parametrize("item", WORKLOADS, ids=_doc_id)
def test_every_container_runs_unprivileged(item):
    _, doc = item
    for pod in _pod_specs(doc):
        pod_context = pod.get("securityContext", {})
        for container in pod["containers"]:
            context = container.get("securityContext", {})
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True
            assert context.get("runAsUser", pod_context.get("runAsUser", 1)) != 0
            assert context.get("allowPrivilegeEscalation") is False
            assert context.get("capabilities", {}).get("drop") == ["ALL"]


def _literal(value: str) -> bool:
    """True when a value holds text of its own, not only $(VAR) references."""
    return bool(re.sub(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", "", value).strip())


@pytest.mark.parametrize("item", WORKLOADS, ids=_doc_id)
def test_no_secret_value_is_written_in_a_manifest(item):
    _, doc = item
    for node in _walk(doc):
        if "name" in node and "value" in node and SECRETISH.search(str(node["name"])):
            assert not _literal(str(node["value"])), f"env {node['name']} inlines a secret"
    if doc["kind"] == "ConfigMap":
        assert not [k for k in doc.get("data", {}) if SECRETISH.search(k)], "secret in ConfigMap"
    for text in _strings(doc):
        for userinfo in re.findall(r"://([^/@\s]+)@", text):
            assert not _literal(userinfo.partition(":")[2]), f"credentials in URI {text!r}"


def test_the_example_secrets_hold_only_placeholders():
    text = (DEPLOY / "secrets.example.yaml").read_text()
    assert "NOT APPLIED BY DEFAULT" in text.splitlines()[0]
    usernames = {"username", "MLFLOW_TRACKING_USERNAME"}
    for secret in _by_kind("Secret"):
        assert "data" not in secret, "base64 `data` hides values: use stringData placeholders"
        for key, value in secret["stringData"].items():
            assert key in usernames or PLACEHOLDER in value, f"{secret['metadata']['name']}.{key}"


def test_secrets_are_defined_only_by_the_example():
    # Real Secrets are created with kubectl (deploy/README.md), never committed next to it.
    secrets_elsewhere = [
        name
        for name, doc in DOCUMENTS
        if doc["kind"] == "Secret" and name != "secrets.example.yaml"
    ]
    assert not secrets_elsewhere
