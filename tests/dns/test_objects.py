"""DNS's lean objects (dns/objects.py) answer exactly as the full object model does.

The same objects, once as API list responses decoded by `ApiCodec` and once parsed into
`netplane.model` as manifests are, feed two engines; every question about every name the
objects make gets the same reply bytes from both. Then the codec's own cases: fields it
rejects (the last good version is kept by the source), a wrongly typed item next to good
ones, watch events.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable

import dns.message
import msgspec
import pytest

from netplane.dns.catalog import build_catalog
from netplane.dns.engine import Engine
from netplane.dns.objects import ApiCodec
from netplane.dns.records import ZoneConfig, dashed, reverse_name
from netplane.kube.source import RESOURCES
from netplane.model import InvalidField, parse_object
from netplane.state import ClusterState

from .conftest import endpoint_slice, lab_objects, pod, service

ADDR = ("127.0.0.1", 5353)
QTYPES = ("A", "AAAA", "SRV", "PTR", "TXT", "ANY")


def edge_objects() -> list[dict]:
    """What the lab lacks: readiness, publishNotReadyAddresses, odd spellings, pod states."""
    hostnet = pod("hostnet", "default", "10.244.9.9")
    hostnet["spec"]["hostNetwork"] = True
    leaving = pod("leaving", "default", "10.244.9.10")
    leaving["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    dual_pod = pod("dualpod", "other", "10.244.9.11")
    dual_pod["status"]["podIPs"].append({"ip": "fd00:0:0:0:0:0:9:11"})
    return [
        service("notready", ips=None),
        endpoint_slice("notready", addresses=[("10.244.7.1", "up")]),
        endpoint_slice("notready", addresses=[("10.244.7.2", "down")], ready=False, name="nr-2"),
        service("pnr", ips=None, publishNotReadyAddresses=True),
        endpoint_slice("pnr", addresses=[("10.244.8.1", "late")], ready=False),
        service("upper", type="ExternalName", externalName="Numbers.Example.COM.", ips=()),
        service("v6", ips=("fd00:0:0:0:0:0:0:66",), ipFamilies=["IPv6"]),
        endpoint_slice("v6", addresses=["fd00:0:0:0:0:0:1:1"], family="IPv6"),
        service("noport", ports=(("", 8080, "UDP"),), ips=("10.96.7.7",)),
        endpoint_slice("noport", addresses=["10.244.7.7"], ports=(("", 8080, "UDP"),)),
        hostnet,
        leaving,
        dual_pod,
    ]


def as_list(kind: str, objects: Iterable[dict]) -> bytes:
    """The API server's list response: items without kind/apiVersion, each with its version."""
    items = []
    for n, obj in enumerate(objects):
        item = {k: v for k, v in copy.deepcopy(obj).items() if k not in ("kind", "apiVersion")}
        item["metadata"]["resourceVersion"] = str(100 + n)
        item["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
        items.append(item)
    body = {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {"resourceVersion": "999"}}
    return json.dumps({**body, "items": items}).encode()


def lean_state(objects: list[dict]) -> ClusterState:
    state = ClusterState()
    for kind in ("Service", "EndpointSlice", "Pod", "Namespace"):
        codec = ApiCodec(RESOURCES[kind])
        items, rv, token = codec.page(as_list(kind, (o for o in objects if o["kind"] == kind)))
        assert (rv, token) == ("999", "")
        state.apply([o for _, _, raw in items for o in codec.objects(raw)])
    state.mark_synced()
    return state


def model_state(objects: list[dict]) -> ClusterState:
    state = ClusterState()
    state.apply([o for obj in objects for o in parse_object(copy.deepcopy(obj))])
    state.mark_synced()
    return state


def questions(objects: list[dict]) -> list[tuple[str, str]]:
    """Every name the objects make (and a few they do not), asked with every type."""
    names = {"cluster.local", "svc.cluster.local", "nosuch.default.svc.cluster.local",
             "dns.cluster.local", "ns.dns.cluster.local"}  # fmt: skip
    ips = set()
    for o in objects:
        meta = o["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        if o["kind"] == "Namespace":
            names.add(f"{name}.svc.cluster.local")
        elif o["kind"] == "Service":
            base = f"{name}.{ns}.svc.cluster.local"
            names |= {base, f"{ns}.svc.cluster.local"}
            for p in o["spec"].get("ports", ()):
                names.add(f"_{p['name'] or 'x'}._{p['protocol'].lower()}.{base}")
            ips |= {ip for ip in o["spec"].get("clusterIPs", ()) if ip != "None"}
        elif o["kind"] == "EndpointSlice":
            svc = meta["labels"]["kubernetes.io/service-name"]
            for ep in o["endpoints"]:
                ips |= set(ep["addresses"])
                for a in ep["addresses"]:
                    names.add(f"{dashed(a)}.{svc}.{ns}.svc.cluster.local")
                if ep.get("hostname"):
                    names.add(f"{ep['hostname']}.{svc}.{ns}.svc.cluster.local")
        elif o["kind"] == "Pod":
            for p in o["status"]["podIPs"]:
                ips.add(p["ip"])
                names.add(f"{dashed(p['ip'])}.{ns}.pod.cluster.local")
    names |= {reverse_name(ip) for ip in ips}
    names |= {"99.0.96.10.in-addr.arpa", "5.5.5.5.in-addr.arpa"}
    return [(n, t) for n in sorted(names) for t in QTYPES]


@pytest.mark.parametrize("pods", ["disabled", "insecure", "verified"])
def test_lean_objects_answer_as_the_model_does(pods):
    objects = lab_objects() + edge_objects()
    config = ZoneConfig(ttl=30, pods=pods, reverse_cidrs=("10.96.0.0/12", "10.244.0.0/16"))
    engines = []
    for state in (model_state(objects), lean_state(objects)):
        engine = Engine(config)
        engine.install(build_catalog(state.snapshot(), config, serial=7))
        engines.append(engine)
    asked = questions(objects)
    differences = []
    for name, qtype in asked:
        wire = dns.message.make_query(name, qtype).to_wire()
        replies = [engine.respond(wire, ADDR)[0] for engine in engines]
        if replies[0] != replies[1]:
            differences.append(f"{name} {qtype}")
    assert not differences, differences
    answered = sum(
        bool(dns.message.from_wire(engines[1].respond(dns.message.make_query(n, t).to_wire(),
                                                      ADDR)[0]).answer)
        for n, t in asked
    )  # fmt: skip
    assert len(asked) > 300 and answered > 100  # real answers compared, not only NXDOMAIN


def test_lean_objects_hold_only_what_dns_reads():
    state = lean_state(lab_objects())
    snap = state.snapshot()
    svc = snap.services[("default", "dual")]
    assert svc.cluster_ips == ("10.96.5.5", "fd00::5:5") and not svc.headless
    assert snap.services[("testns", "external")].external_name == "ext.interwebs.test"
    (hdls_v4, hdls_v6) = snap.slices[("default", "hdls")]
    assert [ep.hostname for ep in hdls_v4.endpoints] == ["", "web-1"]
    assert hdls_v6.endpoints[0].addresses == ("5678:abcd::1",)
    assert not hasattr(svc, "managed_fields") and not hasattr(svc, "labels")


@pytest.mark.parametrize(
    "kind, obj, field",
    [
        ("Service", service("bad", ips=("10.96.0.300",)), "address"),
        ("Service", service("bad", type="ExternalName", externalName="a b", ips=()),
         "spec.externalName"),
        ("EndpointSlice", endpoint_slice("s", addresses=["fd00::1"]), "address"),
        ("Pod", pod("p", "default", "not-an-ip"), "address"),
    ],
)  # fmt: skip
def test_invalid_fields_are_rejected_with_the_reason(kind, obj, field):
    codec = ApiCodec(RESOURCES[kind])
    [(key, _, raw)] = codec.page(as_list(kind, [obj]))[0]
    assert key == (kind, obj["metadata"]["namespace"], obj["metadata"]["name"])
    with pytest.raises(InvalidField) as e:
        codec.objects(raw)
    assert e.value.args[0] == field or field in str(e.value)


def test_a_wrongly_typed_item_is_rejected_alone():
    good, bad = service("good", ips=("10.96.0.9",)), service("bad")
    bad["spec"]["ports"] = "eighty"  # not a list: the typed decoder refuses the whole page
    codec = ApiCodec(RESOURCES["Service"])
    items, rv, _ = codec.page(as_list("Service", [good, bad]))
    assert rv == "999" and [key[2] for key, _, _ in items] == ["good", "bad"]
    assert codec.objects(items[0][2])[0].cluster_ips == ("10.96.0.9",)
    with pytest.raises(InvalidField, match="ports"):
        codec.objects(items[1][2])


def test_watch_events():
    codec = ApiCodec(RESOURCES["EndpointSlice"])
    item = json.loads(as_list("EndpointSlice", [endpoint_slice("web", addresses=["10.1.0.1"])]))
    line = json.dumps({"type": "MODIFIED", "object": item["items"][0]}).encode()
    event = codec.event(line)
    assert event.type == "MODIFIED" and event.item[:2] == (
        ("EndpointSlice", "default", "web-ipv4"),
        "100",
    )
    assert codec.objects(event.item[2])[0].service_key == ("default", "web")
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                        "message": "too old resource version"}}  # fmt: skip
    assert codec.event(json.dumps(gone).encode()).error == (
        410,
        "Expired",
        "too old resource version",
    )
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "1234"}}}
    assert codec.event(json.dumps(bookmark).encode()).item[1] == "1234"


