"""The objects every cluster starts with (pure): Nodes, `default/kubernetes`, cluster DNS."""

from __future__ import annotations

from netplane.cluster.topology import API_PORT, DNS_IP, KUBERNETES_IP, Topology

DNS_IMAGE = "registry.k8s.io/coredns/coredns:v1.12.0"


def node_manifest(topo: Topology, index: int) -> dict:
    node = topo.nodes[index]
    labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux"}
    if node.control_plane:
        labels["node-role.kubernetes.io/control-plane"] = ""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels},
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ip},
                {"type": "Hostname", "address": node.name},
            ]
        },
    }


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
    return [api, api_slice, dns_svc, coredns]
