"""`netplane describe`: kubectl's describers (pure: objects in, text out).

Each describer writes what kubectl's does, line for line, with cells separated by tabs
through Go's tabwriter (minwidth 0, padding 2), so the columns line up where kubectl's do.
Fields kubectl reads from objects the emulated cluster does not have (volumes, resource
requests, leases) are shown as a cluster without them shows them.
"""

from __future__ import annotations

import datetime

from netplane.cluster.client.tables import age, event_order
from netplane.cluster.client.tabwriter import tabwrite
from netplane.cluster.control.naming import template_hash

_SKIPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
_MAX_ANNOTATION = 140


def rfc1123z(stamp: str | None) -> str:
    """Go's time.RFC1123Z, as describe prints timestamps."""
    if not stamp:
        return "Mon, 01 Jan 0001 00:00:00 +0000"  # Go's zero time
    t = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    return t.strftime("%a, %d %b %Y %H:%M:%S +0000")


class _Writer:
    """kubectl's PrefixWriter: lines at an indent level (two spaces each)."""

    def __init__(self) -> None:
        self.text: list[str] = []

    def write(self, level: int, text: str) -> None:
        self.text.append("  " * level + text)

    def labels(self, title: str, labels: dict | None, indent: str = "") -> None:
        self.text.append(f"{indent}{title}:\t")
        labels = labels or {}
        if not labels:
            self.text.append("<none>\n")
        for i, key in enumerate(sorted(labels)):
            self.text.append(("" if i == 0 else "\t") + f"{key}={labels[key]}\n")

    def annotations(self, title: str, annotations: dict | None, indent: str = "") -> None:
        shown = {k: v for k, v in (annotations or {}).items() if k not in _SKIPPED_ANNOTATIONS}
        self.text.append(f"{indent}{title}:\t")
        if not shown:
            self.text.append("<none>\n")
        for i, key in enumerate(sorted(shown)):
            line = f"{key}: {shown[key]}"
            if len(line) > _MAX_ANNOTATION:
                line = line[:_MAX_ANNOTATION] + "..."
            self.text.append(("" if i == 0 else "\t") + line + "\n")

    def tolerations(self, title: str, tolerations: list | None, indent: str = "") -> None:
        self.text.append(f"{indent}{title}:\t")
        if not tolerations:
            self.text.append("<none>\n")
        for i, t in enumerate(tolerations or []):
            line = t.get("key", "")
            if t.get("value"):
                line += f"={t['value']}"
            if t.get("effect"):
                line += f":{t['effect']}"
            if t.get("operator") == "Exists":
                line += " op=Exists"
            if t.get("tolerationSeconds") is not None:
                line += f" for {t['tolerationSeconds']}s"
            self.text.append(("" if i == 0 else "\t") + line + "\n")

    def events(self, obj: dict, events: list[dict]) -> None:
        uid = obj["metadata"].get("uid")
        mine = [e for e in events if (e.get("involvedObject") or {}).get("uid") == uid]
        if not mine:
            self.write(0, "Events:\t<none>\n")
            return
        self.write(0, "Events:\n  Type\tReason\tAge\tFrom\tMessage\n")
        self.write(1, "----\t------\t----\t----\t-------\n")
        for e in sorted(mine, key=event_order):
            first = age(e.get("firstTimestamp") or e.get("lastTimestamp") or "")
            count = e.get("count") or 1
            interval = (
                f"{age(e.get('lastTimestamp') or '')} (x{count} over {first})"
                if count > 1
                else first
            )
            source = (e.get("source") or {}).get("component") or e.get("reportingComponent", "")
            self.write(
                1,
                f"{e.get('type', '')}\t{e.get('reason', '')}\t{interval}\t{source}\t"
                f"{(e.get('message') or '').strip()}\n",
            )

    def render(self) -> str:
        return tabwrite("".join(self.text).rstrip("\n"), 0, 2)


