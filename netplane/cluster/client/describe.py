"""`netplane describe`: kubectl-like summaries of one object (pure)."""

from __future__ import annotations

from collections.abc import Iterable

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


def events_section(obj: dict, events: list[dict]) -> str:
    """describe's trailing `Events:` table for OBJ."""
    from netplane.cluster.client.tables import age, render

    uid = obj["metadata"].get("uid")
    mine = [e for e in events if (e.get("involvedObject") or {}).get("uid") == uid]
    if not mine:
        return "Events:            <none>"
    rows = [["Type", "Reason", "Age", "From", "Message"], ["----", "------", "----", "----",
                                                            "-------"]]  # fmt: skip
    for e in sorted(mine, key=lambda e: e.get("lastTimestamp") or ""):
        rows.append(
            [
                e.get("type", ""),
                e.get("reason", ""),
                age(e.get("lastTimestamp") or ""),
                (e.get("source") or {}).get("component", ""),
                e.get("message", ""),
            ]
        )
    return "Events:\n" + "\n".join("  " + line for line in render(rows).splitlines())


def describe(
    kind: str,
    obj: dict,
    slices: list[dict],
    events: list[dict],
    pods: Iterable[dict] = (),
    sets: Iterable[dict] = (),
) -> str:
    return _describe(kind, obj, slices, list(pods), list(sets)) + "\n" + events_section(obj, events)


def _describe(kind: str, obj: dict, slices: list[dict], pods: list, sets: list) -> str:
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
    if kind == "Deployment":
        st = status
        ru = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        pairs += [
            ("Annotations", _labels(meta.get("annotations"))),
            (
                "Selector",
                _labels((spec.get("selector") or {}).get("matchLabels")).replace("\n", ","),
            ),
            (
                "Replicas",
                f"{spec.get('replicas', 1)} desired | {st.get('updatedReplicas', 0)} "
                f"updated | {st.get('replicas', 0)} total | {st.get('availableReplicas', 0)} "
                f"available | {st.get('unavailableReplicas', 0)} unavailable",
            ),
            ("StrategyType", (spec.get("strategy") or {}).get("type", "RollingUpdate")),
            (
                "RollingUpdateStrategy",
                f"{ru.get('maxUnavailable', '25%')} max unavailable, "
                f"{ru.get('maxSurge', '25%')} max surge",
            ),
        ]
        for c in spec["template"]["spec"].get("containers", []):
            pairs += [("Container", c["name"]), ("  Image", c["image"])]
        for c in st.get("conditions") or []:
            pairs.append((f"Condition {c['type']}", f"{c['status']} ({c.get('reason', '')})"))
        mine = [
            rs
            for rs in sets
            if any(
                r.get("uid") == meta.get("uid") for r in rs["metadata"].get("ownerReferences") or []
            )
        ]
        active = [
            f"{rs['metadata']['name']} ({rs['spec'].get('replicas', 1)}/"
            f"{(rs.get('status') or {}).get('replicas', 0)} replicas created)"
            for rs in mine
            if rs["spec"].get("replicas")
        ]
        pairs.append(("ReplicaSets", ", ".join(active) or "<none>"))
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
            cs: dict = next(
                (x for x in status.get("containerStatuses") or [] if x["name"] == c["name"]), {}
            )
            state = next(iter(cs.get("state") or {"waiting": {}}))
            pairs += [
                ("  State", state.capitalize()),
                ("  Ready", str(cs.get("ready", False)).capitalize() if cs else "False"),
                ("  Restart Count", str(cs.get("restartCount", 0))),
            ]
            if c.get("command") or c.get("args"):
                pairs.append(
                    (
                        "  Command",
                        " ".join(map(str, (c.get("command") or []) + (c.get("args") or []))),
                    )
                )
        if status.get("message"):
            pairs.append(("Message", status["message"]))
        return _block(pairs)
    return (
        _block(pairs)
        + "\n"
        + yaml.safe_dump({k: v for k, v in obj.items() if k != "metadata"}, sort_keys=True).rstrip()
    )
