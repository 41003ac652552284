"""The iptables syncer against the real kernel, both variants: failures, partial syncs,
drift, cleanup. (The Service semantics with traffic, for every backend, are in
test_traffic_netns.py.)

Topology (netplane.testing.lab.Lab): a node namespace with a pod bridge, three pods running a
responder ("<pod> <source it saw>") on TCP and UDP 8080, a client pod, and an external
client on the node's uplink. Everything lives in namespaces created and deleted here.
"""

from __future__ import annotations

import collections
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from netplane.netns import run
from netplane.proxy._conntrack import Conntrack
from netplane.proxy._iptables import Iptables
from netplane.proxy.daemon import SyncLoop
from netplane.proxy.metrics import Metrics
from netplane.proxy.render import ProxyConfig
from netplane.proxy.sync import Syncer, SyncError
from netplane.state import ClusterState
from netplane.testing.kernel import FakeIptables
from netplane.testing.lab import Lab, probe, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.root]

CLUSTER_IP = "10.96.0.10"
NODE = "node-a"
NETPLANE = str(Path(sys.executable).with_name("netplane"))


def service(name="web", port=80, proto="TCP", node_port=0, **kw) -> Service:
    ports = (ServicePort(port, proto, "p", 8080, node_port),)
    kind = "NodePort" if node_port else "ClusterIP"
    return Service("default", name, type=kind, cluster_ips=(kw.pop("ip", CLUSTER_IP),),
                   ports=ports, **kw)  # fmt: skip


def endpoints(name, pods, proto="TCP", nodes=None) -> EndpointSlice:
    nodes = nodes or {}
    eps = tuple(Endpoint((p.ip,), node_name=nodes.get(p.name, NODE)) for p in pods)
    return EndpointSlice("default", f"{name}-1", name, endpoints=eps,
                         ports=(EndpointPort(8080, proto, "p"),))  # fmt: skip


@dataclass
class Env:
    lab: Lab
    state: ClusterState
    syncer: Syncer
    iptables: FakeIptables  # the real kernel behind it: records, and refuses when told
    variant: str

    def __post_init__(self) -> None:
        self.tracker = self.state.tracker()

    @property
    def servers(self):
        return [p for p in self.lab.pods.values() if p.server]

    def apply(self, *objs, deletes=()) -> None:
        self.state.apply(objs, deletes)

    def sync(self, full: bool = False):
        return self.syncer.sync(self.state.snapshot(), self.tracker.pop(), full=full)

    def save(self) -> str:
        return run(self.lab.node, [f"iptables-{self.variant}-save"])


@pytest.fixture(params=["legacy", "nft"])
def env(request):
    variant = request.param
    with Lab() as lab:
        for i, name in enumerate(("pod-a", "pod-b", "pod-c")):
            lab.add_pod(name, 10 + i, serve_port=8080)
        lab.add_pod("client", 5)
        ipt = FakeIptables(real=Iptables(variant, "ipv4", lab.node))
        config = ProxyConfig(NODE, cluster_cidr=lab.pod_cidr)
        syncer = Syncer(config, ipt, Conntrack("ipv4", lab.node))
        yield Env(lab, ClusterState(), syncer, ipt, variant)


def answers(lines: list[str]) -> collections.Counter:
    return collections.Counter(line.split()[0] for line in lines)


def test_failed_restore_is_retried_as_full_sync(env: Env) -> None:
    env.apply(service(), endpoints("web", env.servers))
    env.sync()
    env.apply(endpoints("web", env.servers[:2]))
    env.iptables.fail_next()
    with pytest.raises(SyncError) as failure:
        env.sync()
    assert failure.value.partial and env.syncer.needs_full
    result = env.sync()
    assert result.full
    counts = answers(probe(env.lab.pods["client"].ns, CLUSTER_IP, 80, count=30))
    assert set(counts) == {"pod-a", "pod-b"}


def test_partial_sync_writes_only_changed_chains(env: Env) -> None:
    env.apply(service(), service("other", ip="10.96.0.11"), endpoints("web", env.servers))
    env.sync()
    env.iptables.take()
    env.apply(endpoints("web", env.servers[:2]))  # only endpoints of one service change
    result = env.sync()
    [text] = env.iptables.texts
    nat = text.split("*nat\n")[1].split("COMMIT")[0]
    assert not result.full
    assert ":KUBE-SERVICES " not in nat and ":KUBE-NODEPORTS " not in nat
    written = {line[1:].split()[0] for line in nat.splitlines() if line.startswith(":")}
    deleted = {line.split()[1] for line in nat.splitlines() if line.startswith("-X ")}
    assert {c[:9] for c in written} == {"KUBE-SVC-", "KUBE-SEP-"}
    assert len(deleted) == 1 and next(iter(deleted)).startswith("KUBE-SEP-")
    assert deleted.pop() not in env.save()
    env.iptables.take()
    env.sync()  # nothing changed: no nat chain written
    assert all("*nat" not in t for t in env.iptables.texts)