def _selector(selector: dict | None) -> str:
    """metav1.FormatLabelSelector for matchLabels (and labels.FormatLabels for a map)."""
    labels = (selector or {}).get("matchLabels", selector) if selector else {}
    parts = [f"{k}={v}" for k, v in sorted((labels or {}).items())]
    for e in (selector or {}).get("matchExpressions") or []:
        parts.append(f"{e['key']} {e['operator'].lower()} ({','.join(e.get('values') or [])})")
    return ",".join(parts) or "<none>"


def _controller(obj: dict) -> str:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return f"{ref['kind']}/{ref['name']}"
    return ""


def _header(w: _Writer, meta: dict, namespaced: bool = True) -> None:
    w.write(0, f"Name:\t{meta['name']}\n")
    if namespaced:
        w.write(0, f"Namespace:\t{meta.get('namespace', '')}\n")


# -- containers --------------------------------------------------------------------------------
def _ports(ports: list[dict], host: bool) -> str:
    field = "hostPort" if host else "containerPort"
    return ", ".join(f"{p.get(field, 0)}/{p.get('protocol', 'TCP')}" for p in ports)


def _containers(
    w: _Writer, label: str, containers: list[dict], statuses: list[dict] | None, space: str = ""
) -> None:
    w.write(0, f"{space}{label}:\n")
    indent = " " if space else ""
    for c in containers:
        status = next((s for s in statuses or [] if s.get("name") == c["name"]), None)
        w.write(1, f"{indent}{c['name']}:\n")
        if status is not None:
            w.write(2, f"Container ID:\t{status.get('containerID', '')}\n")
        w.write(2, f"Image:\t{c.get('image', '')}\n")
        if status is not None:
            w.write(2, f"Image ID:\t{status.get('imageID', '')}\n")
        ports, host = _ports(c.get("ports") or [], False), _ports(c.get("ports") or [], True)
        if "," in ports:
            w.write(2, f"Ports:\t{ports}\n")
        else:
            w.write(2, f"Port:\t{ports or '<none>'}\n")
        if "," in host:
            w.write(2, f"Host Ports:\t{host}\n")
        else:
            w.write(2, f"Host Port:\t{host or '<none>'}\n")
        for field, title in (("command", "Command"), ("args", "Args")):
            if c.get(field):
                w.write(2, f"{title}:\n")
                for arg in c[field]:
                    for line in str(arg).split("\n"):
                        w.write(3, f"{line}\n")
        if status is not None:
            _state(w, "State", status.get("state") or {})
            if (status.get("lastState") or {}).get("terminated"):
                _state(w, "Last State", status["lastState"])
            w.write(2, f"Ready:\t{'True' if status.get('ready') else 'False'}\n")
            w.write(2, f"Restart Count:\t{status.get('restartCount', 0)}\n")
        if not c.get("env"):
            w.write(2, "Environment:\t<none>\n")
        else:
            w.write(2, "Environment:\n")
            for e in c["env"]:
                w.write(3, f"{e['name']}:\t{e.get('value', '')}\n")
        w.write(2, "Mounts:\t<none>\n" if not c.get("volumeMounts") else "Mounts:\n")
        for m in c.get("volumeMounts") or []:
            ro = "ro" if m.get("readOnly") else "rw"
            w.write(3, f"{m['mountPath']} from {m['name']} ({ro})\n")


def _state(w: _Writer, name: str, state: dict) -> None:
    if "running" in state:
        w.write(2, f"{name}:\tRunning\n")
        w.write(3, f"Started:\t{rfc1123z(state['running'].get('startedAt'))}\n")
    elif "terminated" in state:
        t = state["terminated"]
        w.write(2, f"{name}:\tTerminated\n")
        if t.get("reason"):
            w.write(3, f"Reason:\t{t['reason']}\n")
        if t.get("message"):
            w.write(3, f"Message:\t{t['message']}\n")
        w.write(3, f"Exit Code:\t{t.get('exitCode', 0)}\n")
        if t.get("signal"):
            w.write(3, f"Signal:\t{t['signal']}\n")
        w.write(3, f"Started:\t{rfc1123z(t.get('startedAt'))}\n")
        w.write(3, f"Finished:\t{rfc1123z(t.get('finishedAt'))}\n")
    else:
        w.write(2, f"{name}:\tWaiting\n")
        reason = (state.get("waiting") or {}).get("reason")
        if reason:
            w.write(3, f"Reason:\t{reason}\n")


