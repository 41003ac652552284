"""The lab's ten exercises against a real emulated cluster (real traffic, real tools)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from netplane.cluster.node.plumbing import NETNS_DIR

pytestmark = pytest.mark.slow
COLOR = re.compile(
    r"This is pod (?P<pod>\S+/\S+) on linux/\w+, serving / for (?P<ip>[\d.]+):(?P<port>\d+)\."
)


def answers(text: str) -> list[re.Match]:
    return [m for m in (COLOR.fullmatch(line) for line in text.splitlines()) if m]


@pytest.fixture(scope="module")
def blue(lab):
    """Exercises 1-2: `create deployment blue --image=jpetazzo/color`, `expose --port=80`."""
    assert "deployment.apps/blue created" in lab.np(
        "create", "deployment", "blue", "--image=jpetazzo/color"
    )
    assert "service/blue exposed" in lab.np("expose", "deployment", "blue", "--port=80")
    (pod,) = lab.wait_ready(count=1)
    return pod


def cluster_ip(lab, name: str, namespace: str = "default") -> str:
    return lab.obj("svc", name, namespace)["spec"]["clusterIP"]


def test_exercise_3_curl_from_a_node_is_masqueraded(lab, blue):
    ip = cluster_ip(lab, "blue")
    node = blue["spec"]["nodeName"]
    got = [answers(lab.curl("--node", node, url=f"http://{ip}")) for _ in range(10)]
    assert all(len(a) == 1 for a in got), got
    assert {a[0]["pod"] for a in got} == {f"default/{blue['metadata']['name']}"}
    # From the pod's own node the client is the bridge address (cni0, 10.244.N.1): the
    # source is masqueraded to the address facing the pod, as on the lab's pi-red.
    bridge = blue["status"]["podIP"].rsplit(".", 1)[0] + ".1"
    assert {a[0]["ip"] for a in got} == {bridge}
    other = next(n for n in ("pi-red", "pi-black") if n != node)
    (m,) = answers(lab.curl("--node", other, url=f"http://{ip}"))
    assert m["ip"] == lab.obj("node", other)["status"]["addresses"][0]["address"]


def test_exercise_4_deleting_the_pod_under_a_curl_loop_recovers(lab, blue):
    ip = cluster_ip(lab, "blue")
    old = lab.pods()
    assert len(old) == 1
    node_ns = NETNS_DIR / f"{lab.id}-pi-black"
    loop = subprocess.Popen(
        [
            "nsenter",
            f"--net={node_ns}",
            sys.executable,
            "-m",
            "netplane.testing.probe",
            f"http://{ip}/",
            "--count",
            "120",
            "--interval",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    lab.np("delete", "pod", old[0]["metadata"]["name"])
    out, _ = loop.communicate(timeout=60)
    lines = [json.loads(x) for x in out.splitlines()]
    (new,) = lab.wait_ready(count=1)
    assert new["metadata"]["name"] != old[0]["metadata"]["name"]
    assert new["status"]["podIP"] != old[0]["status"]["podIP"]  # host-local round robin
    pods = [COLOR.fullmatch(x["body"])["pod"] if x["ok"] else None for x in lines]
    new_name = f"default/{new['metadata']['name']}"
    assert pods[-1] == new_name, lines[-5:]
    last_old = max(i for i, p in enumerate(pods) if p == f"default/{old[0]['metadata']['name']}")
    first_new = pods.index(new_name)
    gap = lines[first_new]["t"] - lines[last_old]["t"]
    failures = sum(1 for x in lines if not x["ok"])
    print(f"failover: {failures} failed requests, gap {gap:.2f} s between pods")


def test_exercise_5_three_replicas_share_the_requests(lab, blue):
    lab.np("scale", "deployment", "blue", "--replicas=3")
    pods = lab.wait_ready(count=3)
    assert len({p["spec"]["nodeName"] for p in pods}) == 2  # spread over both nodes
    ip = cluster_ip(lab, "blue")
    script = f"for i in $(seq 30); do curl -s -m 3 http://{ip}; done"
    seen = Counter(
        m["pod"] for m in answers(lab.np("exec", "--node", "pi-red", "--", "sh", "-c", script))
    )
    assert sum(seen.values()) == 30
    assert set(seen) == {f"default/{p['metadata']['name']}" for p in pods}, seen


@pytest.fixture(scope="module")
def client(lab, blue):
    lab.np("run", "client", "--image=alpine", "--", "sleep", "infinity")
    lab.wait_ready()
    return next(p for p in lab.pods() if p["metadata"]["name"] == "client")


def test_exercise_6_pod_to_service_by_name_keeps_the_pod_address(lab, client):
    for _ in range(3):
        (m,) = answers(lab.curl("client", url="blue"))
        assert m["ip"] == client["status"]["podIP"]


def test_pod_resolv_conf_is_kubelets(lab, client):
    assert lab.np("exec", "client", "--", "cat", "/etc/resolv.conf").splitlines() == [
        "search default.svc.cluster.local svc.cluster.local cluster.local",
        "nameserver 10.96.0.10",
        "options ndots:5",
    ]


def test_exercise_7_node_port_answers_on_every_node_from_the_laptop(lab, blue):
    lab.np("expose", "deployment", "blue", "--port=80", "--type=NodePort", "--name=blue-np")
    svc = lab.obj("svc", "blue-np")
    port = svc["spec"]["ports"][0]["nodePort"]
    assert 30000 <= port <= 32767
    for node in ("pi-red", "pi-black"):
        address = lab.obj("node", node)["status"]["addresses"][0]["address"]
        assert answers(lab.curl("--outside", url=f"http://{address}:{port}")), node


def test_cluster_ips_do_not_answer_outside_the_cluster(lab, blue):
    assert lab.curl("--outside", url=f"http://{cluster_ip(lab, 'blue')}", timeout=1) == ""


def test_exercise_8_names_across_namespaces(lab, client):
    manifest = """
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: thesvc, namespace: other}
spec:
  replicas: 1
  selector: {matchLabels: {app: thesvc}}
  template:
    metadata: {labels: {app: thesvc}}
    spec: {containers: [{name: web, image: jpetazzo/color}]}
