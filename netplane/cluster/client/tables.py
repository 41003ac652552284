"""kubectl's table output for `netplane get` (pure: objects in, text out)."""

from __future__ import annotations

import datetime

from netplane.cluster.client.tabwriter import tabwrite


def age(timestamp: str, now: datetime.datetime | None = None) -> str:
    """kubectl's HumanDuration."""
    if not timestamp:
        return "<unknown>"
    now = now or datetime.datetime.now(datetime.UTC)
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    s = max(int((now - then).total_seconds()), 0)
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    return f"{d}d"


def render(rows: list[list[str]]) -> str:
    """Columns aligned by kubectl's tabwriter (minwidth 6, padding 3)."""
    return tabwrite("\n".join("\t".join(r) for r in rows), 6, 3) if rows else ""


def _ready(pod: dict) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def pod_status(pod: dict) -> str:
    """kubectl's STATUS column (printPod): the phase, overridden by what containers say."""
    status = pod.get("status", {})
    reason = status.get("phase", "Pending")
    if status.get("reason") == "FailedCreatePodSandBox" or (
        reason == "Pending" and pod["spec"].get("nodeName") and not status.get("containerStatuses")
    ):
        reason = "ContainerCreating"
    running = False
    for cs in reversed(status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            t = state["terminated"]
            reason = t.get("reason") or (
                f"Signal:{t['signal']}" if t.get("signal") else f"ExitCode:{t.get('exitCode', 0)}"
            )
        elif "running" in state and cs.get("ready"):
            running = True
    if running and reason == "Completed":
        reason = "Running"
    if pod["metadata"].get("deletionTimestamp") and status.get("phase") not in (
        "Succeeded",
        "Failed",
    ):
        reason = "Terminating"
    return reason


def restarts(pod: dict) -> str:
    """kubectl's RESTARTS: the count, and how long ago the last restarted container ended."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    count = sum(cs.get("restartCount", 0) for cs in statuses)
    ended = [
        cs["lastState"]["terminated"]["finishedAt"]
        for cs in statuses
        if ((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt")
    ]
    return f"{count} ({age(max(ended))} ago)" if count and ended else str(count)


def _ready_containers(pod: dict) -> int:
    statuses = pod.get("status", {}).get("containerStatuses")
    if statuses is None:
        return len(pod["spec"].get("containers", [])) if _ready(pod) else 0
    return sum(1 for cs in statuses if cs.get("ready"))


def _selector(d: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((d or {}).items())) or "<none>"


def pods_table(pods: list[dict], wide: bool, all_ns: bool) -> list[list[str]]:
    head = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    if wide:
        head += ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    rows = [(["NAMESPACE"] if all_ns else []) + head]
    for p in pods:
        n = len(p["spec"].get("containers", []))
        row = [
            p["metadata"]["name"],
            f"{_ready_containers(p)}/{n}",
            pod_status(p),
            restarts(p),
            age(p["metadata"].get("creationTimestamp", "")),
        ]
        if wide:
            row += [
                p.get("status", {}).get("podIP", "<none>"),
                p["spec"].get("nodeName", "<none>"),
                "<none>",
                "<none>",
            ]
        rows.append(([p["metadata"]["namespace"]] if all_ns else []) + row)
    return rows


def _ports(spec: dict) -> str:
    out = []
    for p in spec.get("ports") or []:
        node = f":{p['nodePort']}" if p.get("nodePort") else ""
        out.append(f"{p['port']}{node}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def services_table(services: list[dict], wide: bool, all_ns: bool) -> list[list[str]]:
    head = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    rows = [(["NAMESPACE"] if all_ns else []) + head + (["SELECTOR"] if wide else [])]
    for s in services:
        spec = s.get("spec", {})
        kind = spec.get("type", "ClusterIP")
        ingress = s.get("status", {}).get("loadBalancer", {}).get("ingress", [])
        if kind == "ExternalName":
            external = spec.get("externalName", "")
        elif kind == "LoadBalancer":
            external = ",".join(i["ip"] for i in ingress) or "<pending>"
        else:
            external = ",".join(spec.get("externalIPs", [])) or "<none>"
        row = [
            s["metadata"]["name"],
            kind,
            spec.get("clusterIP") or "<none>",
            external,
            _ports(spec),
            age(s["metadata"].get("creationTimestamp", "")),
        ]
        if wide:
            row.append(_selector(spec.get("selector")))
        rows.append(([s["metadata"]["namespace"]] if all_ns else []) + row)
    return rows


def slices_table(slices: list[dict], wide: bool, all_ns: bool) -> list[list[str]]:
    rows = [
        (["NAMESPACE"] if all_ns else []) + ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    ]
    for s in slices:
        ports = ",".join(str(p.get("port", "")) for p in s.get("ports") or []) or "<unset>"
        addrs = [a for e in s.get("endpoints") or [] for a in e.get("addresses", [])]
        shown = ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")
        row = [
            s["metadata"]["name"],
            s.get("addressType", ""),
            ports,
            shown or "<unset>",
            age(s["metadata"].get("creationTimestamp", "")),
        ]
        rows.append(([s["metadata"]["namespace"]] if all_ns else []) + row)
    return rows


def deployments_table(deps: list[dict], wide: bool, all_ns: bool) -> list[list[str]]:
    head = ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    if wide:
        head += ["CONTAINERS", "IMAGES", "SELECTOR"]
    rows = [(["NAMESPACE"] if all_ns else []) + head]
    for d in deps:
        meta, status = d["metadata"], d.get("status") or {}
        want = d["spec"].get("replicas", 1)
        row = [
            meta["name"],
            f"{status.get('readyReplicas', 0)}/{want}",
            str(status.get("updatedReplicas", 0)),
            str(status.get("availableReplicas", 0)),
            age(meta.get("creationTimestamp", "")),
        ]
        if wide:
            cs = d["spec"]["template"]["spec"]["containers"]
            row += [
                ",".join(c["name"] for c in cs),
                ",".join(c["image"] for c in cs),
                _selector(d["spec"]["selector"].get("matchLabels")),
            ]
        rows.append(([meta["namespace"]] if all_ns else []) + row)
    return rows


def replicasets_table(sets: list[dict], wide: bool, all_ns: bool) -> list[list[str]]:
    head = ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    if wide:
        head += ["CONTAINERS", "IMAGES", "SELECTOR"]
    rows = [(["NAMESPACE"] if all_ns else []) + head]
    for rs in sets:
        meta, status = rs["metadata"], rs.get("status") or {}
        row = [
            meta["name"],
            str(rs["spec"].get("replicas", 1)),
            str(status.get("replicas", 0)),
            str(status.get("readyReplicas", 0)),
            age(meta.get("creationTimestamp", "")),
        ]
        if wide:
            cs = rs["spec"]["template"]["spec"]["containers"]
            row += [
                ",".join(c["name"] for c in cs),
                ",".join(c["image"] for c in cs),
                _selector(rs["spec"]["selector"].get("matchLabels")),
            ]
        rows.append(([meta["namespace"]] if all_ns else []) + row)
    return rows


def namespaces_table(spaces: list[dict], wide: bool, all_ns: bool) -> list[list[str]]:
    rows = [["NAME", "STATUS", "AGE"]]
    for ns in spaces:
        phase = (ns.get("status") or {}).get("phase", "Active")
        rows.append(
            [ns["metadata"]["name"], phase, age(ns["metadata"].get("creationTimestamp", ""))]
        )
    return rows


def event_order(e: dict) -> tuple:
    """By last time seen, then in the order they were recorded (times are in seconds)."""
    return (e.get("lastTimestamp") or "", int(e["metadata"].get("resourceVersion") or 0))


def events_table(events: list[dict], wide: bool, all_ns: bool) -> list[list[str]]:
    rows = [
        (["NAMESPACE"] if all_ns else []) + ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    ]
    for e in sorted(events, key=event_order):
        obj = e.get("involvedObject") or {}
        row = [
            age(e.get("lastTimestamp") or ""),
            e.get("type", ""),
            e.get("reason", ""),
            f"{obj.get('kind', '').lower()}/{obj.get('name', '')}",
            e.get("message", ""),
        ]
        rows.append(([e["metadata"]["namespace"]] if all_ns else []) + row)
    return rows


def nodes_table(nodes: list[dict], wide: bool, all_ns: bool = False) -> list[list[str]]:
    head = ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    if wide:
        head += ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    rows = [head]
    for n in nodes:
        labels = n["metadata"].get("labels", {})
        info = n.get("status", {}).get("nodeInfo", {})
        roles = "control-plane" if "node-role.kubernetes.io/control-plane" in labels else "<none>"
        row = [
            n["metadata"]["name"],
            "Ready",
            roles,
            age(n["metadata"].get("creationTimestamp", "")),
            info.get("kubeletVersion", "v1.33.2"),
        ]
        if wide:
            ip = next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP")
            row += [
                ip,
                "<none>",
                info.get("osImage", ""),
                info.get("kernelVersion", ""),
                info.get("containerRuntimeVersion", ""),
            ]
        rows.append(row)
    return rows


def endpoints_table(endpoints: list[dict], wide: bool, all_ns: bool) -> list[list[str]]:
    """`get endpoints`: the ready addresses of each service."""
    rows = [(["NAMESPACE"] if all_ns else []) + ["NAME", "ENDPOINTS", "AGE"]]
    for ep in endpoints:
        eps = [  # kubectl's formatEndpoints: port by port, then address by address
            f"{a['ip']}:{p['port']}" if p else a["ip"]
            for sub in ep.get("subsets") or []
            for p in sub.get("ports") or [None]
            for a in sub.get("addresses") or []
        ]
        shown = ",".join(eps[:3]) + (f" + {len(eps) - 3} more..." if len(eps) > 3 else "")
        meta = ep["metadata"]
        row = [meta["name"], shown or "<none>", age(meta.get("creationTimestamp", ""))]
        rows.append(([meta["namespace"]] if all_ns else []) + row)
    return rows


TABLES = {
    "Pod": pods_table,
    "Service": services_table,
    "EndpointSlice": slices_table,
    "Endpoints": endpoints_table,
    "Deployment": deployments_table,
    "ReplicaSet": replicasets_table,
    "Node": nodes_table,
    "Namespace": namespaces_table,
    "Event": events_table,
}


def with_label_columns(
    rows: list[list[str]], items: list[dict], show_labels: bool, columns: list[str]
) -> list[list[str]]:
    """`-L key` adds a column per key (upper-cased last path part), `--show-labels` a LABELS
    column, as kubectl's printers do."""
    out = [list(r) for r in rows]
    for key in columns:
        out[0].append(key.rsplit("/", 1)[-1].upper())
        for row, item in zip(out[1:], items, strict=False):
            row.append((item["metadata"].get("labels") or {}).get(key, ""))
    if show_labels:
        out[0].append("LABELS")
        for row, item in zip(out[1:], items, strict=False):
            labels = item["metadata"].get("labels") or {}
            row.append(",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>")
    return out