class _Body:
    """A response whose body arrives in pieces of the given sizes (cycled)."""

    def __init__(self, body: bytes, sizes: Iterable[int]) -> None:
        self.body, self.sizes = body, list(sizes)

    def stream(self, amt: int | None = None) -> Iterable[bytes]:
        at, n = 0, 0
        while at < len(self.body):
            size = self.sizes[n % len(self.sizes)]
            yield self.body[at : at + size]
            at, n = at + size, n + 1


def compact(body: bytes) -> bytes:
    """As the API server writes it: no spaces."""
    return json.dumps(json.loads(body), separators=(",", ":")).encode()


def decoded(codec: ApiCodec, runs: Iterable) -> tuple[list, set]:
    items = [item for run, _, _ in runs for item in run]
    lean = [(key, version, tuple(_objects(codec, raw))) for key, version, raw in items]
    return lean, {(rv, token) for _, rv, token in runs}


def _objects(codec: ApiCodec, raw: object) -> tuple:
    try:
        return tuple(codec.objects(raw))
    except InvalidField as e:
        return ("rejected", str(e))


@pytest.mark.parametrize("sizes", [(1,), (7, 100, 3), (4096,), (1 << 30,)])
def test_a_list_decoded_while_it_arrives_equals_the_whole(sizes):
    objects = lab_objects() + edge_objects()
    for kind in ("Service", "EndpointSlice", "Pod"):
        codec = ApiCodec(RESOURCES[kind])
        body = compact(as_list(kind, (o for o in objects if o["kind"] == kind)))
        runs = list(codec.stream(_Body(body, sizes)))
        assert decoded(codec, runs) == decoded(codec, [codec.page(body)])
        if sizes == (1,):
            assert len(runs) > 2  # items were handed over before the body ended


