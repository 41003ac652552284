"""The API server's defaulting (pure): fields nobody wrote that `-o yaml` and `describe` show.

The API server fills these on every create and update (its scheme's defaulting functions
plus the ServiceAccount, Priority and DefaultTolerationSeconds admission plugins); the
emulated cluster fills the same ones so objects read back as they do from kube-apiserver,
the ServiceAccount token volume included (in the spec only: no file is written, as pods
here share the host's filesystem).
"""

from __future__ import annotations

_NOT_READY_TOLERATIONS = [
    {"effect": "NoExecute", "key": f"node.kubernetes.io/{k}", "operator": "Exists",
     "tolerationSeconds": 300}
    for k in ("not-ready", "unreachable")
]  # fmt: skip


def _container(c: dict) -> None:
    if not isinstance(c, dict):
        return
    image = str(c.get("image") or "")
    tag = image.rsplit("/", 1)[-1].partition(":")[2] if "@" not in image else "digest"
    c.setdefault("imagePullPolicy", "Always" if tag in ("", "latest") else "IfNotPresent")
    c.setdefault("resources", {})
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    for p in c.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")


def pod_spec(spec: object) -> None:
    """SetDefaults_PodSpec and SetDefaults_Container (pods and pod templates alike)."""
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    for c in spec.get("containers") or []:
        _container(c)


def pod_admission(spec: dict) -> None:
    """What admission adds to a Pod (not to templates): its ServiceAccount, priority and
    the tolerations of not-ready and unreachable nodes (300 s)."""
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    tolerations = list(spec.get("tolerations") or [])  # a template's list stays as it is
    keys = {t.get("key") for t in tolerations if isinstance(t, dict)}
    spec["tolerations"] = tolerations + [
        dict(t) for t in _NOT_READY_TOLERATIONS if t["key"] not in keys
    ]


TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_VOLUME_PREFIX = "kube-api-access-"


def token_volume(spec: dict, name: str) -> None:
    """The ServiceAccount admission plugin's projected volume NAME (token, the cluster's CA,
    the namespace), mounted read-only at TOKEN_MOUNT in each container, unless the pod
    turns automounting off or mounts something there itself."""
    if spec.get("automountServiceAccountToken") is False:
        return
    containers = [
        c
        for field in ("initContainers", "containers")
        for c in spec.get(field) or []
        if isinstance(c, dict)
    ]
    mounts = [m for c in containers for m in c.get("volumeMounts") or [] if isinstance(m, dict)]
    if any(m.get("mountPath") == TOKEN_MOUNT for m in mounts):
        return
    field_ref = {"apiVersion": "v1", "fieldPath": "metadata.namespace"}
    spec["volumes"] = [
        *(spec.get("volumes") or []),
        {
            "name": name,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt",
                                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": field_ref}]}},
                ],
            },
        },
    ]  # fmt: skip
    mount = {"name": name, "readOnly": True, "mountPath": TOKEN_MOUNT}
    for field in ("initContainers", "containers"):  # new dicts: a template may share these
        if spec.get(field):
            spec[field] = [
                {**c, "volumeMounts": [*(c.get("volumeMounts") or []), dict(mount)]}
                if isinstance(c, dict)
                else c
                for c in spec[field]
            ]


def token_volume_name(pod: dict | None) -> str | None:
    """The token volume POD has (an update keeps its name), if any."""
    for v in ((pod or {}).get("spec") or {}).get("volumes") or []:
        if str(v.get("name", "")).startswith(TOKEN_VOLUME_PREFIX) and "projected" in v:
            return str(v["name"])
    return None


def _service(spec: dict) -> None:
    svc_type = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if svc_type == "ExternalName":
        return
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if svc_type in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if svc_type == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)


def apply(body: dict) -> None:
    """Fill BODY's defaults in place (BODY is valid: admission checked it first)."""
    kind, spec = body.get("kind"), body.get("spec")
    if not isinstance(spec, dict):
        return
    if kind == "Pod":
        pod_spec(spec)
        pod_admission(spec)
    elif kind == "Service":
        _service(spec)
    elif kind in ("Deployment", "ReplicaSet"):
        spec.setdefault("replicas", 1)
        if kind == "Deployment":
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
            if strategy.setdefault("type", "RollingUpdate") == "RollingUpdate":
                ru = strategy.setdefault("rollingUpdate", {})
                ru.setdefault("maxSurge", "25%")
                ru.setdefault("maxUnavailable", "25%")
        template = spec.get("template")
        if isinstance(template, dict):
            # a Go zero time that the API writes out as null in every stored template
            meta = template.setdefault("metadata", {})
            if isinstance(meta, dict):
                meta.setdefault("creationTimestamp", None)
            pod_spec(template.get("spec"))
