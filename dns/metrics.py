"""Prometheus metrics under CoreDNS's names, counted cheaply in each worker.

The hot loop only bumps plain dict counters (a prometheus_client call per query would
cost more than the query). Each worker ships its `Stats` totals to the supervisor, whose
collector merges them and exposes them with prometheus_client, like CoreDNS's
`prometheus` plugin: coredns_dns_requests_total, coredns_dns_responses_total,
coredns_dns_request_duration_seconds, coredns_cache_hits_total, coredns_cache_misses_total;
and netplane_dns_worker_restarts_total, which CoreDNS (one process) has no need for.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported at the first scrape: ~40 ms of every start otherwise
    from prometheus_client.core import Metric

# CoreDNS: prometheus.ExponentialBuckets(0.00025, 2, 16)
BUCKETS = tuple(0.00025 * 2**i for i in range(16))
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA"}
QTYPES |= {33: "SRV", 65: "HTTPS", 255: "ANY"}


@dataclass
class Stats:
    """One worker's running totals (picklable; sent to the supervisor).

    Keyed by raw numbers (transport, qtype, rcode, bucket) so that counting costs one
    dict update and one bisect per query; labels are made at scrape time.
    """

    counts: Counter = field(default_factory=Counter)  # (transport, qtype, rcode, bucket)
    duration_sum: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))
    cache_hits: Counter = field(default_factory=Counter)  # success | denial
    cache_misses: int = 0
    synced: bool = False

    def copy(self) -> Stats:
        """A consistent copy while the serving threads keep counting (dict() is atomic)."""
        return Stats(
            Counter(dict(self.counts)),
            defaultdict(float, dict(self.duration_sum)),
            Counter(dict(self.cache_hits)),
            self.cache_misses,
            self.synced,
        )

    def merge(self, other: Stats) -> None:
        """Add another worker's totals (a dead worker's counts must not vanish)."""
        self.counts.update(other.counts)
        self.duration_sum.update(other.duration_sum)
        self.cache_hits.update(other.cache_hits)
        self.cache_misses += other.cache_misses

    def observe(self, transport: int, qtype: int, rcode: int, seconds: float) -> None:
        """transport: 1 udp/IPv4, 2 udp/IPv6, 3 tcp/IPv4, 4 tcp/IPv6."""
        self.counts[(transport, qtype, rcode, bisect.bisect_left(BUCKETS, seconds))] += 1
        self.duration_sum[qtype] += seconds


class StatsCollector:
    """Sums the latest `Stats` of every worker at scrape time (a prometheus_client
    collector: `collect` is all a registry calls)."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.workers: dict[int, Stats] = {}  # by worker pid: the latest totals
        self.retired = Stats()  # workers that exited: counters never go backwards
        self.restarts = 0

    def retire(self, pid: int) -> None:
        stats = self.workers.pop(pid, None)
        if stats is not None:
            self.retired.merge(stats)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        s = self.server
        req = CounterMetricFamily(
            "coredns_dns_requests",
            "Counter of DNS requests made per zone, protocol and family.",
            labels=["server", "zone", "proto", "family", "type"],
        )
        resp = CounterMetricFamily(
            "coredns_dns_responses",
            "Counter of response status codes.",
            labels=["server", "zone", "rcode"],
        )
        hist = HistogramMetricFamily(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took.",
            labels=["server", "zone", "type"],
        )
        hits = CounterMetricFamily(
            "coredns_cache_hits", "The count of cache hits.", labels=["server", "type"]
        )
        misses = CounterMetricFamily(
            "coredns_cache_misses", "The count of cache misses.", labels=["server"]
        )
        requests: Counter = Counter()
        responses: Counter = Counter()
        buckets: Counter = Counter()
        sums: defaultdict[str, float] = defaultdict(float)
        hit_counts: Counter = Counter()
        missed = 0
        for st in [self.retired, *list(self.workers.values())]:
            for (transport, qtype, rcode, bucket), n in st.counts.items():
                t = QTYPES.get(qtype, "other")
                proto, family = ("udp", "tcp")[transport > 2], str(2 - transport % 2)
                requests[(proto, family, t)] += n
                responses[RCODES.get(rcode, str(rcode))] += n
                buckets[(t, bucket)] += n
            for qtype, seconds in st.duration_sum.items():
                sums[QTYPES.get(qtype, "other")] += seconds
            hit_counts.update(st.cache_hits)
            missed += st.cache_misses
        for (proto, family, t), n in sorted(requests.items()):
            req.add_metric([s, ".", proto, family, t], n)
        for rcode, n in sorted(responses.items()):
            resp.add_metric([s, ".", rcode], n)
        for t in sorted(sums):
            cumulative, rows = 0, []
            for i, bound in enumerate((*BUCKETS, float("inf"))):
                cumulative += buckets[(t, i)]
                rows.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hist.add_metric([s, ".", t], rows, sums[t])
        for kind in ("success", "denial"):
            hits.add_metric([s, kind], hit_counts[kind])
        misses.add_metric([s], missed)
        restarts = CounterMetricFamily(
            "netplane_dns_worker_restarts",
            "DNS worker processes that died and were replaced.",
            value=self.restarts,
        )
        yield from (req, resp, hist, hits, misses, restarts)