def _volumes(w: _Writer, volumes: list[dict], space: str = "") -> None:
    """kubectl's describeVolumes for the kinds a lab pod has (others: their type only)."""
    if not volumes:
        w.write(0, f"{space}Volumes:\t<none>\n")
        return
    w.write(0, f"{space}Volumes:\n")
    for v in volumes:
        w.write(1, f"{' ' if space else ''}{v['name']}:\n")
        if "projected" in v:
            w.write(2, "Type:\tProjected (a volume that contains injected data from multiple "
                       "sources)\n")  # fmt: skip
            for source in v["projected"].get("sources") or []:
                if "secret" in source:
                    w.write(2, f"SecretName:\t{source['secret'].get('name', '')}\n")
                    w.write(2, f"Optional:\t{_bool(source['secret'].get('optional'))}\n")
                elif "downwardAPI" in source:
                    w.write(2, "DownwardAPI:\ttrue\n")
                elif "configMap" in source:
                    w.write(2, f"ConfigMapName:\t{source['configMap'].get('name', '')}\n")
                    w.write(2, f"Optional:\t{_bool(source['configMap'].get('optional'))}\n")
                elif "serviceAccountToken" in source:
                    seconds = source["serviceAccountToken"].get("expirationSeconds", 3600)
                    w.write(2, f"TokenExpirationSeconds:\t{seconds}\n")
        elif "emptyDir" in v:
            d = v["emptyDir"] or {}
            w.write(2, "Type:\tEmptyDir (a temporary directory that shares a pod's lifetime)\n")
            w.write(2, f"Medium:\t{d.get('medium', '')}\n")
            w.write(2, f"SizeLimit:\t{d.get('sizeLimit') or '<unset>'}\n")
        elif "configMap" in v:
            w.write(2, "Type:\tConfigMap (a volume populated by a ConfigMap)\n")
            w.write(2, f"Name:\t{v['configMap'].get('name', '')}\n")
            w.write(2, f"Optional:\t{_bool(v['configMap'].get('optional'))}\n")
        elif "secret" in v:
            w.write(2, "Type:\tSecret (a volume populated by a Secret)\n")
            w.write(2, f"SecretName:\t{v['secret'].get('secretName', '')}\n")
            w.write(2, f"Optional:\t{_bool(v['secret'].get('optional'))}\n")
        elif "hostPath" in v:
            w.write(2, "Type:\tHostPath (bare host directory volume)\n")
            w.write(2, f"Path:\t{v['hostPath'].get('path', '')}\n")
            w.write(2, f"HostPathType:\t{v['hostPath'].get('type', '<none>')}\n")
        else:
            kind = next((k for k in v if k != "name"), "unknown")
            w.write(2, f"Type:\t{kind[0].upper()}{kind[1:]}\n")


def _bool(value: object) -> str:
    return "true" if value is True else "false"


def _pod_template(w: _Writer, template: dict) -> None:
    w.write(0, "Pod Template:\n")
    meta, spec = template.get("metadata") or {}, template.get("spec") or {}
    w.labels("Labels", meta.get("labels"), "  ")
    if meta.get("annotations"):
        w.annotations("Annotations", meta["annotations"], "  ")
    if spec.get("serviceAccountName"):
        w.write(1, f"Service Account:\t{spec['serviceAccountName']}\n")
    _containers(w, "Containers", spec.get("containers") or [], None, "  ")
    _volumes(w, spec.get("volumes") or [], "  ")
    w.labels("Node-Selectors", spec.get("nodeSelector"), "  ")
    w.tolerations("Tolerations", spec.get("tolerations"), "  ")


