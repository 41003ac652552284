"""`netplane dns ...`: serve the cluster zone, write a pod's resolv.conf, trace a lookup."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from netplane.dns.records import ZoneConfig
from netplane.kube.options import source_options
from netplane.resolvconf import POLICIES, ResolvConf, parse_resolv_conf, pod_resolv_conf

HostPort = tuple[str, int]
ClickCallback = Callable[[click.Context, click.Parameter, Any], Any]


def parse_hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    """ADDR[:PORT] with [v6]:PORT; raises ValueError naming the bad part."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or str(default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return host, int(port)


def _addr(default_port: int | None = None, allow_off: bool = False) -> ClickCallback:
    def convert(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, tuple):
            return tuple(convert(ctx, param, v) for v in value)
        if allow_off and value == "off":
            return None
        try:
            host, port = parse_hostport(value, default_port or 53)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
        if default_port is None and not re.search(r"(^[^:]+|\]):\d+$", value):
            raise click.BadParameter(f"{value!r}: expected ADDR:PORT")
        return host, port

    return convert


def _cidrs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as e:
            raise click.BadParameter(f"{value!r}: {e}") from None
    return tuple(values)


@click.group()
def dns() -> None:
    """Cluster DNS: the Kubernetes DNS specification served from the cluster's objects."""


@dns.command()
@click.option("--manifests", type=click.Path(), help="Manifest file or directory.")
@source_options
@click.option("--listen", required=True, callback=_addr(), help="ADDR:PORT for UDP and TCP.")
@click.option("--zone", default="cluster.local", show_default=True)
@click.option("--ttl", default=5, type=click.IntRange(0, 3600), show_default=True)
@click.option("--pods", type=click.Choice(["disabled", "insecure", "verified"]), default="disabled")
@click.option("--upstream", multiple=True, callback=_addr(53), help="Forward other names here.")
@click.option("--autopath", is_flag=True, help="Server-side search (needs --pods verified).")
@click.option("--metrics-addr", default="0.0.0.0:9153", callback=_addr(9153, True))
@click.option("--health-addr", default="0.0.0.0:8080", callback=_addr(8080, True))
@click.option("--ready-addr", default="0.0.0.0:8181", callback=_addr(8181, True))
@click.option(
    "--workers", default=os.cpu_count() or 1, type=click.IntRange(1, 64), show_default=True
)
@click.option("--host-resolv", default="/etc/resolv.conf", help="Search domains for --autopath.")
@click.option(
    "--cache-size", default=16, type=click.IntRange(0, 65536), show_default=True,
    help="Answer cache per worker, in MiB.",
)  # fmt: skip
@click.option(
    "--service-cidr", multiple=True, default=("10.96.0.0/12",), callback=_cidrs,
    show_default=True, help="Reverse zone answered authoritatively (repeat for dual stack).",
)  # fmt: skip
@click.option(
    "--pod-cidr", multiple=True, callback=_cidrs,
    help="Pod network, also answered authoritatively in reverse when --pods is on.",
)  # fmt: skip
def serve(
    manifests: str | None,
    kubeconfig: str | None,
    in_cluster: bool,
    listen: HostPort,
    zone: str,
    ttl: int,
    pods: str,
    upstream: tuple[HostPort, ...],
    autopath: bool,
    metrics_addr: HostPort | None,
    health_addr: HostPort | None,
    ready_addr: HostPort | None,
    workers: int,
    host_resolv: str,
    cache_size: int,
    service_cidr: tuple[str, ...],
    pod_cidr: tuple[str, ...],
) -> None:
    """Answer for the cluster zone over UDP and TCP, following the objects' changes."""
    from netplane.dns import load
    from netplane.dns.options import ServeOptions

    if autopath and pods != "verified":
        raise click.UsageError("--autopath finds the client's pod by its IP: needs --pods verified")
    host_search = _host(host_resolv).searches if autopath else ()
    dns_ips = (listen[0],) if listen[0] not in ("0.0.0.0", "::") else ()
    reverse = service_cidr + (pod_cidr if pods != "disabled" else ())
    opts = ServeOptions(
        manifests=manifests,
        kubeconfig=kubeconfig,
        in_cluster=in_cluster,
        listen=listen,
        zone=ZoneConfig(zone.rstrip(".").lower(), ttl, pods, dns_ips, reverse),
        upstreams=tuple(upstream),
        autopath=autopath,
        host_search=host_search,
        metrics=metrics_addr,
        health=health_addr,
        ready=ready_addr,
        workers=workers,
        cache_bytes=cache_size << 20,
        log_level=logging.getLogger().getEffectiveLevel(),
    )

    loading = load.start(opts)  # a wrong source choice fails here, before serving
    from netplane.dns.supervisor import serve as run  # imported while the API server answers

    sys.exit(run(opts, loading))


def _host(path: str) -> ResolvConf:
    try:
        return parse_resolv_conf(Path(path).read_text())
    except OSError as e:
        raise click.BadParameter(f"{path}: {e.strerror}", param_hint="--host-resolv") from None


@dns.command("resolv-conf")
@click.option("--namespace", required=True)
@click.option("--policy", type=click.Choice(POLICIES), default="ClusterFirst", show_default=True)
@click.option("--cluster-dns", multiple=True, default=("10.96.0.10",), show_default=True)
@click.option("--host-resolv", default="/etc/resolv.conf", show_default=True)
@click.option("--zone", default="cluster.local", show_default=True)
@click.option("--host-network", is_flag=True)
def resolv_conf(
    namespace: str,
    policy: str,
    cluster_dns: tuple[str, ...],
    host_resolv: str,
    zone: str,
    host_network: bool,
) -> None:
    """Print the resolv.conf kubelet would write for a pod in NAMESPACE."""
    conf = pod_resolv_conf(
        namespace, _host(host_resolv), tuple(cluster_dns), policy, None, host_network, zone
    )
    click.echo(conf.render(), nl=False)


@dns.command()
@click.argument("name")
@click.option("--namespace", default="default", show_default=True)
@click.option("--server", default="127.0.0.1:53", callback=_addr(53), show_default=True)
@click.option("--type", "qtype", default="A", show_default=True)
@click.option("--zone", default="cluster.local", show_default=True)
@click.option("--timeout", default=2.0, show_default=True)
def lookup(
    name: str, namespace: str, server: HostPort, qtype: str, zone: str, timeout: float
) -> None:
    """Resolve NAME the way a pod's glibc would, showing every query tried."""
    from netplane.dns.lookup import walk

    conf = pod_resolv_conf(namespace, ResolvConf(), ("0.0.0.0",), zone=zone)
    found = False
    for step in walk(name, conf.searches, conf.ndots, server, qtype, timeout):
        click.echo(step.describe())
        found = found or step.found
    sys.exit(0 if found else 1)
