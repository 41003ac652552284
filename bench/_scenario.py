"""The change kinds of the sync benchmark, as edits of one "probe" service.

The cluster holds S background services with E endpoints each (they load the kernel); the
changes happen to one more service, which has E endpoints too, so an endpoint change is
the realistic E -> E+1 kind (kube-proxy and netplane need not rewrite KUBE-SERVICES for
it). Each transition comes with what a probe must observe once it is programmed:

- `open` / `refused`: a connection to the ClusterIP is accepted / refused;
- `reaches j`: some connection lands on endpoint j (the listener sees which address the
  DNAT chose); with random balancing over E+1 endpoints that takes ~E+1 probes;
- `avoids j`: no connection lands on endpoint j any more. Proven by a run of misses long
  enough that a live endpoint would have been hit (p < e^-20); the time recorded is the
  first miss after the last hit.
"""

from __future__ import annotations

from dataclasses import dataclass

from netplane.bench import _workload as w


@dataclass(frozen=True, slots=True)
class ProbeService:
    present: bool = False
    endpoints: tuple[int, ...] = ()
    not_ready: frozenset[int] = frozenset()

    def docs(self, index: int) -> list:
        if not self.present:
            return []
        return w.service_docs(index, self.endpoints, not_ready=self.not_ready)

    @property
    def reachable(self) -> frozenset[int]:
        return frozenset(self.endpoints) - self.not_ready if self.present else frozenset()


@dataclass(frozen=True, slots=True)
class Expect:
    kind: str  # open | refused | reaches | avoids
    endpoint: int = -1

    def holds(self, state: ProbeService) -> bool:
        """Whether a fully programmed STATE shows this (tests check every transition)."""
        reachable = state.reachable
        return {
            "open": bool(reachable),
            "refused": not reachable,
            "reaches": self.endpoint in reachable,
            "avoids": self.endpoint not in reachable,
        }[self.kind]


@dataclass(frozen=True, slots=True)
class Step:
    change: str
    # written one after another, each awaited; one sample for the whole step
    transitions: tuple[tuple[ProbeService, Expect], ...]


ABSENT = ProbeService()


def cycle(endpoints: int) -> tuple[Step, ...]:
    """One round of every change kind; starts and ends with the probe service absent."""
    base = tuple(range(max(endpoints, 1)))
    new = len(base)
    up = ProbeService(True, base)
    return (
        Step("add-service", ((up, Expect("open")),)),
        Step("endpoint-add", ((ProbeService(True, (*base, new)), Expect("reaches", new)),)),
        Step("endpoint-remove", ((up, Expect("avoids", new)),)),
        Step("readiness", ((ProbeService(True, base, frozenset({0})), Expect("avoids", 0)),)),
        Step("readiness", ((up, Expect("reaches", 0)),)),
        Step(
            "endpoint-flap",  # gone and back: one sample per round trip
            ((ProbeService(True, base[1:]), Expect("avoids", 0)), (up, Expect("reaches", 0))),
        ),
        Step("remove-service", ((ABSENT, Expect("refused")),)),
    )


CHANGES = (*dict.fromkeys(s.change for s in cycle(1)), "noop-resync", "flush-resync")

# iptables-restore input without --noflush: empties the tables, as an admin's flush does
FLUSH = "*nat\nCOMMIT\n*filter\nCOMMIT\n*mangle\nCOMMIT\n"