def _flush_everything(env: Env) -> None:
    if env.variant == "nft":
        run(env.lab.node, ["nft", "flush", "ruleset"])
    else:
        for table in ("mangle", "nat", "filter"):
            run(env.lab.node, ["iptables-legacy", "-t", table, "-F"])
            run(env.lab.node, ["iptables-legacy", "-t", table, "-X"])


def _flush_nat(env: Env) -> None:
    """`iptables -t nat -F`: every rule gone, every chain (the canary too) still there."""
    run(env.lab.node, [f"iptables-{env.variant}", "-t", "nat", "-F"])


def _flush_one_service(env: Env) -> None:
    chain = next(c for c in env.syncer.applied["nat"] if c.startswith("KUBE-SVC-"))
    run(env.lab.node, [f"iptables-{env.variant}", "-t", "nat", "-F", chain])


@pytest.mark.parametrize("damage", [_flush_everything, _flush_nat, _flush_one_service])
def test_foreign_writes_are_noticed_and_repaired(env: Env, damage) -> None:
    env.apply(service(), endpoints("web", env.servers))
    env.state.mark_synced()
    metrics = Metrics()
    # no periodic read-back: only the once-a-second look at the kernel can notice
    loop = SyncLoop(env.state, env.tracker, env.syncer, metrics, NODE, 0.1, 3600,
                    full_sync_period=3600, verify_period=3600)  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    try:
        client = env.lab.pods["client"].ns
        wait_for(lambda: probe(client, CLUSTER_IP, 80)[0] != "ERR timeout", 20, what="first sync")
        before = rules(env)
        env.iptables.take()
        damage(env)
        assert rules(env) != before
        wait_for(lambda: rules(env) == before, 20, what="repair")
        assert probe(client, CLUSTER_IP, 80)[0].startswith("pod-")
        drift = metrics.render().decode()
        assert "netplane_proxy_drift_total{" in drift, drift
        if damage is _flush_one_service:  # repaired with a partial restore of that chain
            [text] = env.iptables.texts
            assert text.count("\n:") == 1 and "*filter" not in text, text
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def rules(env: Env) -> list[str]:
    """Our rules, without counters and comments, for comparing two moments."""
    return sorted(re.sub(r"\[\d+:\d+\]", "", line) for line in env.save().splitlines()
                  if "KUBE-" in line and not line.startswith("#"))  # fmt: skip


def test_verify_reports_what_drifted(env: Env) -> None:
    env.apply(service(node_port=30080, session_affinity="ClientIP"),
              endpoints("web", env.servers))  # fmt: skip
    env.sync()
    assert not env.syncer.kernel_changed()
    clean = env.syncer.verify()
    assert clean.drift == () and clean.read_bytes > 0  # read back exactly as written
    _flush_nat(env)
    assert env.syncer.kernel_changed()
    found = env.syncer.verify()
    kinds = {(d.table, d.kind) for d in found.drift}
    assert ("nat", "flushed") in kinds and ("nat", "jump") in kinds, found.drift
    assert ("filter", "flushed") not in kinds
    assert found.repaired == len([d for d in found.drift if d.kind == "flushed"])
    assert env.syncer.verify().drift == () and not env.syncer.kernel_changed()
    assert answers(probe(env.lab.pods["client"].ns, CLUSTER_IP, 80, count=10))


KUBELET_CHAINS = """*filter
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A INPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP
COMMIT
*nat
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
"""


def test_cleanup_leaves_no_chains_of_ours_and_keeps_kubelets(env: Env) -> None:
    env.iptables.foreign(KUBELET_CHAINS)  # what kubelet writes on a node
    env.apply(service(node_port=30080), endpoints("web", env.servers))
    env.sync()
    assert "KUBE-SVC-" in env.save()
    assert env.syncer.verify().drift == ()  # kubelet's chains are not ours: no drift
    run(env.lab.node, [NETPLANE, "proxy", "cleanup"])  # the installed CLI, in the namespace
    for variant in ("legacy", "nft"):
        left = run(env.lab.node, [f"iptables-{variant}-save"])
        ours = [line for line in left.splitlines() if "KUBE-" in line and "KUBELET" not in line
                and "KUBE-FIREWALL" not in line]  # fmt: skip
        assert ours == [], ours
    left = env.save()
    assert ":KUBE-FIREWALL" in left and "-A INPUT -j KUBE-FIREWALL" in left
    assert left.count(":KUBE-KUBELET-CANARY") == 2
