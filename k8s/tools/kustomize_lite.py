#!/usr/bin/env python3
"""Render a kustomization offline, for machines without kustomize or kubectl.

It implements exactly the kustomize features k8s/ uses, and refuses any other
field, so it can never silently render something different from kustomize:

- `resources`: YAML files and directories holding a kustomization;
- `namespace`: set on every namespaced object;
- `patches`: strategic-merge patches (from `path` or inline `patch`, one or
  more documents, matched by kind and name or by a `target`), and JSON 6902
  patches (a YAML list of operations: add, remove, replace, test) with a
  `target`;
- `images`: `newName`, `newTag` and `digest` for container images.

Strategic merge follows Kubernetes: lists with a patch merge key (containers
by name, env by name, ...) merge item by item, other lists are replaced, and
`null` deletes a field. Custom resources (cert-manager) get JSON merge
semantics: every list is replaced, as kustomize does for types it has no
schema for. Where a kustomize build is available, k8s/validate.sh renders
with both and fails if they differ.

Usage: kustomize_lite.py DIR  (the rendered YAML goes to stdout)
"""

from __future__ import annotations

import copy
import os
import re
import sys

import yaml

ALLOWED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches", "images"}
PATCH_FIELDS = {"path", "patch", "target"}
TARGET_FIELDS = {"group", "version", "kind", "name", "namespace"}
IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}

# Kinds without a namespace (the ones this project could plausibly use).
CLUSTER_SCOPED = {
    "APIService",
    "ClusterIssuer",
    "ClusterRole",
    "ClusterRoleBinding",
    "CSIDriver",
    "CustomResourceDefinition",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "RuntimeClass",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
}

# API groups served by Kubernetes itself: strategic merge applies to them.
BUILTIN_GROUPS = {
    "",
    "apps",
    "autoscaling",
    "batch",
    "policy",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "storage.k8s.io",
    "scheduling.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
}

# Patch merge keys of the Kubernetes lists that merge item by item.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
    "hostAliases": "ip",
    "resourceClaims": "name",
    "schedulingGates": "name",
}

# kustomize's "legacy" output order: these kinds first, in this order.
ORDER_FIRST = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
]
ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


class RenderError(Exception):
    """A kustomization this renderer cannot (or will not) render."""


def group_version(obj: dict) -> tuple[str, str]:
    """Splits apiVersion into (group, version); the core group is ''."""
    api = obj.get("apiVersion", "")
    if "/" in api:
        group, version = api.split("/", 1)
        return group, version
    return "", api


def load_yaml_docs(path: str) -> list:
    """Every non-empty document of a YAML file."""
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def find_kustomization(directory: str) -> str:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise RenderError(f"{directory}: no kustomization.yaml")


def render(directory: str) -> list[dict]:
    """The objects a kustomization produces, in kustomize's legacy order."""
    return sort_objects(build(os.path.abspath(directory)))


