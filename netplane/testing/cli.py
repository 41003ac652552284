"""`netplane anchors ...`: build and list the pinned real peers (see anchors.py)."""

from __future__ import annotations

import click

from netplane.testing import anchors


@click.group("anchors")
def anchors_group() -> None:
    """The real Kubernetes components and CoreDNS, built from the Go module proxy and cached."""


@anchors_group.command("build")
@click.argument("names", nargs=-1, type=click.Choice(sorted(anchors.ANCHORS)))
@click.option("--force", is_flag=True, help="Rebuild even when the cached pin matches.")
@click.option(
    "--for-tests",
    is_flag=True,
    help=f"Only what the test suite runs: {', '.join(anchors.FOR_TESTS)}.",
)
def build(names: tuple[str, ...], force: bool, for_tests: bool) -> None:
    """Build the anchors (all by default) that are missing or whose pin changed."""
    if for_tests:
        names = tuple(dict.fromkeys((*names, *anchors.FOR_TESTS)))
    try:
        taken = anchors.build(names or None, force=force)
    except anchors.AnchorError as e:
        raise click.ClickException(str(e)) from e
    for name, seconds in taken.items():
        how = "cached" if seconds is None else f"built in {seconds:.0f} s"
        click.echo(f"{name:<24} {how:<16} {anchors.binary(name)}")


@anchors_group.command("list")
def list_() -> None:
    """The pins, and whether each is built."""
    click.echo(f"cache: {anchors.cache_dir()}")
    for name, a in anchors.ANCHORS.items():
        state = "built" if anchors.is_built(name) else "missing"
        click.echo(f"{name:<24} {a.module}@{a.version:<10} {state}")
