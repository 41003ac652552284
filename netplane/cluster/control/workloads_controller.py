"""The Deployment, ReplicaSet and namespace controllers, the scheduler and the garbage
collector (pure): they read the objects and write through a transaction.

- Deployment -> ReplicaSets: one per pod template (`<deploy>-<pod-template-hash>`), rolled
  with maxSurge/maxUnavailable (RollingUpdate, default 25%/25%) or Recreate; old sets are
  kept at 0 replicas for `rollout history/undo` (revisionHistoryLimit, default 10).
- ReplicaSet -> pods: never more pods than replicas, whatever happens to them (a pod that
  fails to start is retried by the kubelet, not replaced).
- Garbage collector: what an owner (ownerReferences with controller=true) no longer has.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping

from netplane.cluster.control import defaults
from netplane.cluster.control.events import make_event
from netplane.cluster.control.naming import suffix, template_hash, uid
from netplane.cluster.control.topology import Topology

Key = tuple[str, str, str]
REVISION = "deployment.kubernetes.io/revision"
BUILTIN_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")


class Txn:
    """A working view of the objects plus what changed (last write per key wins)."""

    def __init__(self, objects: Mapping[Key, dict], now: str, rng: random.Random) -> None:
        self.view = dict(objects)
        self.now, self.rng = now, rng
        self.upserts: dict[Key, dict] = {}
        self.deletes: set[Key] = set()
        self.problems: list[str] = []

    def put(self, body: dict) -> None:
        meta = body["metadata"]
        key = (
            body["kind"],
            meta.get("namespace", "") if body["kind"] not in ("Namespace", "Node") else "",
            meta["name"],
        )
        if self.view.get(key) == body:
            return
        self.view[key] = body
        self.upserts[key] = body
        self.deletes.discard(key)

    def delete(self, key: Key) -> None:
        if key in self.view:
            del self.view[key]
            self.upserts.pop(key, None)
            self.deletes.add(key)

    def of_kind(self, kind: str) -> list[tuple[Key, dict]]:
        return sorted((k, v) for k, v in self.view.items() if k[0] == kind)

    def event(
        self, obj: dict, reason: str, message: str, component: str, warn: bool = False
    ) -> None:
        ev = make_event(
            obj, reason, message, self.now, self.rng, component, "Warning" if warn else "Normal"
        )
        self.put(ev)


def is_ready(pod: dict) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def controller_of(body: dict) -> dict | None:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def _owner_ref(owner: dict) -> dict:
    return {
        "apiVersion": owner.get("apiVersion", "v1"),
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _with_meta(body: dict, **meta: object) -> dict:
    return {**body, "metadata": {**body["metadata"], **meta}}


def terminate(t: Txn, key: Key) -> None:
    body = t.view[key]
    if key[0] == "Pod":
        if not body["metadata"].get("deletionTimestamp"):
            t.put(_with_meta(body, deletionTimestamp=t.now))
    else:
        t.delete(key)


# -- namespaces and garbage collection --------------------------------------------------------
def namespaces(t: Txn) -> None:
    for key, ns in t.of_kind("Namespace"):
        if not ns["metadata"].get("deletionTimestamp"):
            continue
        inside = [k for k in t.view if k[1] == key[2] and k[0] != "Namespace"]
        for k in inside:
            terminate(t, k)
        if not any(k for k in t.view if k[1] == key[2] and k[0] != "Namespace"):
            t.delete(key)


def collect_garbage(t: Txn) -> None:
    uids = {(k[1], b["metadata"].get("uid")) for k, b in t.view.items()}
    for kind in ("ReplicaSet", "Pod"):
        for key, body in t.of_kind(kind):
            ref = controller_of(body)
            if ref and (key[1], ref.get("uid")) not in uids:
                terminate(t, key)


# -- Deployments ------------------------------------------------------------------------------
def _resolve(value: object, replicas: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * replicas / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)  # type: ignore[call-overload]


def _pods_by_owner(t: Txn) -> dict[str, list[tuple[Key, dict]]]:
    out: dict[str, list[tuple[Key, dict]]] = {}
    for key, pod in t.of_kind("Pod"):
        ref = controller_of(pod)
        if ref and not pod["metadata"].get("deletionTimestamp"):
            out.setdefault(ref.get("uid", ""), []).append((key, pod))
    return out


def _scale(t: Txn, rs: dict, replicas: int, deployment: dict) -> dict:
    old = rs["spec"].get("replicas", 1)
    if old == replicas:
        return rs
    rs = {**rs, "spec": {**rs["spec"], "replicas": replicas}}
    t.put(rs)
    verb = "up" if replicas > old else "down"
    t.event(
        deployment,
        "ScalingReplicaSet",
        f"Scaled {verb} replica set {rs['metadata']['name']} from {old} to {replicas}",
        "deployment-controller",
    )
    return rs


def deployments(t: Txn) -> None:
    for key, dep in t.of_kind("Deployment"):
        try:
            _deployment(t, key, dep)
        except Exception as e:  # one bad object never stops the controller for the others
            t.problems.append(f"deployment {key[1]}/{key[2]}: {type(e).__name__}: {e}")


def _deployment(t: Txn, key: Key, dep: dict) -> None:
    if dep["metadata"].get("deletionTimestamp"):
        return
    spec = dep["spec"]
    replicas = spec.get("replicas", 1)
    template = spec["template"]
    h = template_hash(template)
    owned = [
        rs
        for _, rs in t.of_kind("ReplicaSet")
        if rs["metadata"]["namespace"] == key[1]
        and (controller_of(rs) or {}).get("uid") == dep["metadata"]["uid"]
    ]
    revisions = [int(rs["metadata"].get("annotations", {}).get(REVISION, "0")) for rs in owned]
    new = next((rs for rs in owned if rs["metadata"]["name"] == f"{key[2]}-{h}"), None)
    olds = sorted(
        (rs for rs in owned if rs is not new),
        key=lambda rs: int(rs["metadata"].get("annotations", {}).get(REVISION, "0")),
    )
    active_olds = [rs for rs in olds if rs["spec"].get("replicas", 1) > 0]
    top = max(revisions, default=0)
    if new is None:
        first = replicas if not active_olds else 0
        new = _new_replicaset(t, dep, h, top + 1, first)
        if first:
            t.event(
                dep,
                "ScalingReplicaSet",
                f"Scaled up replica set {new['metadata']['name']} from 0 to {first}",
                "deployment-controller",
            )
    elif int(new["metadata"].get("annotations", {}).get(REVISION, "0")) < top:
        # rollout undo: an old template came back; its set becomes the newest revision
        meta = new["metadata"]
        new = {
            **new,
            "metadata": {
                **meta,
                "annotations": {**meta.get("annotations", {}), REVISION: str(top + 1)},
            },
        }
        t.put(new)
    pods = _pods_by_owner(t)

    def ready(rs: dict) -> int:
        return sum(1 for _, p in pods.get(rs["metadata"]["uid"], []) if is_ready(p))

    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate":
        for rs in active_olds:
            _scale(t, rs, 0, dep)
        if not any(pods.get(rs["metadata"]["uid"]) for rs in olds) and not any(
            k[0] == "Pod"
            and (controller_of(b) or {}).get("uid") in {rs["metadata"]["uid"] for rs in olds}
            for k, b in t.view.items()
        ):
            new = _scale(t, new, replicas, dep)
    else:
        ru = strategy.get("rollingUpdate") or {}
        surge = _resolve(ru.get("maxSurge", "25%"), replicas, True)
        unavailable = _resolve(ru.get("maxUnavailable", "25%"), replicas, False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        current = new["spec"].get("replicas", 1)
        total = sum(rs["spec"].get("replicas", 1) for rs in [new, *active_olds])
        if current > replicas:
            target = replicas
        else:
            target = min(replicas, current + max(0, replicas + surge - total))
        new = _scale(t, new, target, dep)
        min_available = replicas - unavailable
        all_pods = target + sum(rs["spec"].get("replicas", 1) for rs in active_olds)
        budget = all_pods - min_available - (target - ready(new))
        live_olds = []
        for rs in active_olds:  # first the old sets' pods that are not ready anyway
            n = rs["spec"].get("replicas", 1)
            cut = min(max(budget, 0), n - ready(rs))
            if cut > 0:
                rs = _scale(t, rs, n - cut, dep)
                budget -= cut
            live_olds.append(rs)
        available = ready(new) + sum(ready(rs) for rs in live_olds)
        can = available - min_available
        for rs in live_olds:
            if can <= 0:
                break
            n = rs["spec"].get("replicas", 1)
            cut = min(can, n)
            if cut > 0:
                _scale(t, rs, n - cut, dep)
                can -= cut
    limit = spec.get("revisionHistoryLimit", 10)
    idle = [
        rs
        for rs in olds
        if t.view.get(("ReplicaSet", key[1], rs["metadata"]["name"]))
        and t.view[("ReplicaSet", key[1], rs["metadata"]["name"])]["spec"].get("replicas") == 0
    ]
    for rs in idle[: max(0, len(idle) - limit)]:
        if not pods.get(rs["metadata"]["uid"]):
            t.delete(("ReplicaSet", key[1], rs["metadata"]["name"]))


def _new_replicaset(t: Txn, dep: dict, h: str, revision: int, replicas: int) -> dict:
    meta, spec = dep["metadata"], dep["spec"]
    tmeta = spec["template"].get("metadata") or {}
    labels = {**(tmeta.get("labels") or {}), "pod-template-hash": h}
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{meta['name']}-{h}",
            "namespace": meta["namespace"],
            "uid": uid(t.rng),
            "creationTimestamp": t.now,
            "generation": 1,
            "labels": labels,
            "annotations": {
                "deployment.kubernetes.io/desired-replicas": str(spec.get("replicas", 1)),
                REVISION: str(revision),
            },
            "ownerReferences": [_owner_ref(dep)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {
                "matchLabels": {**spec["selector"]["matchLabels"], "pod-template-hash": h}
            },
            "template": {
                **spec["template"],
                "metadata": {**tmeta, "labels": labels},
            },
        },
        "status": {"replicas": 0},
    }
    t.put(rs)
    return rs


# -- ReplicaSets -> pods ----------------------------------------------------------------------
def replicasets(t: Txn, topo: Topology) -> None:
    load = Counter(
        b["spec"].get("nodeName")
        for _, b in t.of_kind("Pod")
        if not b["metadata"].get("deletionTimestamp")
    )
    pods = _pods_by_owner(t)
    for key, rs in t.of_kind("ReplicaSet"):
        try:
            _replicaset(t, key, rs, pods.get(rs["metadata"]["uid"], []), topo, load)
        except Exception as e:
            t.problems.append(f"replicaset {key[1]}/{key[2]}: {type(e).__name__}: {e}")


def _replicaset(t: Txn, key: Key, rs: dict, mine: list, topo: Topology, load: Counter) -> None:
    want = rs["spec"].get("replicas", 1)
    per_node = Counter(p["spec"].get("nodeName") for _, p in mine)
    missing = want - len(mine)
    for _ in range(max(missing, 0)):
        node = min(topo.nodes, key=lambda n: (per_node[n.name], load[n.name], n.index)).name
        pod = _new_pod(t, rs, node)
        per_node[node] += 1
        load[node] += 1
        mine.append((("Pod", key[1], pod["metadata"]["name"]), pod))
        t.event(
            rs,
            "SuccessfulCreate",
            f"Created pod: {pod['metadata']['name']}",
            "replicaset-controller",
        )
        t.event(
            pod,
            "Scheduled",
            f"Successfully assigned {key[1]}/{pod['metadata']['name']} to {node}",
            "default-scheduler",
        )
    if missing < 0:
        # not-ready first, then from the node with most replicas, then the newest
        victims = sorted(
            mine, key=lambda kv: kv[1]["metadata"].get("creationTimestamp", ""), reverse=True
        )
        victims.sort(key=lambda kv: (is_ready(kv[1]), -per_node[kv[1]["spec"].get("nodeName")]))
        for k, p in victims[:-missing]:
            terminate(t, k)
            per_node[p["spec"].get("nodeName")] -= 1
            load[p["spec"].get("nodeName")] -= 1
            mine.remove((k, p))
            t.event(rs, "SuccessfulDelete", f"Deleted pod: {k[2]}", "replicaset-controller")
    ready = sum(1 for _, p in mine if is_ready(p))
    status = {
        "replicas": len(mine),
        "fullyLabeledReplicas": len(mine),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": rs["metadata"].get("generation", 1),
    }
    if not ready:
        del status["readyReplicas"], status["availableReplicas"]
    current = t.view.get(key, rs)
    if current.get("status") != status:
        t.put({**current, "status": status})


def _new_pod(t: Txn, rs: dict, node: str) -> dict:
    tmpl = rs["spec"]["template"]
    ns = rs["metadata"]["namespace"]
    while True:
        name = f"{rs['metadata']['name']}-{suffix(t.rng)}"
        if ("Pod", ns, name) not in t.view:
            break
    pod: dict = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": f"{rs['metadata']['name']}-",
            "namespace": ns,
            "uid": uid(t.rng),
            "creationTimestamp": t.now,
            "labels": dict((tmpl.get("metadata") or {}).get("labels") or {}),
            **(
                {"annotations": tmpl["metadata"]["annotations"]}
                if (tmpl.get("metadata") or {}).get("annotations")
                else {}
            ),
            "ownerReferences": [_owner_ref(rs)],
        },
        "spec": {**tmpl["spec"], "nodeName": node},
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    }
    defaults.pod_admission(pod["spec"])
    defaults.token_volume(pod["spec"], defaults.TOKEN_VOLUME_PREFIX + suffix(t.rng))
    t.put(pod)
    return pod


# -- scheduler and deployment status ----------------------------------------------------------
def schedule(t: Txn, topo: Topology) -> None:
    load = Counter(
        b["spec"].get("nodeName")
        for _, b in t.of_kind("Pod")
        if not b["metadata"].get("deletionTimestamp")
    )
    for _key, pod in t.of_kind("Pod"):
        if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
            continue
        node = min(topo.nodes, key=lambda n: (load[n.name], n.index)).name
        pod = {**pod, "spec": {**pod["spec"], "nodeName": node}}
        t.put(pod)
        load[node] += 1
        t.event(
            pod,
            "Scheduled",
            f"Successfully assigned {pod['metadata']['namespace']}/"
            f"{pod['metadata']['name']} to {node}",
            "default-scheduler",
        )


def deployment_status(t: Txn) -> None:
    pods = _pods_by_owner(t)
    for key, dep in t.of_kind("Deployment"):
        try:
            t.put(_with_status(t, key, dep, pods))
        except Exception as e:
            t.problems.append(f"deployment {key[1]}/{key[2]} status: {type(e).__name__}: {e}")


def _with_status(t: Txn, key: Key, dep: dict, pods: dict) -> dict:
    h = template_hash(dep["spec"]["template"])
    owned = [
        rs
        for _, rs in t.of_kind("ReplicaSet")
        if rs["metadata"]["namespace"] == key[1]
        and (controller_of(rs) or {}).get("uid") == dep["metadata"]["uid"]
    ]
    all_pods = [p for rs in owned for _, p in pods.get(rs["metadata"]["uid"], [])]
    new = next((rs for rs in owned if rs["metadata"]["name"] == f"{key[2]}-{h}"), None)
    new_pods = pods.get(new["metadata"]["uid"], []) if new else []
    ready = sum(1 for p in all_pods if is_ready(p))
    replicas = dep["spec"].get("replicas", 1)
    old = dep.get("status") or {}
    conditions = {c["type"]: c for c in old.get("conditions") or []}

    def cond(kind: str, ok: bool, reason: str, message: str) -> None:
        prev = conditions.get(kind) or {}
        status = "True" if ok else "False"
        changed = not prev or prev["status"] != status
        conditions[kind] = {
            "type": kind,
            "status": status,
            "lastUpdateTime": t.now
            if changed or prev.get("reason") != reason
            else prev["lastUpdateTime"],
            "lastTransitionTime": t.now if changed else prev["lastTransitionTime"],
            "reason": reason,
            "message": message,
        }

    ru = (dep["spec"].get("strategy") or {}).get("rollingUpdate") or {}
    max_unavailable = _resolve(ru.get("maxUnavailable", "25%"), replicas, False)
    cond(
        "Available",
        ready >= replicas - max_unavailable,
        "MinimumReplicasAvailable"
        if ready >= replicas - max_unavailable
        else "MinimumReplicasUnavailable",
        "Deployment has minimum availability."
        if ready >= replicas - max_unavailable
        else "Deployment does not have minimum availability.",
    )
    new_name = new["metadata"]["name"] if new else f"{key[2]}-{h}"
    done = (
        len(new_pods) == replicas
        and len(all_pods) == replicas
        and sum(1 for _, p in new_pods if is_ready(p)) == replicas
    )
    cond(
        "Progressing",
        True,
        "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
        f'ReplicaSet "{new_name}" has successfully progressed.'
        if done
        else f'ReplicaSet "{new_name}" is progressing.',
    )
    failing = [p for p in all_pods if (p.get("status") or {}).get("reason")]
    if failing:
        msg = failing[0]["status"].get("message", "")
        cond("ReplicaFailure", True, failing[0]["status"]["reason"], msg)
    else:
        conditions.pop("ReplicaFailure", None)
    status = {
        "observedGeneration": dep["metadata"].get("generation", 1),
        "replicas": len(all_pods),
        "updatedReplicas": len(new_pods),
        "readyReplicas": ready,
        "availableReplicas": ready,
        # the sets' wanted replicas (surge included) less the available ones, as the
        # deployment controller counts them
        "unavailableReplicas": max(sum(rs["spec"].get("replicas", 1) for rs in owned) - ready, 0),
        "conditions": [
            conditions[k] for k in ("Available", "Progressing", "ReplicaFailure") if k in conditions
        ],
    }
    for k in ("readyReplicas", "availableReplicas", "unavailableReplicas"):
        if not status[k]:
            del status[k]
    current = t.view.get(key, dep)
    # the Deployment carries its newest ReplicaSet's revision, as the controller writes it
    revision = ((new or {}).get("metadata", {}).get("annotations") or {}).get(REVISION)
    annotations = current["metadata"].get("annotations") or {}
    if revision and annotations.get(REVISION) != revision:
        current = _with_meta(current, annotations={**annotations, REVISION: revision})
    if current.get("status") == status:
        return current
    return {**current, "status": status}