def build(directory: str) -> list[dict]:
    path = find_kustomization(directory)
    docs = load_yaml_docs(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise RenderError(f"{path}: expected one mapping")
    k = docs[0]
    unknown = set(k) - ALLOWED_FIELDS
    if unknown:
        raise RenderError(f"{path}: unsupported kustomization fields {sorted(unknown)}")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{path}: kind must be Kustomization")

    objects: list[dict] = []
    for entry in k.get("resources") or []:
        if not isinstance(entry, str) or "://" in entry or entry.startswith("github.com/"):
            raise RenderError(f"{path}: only local resources are supported, not {entry!r}")
        target = os.path.normpath(os.path.join(directory, entry))
        if os.path.isdir(target):
            objects.extend(build(target))
        elif os.path.isfile(target):
            for doc in load_yaml_docs(target):
                if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
                    raise RenderError(f"{target}: every document must be a Kubernetes object")
                if doc["kind"].endswith("List"):
                    raise RenderError(f"{target}: List objects are not supported")
                objects.append(doc)
        else:
            raise RenderError(f"{path}: resource {entry!r} does not exist")
    check_unique(objects, path)

    # kustomize's builtin order: patches, namespace, ..., images.
    for i, patch in enumerate(k.get("patches") or []):
        apply_patch_entry(objects, patch, directory, f"{path}: patches[{i}]")
    namespace = k.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = namespace
    for i, image in enumerate(k.get("images") or []):
        apply_image(objects, image, f"{path}: images[{i}]")
    check_unique(objects, path)
    return objects


def object_id(obj: dict) -> tuple:
    group, _ = group_version(obj)
    meta = obj.get("metadata") or {}
    return (group, obj["kind"], meta.get("namespace", ""), meta.get("name"))


def check_unique(objects: list[dict], where: str) -> None:
    seen = set()
    for obj in objects:
        oid = object_id(obj)
        if oid in seen:
            raise RenderError(f"{where}: duplicate object {oid}")
        seen.add(oid)


# ---------------------------------------------------------------- patches


def apply_patch_entry(objects: list[dict], entry: dict, directory: str, where: str) -> None:
    unknown = set(entry) - PATCH_FIELDS
    if unknown:
        raise RenderError(f"{where}: unsupported fields {sorted(unknown)}")
    if ("path" in entry) == ("patch" in entry):
        raise RenderError(f"{where}: exactly one of path and patch")
    if "path" in entry:
        with open(os.path.join(directory, entry["path"]), encoding="utf-8") as f:
            text = f.read()
    else:
        text = entry["patch"]
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    target = entry.get("target")
    if target is not None:
        unknown = set(target) - TARGET_FIELDS
        if unknown:
            raise RenderError(f"{where}: unsupported target fields {sorted(unknown)}")

    if len(docs) == 1 and isinstance(docs[0], list):
        # JSON 6902
        if target is None:
            raise RenderError(f"{where}: a JSON 6902 patch needs a target")
        matches = [o for o in objects if matches_target(o, target)]
        if not matches:
            raise RenderError(f"{where}: target {target} matches nothing")
        for obj in matches:
            apply_json6902(obj, docs[0], where)
        return

    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc:
            raise RenderError(f"{where}: a strategic-merge patch must be a Kubernetes object")
        if target is not None:
            matches = [o for o in objects if matches_target(o, target)]
        else:
            name = (doc.get("metadata") or {}).get("name")
            pgroup, _ = group_version(doc)
            matches = [
                o
                for o in objects
                if o["kind"] == doc["kind"]
                and group_version(o)[0] == pgroup
                and (o.get("metadata") or {}).get("name") == name
            ]
            if len(matches) > 1:
                raise RenderError(f"{where}: {doc['kind']}/{name} matches several objects")
        if not matches:
            raise RenderError(f"{where}: patch for {doc['kind']} matches nothing")
        body = {key: value for key, value in doc.items() if key not in ("apiVersion", "kind", "metadata")}
        meta = {key: value for key, value in (doc.get("metadata") or {}).items() if key not in ("name", "namespace")}
        for obj in matches:
            builtin = group_version(obj)[0] in BUILTIN_GROUPS
            merged = merge(obj, body, builtin, where)
            if meta:
                merged["metadata"] = merge(obj.get("metadata") or {}, meta, builtin, where)
            obj.clear()
            obj.update(merged)


def matches_target(obj: dict, target: dict) -> bool:
    group, version = group_version(obj)
    meta = obj.get("metadata") or {}
    if "group" in target and target["group"] != group:
        return False
    if "version" in target and target["version"] != version:
        return False
    if "kind" in target and target["kind"] != obj["kind"]:
        return False
    if "name" in target and not re.fullmatch(target["name"], meta.get("name", "")):
        return False
    return "namespace" not in target or bool(re.fullmatch(target["namespace"], meta.get("namespace", "")))


def merge(base, patch, builtin: bool, where: str, key: str | None = None):
    """Strategic merge (builtin types) or JSON merge (custom resources)."""
    if isinstance(patch, dict):
        if not isinstance(base, dict):
            base = {}
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if isinstance(k, str) and k.startswith("$"):
                raise RenderError(f"{where}: patch directive {k} is not supported")
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, builtin, where, k)
            else:
                out[k] = strip_nulls(copy.deepcopy(v))
        return out
    if isinstance(patch, list) and isinstance(base, list) and builtin:
        merge_key = list_merge_key(key, base, patch)
        if merge_key is not None:
            out = copy.deepcopy(base)
            for item in patch:
                if not isinstance(item, dict) or merge_key not in item:
                    raise RenderError(f"{where}: every item of {key} needs {merge_key}")
                for i, existing in enumerate(out):
                    if existing.get(merge_key) == item[merge_key]:
                        out[i] = merge(existing, item, builtin, where)
                        break
                else:
                    out.append(strip_nulls(copy.deepcopy(item)))
            return out
    return strip_nulls(copy.deepcopy(patch))