def pod_template_text(template: dict) -> str:
    """`rollout history --revision=N`: the template as describe writes it, tabs left as they
    are (kubectl prints this one without its tabwriter)."""
    w = _Writer()
    _pod_template(w, template)
    return "".join(w.text)


def _conditions(w: _Writer, conditions: list[dict]) -> None:
    if conditions:
        w.write(0, "Conditions:\n  Type\tStatus\tReason\n")
        w.write(1, "----\t------\t------\n")
        for c in conditions:
            w.write(1, f"{c['type']} \t{c['status']}\t{c.get('reason', '')}\n")


# -- kinds -------------------------------------------------------------------------------------
def _pod(w: _Writer, pod: dict, ctx: dict) -> None:
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    _header(w, meta)
    w.write(0, f"Priority:\t{spec.get('priority', 0)}\n")
    w.write(0, f"Service Account:\t{spec.get('serviceAccountName', 'default')}\n")
    node = f"{spec['nodeName']}/{status.get('hostIP', '')}" if spec.get("nodeName") else "<none>"
    w.write(0, f"Node:\t{node}\n")
    if status.get("startTime"):
        w.write(0, f"Start Time:\t{rfc1123z(status['startTime'])}\n")
    w.labels("Labels", meta.get("labels"))
    w.annotations("Annotations", meta.get("annotations"))
    if meta.get("deletionTimestamp"):
        w.write(0, f"Status:\tTerminating (lasts {age(meta['deletionTimestamp'])})\n")
        grace = meta.get("deletionGracePeriodSeconds")
        grace = spec.get("terminationGracePeriodSeconds", 30) if grace is None else grace
        w.write(0, f"Termination Grace Period:\t{grace}s\n")
    else:
        w.write(0, f"Status:\t{status.get('phase', 'Pending')}\n")
    if status.get("reason"):
        w.write(0, f"Reason:\t{status['reason']}\n")
    if status.get("message"):
        w.write(0, f"Message:\t{status['message']}\n")
    w.write(0, f"IP:\t{status.get('podIP', '')}\n")
    ips = status.get("podIPs") or []
    if not ips:
        w.write(0, "IPs:\t<none>\n")
    else:
        w.write(0, "IPs:\n")
        for ip in ips:
            w.write(1, f"IP:\t{ip['ip']}\n")
    if _controller(pod):
        w.write(0, f"Controlled By:\t{_controller(pod)}\n")
    _containers(w, "Containers", spec.get("containers") or [], status.get("containerStatuses"))
    if status.get("conditions"):
        w.write(0, "Conditions:\n  Type\tStatus\n")
        for c in status["conditions"]:
            w.write(1, f"{c['type']} \t{c['status']} \n")
    _volumes(w, spec.get("volumes") or [])
    w.write(0, f"QoS Class:\t{status.get('qosClass', 'BestEffort')}\n")
    w.labels("Node-Selectors", spec.get("nodeSelector"))
    w.tolerations("Tolerations", spec.get("tolerations"))


def _slice_endpoints(slices: list[dict], port_name: str) -> str:
    """kubectl's formatEndpointSlices: ready addresses of the port, at most three shown."""
    shown: list[str] = []
    count = 0
    for s in slices:
        ports = s.get("ports") or []
        pairs = (
            [(e, None) for e in s.get("endpoints") or []]
            if not ports
            else [
                (e, p["port"])
                for p in ports
                if (p.get("name") or "") == port_name
                for e in s.get("endpoints") or []
            ]
        )
        for e, port in pairs:
            if (e.get("conditions") or {}).get("ready", True) is False:
                continue
            if len(shown) < 3:
                shown.append(e["addresses"][0] + (f":{port}" if port is not None else ""))
            count += 1
    if not slices:
        return "<none>"
    text = ",".join(shown)
    return f"{text} + {count - 3} more..." if count > 3 else text


