"""The `netplane` command.

Components register their sub-commands here by dotted path and are imported only when
invoked, so `netplane proxy render` never pays for importing the DNS server or pyroute2.
"""

from __future__ import annotations

import importlib
import logging

import click

# name -> "module:attribute" of a click command or group.
_COMMANDS = {
    "proxy": "netplane.proxy.cli:proxy",
    "dns": "netplane.dns.cli:dns",
    "cni": "netplane.cni.cli:cni",
    "bench": "netplane.bench.cli:bench",
    "anchors": "netplane.testing.cli:anchors_group",
    "demo": "netplane.demo:demo",
    "up": "netplane.cluster.cli:up",
    "down": "netplane.cluster.cli:down",
    "apply": "netplane.cluster.cli:apply",
    "delete": "netplane.cluster.cli:delete",
    "get": "netplane.cluster.cli:get",
    "describe": "netplane.cluster.cli:describe",
    "create": "netplane.cluster.cli:create",
    "expose": "netplane.cluster.cli:expose",
    "scale": "netplane.cluster.cli:scale",
    "run": "netplane.cluster.cli:run",
    "exec": "netplane.cluster.cli:exec_",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _COMMANDS:
            module, attr = _COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="netplane")
def cli(verbose: int) -> None:
    """netplane: Kubernetes Service data plane (kube-proxy, cluster DNS, bridge CNI)."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    cli(prog_name="netplane")
