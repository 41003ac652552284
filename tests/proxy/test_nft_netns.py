"""The nftables backend against the real kernel: encoding, transactions, read-back, repair.

Each test makes its own network namespace (`npnft*-<hex>`) and deletes it.
"""

from __future__ import annotations

import random
import re
import time

import pytest

from netplane.model import Endpoint, EndpointPort, EndpointSlice, Service, ServicePort
from netplane.netns import create, delete, run, unique_name
from netplane.proxy.backend import SyncError
from netplane.proxy.nft import _kernel
from netplane.proxy.nft._exprs import element, key_bytes, rule_exprs, udata_comment
from netplane.proxy.nft._model import DROP, Rule
from netplane.proxy.nft._netlink import Batch, Netlink, NftError
from netplane.proxy.nft._tables import SHARD_SETS, SHARED_SETS, TABLE, shard_index
from netplane.proxy.nft._text import format_ruleset
from netplane.proxy.nft.render import render_full
from netplane.proxy.nft.sync import NftSyncer, cleanup
from netplane.proxy.render import ProxyConfig
from netplane.state import ClusterState
from netplane.testing.netlink import RecordingNetlink

from .conftest import Cluster, endpoint, port

pytestmark = [pytest.mark.root]


@pytest.fixture
def netns():
    name = create(unique_name("npnft"))
    yield name
    delete(name)


def _scenario(v6: bool = False, **cfg):
    """Every kind of object the renderer makes: LB with ranges, Local policy, affinity,
    UDP without endpoints, SCTP with internal Local."""
    c = Cluster()
    ip = (lambda a, b: b) if v6 else (lambda a, b: a)
    c.service(
        "svc1",
        ip("172.30.0.41", "fd00:30::41"),
        type="LoadBalancer",
        ports=[port(80, node_port=3001)],
        external_ips=(ip("192.168.99.11", "fd00:99::11"),),
        load_balancer_ips=(ip("1.2.3.4", "fd00:1::4"),),
        load_balancer_source_ranges=(ip("203.0.113.0/25", "fd00:203::/64"),),
        external_traffic_policy="Local",
        session_affinity="ClientIP",
    )
    c.endpoints(
        "svc1",
        [
            endpoint(ip("10.180.0.1", "fd00:180::1")),
            endpoint(ip("10.180.0.2", "fd00:180::2"), "n2"),
        ],
        address_type="IPv6" if v6 else "IPv4",
    )
    c.service("svc2", ip("172.30.0.42", "fd00:30::42"), ports=[port(53, "dns", "UDP")])
    if not v6:
        c.service(
            "svc3", "172.30.0.43", ports=[port(9, "", "SCTP")], internal_traffic_policy="Local"
        )
        c.endpoints("svc3", [endpoint("10.180.0.3"), endpoint("10.180.0.4")], (("", 9, "SCTP"),))
    config = c.config(**cfg)
    if v6:
        config = c.config(cluster_cidr="fd00::/12", family="ipv6", **cfg)
    return c.snapshot(), config


def _load(netlink: Netlink, ruleset) -> None:
    batch = Batch(ruleset.family, ruleset.table)
    batch.add_table(ruleset.comment)
    for s in ruleset.sets.values():
        batch.add_set(s)
    for chain in ruleset.chains.values():
        batch.add_chain(chain.name, chain.hook, chain.comment)
    for chain in ruleset.chains.values():
        for r in chain.rules:
            batch.add_rule(chain.name, rule_exprs(r, ruleset.family), r.comment)
    for name, els in ruleset.elements.items():
        if els:
            batch.add_elements(name, list(els.values()))
    netlink.commit(batch)