def _service(w: _Writer, svc: dict, ctx: dict) -> None:
    meta, spec, status = svc["metadata"], svc.get("spec") or {}, svc.get("status") or {}
    _header(w, meta)
    w.labels("Labels", meta.get("labels"))
    w.annotations("Annotations", meta.get("annotations"))
    w.write(0, f"Selector:\t{_selector(spec.get('selector'))}\n")
    w.write(0, f"Type:\t{spec.get('type', 'ClusterIP')}\n")
    if spec.get("ipFamilyPolicy"):
        w.write(0, f"IP Family Policy:\t{spec['ipFamilyPolicy']}\n")
    w.write(0, f"IP Families:\t{','.join(spec.get('ipFamilies') or []) or '<none>'}\n")
    w.write(0, f"IP:\t{spec.get('clusterIP', '')}\n")
    if spec.get("clusterIPs"):
        w.write(0, f"IPs:\t{','.join(spec['clusterIPs'])}\n")
    if spec.get("externalIPs"):
        w.write(0, f"External IPs:\t{','.join(spec['externalIPs'])}\n")
    if spec.get("loadBalancerIP"):
        w.write(0, f"Desired LoadBalancer IP:\t{spec['loadBalancerIP']}\n")
    if spec.get("externalName"):
        w.write(0, f"External Name:\t{spec['externalName']}\n")
    ingress = (status.get("loadBalancer") or {}).get("ingress") or []
    if ingress:
        text = ", ".join(
            (i.get("ip") or i.get("hostname", ""))
            + (f" ({i['ipMode']})" if i.get("ipMode") else "")
            for i in ingress
        )
        w.write(0, f"LoadBalancer Ingress:\t{text}\n")
    slices = [
        s
        for s in ctx.get("slices", [])
        if (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == meta["name"]
    ]
    for p in spec.get("ports") or []:
        name, proto = p.get("name") or "<unset>", p.get("protocol", "TCP")
        w.write(0, f"Port:\t{name}\t{p['port']}/{proto}\n")
        w.write(0, f"TargetPort:\t{p.get('targetPort', p['port'])}/{proto}\n")
        if p.get("nodePort"):
            w.write(0, f"NodePort:\t{name}\t{p['nodePort']}/{proto}\n")
        w.write(0, f"Endpoints:\t{_slice_endpoints(slices, p.get('name') or '')}\n")
    w.write(0, f"Session Affinity:\t{spec.get('sessionAffinity', 'None')}\n")
    if spec.get("externalTrafficPolicy"):
        w.write(0, f"External Traffic Policy:\t{spec['externalTrafficPolicy']}\n")
    if spec.get("internalTrafficPolicy"):
        w.write(0, f"Internal Traffic Policy:\t{spec['internalTrafficPolicy']}\n")
    if spec.get("healthCheckNodePort"):
        w.write(0, f"HealthCheck NodePort:\t{spec['healthCheckNodePort']}\n")


def _owned_by(sets: list[dict], owner: dict) -> list[dict]:
    uid = owner["metadata"].get("uid")
    return [
        rs
        for rs in sets
        if any(r.get("uid") == uid for r in rs["metadata"].get("ownerReferences") or [])
    ]


def _deployment(w: _Writer, dep: dict, ctx: dict) -> None:
    meta, spec, st = dep["metadata"], dep.get("spec") or {}, dep.get("status") or {}
    _header(w, meta)
    w.write(0, f"CreationTimestamp:\t{rfc1123z(meta.get('creationTimestamp'))}\n")
    w.labels("Labels", meta.get("labels"))
    w.annotations("Annotations", meta.get("annotations"))
    w.write(0, f"Selector:\t{_selector(spec.get('selector'))}\n")
    w.write(
        0,
        f"Replicas:\t{spec.get('replicas', 1)} desired | {st.get('updatedReplicas', 0)} "
        f"updated | {st.get('replicas', 0)} total | {st.get('availableReplicas', 0)} "
        f"available | {st.get('unavailableReplicas', 0)} unavailable\n",
    )
    strategy = spec.get("strategy") or {}
    w.write(0, f"StrategyType:\t{strategy.get('type', 'RollingUpdate')}\n")
    w.write(0, f"MinReadySeconds:\t{spec.get('minReadySeconds', 0)}\n")
    if strategy.get("type", "RollingUpdate") == "RollingUpdate":
        ru = strategy.get("rollingUpdate") or {}
        w.write(
            0,
            f"RollingUpdateStrategy:\t{ru.get('maxUnavailable', '25%')} max unavailable, "
            f"{ru.get('maxSurge', '25%')} max surge\n",
        )
    _pod_template(w, spec.get("template") or {})
    _conditions(w, st.get("conditions") or [])
    mine = sorted(_owned_by(ctx.get("sets", []), dep), key=lambda rs: rs["metadata"]["name"])
    if mine:  # the new set carries the template's hash; every other one is old, even at 0
        new_name = f"{meta['name']}-{template_hash(spec.get('template') or {})}"
        new = [rs for rs in mine if rs["metadata"]["name"] == new_name]
        old = [rs for rs in mine if rs["metadata"]["name"] != new_name]
        w.write(0, f"OldReplicaSets:\t{_replica_sets(old)}\n")
        w.write(0, f"NewReplicaSet:\t{_replica_sets(new)}\n")


def _replica_sets(sets: list[dict]) -> str:
    return (
        ", ".join(
            f"{rs['metadata']['name']} ({(rs.get('status') or {}).get('replicas', 0)}/"
            f"{rs['spec'].get('replicas', 1)} replicas created)"
            for rs in sets
        )
        or "<none>"
    )


def _replica_set(w: _Writer, rs: dict, ctx: dict) -> None:
    meta, spec, st = rs["metadata"], rs.get("spec") or {}, rs.get("status") or {}
    _header(w, meta)
    w.write(0, f"Selector:\t{_selector(spec.get('selector'))}\n")
    w.labels("Labels", meta.get("labels"))
    w.annotations("Annotations", meta.get("annotations"))
    if _controller(rs):
        w.write(0, f"Controlled By:\t{_controller(rs)}\n")
    w.write(0, f"Replicas:\t{st.get('replicas', 0)} current / {spec.get('replicas', 1)} desired\n")
    phases = [(p.get("status") or {}).get("phase") for p in _owned_by(ctx.get("pods", []), rs)]
    w.write(
        0,
        f"Pods Status:\t{phases.count('Running')} Running / {phases.count('Pending')} "
        f"Waiting / {phases.count('Succeeded')} Succeeded / {phases.count('Failed')} "
        "Failed\n",
    )
    _pod_template(w, spec.get("template") or {})
    _conditions(w, st.get("conditions") or [])


def _node(w: _Writer, node: dict, ctx: dict) -> None:
    meta, spec, status = node["metadata"], node.get("spec") or {}, node.get("status") or {}
    _header(w, meta, namespaced=False)
    roles = sorted(
        k.split("/", 1)[1]
        for k in meta.get("labels") or {}
        if k.startswith("node-role.kubernetes.io/")
    )
    w.write(0, f"Roles:\t{','.join(roles) or '<none>'}\n")
    w.labels("Labels", meta.get("labels"))
    w.annotations("Annotations", meta.get("annotations"))
    w.write(0, f"CreationTimestamp:\t{rfc1123z(meta.get('creationTimestamp'))}\n")
    taints = [
        f"{t['key']}{'=' + t['value'] if t.get('value') else ''}:{t['effect']}"
        for t in spec.get("taints") or []
    ]
    w.write(0, "Taints:\t" + ("\n\t".join(taints) or "<none>") + "\n")
    w.write(0, f"Unschedulable:\t{'true' if spec.get('unschedulable') else 'false'}\n")
    w.write(0, "Lease:\n")  # kubelet renews its lease every 10 s; the emulated one always
    w.write(1, f"HolderIdentity:\t{meta['name']}\n")
    w.write(1, "AcquireTime:\t<unset>\n")
    w.write(1, f"RenewTime:\t{rfc1123z(ctx.get('now'))}\n")
    if status.get("conditions"):
        w.write(
            0,
            "Conditions:\n  Type\tStatus\tLastHeartbeatTime\tLastTransitionTime\tReason\tMessage\n",
        )
        w.write(1, "----\t------\t-----------------\t------------------\t------\t-------\n")
        for c in status["conditions"]:
            w.write(
                1,
                f"{c['type']} \t{c['status']} \t{rfc1123z(c.get('lastHeartbeatTime'))} \t"
                f"{rfc1123z(c.get('lastTransitionTime'))} \t{c.get('reason', '')} \t"
                f"{c.get('message', '')}\n",
            )
    w.write(0, "Addresses:\n")
    for a in status.get("addresses") or []:
        w.write(1, f"{a['type']}:\t{a['address']}\n")
    for title, field in (("Capacity", "capacity"), ("Allocatable", "allocatable")):
        if status.get(field):
            w.write(0, f"{title}:\n")
            for k in sorted(status[field]):
                w.write(1, f"{k}:\t{status[field][k]}\n")
    info = status.get("nodeInfo") or {}
    w.write(0, "System Info:\n")
    for title, field in (
        ("Machine ID", "machineID"),
        ("System UUID", "systemUUID"),
        ("Boot ID", "bootID"),
        ("Kernel Version", "kernelVersion"),
        ("OS Image", "osImage"),
        ("Operating System", "operatingSystem"),
        ("Architecture", "architecture"),
        ("Container Runtime Version", "containerRuntimeVersion"),
        ("Kubelet Version", "kubeletVersion"),
        ("Kube-Proxy Version", "kubeProxyVersion"),
    ):
        w.write(1, f"{title}:\t{info.get(field, '')}\n")
    if spec.get("podCIDR"):
        w.write(0, f"PodCIDR:\t{spec['podCIDR']}\n")
    if spec.get("podCIDRs"):
        w.write(0, f"PodCIDRs:\t{','.join(spec['podCIDRs'])}\n")
    pods = [
        p
        for p in ctx.get("pods", [])
        if (p.get("spec") or {}).get("nodeName") == meta["name"]
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]
    w.write(0, f"Non-terminated Pods:\t({len(pods)} in total)\n")
    w.write(1, "Namespace\tName\t\tCPU Requests\tCPU Limits\tMemory Requests\tMemory Limits\tAge\n")
    w.write(1, "---------\t----\t\t------------\t----------\t---------------\t-------------\t---\n")
    for p in sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"])):
        pm = p["metadata"]
        none = "\t".join(["0 (0%)"] * 4)
        w.write(
            1,
            f"{pm['namespace']}\t{pm['name']}\t\t{none}\t{age(pm.get('creationTimestamp', ''))}\n",
        )
    w.write(
        0, "Allocated resources:\n  (Total limits may be over 100 percent, i.e., overcommitted.)\n"
    )
    w.write(1, "Resource\tRequests\tLimits\n")
    w.write(1, "--------\t--------\t------\n")
    extra = sorted(k for k in status.get("allocatable") or {} if k.startswith("hugepages-"))
    for resource in ("cpu", "memory", "ephemeral-storage", *extra):
        w.write(1, f"{resource}\t0 (0%)\t0 (0%)\n")


def _namespace(w: _Writer, ns: dict, ctx: dict) -> None:
    meta = ns["metadata"]
    _header(w, meta, namespaced=False)
    w.labels("Labels", meta.get("labels"))
    w.annotations("Annotations", meta.get("annotations"))
    phase = "Terminating" if meta.get("deletionTimestamp") else "Active"
    w.write(0, f"Status:\t{(ns.get('status') or {}).get('phase', phase)}\n")
    w.write(0, "\nNo resource quota.\n\nNo LimitRange resource.\n")


def _endpoint_slice(w: _Writer, s: dict, ctx: dict) -> None:
    meta = s["metadata"]
    _header(w, meta)
    w.labels("Labels", meta.get("labels"))
    w.annotations("Annotations", meta.get("annotations"))
    w.write(0, f"AddressType:\t{s.get('addressType', '')}\n")
    if not s.get("ports"):
        w.write(0, "Ports:\t<unset>\n")
    else:
        w.write(0, "Ports:\n")
        w.write(1, "Name\tPort\tProtocol\n")
        w.write(1, "----\t----\t--------\n")
        for p in s["ports"]:
            w.write(
                1,
                f"{p.get('name') or '<unset>'}\t{p.get('port', '<unset>')}\t"
                f"{p.get('protocol', 'TCP')}\n",
            )
    if not s.get("endpoints"):
        w.write(0, "Endpoints:\t<none>\n")
    else:
        w.write(0, "Endpoints:\n")
        for e in s["endpoints"]:
            w.write(1, f"- Addresses:\t{','.join(e.get('addresses') or [])}\n")
            w.write(2, "Conditions:\n")
            for cond in ("ready", "serving", "terminating"):
                value = (e.get("conditions") or {}).get(cond)
                if value is not None or cond == "ready":
                    shown = "<unset>" if value is None else str(value).lower()
                    w.write(3, f"{cond.capitalize()}:\t{shown}\n")
            w.write(2, f"Hostname:\t{e.get('hostname', '<unset>')}\n")
            ref = e.get("targetRef")
            if ref:
                w.write(2, f"TargetRef:\t{ref.get('kind')}/{ref.get('name')}\n")
            w.write(2, f"NodeName:\t{e.get('nodeName', '<unset>')}\n")
            w.write(2, f"Zone:\t{e.get('zone', '<unset>')}\n")


def _endpoints(w: _Writer, ep: dict, ctx: dict) -> None:
    meta = ep["metadata"]
    _header(w, meta)
    w.labels("Labels", meta.get("labels"))
    w.annotations("Annotations", meta.get("annotations"))
    w.write(0, "Subsets:\n")
    for sub in ep.get("subsets") or []:
        ready = ",".join(a["ip"] for a in sub.get("addresses") or []) or "<none>"
        unready = ",".join(a["ip"] for a in sub.get("notReadyAddresses") or []) or "<none>"
        w.write(1, f"Addresses:\t{ready}\n")
        w.write(1, f"NotReadyAddresses:\t{unready}\n")
        if sub.get("ports"):
            w.write(1, "Ports:\n")
            w.write(2, "Name\tPort\tProtocol\n")
            w.write(2, "----\t----\t--------\n")
            for p in sub["ports"]:
                w.write(
                    2, f"{p.get('name') or '<unset>'}\t{p['port']}\t{p.get('protocol', 'TCP')}\n"
                )
        w.write(0, "\n")


DESCRIBERS = {
    "Pod": _pod,
    "Service": _service,
    "Deployment": _deployment,
    "ReplicaSet": _replica_set,
    "Node": _node,
    "Namespace": _namespace,
    "EndpointSlice": _endpoint_slice,
    "Endpoints": _endpoints,
}
_NO_EVENTS = ("Namespace",)  # kubectl's namespace describer has no Events section


def describe(kind: str, obj: dict, ctx: dict) -> str:
    """OBJ as `kubectl describe` prints it. CTX holds what the describer looks up besides
    the object: `events`, `slices` (services), `sets` (deployments), `pods`, `now`."""
    w = _Writer()
    DESCRIBERS[kind](w, obj, ctx)
    if kind not in _NO_EVENTS:
        w.events(obj, ctx.get("events", []))
    return w.render()
