"""The order in which a pod's stub resolver (glibc) tries names: ndots, search suffixes,
absolute names. The resolv.conf it reads is kubelet's (`netplane.resolvconf`)."""

from __future__ import annotations


def search_names(name: str, searches: tuple[str, ...], ndots: int) -> list[str]:
    """The absolute names a glibc stub resolver tries for `name`, in order."""
    if name.endswith("."):
        return [name]
    suffixed = [f"{name}.{s}." for s in searches]
    if name.count(".") >= ndots:
        return [f"{name}.", *suffixed]
    return [*suffixed, f"{name}."]
