"""`netplane describe`: kubectl-like summaries of one object (pure)."""

from __future__ import annotations

import yaml


def _labels(d: dict | None) -> str:
    return "\n".join(f"{k}={v}" for k, v in sorted((d or {}).items())) or "<none>"


def _block(pairs: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs) + 2
    out = []
    for k, v in pairs:
        lines = str(v).split("\n")
        out.append(f"{k + ':':<{width}}{lines[0]}")
        out.extend(" " * width + line for line in lines[1:])
    return "\n".join(out)


def describe(kind: str, obj: dict, slices: list[dict]) -> str:
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status", {})
    pairs = [("Name", meta["name"])]
    if meta.get("namespace"):
        pairs.append(("Namespace", meta["namespace"]))
    pairs.append(("Labels", _labels(meta.get("labels"))))
    if kind == "Service":
        mine = [
            s
            for s in slices
            if s["metadata"].get("labels", {}).get("kubernetes.io/service-name") == meta["name"]
        ]
        eps = [
            f"{a}:{p['port']}"
            for s in mine
            for e in s.get("endpoints") or []
            if e.get("conditions", {}).get("ready", True)
            for a in e["addresses"]
            for p in (s.get("ports") or [])[:1]
        ]
        pairs += [
            (
                "Selector",
                ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items()) or "<none>",
            ),
            ("Type", spec.get("type", "ClusterIP")),
            ("IP", spec.get("clusterIP") or "<none>"),
        ]
        if spec.get("externalName"):
            pairs.append(("External Name", spec["externalName"]))
        for ing in status.get("loadBalancer", {}).get("ingress", []):
            pairs.append(("LoadBalancer Ingress", ing["ip"]))
        for p in spec.get("ports") or []:
            label = p.get("name") or "<unset>"
            pairs.append(("Port", f"{label}  {p['port']}/{p.get('protocol', 'TCP')}"))
            pairs.append(
                ("TargetPort", f"{p.get('targetPort', p['port'])}/{p.get('protocol', 'TCP')}")
            )
            if p.get("nodePort"):
                pairs.append(("NodePort", f"{label}  {p['nodePort']}/{p.get('protocol', 'TCP')}"))
            pairs.append(("Endpoints", ",".join(eps) or "<none>"))
        pairs.append(("Session Affinity", spec.get("sessionAffinity", "None")))
        return _block(pairs)
    if kind == "Pod":
        pairs += [
            ("Node", f"{spec.get('nodeName', '<none>')}/{status.get('hostIP', '')}"),
            ("Start Time", status.get("startTime", "<none>")),
            ("Status", "Terminating" if meta.get("deletionTimestamp") else status.get("phase")),
            ("IP", status.get("podIP", "<none>")),
        ]
        for c in spec.get("containers", []):
            ports = (
                ",".join(
                    f"{p['containerPort']}/{p.get('protocol', 'TCP')}" for p in c.get("ports", [])
                )
                or "<none>"
            )
            pairs += [("Container", c["name"]), ("  Image", c["image"]), ("  Port", ports)]
        if status.get("message"):
            pairs.append(("Message", status["message"]))
        return _block(pairs)
    return (
        _block(pairs)
        + "\n"
        + yaml.safe_dump({k: v for k, v in obj.items() if k != "metadata"}, sort_keys=True).rstrip()
    )
