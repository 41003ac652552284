"""Pure tests of the syncer's planning (_plan), cleanup text, stale UDP flows and healthz."""

from __future__ import annotations

import re

import pytest

from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from netplane.proxy import _plan
from netplane.proxy._conntrack import Flow, flows, stale
from netplane.proxy.metrics import healthz, no_local_endpoints
from netplane.state import ClusterState
from netplane.testing.kernel import FakeIptables

BUILTIN = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def service_chains(n: str, endpoints: int = 2) -> dict[str, tuple[str, ...]]:
    seps = [f"KUBE-SEP-{n}x{i}" for i in range(endpoints)]
    return {
        f"KUBE-SVC-{n}": tuple(f"-A KUBE-SVC-{n} -j {s}" for s in seps),
        **{s: (f"-A {s} -s 10.0.0.1/32 -j KUBE-MARK-MASQ", f"-A {s} -j DNAT") for s in seps},
    }


def tables(names: list[str], endpoints: int = 2) -> tuple[dict, list]:
    groups = [service_chains(n, endpoints) for n in names]
    nat = {
        "KUBE-SERVICES": (
            *(f"-A KUBE-SERVICES -d 10.96.0.{i} -j KUBE-SVC-{n}" for i, n in enumerate(names)),
            "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
        ),
        "KUBE-NODEPORTS": (),
        "KUBE-MARK-MASQ": ("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",),
        "KUBE-POSTROUTING": ("-A KUBE-POSTROUTING -j MASQUERADE",),
    }  # fmt: skip
    for g in groups:
        nat.update(g)
    filt = {"KUBE-SERVICES": (), "KUBE-FORWARD": ("-A KUBE-FORWARD -j ACCEPT",)}
    return {"nat": nat, "filter": filt}, [list(g) for g in groups]


class Kernel(FakeIptables):
    """The fake kernel, loaded with plans' transactions; it refuses any inconsistent state."""

    def load(self, txs) -> None:
        for tx in txs:
            self.restore(tx.text if isinstance(tx.text, str) else "".join(tx.text))

    def as_tables(self) -> dict:
        return {t: {c: tuple(r) for c, r in chains.items() if c.startswith("KUBE-")}
                for t, chains in self.tables.items() if t in ("nat", "filter")}  # fmt: skip


def test_diff_lists_differences_and_unknown_chains() -> None:
    old, _ = tables(["A", "B"])
    new, _ = tables(["A", "B"])
    new["nat"]["KUBE-SVC-A"] = ("-A KUBE-SVC-A -j KUBE-SEP-Ax0",)
    known = {t: dict(c) for t, c in old.items()}
    known["filter"]["KUBE-FORWARD"] = None  # exists, contents unknown
    write, deleted = _plan.diff(new, known)
    assert set(write["nat"]) == {"KUBE-SVC-A"} and set(write["filter"]) == {"KUBE-FORWARD"}
    assert deleted == {"nat": [], "filter": []}
    write, _ = _plan.diff(new, known, {"nat": {"KUBE-SVC-B"}})  # candidates limit nat only
    assert write["nat"] == {} and set(write["filter"]) == {"KUBE-FORWARD"}


def test_endpoint_change_does_not_rewrite_kube_services() -> None:
    old, _ = tables(["A", "B"], endpoints=2)
    new, _ = tables(["A", "B"], endpoints=2)
    new["nat"]["KUBE-SVC-A"] = ("-A KUBE-SVC-A -j KUBE-SEP-Ax0",)
    del new["nat"]["KUBE-SEP-Ax1"]
    write, deleted = _plan.diff(new, old)
    [tx] = _plan.single(write, deleted)
    assert "*filter" not in tx.text
    assert ":KUBE-SERVICES" not in tx.text
    assert "-X KUBE-SEP-Ax1" in tx.text and ":KUBE-SEP-Ax1 - [0:0]" in tx.text
    assert tx.written == {"nat": {"KUBE-SVC-A": new["nat"]["KUBE-SVC-A"]}}
    assert tx.deleted == {"nat": ["KUBE-SEP-Ax1"]}
    kernel = Kernel()
    kernel.load(_plan.single(old, {}))
    kernel.load([tx])
    assert kernel.as_tables() == new


def test_nothing_changed_writes_nothing() -> None:
    old, _ = tables(["A"])
    assert _plan.single(*_plan.diff(old, old)) == []


