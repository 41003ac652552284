"""kubectl's table output for `netplane get` (pure: objects in, text out)."""

from __future__ import annotations

import datetime

from netplane.cluster.controller import OWNER


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
    """Columns padded like kubectl's tabwriter (3 spaces between columns)."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _ready(pod: dict) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def pod_status(pod: dict) -> str:
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status", {})
    if status.get("reason"):
        return "ContainerCreating"
    if status.get("phase") == "Pending" and pod["spec"].get("nodeName"):
        return "ContainerCreating"
    return status.get("phase", "Pending")


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
            f"{n if _ready(p) else 0}/{n}",
            pod_status(p),
            "0",
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


def deployments_table(
    deps: list[dict], pods: list[dict], wide: bool, all_ns: bool
) -> list[list[str]]:
    head = ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    if wide:
        head += ["CONTAINERS", "IMAGES", "SELECTOR"]
    rows = [(["NAMESPACE"] if all_ns else []) + head]
    for d in deps:
        meta = d["metadata"]
        mine = [
            p
            for p in pods
            if p["metadata"]["namespace"] == meta["namespace"]
            and p["metadata"].get("annotations", {}).get(OWNER) == f"Deployment/{meta['name']}"
            and not p["metadata"].get("deletionTimestamp")
        ]
        ready = sum(1 for p in mine if _ready(p))
        want = d["spec"].get("replicas", 1)
        row = [
            meta["name"],
            f"{ready}/{want}",
            str(len(mine)),
            str(ready),
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


def nodes_table(nodes: list[dict], wide: bool, kernel: str) -> list[list[str]]:
    head = ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    if wide:
        head += ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    rows = [head]
    for n in nodes:
        labels = n["metadata"].get("labels", {})
        roles = "control-plane" if "node-role.kubernetes.io/control-plane" in labels else "<none>"
        row = [
            n["metadata"]["name"],
            "Ready",
            roles,
            age(n["metadata"].get("creationTimestamp", "")),
            "v1.33.2",
        ]
        if wide:
            ip = next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP")
            row += [ip, "<none>", "netplane emulated node", kernel, "netplane-runtime"]
        rows.append(row)
    return rows


def endpoints_table(slices: list[dict], all_ns: bool) -> list[list[str]]:
    """`get endpoints`: the ready addresses of each service, from its slices."""
    by_svc: dict[tuple[str, str], list[str]] = {}
    for s in slices:
        meta = s["metadata"]
        svc = meta.get("labels", {}).get("kubernetes.io/service-name", "")
        if not svc:
            continue
        ports = [p.get("port") for p in s.get("ports") or []]
        eps = by_svc.setdefault((meta["namespace"], svc), [])
        for e in s.get("endpoints") or []:
            if e.get("conditions", {}).get("ready", True):
                eps.extend(f"{a}:{p}" for a in e["addresses"] for p in ports)
    rows = [(["NAMESPACE"] if all_ns else []) + ["NAME", "ENDPOINTS", "AGE"]]
    for (ns, svc), eps in sorted(by_svc.items()):
        shown = ",".join(eps[:3]) + (f" + {len(eps) - 3} more..." if len(eps) > 3 else "")
        rows.append(([ns] if all_ns else []) + [svc, shown or "<none>", ""])
    return rows
