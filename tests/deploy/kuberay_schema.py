"""A structural schema of the KubeRay custom resources, checked offline.

kubernetes-validate ships the JSON schemas of the core Kubernetes API only: a RayCluster or a
RayJob is a custom resource whose schema lives in the KubeRay CRDs, which a cluster serves and no
offline validator carries. This module writes down the subset of KubeRay v1.6's `ray.io/v1` API
that deploy/ uses (field names from `ray-operator/apis/ray/v1/raycluster_types.go` and
`rayjob_types.go`), closed with `additionalProperties: false` so a misspelt field fails, and
delegates every embedded core type to the strict Kubernetes schemas that kubernetes-validate
ships: a head or worker `template` is validated as a real `PodTemplateSpec`, an autoscaler
`resources` as a real `ResourceRequirements`, and so on.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

_DEFS_URI = "https://kubernetes.io/api/_definitions.json"


def _core(type_name: str) -> dict:
    """A reference to a core Kubernetes type in kubernetes-validate's strict definitions."""
    return {"$ref": f"{_DEFS_URI}#/$defs/{type_name}"}


POD_TEMPLATE = _core("io.k8s.api.core.v1.PodTemplateSpec")
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
COUNT = {"type": "integer", "minimum": 0}

AUTH_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "mode": {"enum": ["disabled", "token"]},
        "secretName": {"type": "string", "minLength": 1},
        "enableK8sTokenAuth": {"type": "boolean"},
    },
}

AUTOSCALER_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "resources": _core("io.k8s.api.core.v1.ResourceRequirements"),
        "image": {"type": "string"},
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "securityContext": _core("io.k8s.api.core.v1.SecurityContext"),
        "idleTimeoutSeconds": COUNT,
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
        "env": {"type": "array", "items": _core("io.k8s.api.core.v1.EnvVar")},
        "envFrom": {"type": "array", "items": _core("io.k8s.api.core.v1.EnvFromSource")},
        "volumeMounts": {"type": "array", "items": _core("io.k8s.api.core.v1.VolumeMount")},
    },
}

HEAD_GROUP = {
    "type": "object",
    "additionalProperties": False,
    "required": ["template"],
    "properties": {
        "template": POD_TEMPLATE,
        "headService": _core("io.k8s.api.core.v1.Service"),
        "enableIngress": {"type": "boolean"},
        "rayStartParams": STRING_MAP,
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    },
}

WORKER_GROUP = {
    "type": "object",
    "additionalProperties": False,
    "required": ["groupName", "template", "minReplicas", "maxReplicas"],
    "properties": {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": COUNT,
        "minReplicas": COUNT,
        "maxReplicas": COUNT,
        "idleTimeoutSeconds": COUNT,
        "numOfHosts": {"type": "integer", "minimum": 1},
        "rayStartParams": STRING_MAP,
        "template": POD_TEMPLATE,
        "suspend": {"type": "boolean"},
        "scaleStrategy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"workersToDelete": {"type": "array", "items": {"type": "string"}}},
        },
    },
}

RAY_CLUSTER_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["headGroupSpec"],
    "properties": {
        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "authOptions": AUTH_OPTIONS,
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": AUTOSCALER_OPTIONS,
        "headServiceAnnotations": STRING_MAP,
        "suspend": {"type": "boolean"},
        "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
        "headGroupSpec": HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
    },
}

RAY_JOB_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["entrypoint"],
    # A RayJob runs either on a cluster it creates or on an existing one, never both.
    "oneOf": [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}],
    "properties": {
        "entrypoint": {"type": "string", "minLength": 1},
        "runtimeEnvYAML": {"type": "string"},
        "jobId": {"type": "string"},
        "metadata": STRING_MAP,
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
        "clusterSelector": STRING_MAP,
        "rayClusterSpec": RAY_CLUSTER_SPEC,
        "submitterPodTemplate": POD_TEMPLATE,
        "submitterConfig": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"backoffLimit": COUNT},
        },
        "shutdownAfterJobFinishes": {"type": "boolean"},
        "ttlSecondsAfterFinished": COUNT,
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
        "backoffLimit": COUNT,
        "suspend": {"type": "boolean"},
        "entrypointNumCpus": {"type": "number", "minimum": 0},
        "entrypointNumGpus": {"type": "number", "minimum": 0},
        "entrypointResources": {"type": "string"},
        "deletionPolicy": {"enum": ["DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone"]},
        "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
    },
}


def _resource(kind: str, spec: dict) -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": kind},
            "metadata": _core("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "spec": spec,
        },
    }


SCHEMAS = {
    "RayCluster": _resource("RayCluster", RAY_CLUSTER_SPEC),
    "RayJob": _resource("RayJob", RAY_JOB_SPEC),
}


@functools.cache
def _registry(k8s_version: str) -> Registry:
    path = (
        resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{k8s_version}-local-strict"
        / "_definitions.json"
    )
    definitions = json.loads(path.read_text())
    return Registry().with_resource(_DEFS_URI, Resource.from_contents(definitions))


def validator(kind: str, k8s_version: str) -> Draft202012Validator:
    """A validator of one KubeRay kind, with core types resolved for `k8s_version`."""
    if kind not in SCHEMAS:
        raise KeyError(f"no KubeRay schema for kind {kind!r}; known: {', '.join(SCHEMAS)}")
    return Draft202012Validator(SCHEMAS[kind], registry=_registry(k8s_version))