def _full_load_start(preexisting: bool):
    """23 services to load in full: into an empty kernel, or over a restarted daemon's rules
    (old services, some gone, some the same). Returns (desired, groups, kernel, existing
    chains, stale chains)."""
    names = [f"S{i:02d}" for i in range(23)]
    desired, groups = tables(names)
    kernel = Kernel()
    if preexisting:
        old, _ = tables([*names[:10], "GONE1", "GONE2"], endpoints=3)
        kernel.load(_plan.single(old, {}))
    known = {t: dict.fromkeys((c for c in chains if _plan.ours(t, c)), None)
             for t, chains in kernel.tables.items() if t in desired}  # fmt: skip
    return desired, groups, kernel, known, _plan.diff(desired, known)[1]


@pytest.mark.parametrize("preexisting", [False, True])
def test_chunked_full_load_never_jumps_to_a_missing_chain(preexisting: bool) -> None:
    desired, groups, kernel, known, deleted = _full_load_start(preexisting)
    txs = _plan.chunked(desired, deleted, known, groups, chunk=5)
    assert len(txs) >= 6  # top-level, 5 chunks, the rest
    kernel.load(txs)  # refuses any transaction that would leave a jump dangling
    assert kernel.as_tables() == desired
    if preexisting:
        assert "KUBE-SVC-GONE1" not in kernel.tables["nat"]


def test_chunks_hold_whole_services() -> None:
    desired, groups = tables([f"S{i}" for i in range(12)], endpoints=3)
    txs = _plan.chunked(desired, {}, {"nat": set()}, groups, chunk=4)
    for tx in txs:
        text = tx.text
        written = {c for chains in tx.written.values() for c in chains}
        assert written == set(re.findall(r"^:(\S+)", text, re.M))
        declared = set(re.findall(r"^:(KUBE-S(?:VC|EP)-S[x\d]+)", text, re.M))
        services = {re.sub(r"^KUBE-S(?:VC|EP)-(S\d+)(x\d+)?$", r"\1", c) for c in declared}
        for s in services:
            assert f"KUBE-SVC-{s}" in declared


def test_small_updates_stay_one_transaction() -> None:
    desired, groups = tables(["A", "B"])
    assert len(_plan.chunked(desired, {}, {"nat": set()}, groups, chunk=500)) == 1


def test_ours_is_kube_proxys_chains_not_kubelets() -> None:
    for chain in ("KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-SVC-X", "KUBE-SEP-Y", "KUBE-FW-Z"):
        assert _plan.ours("nat", chain), chain
    assert _plan.ours("mangle", "KUBE-PROXY-CANARY") and _plan.ours("filter", "KUBE-FORWARD")
    for chain in ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-MARK-DROP", "DOCKER", "CNI-X"):
        assert not _plan.ours("nat", chain) and not _plan.ours("filter", chain), chain


SAVE = """# Generated by iptables-save
*mangle
:PREROUTING ACCEPT [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SVC-X - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -j DOCKER
-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-X
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:MINE - [0:0]
-A INPUT -j MINE
COMMIT
"""


def test_parse_save_and_missing_jumps() -> None:
    saved = _plan.parse_save(SAVE)
    assert "KUBE-SVC-X" in saved.chains["nat"]
    assert saved.rules["nat"][0].startswith("-A PREROUTING")
    jumps = _plan.missing_jumps(saved)
    assert "mangle" not in jumps
    start = _plan.Transaction("*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n", {}, {})
    [tx] = _plan.with_jumps([start], jumps)
    text = tx.text  # a table not in the input goes into the last call
    assert tx.jumps
    assert text.index("*filter\n") > text.index("*nat\n")
    nat = text.split("*nat\n")[1].split("COMMIT")[0]
    assert nat.startswith(":KUBE-SERVICES - [0:0]\n-I ")  # inserts after the declarations
    assert "PREROUTING" not in nat  # already there
    assert '-I OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in nat
    assert "-I POSTROUTING" in nat
    assert text.count("-I FORWARD") == 4 and "*mangle" not in text


def test_missing_jumps_none_when_complete() -> None:
    lines = "".join(f"*{j.table}\n-A {j.rule()[3:]}\nCOMMIT\n" for j in _plan.JUMPS)
    saved = _plan.parse_save(lines + "*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n")
    assert _plan.missing_jumps(saved) == {}


KUBELET = """*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP
COMMIT
"""