def test_streaming_survives_cuts_inside_items_odd_items_and_other_layouts():
    first, nested, bad = service("a", ips=("10.96.0.1",)), service("b"), service("c")
    nested["spec"]["extra"] = [{"x": 1}, {"metadata": {"name": "inner"}}]  # a false boundary
    bad["spec"]["ports"] = "eighty"
    codec = ApiCodec(RESOURCES["Service"])
    body = as_list("Service", [first, nested, bad, service("d")])
    whole = decoded(codec, [codec.page(body)])
    assert [key[2] for key, _, _ in whole[0]] == ["a", "b", "c", "d"]
    assert whole[0][2][2][0] == "rejected"
    pretty = json.dumps(json.loads(body), indent=1).encode()
    items_first = json.dumps(dict(reversed(json.loads(body).items()))).encode()
    for layout in (compact(body), pretty, items_first, body):
        for sizes in ((1,), (5, 50), (1 << 30,)):
            assert decoded(codec, list(codec.stream(_Body(layout, sizes)))) == whole
    empty = compact(as_list("Service", []))
    assert decoded(codec, list(codec.stream(_Body(empty, (3,))))) == ([], {("999", "")})
    with pytest.raises(msgspec.DecodeError):
        list(codec.stream(_Body(compact(body)[:-40], (64,))))