def _rules(netlink: Netlink, family: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in netlink.rules(family, TABLE):
        out.setdefault(r[2].rstrip(b"\0").decode(), []).append((r[4], r.get(7)))
    return out


@pytest.mark.parametrize(
    "v6, cfg", [(False, {}), (False, {"masquerade_all": True}), (True, {})], ids=str
)
def test_encoding_is_what_nft_makes_of_the_text(v6, cfg) -> None:
    """Our netlink encoding of every rule is byte for byte what the kernel holds after
    `nft -f` of the text we print, and `nft list` prints both tables the same."""
    snapshot, config = _scenario(v6, **cfg)
    [ruleset] = render_full(snapshot, config)
    a, b = create(unique_name("npnfta")), create(unique_name("npnftb"))
    try:
        run(a, ["nft", "-f", "-"], input=format_ruleset(ruleset))
        ours = Netlink(b)
        _load(ours, ruleset)
        from_text, from_us = _rules(Netlink(a), ruleset.family), _rules(ours, ruleset.family)
        for chain in ruleset.chains.values():
            expected = [
                (rule_exprs(r, ruleset.family), udata_comment(r.comment) if r.comment else None)
                for r in chain.rules
            ]
            assert from_text.get(chain.name, []) == expected, chain.name
            assert from_us.get(chain.name, []) == expected, chain.name
        for name in SHARED_SETS:
            kernel = sorted(Netlink(a).elements(ruleset.family, TABLE, name))
            assert kernel == sorted(element(e)[4:] for e in ruleset.elements[name].values())
        assert run(a, ["nft", "list", "ruleset"]) == run(b, ["nft", "list", "ruleset"])
    finally:
        delete(a)
        delete(b)


# ---- the syncer ----------------------------------------------------------------------------


def service(i: int, endpoints: int = 3, shift: int = 0, **kw):
    ip = f"10.96.{i // 250}.{i % 250 + 1}"
    svc = Service(
        "default", f"s{i}", cluster_ips=(ip,), ports=(ServicePort(80, "TCP", "p", 8080),), **kw
    )
    eps = tuple(
        Endpoint((f"10.{1 + i // 250}.{i % 250}.{k + shift + 1}",), node_name="n1")
        for k in range(endpoints)
    )
    return svc, EndpointSlice(
        "default", f"s{i}-1", f"s{i}", endpoints=eps, ports=(EndpointPort(8080, "TCP", "p"),)
    )


class World:
    def __init__(self, netns: str, n: int = 20, shards: int | None = None) -> None:
        self.netns = netns
        self.state = ClusterState()
        self.tracker = self.state.tracker()
        for i in range(n):
            self.state.apply(service(i))
        self.config = ProxyConfig("n1", cluster_cidr="10.0.0.0/8")
        self.netlink = RecordingNetlink(netns)
        self.shards = shards
        self.syncer = NftSyncer(self.config, self.netlink, shards=shards)

    def sync(self, **kw):
        return self.syncer.sync(self.state.snapshot(), self.tracker.pop(), **kw)

    def listing(self) -> str:
        """`nft list ruleset`, tables in name order (a re-made table comes last)."""
        text = run(self.netns, ["nft", "list", "ruleset"])
        text = re.sub(r" expires \S+", "", text)  # affinity entries count down
        return "".join(sorted("table " + t for t in text.split("table ") if t))

    def table_with(self, set_name: str, key: str) -> str:
        """The table whose SET_NAME holds KEY (`nft` element syntax)."""
        for table, kernel in self.syncer._kernels.items():
            for k in kernel.elements.get(set_name, {}):
                if k == key_bytes(tuple(key.split(" . "))):
                    return table
        raise KeyError(key)

    def kernel(self, netns: str | None = None) -> dict:
        """Every table of ours, read back: {table: (chain digests, sets, elements)}."""
        netlink = Netlink(netns or self.netns)
        ours = [t for t in netlink.tables("ip") if shard_index(t) is not None]
        wanted = {t: SHARED_SETS if t == TABLE else SHARD_SETS for t in ours}
        kernels = _kernel.read(netlink, "ip", wanted)[0]
        return {
            t: ({n: c.digest for n, c in k.chains.items()}, k.sets, k.elements)
            for t, k in kernels.items()
        }

    def fresh_kernel(self) -> dict:
        """What a fresh syncer writes for the same state, read back from the kernel."""
        other = create(unique_name("npnftc"))
        try:
            fresh = NftSyncer(self.config, Netlink(other), shards=self.shards)
            fresh.sync(self.state.snapshot(), None)
            return self.kernel(other)
        finally:
            delete(other)


@pytest.fixture(params=[None, 4], ids=["one-table", "4-shards"])
def world(netns, request):
    return World(netns, shards=request.param)


def test_partial_sync_writes_only_the_changed_service(world: World) -> None:
    first = world.sync()
    # into an empty kernel: a transaction per table (each sent while the next is encoded)
    assert first.full and len(world.netlink.batches) == first.restores == (world.shards or 1)
    world.netlink.batches.clear()
    world.state.apply([service(3, shift=1)[1]])  # one endpoint of s3 replaced
    result = world.sync()
    assert not result.full
    [batch] = world.netlink.described
    written = {line.split(" ", 2)[0] + " " + line.split()[1] for line in batch}
    assert written <= {"add chain", "flush chain", "add rule", "delete chain"}
    touched = {line.rsplit(" ", 1)[1] for line in batch}
    assert all("-default/s3/" in name for name in touched), touched
    # one endpoint chain added, one deleted, the service chain rewritten
    assert sum(line.startswith("add chain") for line in batch) == 1
    assert sum(line.startswith("delete chain") for line in batch) == 1
    world.netlink.batches.clear()
    assert world.sync().restores == 0 and world.netlink.batches == []  # nothing changed


def test_a_full_sync_over_our_tables_is_one_transaction(world: World) -> None:
    world.sync()
    world.netlink.batches.clear()
    for i in range(20):  # every service changes
        world.state.apply(service(i, shift=1)[1:])
    result = world.sync(full=True)
    assert result.full and result.restores == 1 and len(world.netlink.batches) == 1
    assert world.kernel() == world.fresh_kernel()


def test_restart_writes_nothing_and_keeps_affinity(world: World) -> None:
    world.state.apply(service(0, session_affinity="ClientIP"))
    world.sync()
    table, aff = next(
        (t, n) for t, k in world.syncer._kernels.items() for n in k.sets if "affinity-" in n
    )
    run(world.netns, ["nft", "add", "element", "ip", table, aff, "{ 10.9.9.9 }"])
    before = world.listing()
    again = NftSyncer(world.config, RecordingNetlink(world.netns), shards=world.shards)
    result = again.sync(world.state.snapshot(), None)
    assert result.full and result.restores == 0
    assert world.listing() == before and "10.9.9.9" in before


def test_every_change_leaves_what_a_fresh_full_sync_writes(world: World) -> None:
    rng = random.Random(7)
    world.sync()
    for step in range(40):
        i = rng.randrange(25)
        roll = rng.random()
        if roll < 0.15:
            world.state.apply(deletes=[("Service", "default", f"s{i}")])
        elif roll < 0.3:
            kw = rng.choice(
                [
                    {"session_affinity": "ClientIP"},
                    {"type": "NodePort"},
                    {"external_ips": (f"192.168.7.{i + 1}",)},
                    {"internal_traffic_policy": "Local"},
                ]
            )
            svc, sl = service(i, **kw)
            if kw.get("type") == "NodePort":
                svc = Service(
                    svc.namespace, svc.name, type="NodePort", cluster_ips=svc.cluster_ips,
                    ports=(ServicePort(80, "TCP", "p", 8080, 30000 + i),),
                )  # fmt: skip
            world.state.apply([svc, sl])
        else:
            world.state.apply(service(i, endpoints=rng.randrange(0, 5), shift=rng.randrange(3)))
        result = world.sync()
        assert not result.full, step
    time.sleep(1.1)
    world.sync()  # stale chains of removed services go now
    assert world.kernel() == world.fresh_kernel()


@pytest.mark.parametrize(
    "damage, kind",
    [
        (["flush", "chain", "ip", TABLE, "services"], "flushed"),
        (["delete", "element", "ip", "@3", "service-ips", "{ 10.96.0.3 . tcp . 80 }"], "changed"),
        (["add", "rule", "ip", TABLE, "nat-prerouting", "drop"], "changed"),
        (["add", "chain", "ip", TABLE, "intruder"], "stale"),
        (["delete", "table", "ip", TABLE], "missing"),
    ],
    ids=["flush", "element", "rule", "chain", "table"],
)
def test_foreign_changes_are_noticed_and_only_they_repaired(world: World, damage, kind) -> None:
    world.sync()
    if "@3" in damage:  # the table holding service 3's element
        damage = [world.table_with("service-ips", "10.96.0.3 . tcp . 80") if d == "@3" else d
                  for d in damage]  # fmt: skip
    before = world.listing()
    assert not world.syncer.kernel_changed()
    run(world.netns, ["nft", *damage])
    assert world.syncer.kernel_changed()
    world.netlink.batches.clear()
    result = world.syncer.verify()
    assert kind in {d.kind for d in result.drift}, result.drift
    if kind == "stale":  # emptied now, deleted by a sync a second later (as kube-proxy)
        assert "chain intruder {\n\t}" in world.listing()
        time.sleep(1.1)
        world.sync()
    assert world.listing() == before
    if kind != "missing":
        assert len(world.netlink.batches[0]) <= 3, world.netlink.batches  # the repair only
    assert not world.syncer.kernel_changed()
    assert not world.syncer.verify().drift


def test_refused_transaction_makes_the_next_sync_full(world: World) -> None:
    world.sync()
    world.state.apply([service(2, shift=2)[1]])
    world.netlink.refuse = 1
    with pytest.raises(SyncError) as failure:
        world.sync()
    assert failure.value.partial and world.syncer.needs_full
    result = world.sync()
    assert result.full
    assert world.kernel() == world.fresh_kernel()


def test_a_foreign_commit_during_a_partial_sync_turns_it_full(world: World) -> None:
    world.sync()
    run(world.netns, ["nft", "add", "table", "ip", "somebody-else"])
    world.state.apply([service(4, shift=1)[1]])
    result = world.sync()  # planned against an old generation: ERESTART, read back, again
    assert result.full
    assert "somebody-else" in run(world.netns, ["nft", "list", "tables"])


def test_removed_service_chains_go_a_second_later(world: World) -> None:
    world.sync()
    world.state.apply(deletes=[("Service", "default", "s5")])
    world.sync()
    listing = world.listing()
    assert "-default/s5/" in listing and "endpoint-" not in listing.split("-default/s5/")[0][-40:]
    assert "10.96.0.6 . tcp . 80" not in listing  # the dispatch element went at once
    time.sleep(1.1)
    world.sync()
    assert "-default/s5/" not in world.listing()


def test_cleanup_removes_only_our_tables(world: World) -> None:
    world.sync()
    run(world.netns, ["nft", "add", "table", "ip", "keep-me"])
    assert cleanup(Netlink(world.netns)) == len(world.syncer.tables())
    tables = run(world.netns, ["nft", "list", "tables"])
    assert "kube-proxy" not in tables and "keep-me" in tables


def test_spreading_over_more_or_fewer_tables_moves_everything(netns) -> None:
    """A proxy started with another table count (the cluster grew or shrank) moves the
    services in one transaction and deletes the tables it no longer uses."""
    world = World(netns, shards=2)
    world.sync()
    for shards in (4, 1):
        world.shards = shards
        again = NftSyncer(world.config, RecordingNetlink(netns), shards=shards)
        assert again.sync(world.state.snapshot(), None).restores == 1
        assert sorted(world.kernel()) == sorted(again.tables())
        time.sleep(1.1)
        again.sync(world.state.snapshot(), None)  # the moved services' emptied chains go
        assert world.kernel() == world.fresh_kernel(), shards


def test_a_refused_message_is_named_with_its_table(netns):
    batch = Batch("ip", "np-a")
    batch.add_table()
    batch.add_chain("c")
    batch.use("np-b")
    batch.add_table()
    batch.add_rule("missing", rule_exprs(Rule((DROP,)), "ip"))
    with pytest.raises(NftError, match="add rule ip np-b missing"):
        Netlink(netns).commit(batch)
    assert batch.describe(1) == "add chain ip np-a c"