def test_cleanup_restore_removes_ours_keeps_others() -> None:
    text = _plan.cleanup_restore(SAVE + KUBELET)
    assert "-D PREROUTING -m comment" in text and "-X KUBE-SVC-X" in text
    assert "-X KUBE-PROXY-CANARY" in text
    assert "DOCKER" not in text and "MINE" not in text
    assert "KUBE-FIREWALL" not in text and "KUBE-KUBELET-CANARY" not in text
    assert _plan.cleanup_restore("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n") == ""
    assert _plan.cleanup_restore(KUBELET) == ""
    assert _plan.count_ours(SAVE) == 6  # 4 chains (canary too), 1 rule, the jump to one


def _udp_state(endpoints: list[str], node_port: int = 0) -> ClusterState:
    state = ClusterState()
    port = ServicePort(53, "UDP", "dns", 5353, node_port)
    svc = Service("ns", "dns", type="NodePort" if node_port else "ClusterIP",
                  cluster_ips=("10.96.0.10",), ports=(port,))  # fmt: skip
    eps = EndpointSlice("ns", "dns-1", "dns", endpoints=tuple(Endpoint((a,)) for a in endpoints),
                        ports=(EndpointPort(5353, "UDP", "dns"),))  # fmt: skip
    state.apply([svc, eps])
    return state


def test_udp_flows_and_stale() -> None:
    key = ("ns", "dns")
    before = flows(_udp_state(["10.0.0.1", "10.0.0.2"], 30053).snapshot(), key, "ipv4")
    assert Flow("10.96.0.10", 53, "10.0.0.1") in before and Flow("", 30053, "10.0.0.2") in before
    after = flows(_udp_state(["10.0.0.2"], 30053).snapshot(), key, "ipv4")
    assert stale(before, after) == [Flow("", 30053, "10.0.0.1"), Flow("10.96.0.10", 53, "10.0.0.1")]
    empty = flows(_udp_state([]).snapshot(), key, "ipv4")
    assert empty == {Flow("10.96.0.10", 53, "")}
    revived = flows(_udp_state(["10.0.0.3"]).snapshot(), key, "ipv4")
    assert stale(empty, revived) == [Flow("10.96.0.10", 53, "")]
    assert flows(_udp_state(["10.0.0.3"]).snapshot(), key, "ipv6") == frozenset()


def test_no_local_endpoints() -> None:
    state = ClusterState()
    port = ServicePort(80, node_port=30080)
    svc = Service("ns", "web", type="NodePort", cluster_ips=("10.96.0.1",), ports=(port,),
                  external_traffic_policy="Local")  # fmt: skip
    eps = EndpointSlice("ns", "web-1", "web", endpoints=(Endpoint(("10.0.0.1",), node_name="b"),))
    state.apply([svc, eps])
    assert no_local_endpoints(state.snapshot(), ("ns", "web"), "a") == {"external"}
    assert no_local_endpoints(state.snapshot(), ("ns", "web"), "b") == frozenset()


def test_healthz() -> None:
    assert healthz(None, 30, 1000.0)[0] == 503
    code, body = healthz(990.0, 30, 1000.0)
    assert code == 200 and body["nodeEligible"] is True and body["lastUpdated"].startswith("1970")
    assert healthz(900.0, 30, 1000.0)[0] == 503


@pytest.mark.parametrize("preexisting", [False, True])
def test_streamed_full_sync_declares_every_chain_before_a_jump(preexisting: bool) -> None:
    desired, groups, kernel, _, deleted = _full_load_start(preexisting)
    rendered: list[str] = []

    def batches():
        for group in groups:
            rendered.extend(group)
            yield {c: desired["nat"][c] for c in group}

    def finish():  # the whole picture is only asked for once every batch was rendered
        assert len(rendered) == sum(map(len, groups))
        return desired, deleted, {"nat": ["-I PREROUTING -j KUBE-SERVICES"]}

    head = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"]
    pieces = list(_plan.streamed_full(head, batches(), finish))
    assert len(pieces) == len(groups) + 2
    text = "".join(pieces)
    assert text.count("*nat\n") == 1 and text.count("COMMIT\n") == 2  # nat, filter
    assert "-I PREROUTING -j KUBE-SERVICES\nCOMMIT\n*filter" in text
    kernel.restore(text)  # refused if a jump came before its target's declaration
    assert kernel.as_tables() == desired
    if preexisting:
        assert "-X KUBE-SVC-GONE1" in text and "KUBE-SVC-GONE1" not in kernel.tables["nat"]
