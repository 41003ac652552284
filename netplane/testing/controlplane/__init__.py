"""A real Kubernetes control plane (etcd + kube-apiserver) in network namespaces.

The one module through which netplane's tests and benchmarks talk to the real thing:

    from netplane.testing.controlplane import ControlPlane

    with ControlPlane() as cp:                       # starts in seconds, removes everything
        node = cp.add_node("node-a")                 # a namespace on the hub, a Node object
        cp.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080")
        kubeconfig = cp.token_kubeconfig("kube-system", "netplane-proxy")  # for the node
        cp.stop_apiserver(); cp.start_apiserver()    # outage tests

Topology (all namespaces made here, deleted by `close()`; the root namespace is untouched):

    hub namespace: bridge br0 --veth-- control-plane namespace: eth0 172.30.0.2
                              --veth-- node namespace: eth0 172.30.1.1, 172.30.1.2, ...

etcd listens on 127.0.0.1 inside the control-plane namespace; kube-apiserver on
172.30.0.2:6443 (TLS with a CA made here, client certificates and ServiceAccount tokens,
`--authorization-mode=Node,RBAC`, service CIDR 10.96.0.0/12). Processes in node namespaces use
`https://172.30.0.2:6443`; tests, kubectl and benchmarks in the root namespace go through a
relay on the root namespace's loopback (see _relay.py). Kubeconfigs are written for either
side (`host=True` for the root namespace).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from netplane import netns
from netplane.testing import anchors
from netplane.testing.controlplane._api import Api, ApiError
from netplane.testing.controlplane._pki import CertificateAuthority, KeyPair, service_account_keys

__all__ = ["APISERVER_IP", "SERVICE_CIDR", "Api", "ApiError", "ControlPlane", "Node"]

APISERVER_IP = "172.30.0.2"
APISERVER_PORT = 6443
NETWORK_PREFIX = 16  # 172.30.0.0/16 on the hub
SERVICE_CIDR = "10.96.0.0/12"
POD_CIDR = "10.244.0.0/16"  # node i gets 10.244.i.0/24 as spec.podCIDR
ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN = ("kubernetes-admin", ("system:masters",))
CONTROLLER_MANAGER = "system:kube-controller-manager"

# Where each kind is created (the objects tests and benchmarks make).
_COLLECTIONS = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Service": ("/api/v1", "services", True),
    "Endpoints": ("/api/v1", "endpoints", True),
    "Pod": ("/api/v1", "pods", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Node": ("/api/v1", "nodes", False),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
}


def collection_path(kind: str, namespace: str = "") -> str:
    """The REST collection of KIND (in NAMESPACE for namespaced kinds)."""
    try:
        prefix, plural, namespaced = _COLLECTIONS[kind]
    except KeyError:
        raise ValueError(f"no collection known for kind {kind!r}") from None
    if namespaced:
        return f"{prefix}/namespaces/{namespace or 'default'}/{plural}"
    return f"{prefix}/{plural}"


def object_path(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{collection_path(obj['kind'], meta.get('namespace', ''))}/{meta['name']}"


class ControlPlaneError(RuntimeError):
    """The control plane could not start (the message carries the component's log tail)."""


@dataclass(frozen=True)
class Node:
    """A node namespace on the hub (NAME is also its Kubernetes Node name)."""

    name: str
    netns: str
    ip: str
    pod_cidr: str
    hub_link: str = ""  # its veth's end on the hub bridge
    owned: bool = True  # made by add_node (False: an attached namespace)


class _Process:
    """A long-running component inside a namespace, its output in a log file.

    Started through `setpriv --pdeathsig KILL`: if the test process dies, the kernel kills
    the component too (start control planes from a thread that lives as long as they do).
    """

    def __init__(self, name: str, ns: str, argv: Sequence[str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "ip", "netns", "exec", ns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check(self) -> None:
        if not self.alive():
            raise ControlPlaneError(
                f"{self.name} exited ({self.proc.returncode}); {self.log}:\n{self.tail()}"
            )

    def stop(self, deadline: float = 5.0) -> float:
        """SIGTERM, SIGKILL after DEADLINE seconds; seconds until it was gone."""
        start = time.monotonic()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(deadline)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return time.monotonic() - start


class ControlPlane:
    """etcd + kube-apiserver (optionally kube-controller-manager) in namespaces; see module doc.

    `start()` (or `with ControlPlane() as cp`) brings it up and waits until the API server
    is ready and RBAC answers; `close()` stops every process, deletes every namespace and
    removes its directory, also after a failed start.
    """

    def __init__(
        self,
        prefix: str = "npk8s",
        controller_manager: bool = False,
        directory: Path | None = None,
        start_timeout: float = 180.0,
    ) -> None:
        self.prefix = prefix
        self.with_controller_manager = controller_manager
        self.start_timeout = start_timeout
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="netplane-cp-"))
        self.hub = ""
        self.netns = ""  # the control plane's namespace
        self.nodes: dict[str, Node] = {}
        self._node_count = 0
        self._namespaces: list[str] = []
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._controller_manager: _Process | None = None
        self._relay: subprocess.Popen | None = None
        self.host_port = 0  # the relay's port on the root namespace's loopback
        self._certs: dict[tuple[str, tuple[str, ...]], KeyPair] = {}
        self._bins: dict[str, Path] = {}
        self.api: Api  # admin client, root namespace (through the relay)

    # ---- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> ControlPlane:
        try:
            needed = ["etcd", "kube-apiserver"]
            if self.with_controller_manager:
                needed.append("kube-controller-manager")
            self._bins = anchors.require(*needed)
            self._make_pki()
            self._make_network()
            self._start_etcd()
            self._start_relay()
            self.api = Api("127.0.0.1", self.host_port, self.ca, *self._cert(*ADMIN))
            self.start_apiserver()
            if self.with_controller_manager:
                self.start_controller_manager()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every process, delete every namespace and (unless given) the directory."""
        if getattr(self, "api", None) is not None:
            with contextlib.suppress(Exception):
                self.api.close()
        for proc in (self._controller_manager, self._apiserver, self._etcd):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.stop(deadline=2.0)
        self._controller_manager = self._apiserver = self._etcd = None
        if self._relay is not None:
            netns.stop(self._relay)
            self._relay = None
        for ns in reversed(self._namespaces):  # the hub goes last: attached nodes lose their link
            netns.delete(ns)
        self._namespaces.clear()
        self.nodes.clear()
        if self._own_directory and os.environ.get("NETPLANE_KEEP_CONTROLPLANE") != "1":
            shutil.rmtree(self.directory, ignore_errors=True)

    # ---- setup ----------------------------------------------------------------------------

    @property
    def ca(self) -> Path:
        return self.directory / "pki" / "ca.crt"

    @property
    def url(self) -> str:
        """The API server as seen from node namespaces (and the control plane's own)."""
        return f"https://{APISERVER_IP}:{APISERVER_PORT}"

    @property
    def host_url(self) -> str:
        """The API server as seen from the root namespace (through the relay)."""
        return f"https://127.0.0.1:{self.host_port}"

    def _make_pki(self) -> None:
        pki = self.directory / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        self._ca = CertificateAuthority(pki)
        self._serving = self._ca.issue(
            "apiserver",
            "kube-apiserver",
            server_names=(
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "localhost",
            ),
            server_ips=("127.0.0.1", APISERVER_IP, "10.96.0.1"),
        )
        self._sa = service_account_keys(pki)

    def _cert(self, user: str, groups: Sequence[str] = ()) -> KeyPair:
        key = (user, tuple(groups))
        if key not in self._certs:
            stem = re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join((user, *groups)))
            self._certs[key] = self._ca.issue(f"client-{stem}", user, groups)
        return self._certs[key]

    def _make_network(self) -> None:
        self.hub = self._namespace("h")
        netns.bridge(self.hub, "br0")
        self.netns = self._namespace("c")
        self._attach(self.netns, "vcp", f"{APISERVER_IP}/{NETWORK_PREFIX}")

    def _namespace(self, role: str) -> str:
        name = netns.create(netns.unique_name(f"{self.prefix}{role}"))
        self._namespaces.append(name)
        return name

    def _attach(self, ns: str, hub_end: str, cidr: str, link: str = "eth0") -> None:
        netns.veth(self.hub, hub_end, ns, link)
        netns.ip("-n", self.hub, "link", "set", hub_end, "master", "br0")
        netns.address(ns, link, cidr)

    def _start_etcd(self) -> None:
        data = self.directory / "etcd"
        self._etcd = _Process(
            "etcd",
            self.netns,
            [
                str(self._bins["etcd"]),
                "--name=cp",
                f"--data-dir={data}",
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=cp=http://127.0.0.1:2380",
                "--unsafe-no-fsync",  # test data: losing it on a host crash is fine
                "--quota-backend-bytes=8589934592",  # 10k services re-created can pass 2 GiB
                "--auto-compaction-mode=periodic",
                "--auto-compaction-retention=5m",
                "--log-level=warn",
            ],
            self.directory / "etcd.log",
        )

    def _start_relay(self) -> None:
        self._relay = subprocess.Popen(
            [
                *("setpriv", "--pdeathsig", "KILL", sys.executable, "-m"),
                "netplane.testing.controlplane._relay",
                *(self.netns, "127.0.0.1", str(APISERVER_PORT)),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        line = self._relay.stdout.readline() if self._relay.stdout else ""
        if not line.strip().isdigit():
            raise ControlPlaneError(f"the API relay did not start (said {line!r})")
        self.host_port = int(line)

    def _apiserver_argv(self) -> list[str]:
        pki = self.directory / "pki"
        return [
            str(self._bins["kube-apiserver"]),
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0",
            f"--secure-port={APISERVER_PORT}",
            f"--advertise-address={APISERVER_IP}",
            f"--tls-cert-file={self._serving.cert}",
            f"--tls-private-key-file={self._serving.key}",
            f"--client-ca-file={self.ca}",
            f"--service-account-issuer={ISSUER}",
            f"--api-audiences={ISSUER}",
            f"--service-account-key-file={self._sa.cert}",
            f"--service-account-signing-key-file={self._sa.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--kubelet-preferred-address-types=InternalIP,Hostname",  # as kubeadm: no DNS here
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            f"--cert-dir={pki}",
            "--profiling=false",
            "--v=1",
        ]

    # ---- the API server: start, stop, readiness ----------------------------------------------

    def start_apiserver(self, timeout: float | None = None) -> float:
        """Start kube-apiserver and wait until it is ready and RBAC authorizes; seconds taken."""
        if self._apiserver is not None and self._apiserver.alive():
            raise ControlPlaneError("kube-apiserver is already running")
        start = time.monotonic()
        self._apiserver = _Process(
            "kube-apiserver", self.netns, self._apiserver_argv(), self.directory / "apiserver.log"
        )
        self.wait_ready(timeout)
        return time.monotonic() - start

    def stop_apiserver(self, deadline: float = 5.0) -> float:
        """SIGTERM, then SIGKILL after DEADLINE (it holds watches open ~50 s); seconds taken.
        DEADLINE 0 kills at once, like a crash."""
        if self._apiserver is None:
            return 0.0
        if deadline <= 0 and self._apiserver.alive():
            self._apiserver.proc.kill()
        seconds = self._apiserver.stop(deadline)
        self._apiserver = None
        self.api.close()
        return seconds

    @property
    def apiserver_running(self) -> bool:
        return self._apiserver is not None and self._apiserver.alive()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until /readyz is 200 and a plain RBAC identity (kube-proxy's) may list Services:
        right after a start the API server answers 403 while its RBAC caches fill."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        proxier = Api("127.0.0.1", self.host_port, self.ca, *self._cert("system:kube-proxy"))
        try:
            for api, path in ((self.api, "/readyz"), (proxier, "/api/v1/services?limit=1")):
                while True:
                    for proc in (self._etcd, self._apiserver):
                        if proc is not None:
                            proc.check()
                    try:
                        api.wait(path, min(2.0, max(0.0, deadline - time.monotonic())), path)
                        break
                    except TimeoutError as e:
                        if time.monotonic() > deadline:
                            log = self._apiserver.tail() if self._apiserver else ""
                            raise ControlPlaneError(f"kube-apiserver: {e}\n{log}") from e
        finally:
            proxier.close()

    # ---- kube-controller-manager ------------------------------------------------------------

    def start_controller_manager(self) -> None:
        """kube-controller-manager (EndpointSlice, ServiceAccount, ... controllers) beside the
        API server, for tests that need Services with selectors turned into slices."""
        if self._controller_manager is not None and self._controller_manager.alive():
            return
        if "kube-controller-manager" not in self._bins:
            self._bins |= anchors.require("kube-controller-manager")
        kubeconfig = self.kubeconfig(CONTROLLER_MANAGER)
        self._controller_manager = _Process(
            "kube-controller-manager",
            self.netns,
            [
                str(self._bins["kube-controller-manager"]),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",  # per-controller RBAC roles, as kubeadm
                f"--service-account-private-key-file={self._sa.key}",
                f"--root-ca-file={self.ca}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-route,-service",
                "--bind-address=127.0.0.1",
                "--secure-port=10257",
                "--v=1",
            ],
            self.directory / "controller-manager.log",
        )

    # ---- identities ---------------------------------------------------------------------------

    def _write_kubeconfig(self, stem: str, user: dict[str, str], host: bool) -> Path:
        path = self.directory / "kubeconfigs" / f"{stem}-{'host' if host else 'node'}.yaml"
        path.parent.mkdir(exist_ok=True)
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "netplane-test",
                    "cluster": {
                        "server": self.host_url if host else self.url,
                        "certificate-authority-data": base64.b64encode(self._ca.pem).decode(),
                    },
                }
            ],
            "users": [{"name": stem, "user": user}],
            "contexts": [{"name": stem, "context": {"cluster": "netplane-test", "user": stem}}],
            "current-context": stem,
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        path.chmod(0o600)
        return path

    def kubeconfig(
        self, user: str = ADMIN[0], groups: Sequence[str] | None = None, *, host: bool = False
    ) -> Path:
        """A kubeconfig with a client certificate for USER in GROUPS (the default is the admin,
        in system:masters). For example `kubeconfig("system:kube-proxy")` is what the real
        kube-proxy uses (bound to system:node-proxier by the default RBAC policy).
        HOST=True: for processes in the root namespace (the relay's address)."""
        if groups is None:
            groups = ADMIN[1] if user == ADMIN[0] else ()
        pair = self._cert(user, groups)
        side = "host" if host else "node"
        path = self.directory / "kubeconfigs" / f"{pair.cert.stem}-{side}.yaml"
        if path.exists():
            return path
        user_entry = {
            "client-certificate-data": base64.b64encode(pair.cert.read_bytes()).decode(),
            "client-key-data": base64.b64encode(pair.key.read_bytes()).decode(),
        }
        return self._write_kubeconfig(pair.cert.stem, user_entry, host)

    def token(self, namespace: str, serviceaccount: str, seconds: int = 86400) -> str:
        """A ServiceAccount token from the TokenRequest API (the account must exist)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [ISSUER], "expirationSeconds": seconds},
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{serviceaccount}/token"
        return self.api.post(path, body)["status"]["token"]

    def token_kubeconfig(self, namespace: str, serviceaccount: str, *, host: bool = False) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount NAMESPACE/SERVICEACCOUNT,
        exactly what a pod running under it would have."""
        token = self.token(namespace, serviceaccount)
        return self._write_kubeconfig(f"sa-{namespace}-{serviceaccount}", {"token": token}, host)

    # ---- nodes --------------------------------------------------------------------------------

    def add_node(self, name: str, register: bool = True, namespace: str = "") -> Node:
        """A node namespace on the hub (eth0 172.30.1.N/16) and, with REGISTER, its Node object
        (InternalIP, Hostname, spec.podCIDR 10.244.N.0/24), as kube-proxy looks itself up.

        NAMESPACE attaches an existing namespace instead (a `Lab` node, say): it gets the
        hub link only, and stays when the node is removed.
        """
        if name in self.nodes:
            raise ValueError(f"node {name!r} exists already")
        self._node_count += 1
        index = self._node_count
        node_ip = f"172.30.{1 + index // 250}.{index % 250 + 1}"
        owned = not namespace
        ns = self._namespace("n") if owned else namespace
        link = "eth0" if owned else "cp0"
        self._attach(ns, f"vn{index}", f"{node_ip}/{NETWORK_PREFIX}", link)
        node = Node(name, ns, node_ip, f"10.244.{index}.0/24", f"vn{index}", owned)
        self.nodes[name] = node
        if register:
            self.create_missing([node_object(node)])
        return node

    def remove_node(self, name: str) -> None:
        """Delete the node's namespace (everything in it goes too) or, for an attached one,
        its hub link; and its Node object."""
        node = self.nodes.pop(name)
        if node.owned:
            netns.delete(node.netns)
            with contextlib.suppress(ValueError):
                self._namespaces.remove(node.netns)
        else:
            with contextlib.suppress(netns.NetnsError):
                netns.ip("-n", self.hub, "link", "del", node.hub_link)
        if self.apiserver_running:
            self.api.delete(f"/api/v1/nodes/{name}", ok=(404,))

    # ---- objects ------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """The real kubectl as the admin, from the root namespace; stdout."""
        if "kubectl" not in self._bins:
            self._bins |= anchors.require("kubectl")
        argv = [str(self._bins["kubectl"]), f"--kubeconfig={self.kubeconfig(host=True)}", *args]
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=300)
        if check and done.returncode != 0:
            raise ApiError("kubectl", " ".join(args), done.returncode, done.stderr.strip())
        return done.stdout

    def apply_manifest(self, path: str | os.PathLike) -> str:
        """`kubectl apply -f PATH` (server-side validation of every field)."""
        return self.kubectl("apply", "-f", str(path))

    def create_missing(self, objects: Iterable[dict[str, Any]], threads: int = 4) -> int:
        """Create those of OBJECTS whose name does not exist yet; how many were created.

        Lists each collection first: POSTing objects that exist (409) still rewrites the
        ClusterIP allocator in etcd, and re-running a 10k-service setup that way once filled
        etcd's quota.
        """
        by_collection: dict[str, list[dict[str, Any]]] = {}
        for obj in objects:
            meta = obj["metadata"]
            by_collection.setdefault(
                collection_path(obj["kind"], meta.get("namespace", "")), []
            ).append(obj)
        missing: list[tuple[str, dict[str, Any]]] = []
        for path, wanted in by_collection.items():
            have = self.names(path)
            missing += [(path, o) for o in wanted if o["metadata"]["name"] not in have]
        if not missing:
            return 0

        def create(item: tuple[str, dict[str, Any]]) -> None:
            self.api.post(item[0], item[1], ok=(409,))

        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(create, missing):
                pass
        return len(missing)

    def names(self, path: str) -> set[str]:
        """Names in a collection, listed in pages."""
        names: set[str] = set()
        token = ""
        while True:
            query = "?limit=1000" + (f"&continue={token}" if token else "")
            page = self.api.get(path + query)
            names.update(item["metadata"]["name"] for item in page.get("items") or ())
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return names

    def ensure_namespace(self, name: str) -> None:
        self.create_missing([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])

    # ---- etcd ---------------------------------------------------------------------------------

    def etcd(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to etcd's JSON gateway (`/v3/kv/range`, `/v3/kv/compaction`, ...), from inside
        the control plane's namespace."""
        url = f"http://127.0.0.1:2379{endpoint}"
        out = netns.run(self.netns, ["curl", "-sf", "-X", "POST", url, "-d", json.dumps(body)])
        return json.loads(out or "{}")

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now, as the API server does every 5 minutes: every
        older resourceVersion is then gone (a watch or list from it gets 410). The revision."""
        key = base64.b64encode(b"/registry").decode()
        revision = int(self.etcd("/v3/kv/range", {"key": key, "limit": 1})["header"]["revision"])
        self.etcd("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def logs(self, component: str = "apiserver") -> str:
        """The log of `etcd`, `apiserver` or `controller-manager` (all of it)."""
        path = self.directory / f"{component}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def node_object(node: Node) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ip},
                {"type": "Hostname", "address": node.name},
            ]
        },
    }
