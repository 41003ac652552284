"""The `netplane` command.

Components register their sub-commands here by dotted path and are imported only when
invoked, so `netplane proxy render` never pays for importing the DNS server or the CNI plugin.
"""

from __future__ import annotations

import importlib
import logging

import click

# name -> "module:attribute" of a click command or group, in `--help`'s sections.
_LAB = "netplane.cluster.client"
_SECTIONS = {
    "The emulated cluster (kubectl's commands, for the course's lab)": {
        "up": f"{_LAB}.cli:up",
        "down": f"{_LAB}.cli:down",
        "get": f"{_LAB}.get:get",
        "describe": f"{_LAB}.get:describe",
        "apply": f"{_LAB}.cli:apply",
        "delete": f"{_LAB}.cli:delete",
        "create": f"{_LAB}.imperative:create",
        "run": f"{_LAB}.imperative:run",
        "expose": f"{_LAB}.imperative:expose",
        "scale": f"{_LAB}.imperative:scale",
        "label": f"{_LAB}.imperative:label",
        "annotate": f"{_LAB}.imperative:annotate",
        "set": f"{_LAB}.imperative:set_",
        "patch": f"{_LAB}.imperative:patch",
        "edit": f"{_LAB}.imperative:edit",
        "rollout": f"{_LAB}.imperative:rollout",
        "exec": f"{_LAB}.pods:exec_",
        "logs": f"{_LAB}.pods:logs",
        "port-forward": f"{_LAB}.pods:port_forward",
        "wait": f"{_LAB}.info:wait",
        "version": f"{_LAB}.info:version",
        "cluster-info": f"{_LAB}.info:cluster_info",
        "trace": f"{_LAB}.trace:trace",
    },
    "Components (run on real clusters)": {
        "proxy": "netplane.proxy.cli:proxy",
        "dns": "netplane.dns.cli:dns",
        "cni": "netplane.cni.cli:cni",
        "supervise": "netplane.kube.supervise:supervise",
    },
    "Measuring and testing": {
        "bench": "netplane.bench.cli:bench",
        "anchors": "netplane.testing.cli:anchors_group",
        "image": "netplane.image:image",
        "demo": "netplane.demo:demo",
    },
}
_COMMANDS = {name: target for section in _SECTIONS.values() for name, target in section.items()}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_COMMANDS})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """One section per audience, each command's short help from its docstring: the
        top-level `--help` imports every component to read them (~0.1 s more than a
        command, which imports only its own)."""
        for title, commands in _SECTIONS.items():
            rows = []
            for name in commands:
                try:
                    cmd = self.get_command(ctx, name)
                except ModuleNotFoundError:  # a component not installed (yet): not listed
                    continue
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(formatter.width - 20)))
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

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