def list_merge_key(key: str | None, base: list, patch: list) -> str | None:
    if key == "ports":
        # containers[].ports merge by containerPort, a Service's by port.
        items = [i for i in base + patch if isinstance(i, dict)]
        return "containerPort" if any("containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(key or "")


def strip_nulls(value):
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


def apply_json6902(obj: dict, ops: list, where: str) -> None:
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise RenderError(f"{where}: each JSON 6902 operation needs op and path")
        kind = op["op"]
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not op["path"].startswith("/") or not parts:
            raise RenderError(f"{where}: bad JSON pointer {op['path']!r}")
        parent = obj
        for part in parts[:-1]:
            parent = step(parent, part, where, op["path"])
        last = parts[-1]
        if kind == "add":
            if isinstance(parent, list):
                if last == "-":
                    parent.append(copy.deepcopy(op["value"]))
                else:
                    parent.insert(index(parent, last, where, op["path"], allow_end=True), copy.deepcopy(op["value"]))
            elif isinstance(parent, dict):
                parent[last] = copy.deepcopy(op["value"])
            else:
                raise RenderError(f"{where}: cannot add at {op['path']}")
        elif kind in ("replace", "remove", "test"):
            if isinstance(parent, list):
                i = index(parent, last, where, op["path"])
            elif isinstance(parent, dict):
                if last not in parent:
                    raise RenderError(f"{where}: {op['path']} does not exist")
                i = last
            else:
                raise RenderError(f"{where}: cannot {kind} at {op['path']}")
            if kind == "replace":
                parent[i] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[i]
            elif parent[i] != op["value"]:
                raise RenderError(f"{where}: test failed at {op['path']}")
        else:
            raise RenderError(f"{where}: JSON 6902 op {kind!r} is not supported")


def step(node, part: str, where: str, path: str):
    if isinstance(node, list):
        return node[index(node, part, where, path)]
    if isinstance(node, dict) and part in node:
        return node[part]
    raise RenderError(f"{where}: {path} does not exist")


def index(lst: list, part: str, where: str, path: str, allow_end: bool = False) -> int:
    if not part.isdigit():
        raise RenderError(f"{where}: bad list index in {path}")
    i = int(part)
    if i > len(lst) or (i == len(lst) and not allow_end):
        raise RenderError(f"{where}: index out of range in {path}")
    return i


# ----------------------------------------------------------------- images


def apply_image(objects: list[dict], image: dict, where: str) -> None:
    unknown = set(image) - IMAGE_FIELDS
    if unknown or "name" not in image:
        raise RenderError(f"{where}: an image needs name and may have newName, newTag, digest")
    for obj in objects:
        for container in containers_of(obj):
            if "image" in container:
                container["image"] = retag(container["image"], image)


def containers_of(node):
    """Every container (and init container) anywhere in an object."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from containers_of(value)
    elif isinstance(node, list):
        for value in node:
            yield from containers_of(value)


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    tag = None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        ref, tag = ref[:colon], ref[colon + 1 :]
    return ref, tag, digest


def retag(ref: str, image: dict) -> str:
    name, tag, digest = split_image(ref)
    if name != image["name"]:
        return ref
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    if digest:
        return f"{name}@{digest}"
    if tag:
        return f"{name}:{tag}"
    return name


# ----------------------------------------------------------------- output


def sort_objects(objects: list[dict]) -> list[dict]:
    def key(obj):
        kind = obj["kind"]
        group, version = group_version(obj)
        gvk = f"{group}/{version}, Kind={kind}"
        if kind in ORDER_FIRST:
            rank = (0, ORDER_FIRST.index(kind), "")
        elif kind in ORDER_LAST:
            rank = (2, ORDER_LAST.index(kind), "")
        else:
            rank = (1, 0, gvk)
        meta = obj.get("metadata") or {}
        return (rank, meta.get("namespace", ""), meta.get("name", ""))

    return sorted(objects, key=key)


def dump(objects: list[dict]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=True, default_flow_style=False, width=1000)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        objects = render(argv[1])
    except (RenderError, OSError, yaml.YAMLError) as e:
        print(f"kustomize_lite: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(dump(objects))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
