"""`kubectl patch` semantics (pure): strategic merge (the default), JSON merge and JSON patch.

Strategic merge merges lists of named things by their key (containers and env by `name`,
container ports by `containerPort`, service ports by `port`) instead of replacing them;
`null` removes a field, as the API server's patch handlers do.
"""

from __future__ import annotations

import copy

MERGE_KEYS = {  # the patchMergeKey of the API types' lists (the rest are replaced)
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": None,  # containerPort for containers, port for services (chosen per item)
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "resourceClaims": "name",
    "ownerReferences": "uid",
    "conditions": "type",
    "topologySpreadConstraints": "topologyKey",
}


class PatchError(ValueError):
    pass


def apply_patch(obj: dict, patch: object, kind: str = "strategic") -> dict:
    if kind == "json":
        return _json_patch(obj, patch)
    if not isinstance(patch, dict):
        raise PatchError("a merge patch must be a JSON object")
    return _merge(obj, patch, strategic=kind == "strategic")


def _merge(target: object, patch: dict, strategic: bool) -> dict:
    if strategic and patch.get("$patch") == "replace":  # the map replaces what was there
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if strategic and (key == "$patch" or key.startswith(("$setElementOrder/", "$retainKeys"))):
            continue  # directives kubectl sends (ordering, retained keys): nothing to store
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = _merge(out.get(key), value, strategic)
        elif strategic and isinstance(value, list) and key in MERGE_KEYS:
            out[key] = _merge_list(out.get(key) or [], value, MERGE_KEYS[key], strategic)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_list(current: list, patch: list, merge_key: str | None, strategic: bool) -> list:
    def key_of(item: object) -> object:
        if not isinstance(item, dict):
            return None
        if merge_key:
            return item.get(merge_key)
        return item.get("containerPort", item.get("port"))

    out = copy.deepcopy(current)
    for item in patch:
        k = key_of(item)
        match = next((i for i, x in enumerate(out) if k is not None and key_of(x) == k), None)
        if isinstance(item, dict) and item.get("$patch") == "delete":
            if match is not None:
                del out[match]
        elif match is None:
            out.append(copy.deepcopy(item))
        else:
            out[match] = _merge(out[match], item, strategic)
    return out


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise PatchError(f"JSON patch path {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(obj: dict, ops: object) -> dict:
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(obj)
    for op in ops:
        if not isinstance(op, dict) or op.get("op") not in ("add", "remove", "replace", "test"):
            raise PatchError(f"unsupported JSON patch operation {op!r}")
        *parents, last = _pointer(op.get("path", ""))
        node: object = doc
        for p in parents:
            if isinstance(node, list):
                node = node[int(p)]
            else:
                node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                raise PatchError(f"path {op['path']!r} does not exist")
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op["op"] == "add":
                node.insert(index, op.get("value"))
            elif op["op"] == "remove":
                node.pop(index)
            elif op["op"] == "replace":
                node[index] = op.get("value")
            elif node[index] != op.get("value"):
                raise PatchError(f"test failed at {op['path']}")
        elif isinstance(node, dict):
            if op["op"] in ("add", "replace"):
                if op["op"] == "replace" and last not in node:
                    raise PatchError(f"path {op['path']!r} does not exist")
                node[last] = op.get("value")
            elif op["op"] == "remove":
                if last not in node:
                    raise PatchError(f"path {op['path']!r} does not exist")
                del node[last]
            elif node.get(last) != op.get("value"):
                raise PatchError(f"test failed at {op['path']}")
    return doc