---
apiVersion: v1
kind: Service
metadata: {name: thesvc, namespace: other}
spec:
  selector: {app: thesvc}
  ports: [{port: 80}]
"""
    lab.np("apply", "-f", "-", stdin=manifest)
    lab.wait_ready("other", count=1)
    (m,) = answers(lab.curl("client", url="thesvc.other"))
    assert m["pod"].startswith("other/thesvc-")
    assert lab.np(
        "exec", "client", "--", "dig", "+short", "+search", "kubernetes.default.svc"
    ).split() == ["10.96.0.1"]
    version = lab.np(
        "exec", "client", "--", "curl", "-sk", "https://kubernetes.default.svc/version"
    )
    assert json.loads(version)["gitVersion"] == "v1.33.2"


def test_exercise_9_external_name_selectorless_and_load_balancer(lab, client):
    manifest = """
apiVersion: v1
kind: Service
metadata: {name: numbers-api}
spec: {type: ExternalName, externalName: numbersapi.com}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: ext}
subsets: [{addresses: [{ip: 192.168.123.234}], ports: [{port: 80}]}]
"""
    lab.np("apply", "-f", "-", stdin=manifest)
    cname = lab.np("exec", "client", "--", "dig", "+short", "+search", "numbers-api")
    assert cname.splitlines()[0] == "numbersapi.com."
    deadline = time.monotonic() + 10  # the mirroring controller runs after apply returns
    while "192.168.123.234:80" not in lab.np("get", "endpoints", "ext"):
        assert time.monotonic() < deadline, "Endpoints were not mirrored to a slice"
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while "--to-destination 192.168.123.234:80" not in lab.np(
        "exec", "--node", "pi-red", "--", "iptables-save", "-t", "nat"
    ):
        assert time.monotonic() < deadline, "the proxy never programmed the hand-written endpoint"
        time.sleep(0.2)
    lab.np(
        "expose",
        "deployment",
        "blue",
        "--port=8080",
        "--target-port=80",
        "--type=LoadBalancer",
        "--name=blue-lb",
    )
    lb = lab.obj("svc", "blue-lb")["status"]["loadBalancer"]["ingress"][0]["ip"]
    assert lb == "192.168.0.240"
    assert answers(lab.curl("--outside", url=f"http://{lb}:8080"))


def test_exercise_10_service_environment_variables(lab, client):
    ip = cluster_ip(lab, "blue")
    env = dict(
        line.split("=", 1)
        for line in lab.np("exec", "client", "--", "env").splitlines()
        if "=" in line
    )
    assert env["BLUE_SERVICE_HOST"] == ip
    assert env["BLUE_SERVICE_PORT"] == "80"
    assert env["BLUE_PORT"] == f"tcp://{ip}:80"
    assert env["BLUE_PORT_80_TCP"] == f"tcp://{ip}:80"
    assert env["BLUE_PORT_80_TCP_PROTO"] == "tcp"
    assert env["BLUE_PORT_80_TCP_PORT"] == "80"
    assert env["BLUE_PORT_80_TCP_ADDR"] == ip
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    # only services that existed when the pod started: a new one shows in new pods only
    lab.np("expose", "deployment", "blue", "--port=81", "--target-port=80", "--name=late")
    assert "LATE_SERVICE_HOST" not in lab.np("exec", "client", "--", "env")
    lab.np("run", "late-client", "--image=busybox", "--", "sleep", "infinity")
    lab.wait_ready()
    assert f"LATE_SERVICE_HOST={cluster_ip(lab, 'late')}" in lab.np(
        "exec", "late-client", "--", "env"
    )


def test_get_tables(lab, blue):
    nodes = lab.np("get", "nodes", "-o", "wide").splitlines()
    assert nodes[0].split()[:5] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert any(
        line.startswith("pi-red ") and "control-plane" in line and "192.168.0.152" in line
        for line in nodes
    )
    svc = lab.np("get", "svc", "-A").splitlines()
    assert re.match(
        r"kube-system\s+kube-dns\s+ClusterIP\s+10\.96\.0\.10\s+<none>\s+"
        r"53/UDP,53/TCP,9153/TCP",
        next(x for x in svc if "kube-dns" in x),
    )
    assert "blue" in lab.np("get", "deployments")
    assert "ADDRESSTYPE" in lab.np("get", "endpointslices")
    described = lab.np("describe", "svc", "blue")
    assert re.search(r"Endpoints:\s+(\d+\.){3}\d+:80", described), described
    assert re.search(rf"\nIP: +{re.escape(cluster_ip(lab, 'blue'))}\n", described), described
    out = lab.run("get", "pods", "nope")
    assert out.returncode == 1 and 'pods "nope" not found' in out.stderr


def test_up_is_idempotent_and_crashed_children_are_restarted(lab, blue):
    assert "already running" in lab.np("up")
    pid_file = lab.state / "pids" / "runtime-pi-red.pid"
    pid = json.loads(pid_file.read_text())["pid"]
    subprocess.run(["kill", "-9", str(pid)], check=True)
    deadline = time.monotonic() + 15
    ip = cluster_ip(lab, "blue")
    while True:
        new_pid = json.loads(pid_file.read_text())["pid"] if pid_file.exists() else pid
        got = [answers(lab.curl("--node", "pi-red", url=f"http://{ip}")) for _ in range(6)]
        if new_pid != pid and all(got):
            break
        assert time.monotonic() < deadline, "the runtime was not restarted"
        time.sleep(0.2)


ECHO = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: example.com/echo:1
        ports:
        - {name: http, containerPort: 8080}
        - {name: udp, containerPort: 5353, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports:
  - {name: web, port: 80, targetPort: http}
  - {name: udp, port: 53, targetPort: udp, protocol: UDP}
"""
UDP_CLIENT = (
    "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); "
    "s.sendto(b'ping', (sys.argv[1], 53)); print(s.recv(100).decode())"
)


