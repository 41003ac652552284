"""The emulated control plane (pure): desired objects -> the objects to write.

`reconcile` plays the namespace, garbage-collector, Deployment, ReplicaSet, scheduler and
endpoint-slice controllers in one pass over a transaction. It never touches the system:
the daemon stores its plan and the kubelet layer turns pods into sandboxes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from netplane.cluster.control import workloads_controller as wc
from netplane.cluster.control.endpointslices import MANAGED_BY, endpoint_slices
from netplane.cluster.control.events import oldest_beyond_cap
from netplane.cluster.control.topology import Topology
from netplane.model import InvalidField, Pod, Service, parse_as

Key = tuple[str, str, str]
MIRROR = "endpointslicemirroring-controller.k8s.io"


@dataclass(frozen=True, slots=True)
class Plan:
    upserts: tuple[dict, ...] = ()
    deletes: tuple[Key, ...] = ()
    problems: tuple[str, ...] = ()  # objects a controller could not handle (logged)

    @property
    def changes(self) -> bool:
        return bool(self.upserts or self.deletes)

    def __bool__(self) -> bool:
        return self.changes


def parse_pods(objects: Mapping[Key, dict]) -> dict[Key, Pod]:
    pods = {}
    for key, body in objects.items():
        if key[0] == "Pod":
            try:
                pods[key] = parse_as(body, Pod)
            except InvalidField:
                continue  # admission validated it; a half-written status is skipped
    return pods


def parse_services(objects: Mapping[Key, dict]) -> list[Service]:
    out = []
    for key, body in objects.items():
        if key[0] == "Service":
            try:
                out.append(parse_as(body, Service))
            except InvalidField:
                continue
    return out


def reconcile(objects: Mapping[Key, dict], topo: Topology, rng: random.Random, now: str) -> Plan:
    t = wc.Txn(objects, now, rng)
    wc.namespaces(t)
    wc.collect_garbage(t)
    wc.deployments(t)
    wc.replicasets(t, topo)
    wc.schedule(t, topo)
    wc.deployment_status(t)
    for key in oldest_beyond_cap([(k, v) for k, v in t.view.items() if k[0] == "Event"]):
        t.delete(key)
    try:
        up, dl = _slices(t.view, parse_pods(t.view), now)
    except Exception as e:
        t.problems.append(f"endpoint slices: {type(e).__name__}: {e}")
        up, dl = [], []
    for body in up:
        t.put(body)
    for key in dl:
        t.delete(key)
    return Plan(tuple(t.upserts.values()), tuple(sorted(t.deletes)), tuple(t.problems))


def _slices(
    objects: Mapping[Key, dict], pods: dict[Key, Pod], now: str
) -> tuple[list[dict], list[Key]]:
    by_ns: dict[str, list[Pod]] = {}
    uids: dict[str, str] = {}
    for key, pod in pods.items():
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


_SERVER_SET = ("uid", "creationTimestamp", "resourceVersion")


def _strip(body: dict | None) -> dict | None:
    """A stored slice without what admission added, for comparing with a fresh one."""
    if body is None:
        return None
    meta = {k: v for k, v in body["metadata"].items() if k not in _SERVER_SET}
    return {**body, "metadata": meta}
