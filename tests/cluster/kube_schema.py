"""Validate Kubernetes manifests against a CRD's openAPIV3Schema, plus the KubeRay operator's own rules.

A CRD schema is a "structural" OpenAPI v3 schema, close to JSON Schema with three differences
that matter here: an object with `properties` rejects unknown fields (the API server prunes
them, and `kubectl apply` refuses them under strict field validation), `nullable: true`
admits null, and `x-kubernetes-int-or-string` admits both. :func:`to_json_schema` rewrites
those so `jsonschema` checks what the API server would. CEL rules (`x-kubernetes-validations`)
are not evaluated; the few that apply to our fields are restated in :func:`operator_errors`
together with the checks KubeRay's operator makes when it reconciles
(ray-operator/controllers/ray/utils/validation.go).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from jsonschema import Draft7Validator

# KubeRay appends suffixes to these names for its Services and for a RayJob's cluster.
MAX_NAME_LENGTH = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def to_json_schema(node: Any) -> Any:
    """A structural CRD schema rewritten as JSON Schema (unknown fields rejected)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if "properties" in out and "additionalProperties" not in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def load_crd_validators(crd_files: Iterable[Path]) -> dict[tuple[str, str], Draft7Validator]:
    """{(apiVersion, kind): validator} for every served version of every CRD in `crd_files`."""
    validators = {}
    for path in crd_files:
        # libyaml when present: the two KubeRay CRDs are 2 MB of YAML (14 s in pure Python).
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = to_json_schema(version["schema"]["openAPIV3Schema"])
                validators[(f"{group}/{version['name']}", kind)] = Draft7Validator(schema)
    return validators


def schema_errors(doc: dict, validators: dict[tuple[str, str], Draft7Validator]) -> list[str]:
    """Where `doc` breaks its CRD's schema, as 'path: message' lines (empty when it conforms)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in validators:
        return [f"no CRD schema for apiVersion {key[0]!r} kind {key[1]!r}; known: {sorted(validators)}"]
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validators[key].iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _env_names(container: dict) -> set[str]:
    return {env["name"] for env in container.get("env", [])}


def cluster_spec_errors(spec: dict, where: str) -> list[str]:
    """KubeRay's ValidateRayClusterSpec, for the parts our manifests use."""
    errors = []
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    options = spec.get("autoscalerOptions") or {}
    head = spec["headGroupSpec"]
    groups = [("head", head)] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    head_containers = head["template"]["spec"].get("containers", [])
    if not head_containers:
        errors.append(f"{where}: headGroupSpec needs at least one container")
    v2_env = bool(head_containers) and "RAY_enable_autoscaler_v2" in _env_names(head_containers[0])
    if v2_env and "version" in options:
        errors.append(f"{where}: set autoscalerOptions.version or the head's RAY_enable_autoscaler_v2 env var, not both")
    v2 = autoscaling and (options.get("version") == "v2" or v2_env)
    if v2_env and not autoscaling:
        errors.append(f"{where}: RAY_enable_autoscaler_v2 needs enableInTreeAutoscaling: true")
    for name, group in groups:
        pod = group["template"]["spec"]
        if not pod.get("containers"):
            errors.append(f"{where}: group {name} needs at least one container")
        if v2 and pod.get("restartPolicy", "Never") != "Never":
            errors.append(f"{where}: group {name}: autoscaler v2 needs restartPolicy Never (or unset)")
        params = group.get("rayStartParams") or {}
        if "labels" in params:
            errors.append(f"{where}: group {name}: rayStartParams.labels is not supported; use the group's labels field")
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
            errors.append(f"{where}: group {name}: resources set in both rayStartParams and resources")
        if name == "head":
            continue
        lo, hi = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (lo is None or hi is None):
            errors.append(f"{where}: group {name} needs minReplicas and maxReplicas without autoscaling")
        if lo is not None and hi is not None and lo > hi:
            errors.append(f"{where}: group {name}: minReplicas {lo} > maxReplicas {hi}")
    if options.get("idleTimeoutSeconds", 0) < 0:
        errors.append(f"{where}: autoscalerOptions.idleTimeoutSeconds must be >= 0")
    return errors


def operator_errors(doc: dict) -> list[str]:
    """The checks KubeRay makes on a RayCluster or RayJob beyond its schema."""
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name", "")
    where = f"{kind} {name!r}"
    errors = []
    if kind in MAX_NAME_LENGTH:
        if len(name) > MAX_NAME_LENGTH[kind]:
            errors.append(f"{where}: name longer than {MAX_NAME_LENGTH[kind]} characters")
        if not DNS1035.match(name):
            errors.append(f"{where}: name is not a DNS-1035 label (lower case letters, digits, '-')")
    spec = doc.get("spec", {})
    if kind == "RayCluster":
        errors += cluster_spec_errors(spec, where)
    elif kind == "RayJob":
        selector = spec.get("clusterSelector")
        if selector:
            if not selector.get("ray.io/cluster"):
                errors.append(f"{where}: clusterSelector needs the cluster's name under ray.io/cluster")
            if spec.get("backoffLimit", 0) > 0:
                errors.append(f"{where}: backoffLimit is incompatible with clusterSelector")
            if spec.get("submissionMode") == "SidecarMode":
                errors.append(f"{where}: clusterSelector is not supported in SidecarMode")
        elif "rayClusterSpec" not in spec:
            errors.append(f"{where}: set rayClusterSpec or clusterSelector")
        if not spec.get("shutdownAfterJobFinishes") and spec.get("ttlSecondsAfterFinished", 0) > 0:
            errors.append(f"{where}: ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
        if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
            errors.append(f"{where}: a suspended RayJob needs shutdownAfterJobFinishes: true")
        if spec.get("submissionMode") == "SidecarMode" and "submitterPodTemplate" in spec:
            errors.append(f"{where}: SidecarMode does not support submitterPodTemplate")
        if "runtimeEnvYAML" in spec and not isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict):
            errors.append(f"{where}: runtimeEnvYAML must be a YAML mapping")
        if "rayClusterSpec" in spec:
            errors += cluster_spec_errors(spec["rayClusterSpec"], where)
    return errors