def test_other_images_echo_on_their_named_container_ports(lab, client):
    lab.np("apply", "-f", "-", stdin=ECHO)
    lab.wait_ready()
    line = lab.curl("client", url="http://echo/hello")
    assert re.fullmatch(
        rf"pod default/echo-\S+: GET /hello from {re.escape(client['status']['podIP'])}:\d+\n",
        line,
    ), line
    ip = cluster_ip(lab, "echo")
    assert lab.np("exec", "client", "--", sys.executable, "-c", UDP_CLIENT, ip).strip() == "ping"


def test_trace_reads_a_nodes_live_rules(lab, blue):
    """`netplane trace --node`: the node's rules, read in its namespace, predict the endpoints
    a pod's connection to the service can reach (each node holds every ready endpoint)."""
    pods = [p for p in lab.wait_ready() if p["metadata"]["name"].startswith("blue-")]
    ready = {f"{p['status']['podIP']}:80" for p in pods}
    for node in ("pi-red", "pi-black"):
        argv = ("trace", "--node", node, "--src", "10.244.0.250", "--dst", cluster_ip(lab, "blue"),
                "--port", "80", "--json")  # fmt: skip
        deadline = time.monotonic() + 15
        while set((doc := json.loads(lab.np(*argv)))["endpoints"]) != ready:
            assert time.monotonic() < deadline, (node, doc["endpoints"], ready)
            time.sleep(0.5)
        assert abs(sum(doc["endpoints"].values()) - 1) < 1e-5
        assert f"-{node} " in doc["rules"]["origin"] + " "
    assert "no node named" in lab.run("trace", "--node", "nope", "--src", "1.1.1.1",
                                      "--dst", "2.2.2.2", "--port", "1").stderr  # fmt: skip
