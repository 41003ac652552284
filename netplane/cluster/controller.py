"""The emulated control plane (pure): desired objects -> the objects to write.

`reconcile` plays the Deployment/ReplicaSet controllers, the scheduler, the garbage
collector and the endpoint-slice controller in one pass. It never touches the system: the
supervisor stores its plan and the kubelet layer turns pods into sandboxes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from netplane.cluster.endpointslices import MANAGED_BY, endpoint_slices
from netplane.cluster.naming import suffix, template_hash, uid
from netplane.cluster.topology import Topology
from netplane.cluster.workloads import Deployment, parse_deployment
from netplane.model import InvalidField, Pod, Service, parse_object

Key = tuple[str, str, str]
OWNER = "netplane.io/owner"
MIRROR = "endpointslicemirroring-controller.k8s.io"  # annotation on pods: "Deployment/<name>"


@dataclass(frozen=True, slots=True)
class Plan:
    upserts: tuple[dict, ...] = ()
    deletes: tuple[Key, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


def parse_pods(objects: Mapping[Key, dict]) -> dict[Key, Pod]:
    pods = {}
    for key, body in objects.items():
        if key[0] == "Pod":
            try:
                pods[key] = parse_object(body)[0]
            except InvalidField:
                continue  # admission validated it; a half-written status is skipped
    return pods


def parse_services(objects: Mapping[Key, dict]) -> list[Service]:
    out = []
    for key, body in objects.items():
        if key[0] == "Service":
            try:
                out.append(parse_object(body)[0])
            except InvalidField:
                continue
    return out


def reconcile(objects: Mapping[Key, dict], topo: Topology, rng: random.Random, now: str) -> Plan:
    upserts: list[dict] = []
    deletes: list[Key] = []
    pods = parse_pods(objects)
    live = {k: p for k, p in pods.items() if not p.terminating}
    load = Counter(p.node_name for p in live.values() if p.node_name)

    def terminate(key: Key) -> None:
        body = _with_meta(objects[key], deletionTimestamp=now)
        upserts.append(body)
        live.pop(key, None)
        load[pods[key].node_name] -= 1

    deployments = {}
    for key, body in objects.items():
        if key[0] == "Deployment":
            try:
                deployments[key] = parse_deployment(body)
            except InvalidField:
                continue
    # garbage collection: pods whose deployment is gone
    for key in list(live):
        owner = _owner(objects[key])
        if owner and ("Deployment", key[1], owner) not in deployments:
            terminate(key)
    for dkey, dep in sorted(deployments.items()):
        h = template_hash(dep.template)
        mine = {k: p for k, p in live.items() if _owner(objects[k]) == dep.name and k[1] == dkey[1]}
        for k, p in list(mine.items()):
            if dict(p.labels).get("pod-template-hash") != h:  # template changed: recreate
                terminate(k)
                del mine[k]
        per_node = Counter(p.node_name for p in mine.values())
        missing = dep.replicas - len(mine)
        for _ in range(missing):
            node = min(topo.nodes, key=lambda n: (per_node[n.name], load[n.name], n.index)).name
            body = _new_pod(dep, h, node, rng, now)
            while ("Pod", dep.namespace, body["metadata"]["name"]) in objects:
                body = _new_pod(dep, h, node, rng, now)
            upserts.append(body)
            per_node[node] += 1
            load[node] += 1
        if missing < 0:
            # not-ready first, then from the node with most replicas, then the newest
            victims = sorted(
                mine.items(),
                key=lambda kv: objects[kv[0]]["metadata"].get("creationTimestamp", ""),
                reverse=True,
            )
            victims.sort(key=lambda kv: (kv[1].ready, -per_node[kv[1].node_name]))
            for k, p in victims[:-missing]:
                terminate(k)
                per_node[p.node_name] -= 1
    # scheduler: bare pods without a node
    for key, pod in sorted(live.items()):
        if not pod.node_name and not objects[key]["spec"].get("nodeName"):
            node = min(topo.nodes, key=lambda n: (load[n.name], n.index)).name
            body = dict(objects[key])
            body["spec"] = {**body["spec"], "nodeName": node}
            upserts.append(body)
            load[node] += 1
    up, dl = _slices(objects, pods, upserts, now)
    return Plan(tuple(upserts + up), tuple(deletes + dl))


def _slices(
    objects: Mapping[Key, dict], pods: dict[Key, Pod], upserts: list[dict], now: str
) -> tuple[list[dict], list[Key]]:
    # pods changed in this pass (terminations) count with their new state
    changed = {(u["kind"], u["metadata"]["namespace"], u["metadata"]["name"]): u for u in upserts}
    by_ns: dict[str, list[Pod]] = {}
    uids: dict[str, str] = {}
    for key, pod in pods.items():
        if key in changed:
            pod = parse_object(changed[key])[0]
        by_ns.setdefault(key[1], []).append(pod)
        uids[pod.name] = objects[key]["metadata"].get("uid", "")
    existing: dict[tuple[str, str], dict[Key, dict]] = {}
    for key, body in objects.items():
        labels = (body.get("metadata") or {}).get("labels") or {}
        if key[0] == "EndpointSlice" and labels.get("endpointslice.kubernetes.io/managed-by") == (
            MANAGED_BY
        ):
            svc = labels.get("kubernetes.io/service-name", "")
            existing.setdefault((key[1], svc), {})[key] = body
    out_up: list[dict] = []
    out_del: list[Key] = []
    wanted_services = set()
    for svc in parse_services(objects):
        if svc.selector is None or svc.type == "ExternalName":
            continue
        wanted_services.add((svc.namespace, svc.name))
        have = existing.get((svc.namespace, svc.name), {})
        want = {
            ("EndpointSlice", s["metadata"]["namespace"], s["metadata"]["name"]): s
            for s in endpoint_slices(svc, by_ns.get(svc.namespace, []), uids)
        }
        for k, s in want.items():
            if _strip(have.get(k)) != _strip(s):
                old = (have.get(k) or {}).get("metadata", {})
                s["metadata"]["creationTimestamp"] = old.get("creationTimestamp", now)
                out_up.append(s)
        out_del.extend(k for k in have if k not in want)
    for svc_key, slices in existing.items():
        if svc_key not in wanted_services:
            out_del.extend(slices)
    mirrored = _mirror(objects, now)
    for key, body in objects.items():
        if (
            key[0] == "EndpointSlice"
            and body["metadata"].get("labels", {}).get("endpointslice.kubernetes.io/managed-by")
            == MIRROR
            and key not in mirrored
        ):
            out_del.append(key)
    for key, body in mirrored.items():
        if _strip(objects.get(key)) != _strip(body):
            out_up.append(body)
    return out_up, out_del


def _mirror(objects: Mapping[Key, dict], now: str) -> dict[Key, dict]:
    """Legacy Endpoints -> EndpointSlices, as the mirroring controller does (one slice per
    subset; the proxies and DNS follow slices only)."""
    out = {}
    for key, body in objects.items():
        if key[0] != "Endpoints":
            continue
        for i, subset in enumerate(body.get("subsets") or []):
            endpoints = [
                {
                    "addresses": [a["ip"]],
                    "conditions": {"ready": ready},
                    **({"nodeName": a["nodeName"]} if a.get("nodeName") else {}),
                    **({"hostname": a["hostname"]} if a.get("hostname") else {}),
                }
                for field, ready in (("addresses", True), ("notReadyAddresses", False))
                for a in subset.get(field) or []
            ]
            name = f"{key[2]}-{i}"
            old = objects.get(("EndpointSlice", key[1], name), {}).get("metadata", {})
            out[("EndpointSlice", key[1], name)] = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": name,
                    "namespace": key[1],
                    "creationTimestamp": old.get("creationTimestamp", now),
                    "labels": {
                        "endpointslice.kubernetes.io/managed-by": MIRROR,
                        "kubernetes.io/service-name": key[2],
                    },
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [
                    {k: p[k] for k in ("name", "port", "protocol", "appProtocol") if k in p}
                    for p in subset.get("ports") or []
                ],
            }
    return out


def _strip(body: dict | None) -> dict | None:
    """A stored slice without what admission added, for comparing with a fresh one."""
    if body is None:
        return None
    meta = {k: v for k, v in body["metadata"].items() if k not in ("uid", "creationTimestamp")}
    return {**body, "metadata": meta}


def _owner(body: dict) -> str:
    value = ((body.get("metadata") or {}).get("annotations") or {}).get(OWNER, "")
    return value.split("/", 1)[1] if value.startswith("Deployment/") else ""


def _with_meta(body: dict, **meta) -> dict:
    return {**body, "metadata": {**body["metadata"], **meta}}


def _new_pod(dep: Deployment, h: str, node: str, rng: random.Random, now: str) -> dict:
    tmeta = dep.template.get("metadata") or {}
    rs = f"{dep.name}-{h}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{rs}-{suffix(rng)}",
            "namespace": dep.namespace,
            "uid": uid(rng),
            "creationTimestamp": now,
            "labels": {**(tmeta.get("labels") or {}), "pod-template-hash": h},
            "annotations": {OWNER: f"Deployment/{dep.name}"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs}],
        },
        "spec": {**dep.template["spec"], "nodeName": node},
        "status": {"phase": "Pending"},
    }
