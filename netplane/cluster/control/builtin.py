"""The objects every cluster starts with (pure): Nodes, `default/kubernetes`, cluster DNS."""

from __future__ import annotations

import platform

from netplane.cluster.control.topology import API_PORT, DNS_IP, KUBERNETES_IP, Topology
from netplane.cluster.control.workloads_controller import BUILTIN_NAMESPACES

DNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.12.0"
KUBELET_VERSION = "v1.33.2"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
ARCH = _ARCH.get(platform.machine(), platform.machine())
# the lab's Raspberry Pi 4: 4 CPUs, ~3.7 GiB, 110 pods
CAPACITY = {"cpu": "4", "ephemeral-storage": "30358348Ki", "hugepages-1Gi": "0",
            "hugepages-2Mi": "0", "memory": "3885396Ki", "pods": "110"}  # fmt: skip
ALLOCATABLE = {**CAPACITY, "ephemeral-storage": "27978427649", "memory": "3782996Ki"}


_CONDITIONS = (  # what kubelet reports for a healthy node
    ("MemoryPressure", "False", "KubeletHasSufficientMemory",
     "kubelet has sufficient memory available"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
)  # fmt: skip


def node_manifest(topo: Topology, index: int, now: str) -> dict:
    node = topo.nodes[index]
    labels = {
        "beta.kubernetes.io/arch": ARCH,
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": ARCH,
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
    }
    if node.control_plane:
        labels["node-role.kubernetes.io/control-plane"] = ""
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels, "creationTimestamp": now},
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ip},
                {"type": "Hostname", "address": node.name},
            ],
            "capacity": dict(CAPACITY),
            "allocatable": dict(ALLOCATABLE),
            "conditions": [
                {"type": kind, "status": status, "reason": reason, "message": message,
                 "lastHeartbeatTime": now, "lastTransitionTime": now}
                for kind, status, reason, message in _CONDITIONS
            ],
            "nodeInfo": {
                "architecture": ARCH,
                "containerRuntimeVersion": "containerd://1.7.27",
                "kernelVersion": platform.release(),
                "kubeProxyVersion": "",
                "kubeletVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
            },
        },
    }  # fmt: skip


def namespace_objects() -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        for name in BUILTIN_NAMESPACES
    ]


def builtin_objects(topo: Topology) -> list[dict]:
    """`default/kubernetes` (10.96.0.1:443 -> the control-plane node's :6443) and the
    `kube-system/kube-dns` Service with its two-replica `coredns` Deployment."""
    api = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "clusterIP": KUBERNETES_IP,
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": API_PORT}],
        },
    }
    api_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [topo.control_plane.ip], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": API_PORT, "protocol": "TCP"}],
    }
    dns_ports = [
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
        {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
    ]
    dns_svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
        },
        "spec": {"clusterIP": DNS_IP, "selector": {"k8s-app": "kube-dns"}, "ports": dns_ports},
    }
    coredns = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "coredns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns"},
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
            "template": {
                "metadata": {"labels": {"k8s-app": "kube-dns"}},
                "spec": {
                    "dnsPolicy": "Default",
                    "containers": [
                        {
                            "name": "coredns",
                            "image": DNS_IMAGE,
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
                            ],
                        }
                    ],
                },
            },
        },
    }
    return [*namespace_objects(), api, api_slice, dns_svc, coredns]
