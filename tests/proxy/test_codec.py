"""The proxy's codec (proxy/_codec.py) against the JSON path it replaces (`JsonCodec` +
the model's parser): the same objects for every valid item, the same `InvalidField` for
every invalid one, the same rulesets from both backends, and the fast path really taken
for what an API server sends. Pure: no API server, no kernel."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest

from netplane.bench import _workload as w
from netplane.kube.source import RESOURCES, JsonCodec
from netplane.model import InvalidField
from netplane.proxy import _codec
from netplane.proxy._codec import ModelCodec, codec
from netplane.proxy.nft._text import format_tables
from netplane.proxy.nft.render import render_full as render_nft
from netplane.proxy.render import ProxyConfig, render_full
from netplane.state import ClusterState

SERVICE = RESOURCES["Service"]
SLICE = RESOURCES["EndpointSlice"]


def _svc(spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "ns", **meta}, "spec": spec}


def _slice(endpoints: list, address_type: Any = "IPv4", ports: Any = None, **meta: Any) -> dict:
    labels = {"kubernetes.io/service-name": "web"}
    doc = {
        "metadata": {"name": "web-1", "namespace": "ns", "labels": labels, **meta},
        "addressType": address_type,
        "endpoints": endpoints,
    }
    if ports is not None:
        doc["ports"] = ports
    return doc


_P80 = {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}

VALID_SERVICES = [
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80], "selector": {"app": "web"}}),
    _svc(
        {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"], "ports": [{"port": 80}]},
        uid="u",
        resourceVersion="7",
        managedFields=[{"manager": "x"}],
    ),
    _svc(
        {
            "clusterIPs": ["10.96.0.2", "fd00::2"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": "PreferDualStack",
            "ports": [_P80],
        }
    ),
    _svc({"clusterIPs": ["FD00:0:0::3"], "ports": [_P80]}),  # canonicalised
    _svc({"clusterIP": "None", "selector": {"app": "web"}}),  # headless, no ports
    _svc({"clusterIP": "None", "ipFamilies": ["IPv6"], "ports": [_P80]}),
    _svc({"clusterIP": "", "ports": [_P80], "selector": {}}),  # unallocated, empty selector
    _svc({"ports": [_P80], "selector": None, "type": None}),
    _svc(
        {
            "type": "NodePort",
            "clusterIP": "10.96.0.4",
            "externalTrafficPolicy": "Local",
            "ports": [
                {**_P80, "nodePort": 30080},
                {
                    "name": "dns",
                    "port": 53,
                    "protocol": "UDP",
                    "nodePort": 30053,
                    "targetPort": "dns-port",
                },
            ],
            "healthCheckNodePort": 32000,
        }
    ),
    _svc(
        {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.5",
            "ports": [{**_P80, "nodePort": 30081, "appProtocol": "http"}],
            "loadBalancerSourceRanges": ["203.0.113.0/25", " 10.0.0.0/8 "],
            "externalIPs": ["192.168.99.11"],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "internalTrafficPolicy": "Local",
            "publishNotReadyAddresses": True,
        },
        labels={"b": "2", "a": "1"},
    ),
    _svc(
        {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.6",
            "loadBalancerIP": "1.2.3.5",
            "ports": [_P80],
        }
    ),
    {
        **_svc(
            {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.7",
                "loadBalancerIP": "1.2.3.5",
                "ports": [_P80],
            }
        ),
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"hostname": "lb.example"}]}},
    },
    {
        **_svc({"clusterIP": "10.96.0.8", "ports": [_P80]}),
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}},
    },  # not a LoadBalancer
    _svc(
        {
            "clusterIP": "10.96.0.9",
            "ports": [{"port": 80, "targetPort": "8080"}],
            "sessionAffinityConfig": {"clientIP": {}},
        }
    ),
    _svc(
        {
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "targetPort": 0, "nodePort": 0, "name": None}],
        }
    ),
    _svc({"type": "ExternalName", "externalName": "db.example.com."}),  # the parser's
    _svc(
        {
            "clusterIP": "10.96.0.11",
            "ports": [{"port": 80, "protocol": "SCTP"}],
            "trafficDistribution": "PreferClose",
            "allocateLoadBalancerNodePorts": False,
        }
    ),
    {"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.12", "ports": [_P80]}},
]

_EP = {"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "nodeName": "n1"}
VALID_SLICES = [
    _slice([_EP, {"addresses": ["10.0.0.2"]}], ports=[{"name": "http", "port": 8080}]),
    _slice(
        [
            {
                "addresses": ["10.0.0.3"],
                "conditions": {"ready": False, "serving": True, "terminating": True},
                "zone": "z1",
                "hints": {"forZones": [{"name": "z1"}, {}]},
                "hostname": "h",
                "targetRef": {"kind": "Pod", "name": "p1", "namespace": "ns"},
            }
        ],
        ports=[{"name": "", "port": None, "protocol": "UDP", "appProtocol": "dns"}],
    ),
    _slice(
        [
            {"addresses": ["10.0.0.4"], "conditions": {}, "targetRef": {"name": "p2"}},
            {
                "addresses": ["10.0.0.5"],
                "conditions": None,
                "targetRef": {"kind": None, "name": "x"},
            },
            {"addresses": ["10.0.0.6"], "targetRef": {"kind": "Node", "name": "n"}},
            {"addresses": ["10.0.0.7"], "conditions": {"ready": None, "serving": False}},
        ]
    ),
    _slice(
        [{"addresses": ["FD00::0:1"], "conditions": {"ready": True}}],
        "IPv6",
        [{"name": "a", "port": 1, "protocol": "SCTP"}, {"name": "b", "port": 65535}],
    ),
    _slice([], ports=[]),
    _slice(None),
    _slice([{"addresses": ["db.example"]}], "FQDN"),  # the parser's
    {**_slice([_EP]), "metadata": {"name": "orphan", "namespace": "ns"}},  # no service
]

INVALID_SERVICES = [
    _svc({"clusterIP": "10.96.0.300", "ports": [_P80]}),
    _svc({"clusterIPs": ["10.96.0.1", "10.96.0.2"], "ports": [_P80]}),
    _svc({"clusterIP": "10.96.0.2", "clusterIPs": ["10.96.0.1"], "ports": [_P80]}),
    _svc({"clusterIPs": ["None", "10.96.0.1"], "ports": [_P80]}),
    _svc({"clusterIP": "10.96.0.1"}),  # no ports
    _svc({"clusterIP": "10.96.0.1", "ports": [{"port": 0}]}),
    _svc({"clusterIP": "10.96.0.1", "ports": [{"port": 70000}]}),
    _svc({"clusterIP": "10.96.0.1", "ports": [{"name": "a"}]}),  # no port number
    _svc({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "protocol": "ICMP"}]}),
    _svc({"clusterIP": "10.96.0.1", "ports": [{"port": 80}, {"port": 81}]}),  # unnamed
    _svc(
        {"clusterIP": "10.96.0.1", "ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "a"}]}
    ),
    _svc(
        {"clusterIP": "10.96.0.1", "ports": [{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]}
    ),
    _svc({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "name": "Not_A_Label"}]}),
    _svc({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "targetPort": "-bad-"}]}),
    _svc({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "targetPort": 70000}]}),
    _svc({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "targetPort": "0"}]}),
    _svc({"clusterIP": "10.96.0.1", "ports": [{"port": 80, "nodePort": 30000}]}),
    _svc(
        {"type": "NodePort", "clusterIP": "10.96.0.1", "ports": [{"port": 80, "nodePort": 70000}]}
    ),
    _svc({"type": "Weird", "clusterIP": "10.96.0.1", "ports": [_P80]}),
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80], "sessionAffinity": "Cookie"}),
    _svc(
        {
            "clusterIP": "10.96.0.1",
            "ports": [_P80],
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}},
        }
    ),
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80], "externalTrafficPolicy": "Nearby"}),
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80], "internalTrafficPolicy": ""}),
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80], "externalIPs": ["nope"]}),
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80], "loadBalancerSourceRanges": ["x/8"]}),
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80], "healthCheckNodePort": 70000}),
    {
        **_svc({"clusterIP": "10.96.0.1", "ports": [_P80]}),
        "status": {"loadBalancer": {"ingress": [{"ip": "bad"}]}},
    },
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80]}, name="Web"),
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80]}, name=""),
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80]}, namespace=""),
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80]}, namespace="Bad_Namespace"),
    _svc({"type": "ExternalName", "externalName": "not a name"}),
]
INVALID_SLICES = [
    _slice([{"addresses": ["10.0.0.300"]}]),
    _slice([{"addresses": []}]),
    _slice([{"conditions": {"ready": True}}]),
    _slice([{"addresses": ["fd00::1"]}]),  # not IPv4
    _slice([{"addresses": ["10.0.0.1"]}], "IPv6"),
    _slice([_EP], None),  # no addressType
    _slice([_EP], "IPv5"),
    _slice([_EP], ports=[{"name": "a", "port": 1}, {"name": "a", "port": 2}]),
    _slice([_EP], ports=[{"port": 0}]),
    _slice([_EP], ports=[{"port": 80, "protocol": "icmp"}]),
    _slice([_EP], name=""),
    _slice([_EP], namespace="Bad"),
]
# types the structs do not take: the whole page goes the JSON path
MISTYPED = [
    _svc({"clusterIP": "10.96.0.1", "ports": [{"port": "80"}]}),
    _svc({"clusterIP": "10.96.0.1", "ports": None}),
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80]}, labels={"a": 1}),
    _svc({"clusterIP": "10.96.0.1", "ports": [_P80], "publishNotReadyAddresses": "yes"}),
]


def _page(items: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"kind": "List", "metadata": {"resourceVersion": "42", "continue": "next"}, "items": items}
    ).encode()


def _results(codec_: Any, items: list[dict[str, Any]]) -> list[Any]:
    """Per item: (key, version, objects) or (key, version, the InvalidField's message)."""
    got, rv, token = codec_.page(_page(copy.deepcopy(items)))
    assert (rv, token) == ("42", "next")
    out = []
    for key, version, raw in got:
        try:
            out.append((key, version, list(codec_.objects(raw))))
        except InvalidField as e:
            out.append((key, version, str(e)))
    return out


@pytest.mark.parametrize(
    ("resource", "items"),
    [(SERVICE, [d]) for d in VALID_SERVICES + INVALID_SERVICES + MISTYPED]
    + [(SLICE, [d]) for d in VALID_SLICES + INVALID_SLICES]
    + [(SERVICE, VALID_SERVICES + INVALID_SERVICES + MISTYPED[:1]), (SLICE, VALID_SLICES)],
)
def test_same_objects_and_errors_as_the_json_path(resource, items) -> None:
    assert _results(ModelCodec(resource), items) == _results(JsonCodec(resource), items)


def test_the_corpus_holds_what_it_says() -> None:
    for resource, valid, invalid in (
        (SERVICE, VALID_SERVICES, INVALID_SERVICES),
        (SLICE, VALID_SLICES, INVALID_SLICES),
    ):
        results = _results(JsonCodec(resource), valid + invalid)
        assert [isinstance(r[2], str) for r in results] == [False] * len(valid) + [True] * len(
            invalid
        )


def test_api_server_objects_take_the_fast_path(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(_codec, "parse_object", lambda *a, **k: calls.append(a))
    plain = w.cluster_docs(20, 5)
    for resource, items in (
        (SERVICE, [d for d in plain if d["kind"] == "Service"] + VALID_SERVICES[:5]),
        (SLICE, [d for d in plain if d["kind"] == "EndpointSlice"] + VALID_SLICES[:6]),
    ):
        assert all(isinstance(r[2], list) for r in _results(ModelCodec(resource), items))
    assert calls == []


def test_watch_events_as_the_json_path() -> None:
    for line in (
        {"type": "MODIFIED", "object": VALID_SERVICES[0]},
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
    ):
        data = json.dumps(line).encode()
        assert ModelCodec(SERVICE).event(data) == JsonCodec(SERVICE).event(data)


def test_nodes_keep_the_json_codec() -> None:
    assert isinstance(codec(RESOURCES["Node"]), JsonCodec)
    assert isinstance(codec(SLICE), ModelCodec)


def _state(make: Any, docs: list[dict[str, Any]]) -> ClusterState:
    state = ClusterState()
    for resource in (SERVICE, SLICE):
        items = [d for d in docs if d.get("kind") == resource.kind]
        c = make(resource)
        got, _, _ = c.page(_page(copy.deepcopy(items)))
        for _, _, raw in got:
            with contextlib.suppress(InvalidField):
                state.apply(c.objects(raw))
    return state


def test_same_rulesets_from_both_backends() -> None:
    docs = (
        w.cluster_docs(50, 3)
        + [{"kind": "Service", **d} for d in VALID_SERVICES + INVALID_SERVICES]
        + [{"kind": "EndpointSlice", **d} for d in VALID_SLICES + INVALID_SLICES]
    )
    fast, slow = _state(ModelCodec, docs), _state(JsonCodec, docs)
    assert fast.snapshot().services == slow.snapshot().services
    assert fast.snapshot().slices == slow.snapshot().slices
    for family in ("ipv4", "ipv6"):
        config = ProxyConfig(node_name="n1", family=family, cluster_cidr="10.0.0.0/8")
        for render in (render_full, lambda s, c: format_tables(render_nft(s, c))):
            assert render(fast.snapshot(), config) == render(slow.snapshot(), config)


class _Response:
    """What the transport gives a list: the body in pieces of SIZE bytes."""

    def __init__(self, body: bytes, size: int) -> None:
        self.body, self.size = body, size

    def stream(self, _amt: int) -> Any:
        for at in range(0, len(self.body), self.size):
            yield self.body[at : at + self.size]


def _streamed(codec_: ModelCodec, body: bytes, size: int) -> tuple[list[Any], str, str, int]:
    """Every item's (key, version, objects or error) as `stream` delivers them, the last
    run's resourceVersion and continue token, and how many runs there were."""
    out: list[Any] = []
    runs, head = 0, ("", "")
    for items, *last in codec_.stream(_Response(body, size)):
        runs, head = runs + 1, tuple(last)
        for key, version, raw in items:
            try:
                out.append((key, version, list(codec_.objects(raw))))
            except InvalidField as e:
                out.append((key, version, str(e)))
    return out, *head, runs


@pytest.mark.parametrize("size", [1, 7, 64, 1000, 1 << 20])
def test_a_list_decoded_while_it_arrives_is_the_whole_list(size) -> None:
    for resource, items in (
        (SERVICE, VALID_SERVICES + INVALID_SERVICES),
        (SLICE, VALID_SLICES + INVALID_SLICES + [w.cluster_docs(3, 2)[1]]),
        (SERVICE, VALID_SERVICES[:3] + MISTYPED),  # a run of the JSON path
        (SERVICE, []),
    ):
        doc = {"kind": "List", "metadata": {"resourceVersion": "42", "continue": "next"}}
        compact = json.dumps({**doc, "items": items}, separators=(",", ":")).encode()
        spaced = json.dumps({**doc, "items": items}).encode()  # not the layout: whole
        want = (_results(JsonCodec(resource), items), "42", "next")
        for body in (compact, spaced):
            assert _streamed(ModelCodec(resource), body, size)[:3] == want
        if size < 100 and len(items) > 2:
            assert _streamed(ModelCodec(resource), compact, size)[3] > 1  # really in runs


def test_a_truncated_list_is_an_error() -> None:
    body = json.dumps({"metadata": {}, "items": VALID_SERVICES}, separators=(",", ":"))
    with pytest.raises(ValueError):
        _streamed(ModelCodec(SERVICE), body.encode()[:-40], 64)
