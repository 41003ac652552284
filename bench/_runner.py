"""Helpers every benchmark shares: the scale grid and progress bars."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def grid(
    scales: Sequence[int], endpoint_counts: Sequence[int], max_total_endpoints: int
) -> list[tuple[int, int]]:
    """(services, endpoints per service) points, bounded by the total endpoint count."""
    return [
        (s, e)
        for s in sorted(set(scales))
        for e in sorted(set(endpoint_counts))
        if s * e <= max_total_endpoints
    ]


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """A tqdm bar on stderr when tqdm (the `bench` extra) is installed, else the items as is."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)
