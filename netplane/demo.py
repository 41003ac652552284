"""`netplane demo`: a Service load-balanced by netplane's proxy, in throw-away namespaces.

Builds a node namespace with a pod bridge, three pods answering HTTP with their name and a
client pod; loads a Service + EndpointSlice manifest, runs the real proxy sync into the
node's iptables, curls the ClusterIP from the client and shows how the answers split.
Everything is torn down at the end, also on Ctrl-C or errors. Nothing outside the
namespaces it creates is touched.
"""

from __future__ import annotations

import collections
import shutil
import sys
import time

import click

MANIFEST = """\
apiVersion: v1
kind: Service
metadata: {{name: hello, namespace: demo}}
spec:
  clusterIP: {cluster_ip}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hello-abc12
  namespace: demo
  labels: {{kubernetes.io/service-name: hello}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}
"""
CLUSTER_IP = "10.96.0.10"
PODS = ("hello-1", "hello-2", "hello-3")


@click.command()
@click.option("--requests", "count", default=30, show_default=True, type=click.IntRange(1, 300))
@click.option("--backend", type=click.Choice(["iptables", "nftables"]), default="iptables",
              show_default=True)  # fmt: skip
@click.option("--iptables-variant", type=click.Choice(["auto", "legacy", "nft"]), default="auto",
              show_default=True)  # fmt: skip
def demo(count: int, backend: str, iptables_variant: str) -> None:
    """Load-balance a ClusterIP Service over 3 pods in temporary network namespaces (< 30 s)."""
    from netplane.model import parse_manifests
    from netplane.netns import NetnsError, entered, run
    from netplane.proxy.daemon import make_backend
    from netplane.proxy.render import ProxyConfig
    from netplane.state import ClusterState
    from netplane.testing.lab import Lab

    if shutil.which("curl") is None:
        raise click.ClickException("curl is not installed (bash bootstrap.sh install)")
    started = time.monotonic()
    try:
        with Lab(prefix="npdemo") as lab:
            click.echo(f"node namespace {lab.node}: bridge npbr0 {lab.gateway}/24")
            pods = [lab.add_pod(name, 10 + i, serve_port=8080) for i, name in enumerate(PODS)]
            client = lab.add_pod("client", 5)
            for p in (*pods, client):
                click.echo(f"  pod {p.name:8} {p.ip:12} namespace {p.ns}")
            endpoints = "\n".join(
                f"- {{addresses: [{p.ip}], conditions: {{ready: true}}, nodeName: demo-node}}"
                for p in pods
            )
            text = MANIFEST.format(cluster_ip=CLUSTER_IP, endpoints=endpoints)
            loaded = parse_manifests(text, "<demo>")
            if loaded.errors:
                raise click.ClickException("; ".join(map(str, loaded.errors)))
            state = ClusterState()
            state.apply(loaded.objects)
            config = ProxyConfig("demo-node", cluster_cidr=lab.pod_cidr)
            with entered(lab.node):  # the proxy as on that node: this thread, its children
                kernel, detail = make_backend(backend, config, iptables_variant)
                result = kernel.sync(state.snapshot())
            click.echo(
                f"proxy sync ({backend}, {detail}): {result.chains_written} chains, "
                f"{sum(result.rules.values())} rules in {result.total_seconds * 1000:.0f} ms"
            )
            click.echo(f"client -> http://{CLUSTER_IP}/ x {count}")
            answers: collections.Counter[str] = collections.Counter()
            for _ in range(count):
                out = run(client.ns, ["curl", "-s", "--max-time", "2", f"http://{CLUSTER_IP}/"],
                          check=False)  # fmt: skip
                answers[out.split()[0] if out.strip() else "(no answer)"] += 1
            width = max(len(k) for k in answers)
            for name in sorted(answers):
                n = answers[name]
                click.echo(f"  {name:{width}} {n:3d} {n * 100 / count:5.1f}%  {'#' * n}")
    except KeyboardInterrupt:
        click.echo("interrupted: namespaces removed", err=True)
        sys.exit(130)
    except NetnsError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"done in {time.monotonic() - started:.1f} s; namespaces removed")
