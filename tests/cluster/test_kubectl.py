"""The course's kubectl command families against a real `netplane up` cluster, with the
output kubectl gives (formats checked against kubectl v1.33 and kube-apiserver).

All tests share the session's cluster and work in a namespace of their own, so the lab
exercises (test_lab.py) see their `default` namespace as they left it.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from netplane.cluster.node.apiserver import respond
from netplane.cluster.node.plumbing import NETNS_DIR

pytestmark = pytest.mark.slow
NS = "kctl"
COLOR = re.compile(r"This is pod kctl/(\S+) on linux/\w+, serving / for [\d.]+:\d+\.")
AGE = r"(\d+[smhd])+"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@pytest.fixture(scope="module")
def k(lab):
    """The lab, with `k.np(...)` running in namespace kctl and a Deployment `web` (2 color
    pods) behind Service `web`."""
    assert lab.np("create", "namespace", NS) == f"namespace/{NS} created\n"
    lab.np("create", "deployment", "web", "--image=jpetazzo/color", "--replicas=2", "-n", NS)
    lab.np("expose", "deployment", "web", "--port=80", "-n", NS)
    lab.wait_ready(NS, count=2)
    return lab


def kc(lab, *args: str, check: bool = True, stdin: str | None = None) -> str:
    """`netplane ARGS -n kctl` (before a `--`, where the pod's command starts)."""
    i = args.index("--") if "--" in args else len(args)
    return lab.np(*args[:i], "-n", NS, *args[i:], check=check, stdin=stdin)


def listed_pods(lab, selector: str = "app=web") -> list[str]:
    """What `get pods -l` lists: terminating pods too, until their grace period ends."""
    out = kc(lab, "get", "pods", "-l", selector, "-o", "name")
    return sorted(line.removeprefix("pod/") for line in out.splitlines())


def pod_names(lab, selector: str = "app=web") -> list[str]:
    """The selected pods that are not terminating: those a ReplicaSet counts (the
    controller's active pods) and `rollout status` waits for."""
    items = json.loads(kc(lab, "get", "pods", "-l", selector, "-o", "json"))["items"]
    return sorted(
        p["metadata"]["name"] for p in items if not p["metadata"].get("deletionTimestamp")
    )


def wait_for(what, timeout: float = 30, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


# -- output formats ---------------------------------------------------------------------------
def columns(lines: list[str]) -> list[list[str]]:
    """Split a kubectl table by its header's column starts, checking the tabwriter's rule on
    the way: each column is its widest cell plus three spaces, and at least six wide."""
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", lines[0])]
    rows = [
        [line[a:b].rstrip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        for line in lines
    ]
    for j in range(len(starts) - 1):
        widest = max(len(r[j]) for r in rows)
        assert starts[j + 1] - starts[j] == max(6, widest + 3), (j, lines)
    return rows


def test_tables_are_laid_out_as_kubectls(k):
    nodes = columns(k.np("get", "nodes", "-o", "wide").splitlines())
    assert nodes[0] == [
        "NAME",
        "STATUS",
        "ROLES",
        "AGE",
        "VERSION",
        "INTERNAL-IP",
        "EXTERNAL-IP",
        "OS-IMAGE",
        "KERNEL-VERSION",
        "CONTAINER-RUNTIME",
    ]
    assert nodes[2][:3] + nodes[2][4:] == [
        "pi-red",
        "Ready",
        "control-plane",
        "v1.33.2",
        "192.168.0.152",
        "<none>",
        "Debian GNU/Linux 12 (bookworm)",
        platform.release(),
        "containerd://1.7.27",
    ]
    assert re.fullmatch(AGE, nodes[2][3])
    # -L adds a column per key; an empty last cell keeps the padding before it
    lines = kc(k, "get", "pods", "-L", "app", "-L", "tier").splitlines()
    rows = columns(lines)
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "APP", "TIER"]
    assert all(r[1:4] == ["1/1", "Running", "0"] and r[5:] == ["web", ""] for r in rows[1:])
    assert all(line.endswith("web   ") for line in lines[1:]), lines
    rows = columns(kc(k, "get", "deploy", "--show-labels").splitlines())
    assert rows[0] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "LABELS"]
    assert rows[1][:4] + rows[1][5:] == ["web", "2/2", "2", "2", "app=web"]


def test_go_template_captures_the_cluster_ip_as_the_course_does(k):
    # CLUSTER_IP=$(kubectl get svc web -o go-template={{.spec.clusterIP}}): no newline added
    ip = kc(k, "get", "svc", "web", "-o", "go-template={{.spec.clusterIP}}")
    assert re.fullmatch(r"10\.\d+\.\d+\.\d+", ip), repr(ip)
    assert COLOR.fullmatch(k.curl("--node", "pi-black", url=f"http://{ip}").strip())
    text = k.np(
        "get",
        "nodes",
        "-o",
        "go-template={{range .items}}{{.metadata.name}} "
        '{{index .metadata.labels "kubernetes.io/arch"}}{{"\\n"}}{{end}}',
    )
    assert text == f"pi-black {ARCH}\npi-red {ARCH}\n"


def test_jsonpath_and_custom_columns(k):
    out = k.np(
        "get",
        "nodes",
        "-o",
        'jsonpath={.items[*].status.addresses[?(@.type=="InternalIP")].address}',
    )
    assert out == "192.168.0.101 192.168.0.152"
    pods = json.loads(kc(k, "get", "pods", "-o", "json"))["items"]
    out = kc(
        k,
        "get",
        "pods",
        "-o",
        'jsonpath={range .items[*]}{.metadata.name}{"\\t"}{.status.podIP}{"\\n"}{end}',
    )
    assert out == "".join(f"{p['metadata']['name']}\t{p['status']['podIP']}\n" for p in pods)
    # maps print as JSON with sorted keys
    assert kc(k, "get", "svc", "web", "-o", "jsonpath={.spec.selector}") == '{"app":"web"}'
    out = k.np(
        "get",
        "nodes",
        "-o",
        "custom-columns=NAME:.metadata.name,"
        "IP:.status.addresses[0].address,ARCH:.metadata.labels.kubernetes\\.io/arch",
    )
    assert out == (
        "NAME       IP              ARCH\n"
        f"pi-black   192.168.0.101   {ARCH}\n"
        f"pi-red     192.168.0.152   {ARCH}\n"
    )
    # a map in a column prints with Go's %v
    out = kc(k, "get", "svc", "web", "-o", "custom-columns=S:.spec.selector", "--no-headers")
    assert out == "map[app:web]\n"


def test_json_yaml_and_name(k):
    svc = json.loads(kc(k, "get", "svc", "web", "-o", "json"))
    assert list(svc) == sorted(svc)  # Go's encoder sorts map keys
    assert svc["spec"]["ipFamilies"] == ["IPv4"]  # the API server's defaults are there
    assert svc["spec"]["internalTrafficPolicy"] == "Cluster"
    listed = json.loads(kc(k, "get", "svc", "-l", "app=web", "-o", "json"))
    assert listed["kind"] == "List" and len(listed["items"]) == 1  # a selector gives a List
    text = kc(k, "get", "deploy", "web", "-o", "yaml")
    assert 'deployment.kubernetes.io/revision: "1"' in text  # double quotes, as Go's YAML
    assert kc(k, "get", "deploy,svc", "-o", "name") == "deployment.apps/web\nservice/web\n"
    bad = k.run("get", "pods", "-n", NS, "-o", "bogus")
    assert bad.returncode == 1 and bad.stderr.startswith(
        'error: unable to match a printer suitable for the output format "bogus"'
    )


def test_describe_is_laid_out_as_kubectls(k):
    text = kc(k, "describe", "deployment", "web")
    assert re.search(
        r"^Name:                   web\nNamespace:              kctl\n"
        r"CreationTimestamp:      \w{3}, \d\d \w{3} \d{4} [\d:]{8} \+0000\n"
        r"Labels:                 app=web\n"
        r"Annotations:            deployment.kubernetes.io/revision: 1\n"
        r"Selector:               app=web\n"
        r"Replicas:               2 desired \| 2 updated \| 2 total \| 2 available \| "
        r"0 unavailable\n"
        r"StrategyType:           RollingUpdate\nMinReadySeconds:        0\n"
        r"RollingUpdateStrategy:  25% max unavailable, 25% max surge\n"
        r"Pod Template:\n  Labels:  app=web\n  Containers:\n   color:\n"
        r"    Image:         jpetazzo/color\n    Port:          <none>\n"
        r"    Host Port:     <none>\n    Environment:   <none>\n    Mounts:        <none>\n"
        r"  Volumes:         <none>\n  Node-Selectors:  <none>\n  Tolerations:     <none>\n"
        r"Conditions:\n  Type           Status  Reason\n  ----           ------  ------\n"
        r"  Available      True    MinimumReplicasAvailable\n"
        r"  Progressing    True    NewReplicaSetAvailable\n"
        r"OldReplicaSets:  <none>\nNewReplicaSet:   web-\w+ \(2/2 replicas created\)\n"
        r"Events:\n  Type    Reason             Age   From                   Message\n"
        r"  ----    ------             ----  ----                   -------\n"
        r"  Normal  ScalingReplicaSet  ",
        text,
    ), text
    ip = kc(k, "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}")
    text = kc(k, "describe", "svc", "web")
    assert text.startswith(
        "Name:                     web\nNamespace:                kctl\n"
        "Labels:                   app=web\nAnnotations:              <none>\n"
        "Selector:                 app=web\nType:                     ClusterIP\n"
        "IP Family Policy:         SingleStack\nIP Families:              IPv4\n"
        f"IP:                       {ip}\nIPs:                      {ip}\n"
        "Port:                     <unset>  80/TCP\nTargetPort:               80/TCP\n"
    ), text
    assert text.endswith(
        "Session Affinity:         None\n"
        "Internal Traffic Policy:  Cluster\nEvents:                   <none>\n"
    )
    pod = pod_names(k)[0]
    text = kc(k, "describe", "pod", pod)
    for line in (
        "Service Account:  default\n",
        "Containers:\n  color:\n",
        "Conditions:\n  Type                        Status\n  PodReadyToStartContainers   True \n",
        "    Mounts:\n      /var/run/secrets/kubernetes.io/serviceaccount from kube-api-access-",
        "    Type:                    Projected (a volume that contains injected data from "
        "multiple sources)\n    TokenExpirationSeconds:  3607\n"
        "    ConfigMapName:           kube-root-ca.crt\n    Optional:                false\n"
        "    DownwardAPI:             true\nQoS Class:                   BestEffort\n",
        "Tolerations:                 node.kubernetes.io/not-ready:NoExecute op=Exists for 300s\n",
    ):
        assert line in text, (line, text)
    assert re.search(r"Controlled By:  ReplicaSet/web-\w+\n", text), text
    assert re.search(
        r"  Normal  Scheduled  +\S+ +default-scheduler  Successfully assigned "
        rf"kctl/{pod} to pi-\w+\n",
        text,
    ), text
    node = k.np("describe", "node", "pi-red")
    assert "Roles:              control-plane\n" in node
    assert re.search(r"Capacity:\n  cpu:                4\n", node), node


# -- labels -----------------------------------------------------------------------------------
def test_labels_select_show_and_change(k):
    first, second = pod_names(k)
    assert kc(k, "label", "pod", first, "tier=front") == f"pod/{first} labeled\n"
    assert kc(k, "get", "pods", "-l", "tier=front", "-o", "name") == f"pod/{first}\n"
    assert kc(k, "get", "pods", "-l", "app=web,tier!=front", "-o", "name") == f"pod/{second}\n"
    assert pod_names(k, "tier in (front, back)") == [first]
    assert pod_names(k, "!tier") == [second]
    shown = kc(k, "get", "pods", "--show-labels", "-l", "tier")
    assert re.search(rf"{first} .* app=web,pod-template-hash=\w+,tier=front$", shown), shown
    again = k.run("label", "pod", first, "tier=back", "-n", NS)
    assert again.returncode == 1
    assert again.stderr == "error: 'tier' already has a value (front), and --overwrite is false\n"
    assert kc(k, "label", "pod", first, "tier=back", "--overwrite") == f"pod/{first} labeled\n"
    assert kc(k, "label", "pod", first, "tier-") == f"pod/{first} unlabeled\n"
    assert kc(k, "annotate", "deploy", "web", "owner=course") == "deployment.apps/web annotated\n"
    assert kc(k, "get", "deploy", "web", "-o", "jsonpath={.metadata.annotations.owner}") == (
        "course"
    )
    missing = k.run("get", "pods", "nope", "-n", NS)
    assert (missing.returncode, missing.stderr) == (
        1,
        'Error from server (NotFound): pods "nope" not found\n',
    )


def test_delete_by_selector_and_all(k):
    for name in ("a1", "a2", "b1"):
        kc(k, "run", name, "--image=busybox", f"--labels=group={name[0]}")
    out = kc(k, "delete", "pods", "-l", "group=a")
    assert out == 'pod "a1" deleted\npod "a2" deleted\n'
    assert kc(k, "get", "pods", "-l", "group", "-o", "name") == "pod/b1\n"
    k.np("create", "namespace", "scratch")
    for name in ("s1", "s2"):
        k.np("run", name, "--image=busybox", "-n", "scratch")
    assert k.np("delete", "pods", "--all", "-n", "scratch", "--wait=false") == (
        'pod "s1" deleted\npod "s2" deleted\n'
    )
    assert k.np("delete", "pod", "b1", "-n", NS, "--ignore-not-found") == 'pod "b1" deleted\n'
    gone = k.run("get", "pods", "-n", "scratch")
    assert gone.stdout == "" and gone.stderr == "No resources found in scratch namespace.\n"


# -- run, logs, exec --------------------------------------------------------------------------
def test_run_executes_the_command_in_the_pods_network_namespace(k):
    assert kc(k, "run", "pingpong", "--image", "alpine", "--", "ping", "127.0.0.1") == (
        "pod/pingpong created\n"
    )
    kc(
        k,
        "run",
        "whoami",
        "--image=busybox",
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "ip -4 -o addr show eth0",
    )
    lines = wait_for(lambda: [x for x in kc(k, "logs", "pingpong").splitlines() if "64 bytes" in x])
    assert lines[0].startswith("64 bytes from 127.0.0.1: icmp_seq=1 ")
    ip = kc(k, "get", "pod", "whoami", "-o", "jsonpath={.status.podIP}")
    assert wait_for(lambda: f"inet {ip}/24" in kc(k, "logs", "whoami"))
    # restartPolicy Never: the exited container shows as Completed, not restarted
    assert wait_for(
        lambda: re.search(
            rf"whoami   0/1     Completed   0          {AGE}", kc(k, "get", "pod", "whoami")
        )
    )
    # --command: the words after -- replace the entrypoint
    kc(
        k,
        "run",
        "hello",
        "--image=busybox",
        "--command",
        "--",
        "sh",
        "-c",
        "echo started; sleep 3600",
    )
    spec = json.loads(kc(k, "get", "pod", "hello", "-o", "json"))["spec"]["containers"][0]
    assert spec["command"] == ["sh", "-c", "echo started; sleep 3600"] and "args" not in spec
    assert wait_for(lambda: kc(k, "logs", "hello") == "started\n")
    # --rm -i: attached, then deleted
    out = kc(
        k,
        "run",
        "tmp",
        "--rm",
        "-i",
        "--image=alpine",
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "echo hi from $HOSTNAME",
    )
    assert out == 'hi from tmp\npod "tmp" deleted\n'
    assert k.run("get", "pod", "tmp", "-n", NS).returncode == 1


def test_a_pod_without_a_command_runs_what_its_image_would(k):
    """Without a command, alpine and busybox run a shell, which exits at once with no
    terminal: restarted with back-off (CrashLoopBackOff), or Completed with
    --restart=Never; curl's image prints its usage hint and fails. No process is left to
    exec into."""
    kc(k, "run", "idle", "--image=alpine")
    kc(k, "run", "once", "--image=busybox", "--restart=Never")
    kc(k, "run", "curler", "--image=curlimages/curl", "--restart=Never")

    def row(name: str, status: str, restarts: str) -> bool:
        table = kc(k, "get", "pod", name)
        return bool(re.search(rf"^{name} +0/1 +{status} +{restarts} +{AGE}$", table, re.M))

    # the first restart is at once, the next after 10 s (kubelet's back-off)
    assert wait_for(lambda: row("idle", "CrashLoopBackOff", r"1 \(\d+s ago\)"))
    assert wait_for(lambda: row("once", "Completed", "0"))
    assert wait_for(lambda: row("curler", "Error", "0"))
    assert kc(k, "logs", "curler") == (
        "curl: try 'curl --help' or 'curl --manual' for more information\n"
    )
    phases = kc(k, "get", "pods", "once", "curler", "-o", "jsonpath={.items[*].status.phase}")
    assert phases == "Succeeded Failed"
    out = k.run("exec", "once", "-n", NS, "--", "true")
    assert (out.returncode, out.stderr) == (
        1,
        "error: cannot exec into a container in a completed pod; current phase is Succeeded\n",
    )
    out = k.run("exec", "idle", "-n", NS, "--", "true")
    assert (out.returncode, out.stderr) == (
        1,
        'error: unable to upgrade connection: container not found ("idle")\n',
    )
    # a log per run, as kubelet keeps them: logs shows the current run, -p the one before
    kc(k, "run", "flaky", "--image=busybox", "--", "sh", "-c",
       "cat /proc/sys/kernel/random/uuid; exit 1")  # fmt: skip
    assert wait_for(lambda: row("flaky", "CrashLoopBackOff", r"1 \(\d+s ago\)"))
    now, before = kc(k, "logs", "flaky"), kc(k, "logs", "flaky", "-p")
    assert len(now.splitlines()) == len(before.splitlines()) == 1 and now != before
    out = k.run("logs", "once", "-p", "-n", NS)
    assert (out.returncode, out.stderr) == (
        1,
        "Error from server (BadRequest): previous "
        'terminated container "once" in pod "once" not found\n',
    )
    # logs -f follows a run until it ends, as kubectl's
    kc(k, "run", "ticker", "--image=busybox", "--restart=Never", "--", "sh", "-c",
       "echo one; sleep 2; echo two")  # fmt: skip
    wait_for(lambda: kc(k, "get", "pod", "ticker", "-o", "jsonpath={.status.containerStatuses}"))
    out = subprocess.run([*k.argv("logs", "-f", "ticker", "-n", NS)], env=k.env,
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert (out.returncode, out.stdout) == (0, "one\ntwo\n"), out.stderr
    kc(k, "delete", "pod", "idle", "once", "curler", "flaky", "ticker")


def test_logs_follow_tail_selector_and_deployment(k):
    ip = kc(k, "get", "svc", "web", "-o", "go-template={{.spec.clusterIP}}")
    for _ in range(4):
        k.curl("--node", "pi-red", url=f"http://{ip}/counted")
    logs = kc(k, "logs", "-l", "app=web", "--tail=100")
    requests = re.findall(r"^\[pod/(web-\S+)/color\] GET /counted from [\d.]+:\d+$", logs, re.M)
    assert len(requests) == 4 and set(requests) <= set(pod_names(k)), logs
    pod = requests[-1]
    mine = kc(k, "logs", pod).splitlines()
    assert kc(k, "logs", pod, "--tail=1") == mine[-1] + "\n"
    assert all(x.startswith("GET /") for x in kc(k, "logs", "deploy/web").splitlines())
    follow = subprocess.Popen(
        [*k.argv("logs", "-f", pod, "-n", NS)], stdout=subprocess.PIPE, text=True, env=k.env
    )
    try:
        marker = f"/followed-{os.getpid()}"
        k.np(
            "exec",
            "--node",
            "pi-red",
            "--",
            "curl",
            "-s",
            "-m",
            "3",
            f"http://{kc(k, 'get', 'pod', pod, '-o', 'jsonpath={.status.podIP}')}{marker}",
        )
        lines = read_until(follow, lambda got: any(marker in x for x in got))
        assert lines[: len(mine)] == [x + "\n" for x in mine]  # the existing lines first
    finally:
        follow.terminate()
        follow.wait(10)


def test_exec_in_a_deployments_pod_and_by_type_name(k):
    assert kc(k, "exec", "deploy/web", "--", "printenv", "HOSTNAME").strip() in pod_names(k)
    pod = pod_names(k)[0]
    assert kc(k, "exec", f"pod/{pod}", "--", "printenv", "HOSTNAME") == f"{pod}\n"
    assert kc(k, "exec", "-it", pod, "--", "printenv", "KUBERNETES_SERVICE_PORT") == "443\n"


def test_port_forward_to_the_hosts_loopback(k):
    proc = subprocess.Popen(
        [*k.argv("port-forward", "svc/web", ":80", "-n", NS)],
        stdout=subprocess.PIPE,
        text=True,
        env=k.env,
    )
    try:
        first = proc.stdout.readline()
        m = re.fullmatch(r"Forwarding from 127\.0\.0\.1:(\d+) -> 80\n", first)
        assert m, first
        with urllib.request.urlopen(f"http://127.0.0.1:{m[1]}/", timeout=5) as r:
            assert COLOR.fullmatch(r.read().decode().strip())
        assert proc.stdout.readline() == f"Handling connection for {m[1]}\n"
    finally:
        proc.terminate()
        proc.wait(10)


# -- kinds ------------------------------------------------------------------------------------
def test_get_all_replicasets_events_and_namespaces(k):
    out = kc(k, "get", "all")
    sections = out.split("\n\n")
    assert [s.splitlines()[0].split()[0] for s in sections] == ["NAME"] * 4, out
    assert [s.splitlines()[1].split("/")[0] for s in sections] == [
        "pod",
        "service",
        "deployment.apps",
        "replicaset.apps",
    ]
    rs = columns(kc(k, "get", "rs", "-l", "app=web").splitlines())
    assert rs[0] == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    assert [r[1:4] for r in rs[1:]] == [["2", "2", "2"]]
    events = kc(k, "get", "events")
    assert events.splitlines()[0].startswith("LAST SEEN   TYPE     REASON ")
    assert re.search(
        r"Normal +ScalingReplicaSet +deployment/web +Scaled up replica set web-", events
    ), events
    # deleting a namespace deletes what is in it
    k.np("create", "ns", "doomed")
    k.np("create", "deployment", "d", "--image=nginx", "-n", "doomed")
    k.wait_ready("doomed", count=1)
    assert k.np("delete", "ns", "doomed") == 'namespace "doomed" deleted\n'
    assert "doomed" not in k.np("get", "ns")
    assert k.run("get", "pods", "-n", "doomed").stderr.startswith("No resources found")


# -- rollouts, patch, edit, watch -------------------------------------------------------------
def test_rolling_update_keeps_the_service_answering(k):
    kc(k, "scale", "deployment", "web", "--replicas=3")
    kc(k, "rollout", "status", "deployment/web", "--timeout=60s")
    ip = kc(k, "get", "svc", "web", "-o", "go-template={{.spec.clusterIP}}")
    loop = subprocess.Popen(
        [
            "nsenter",
            f"--net={NETNS_DIR / f'{k.id}-pi-black'}",
            sys.executable,
            "-m",
            "netplane.testing.probe",
            f"http://{ip}/",
            "--count",
            "60",
            "--interval",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    old = set(pod_names(k))
    out = kc(k, "set", "image", "deployment/web", "color=jpetazzo/color:v2")
    assert out == "deployment.apps/web image updated\n"
    status = kc(k, "rollout", "status", "deployment/web", "--timeout=60s")
    assert status.splitlines()[-1] == 'deployment "web" successfully rolled out'
    results = [json.loads(x) for x in loop.communicate(timeout=60)[0].splitlines()]
    assert len(results) == 60 and all(r["ok"] for r in results), [r for r in results if not r["ok"]]
    new = set(pod_names(k))
    assert len(new) == 3 and not new & old
    assert kc(k, "rollout", "history", "deployment/web") == (
        "deployment.apps/web \nREVISION  CHANGE-CAUSE\n1         <none>\n2         <none>\n\n"
    )
    revision = kc(k, "rollout", "history", "deployment/web", "--revision=2")
    assert re.match(r"deployment.apps/web with revision #2\nPod Template:\n  Labels:\tapp=web\n"
                    r"\tpod-template-hash=\w+\n  Containers:\n   color:\n"
                    r"    Image:\tjpetazzo/color:v2\n", revision), revision  # fmt: skip
    assert kc(k, "rollout", "undo", "deployment/web") == "deployment.apps/web rolled back\n"
    kc(k, "rollout", "status", "deployment/web", "--timeout=60s")
    # as kubectl's, rollout status is done once the old sets have no pod that is not
    # terminating (status.replicas == updatedReplicas): terminating pods are still listed by
    # `get pods` for their grace period (1 s here, 30 s by default in Kubernetes)
    undone = set(pod_names(k))
    assert len(undone) == 3 and not undone & new
    image = "jsonpath={.spec.template.spec.containers[0].image}"
    assert kc(k, "get", "deploy", "web", "-o", image) == "jpetazzo/color"
    assert kc(k, "rollout", "restart", "deployment/web") == "deployment.apps/web restarted\n"
    kc(k, "rollout", "status", "deployment/web", "--timeout=60s")
    restarted = set(pod_names(k))
    assert len(restarted) == 3 and not restarted & (new | undone)
    # the old pods go once their grace period is over (the next tests see only these three)
    wait_for(lambda: listed_pods(k) == sorted(restarted))


def test_rollout_status_waits_for_a_stuck_rollout(k):
    kc(k, "create", "deployment", "stuck", "--image=nginx", "--replicas=2")
    kc(k, "rollout", "status", "deploy/stuck", "--timeout=60s")
    # the new pods' command exits at once: they never become ready
    patch = '{"spec":{"template":{"spec":{"containers":[{"name":"nginx","command":["false"]}]}}}}'
    assert kc(k, "patch", "deployment", "stuck", "-p", patch) == "deployment.apps/stuck patched\n"
    out = k.run("rollout", "status", "deployment/stuck", "--timeout=3s", "-n", NS)
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1] == (
        'Waiting for deployment "stuck" rollout to finish: 1 out of 2 new replicas have been '
        "updated..."
    ), out.stdout
    assert out.stderr == "error: timed out waiting for the condition\n"
    kc(k, "rollout", "undo", "deployment/stuck")
    assert kc(k, "rollout", "status", "deploy/stuck", "--timeout=60s").endswith(
        'deployment "stuck" successfully rolled out\n'
    )


def test_patch_and_edit(k, tmp_path):
    kc(k, "create", "deployment", "ed", "--image=nginx")
    assert kc(k, "patch", "deploy", "ed", "-p", '{"spec":{"replicas":2}}') == (
        "deployment.apps/ed patched\n"
    )
    assert kc(k, "patch", "deploy", "ed", "-p", '{"spec":{"replicas":2}}') == (
        "deployment.apps/ed patched (no change)\n"
    )
    kc(k, "patch", "deploy", "ed", "-p", '{"metadata":{"labels":{"team":"blue"}}}')
    labels = json.loads(kc(k, "get", "deploy", "ed", "-o", "jsonpath={.metadata.labels}"))
    assert labels == {"app": "ed", "team": "blue"}
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/^  replicas: 2$/  replicas: 3/' \"$1\"\n")
    editor.chmod(0o755)
    env = {**k.env, "KUBE_EDITOR": str(editor)}
    out = subprocess.run(
        [*k.argv("edit", "deploy", "ed", "-n", NS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout == "deployment.apps/ed edited\n", out.stderr
    assert kc(k, "get", "deploy", "ed", "-o", "jsonpath={.spec.replicas}") == "3"


def read_until(proc: subprocess.Popen, done, timeout: float = 30) -> list[str]:
    """Lines of PROC's stdout (read by a thread: no select on a buffered pipe) until
    done(lines) holds."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        try:
            got.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"timed out; got {got}") from None
    return got


def test_watch_prints_changes(k):
    watch = subprocess.Popen(
        [*k.argv("get", "pods", "-w", "-l", "run=watched", "-n", NS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=k.env,
    )
    try:
        time.sleep(1.0)
        kc(k, "run", "watched", "--image=nginx")
        kc(k, "wait", "--for=condition=Ready", "pod/watched", "--timeout=60s")
        kc(k, "delete", "pod", "watched")  # returns once the pod is gone
        lines = read_until(watch, lambda got: sum("Terminating" in x for x in got) >= 2)
        assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        rows = [x.split()[:3] for x in lines[1:]]
        assert all(r[0] == "watched" for r in rows), lines
        # a watch, not a poll: every state shows, from the new pod to its delete event
        assert rows[0][1] == "0/1" and ["watched", "1/1", "Running"] in rows, lines
        assert [r[2] for r in rows[-2:]] == ["Terminating", "Terminating"], lines
    finally:
        watch.terminate()
        watch.wait(10)
    assert watch.stderr.read() == "No resources found in kctl namespace.\n"


def test_api_server_answers_https_as_for_an_anonymous_client(k):
    pod = pod_names(k)[0]
    status = json.loads(kc(k, "exec", pod, "--", "curl", "-sk", "https://10.96.0.1"))
    assert status["message"] == 'forbidden: User "system:anonymous" cannot get path "/"'
    # byte for byte what kube-apiserver writes (test_apiserver.py holds the real bodies)
    assert (
        kc(k, "exec", pod, "--", "curl", "-sk", "https://10.96.0.1")
        == respond("GET", "/", {}, "")[1]
    )
    # TLS for real: the certificate names the service, not plain HTTP on 443
    out = kc(k, "exec", pod, "--", "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}",
             "https://kubernetes.default.svc/api/v1/namespaces/default/pods")  # fmt: skip
    assert out == "403"
    plain = k.run("exec", pod, "-n", NS, "--", "curl", "-s", "-m", "3", "http://10.96.0.1:443/")
    assert "Status" not in plain.stdout


# -- status fields ----------------------------------------------------------------------------
def test_nodes_pods_and_deployments_have_their_status(k):
    node = k.obj("node", "pi-black", "")
    assert node["status"]["capacity"]["cpu"] == "4"
    assert node["metadata"]["labels"]["kubernetes.io/arch"] == ARCH
    assert node["metadata"]["labels"]["kubernetes.io/os"] == "linux"
    assert [c["type"] for c in node["status"]["conditions"]][-1] == "Ready"
    pod = k.obj("pod", pod_names(k)[0], NS)
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["ready"] and "running" in cs["state"] and cs["containerID"].startswith("containerd")
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    dep = k.obj("deploy", "web", NS)["status"]
    assert dep["readyReplicas"] == dep["replicas"] == dep["availableReplicas"]


def test_wait_version_and_cluster_info(k):
    pods = pod_names(k)
    out = kc(k, "wait", "--for=condition=Ready", "pod", "-l", "app=web", "--timeout=60s")
    assert out == "".join(f"pod/{p} condition met\n" for p in pods)
    assert kc(k, "wait", "--for=condition=Available", "deploy/web") == (
        "deployment.apps/web condition met\n"
    )
    assert kc(k, "wait", "--for=jsonpath={.status.phase}=Running", f"pod/{pods[0]}") == (
        f"pod/{pods[0]} condition met\n"
    )
    late = k.run("wait", "--for=condition=Ready=false", f"pod/{pods[0]}", "--timeout=1s",
                 "-n", NS)  # fmt: skip
    assert late.returncode == 1
    assert late.stderr == f"error: timed out waiting for the condition on pods/{pods[0]}\n"
    assert k.np("version") == "Client Version: v1.33.2\nServer Version: v1.33.2\n"
    info = k.np("cluster-info").splitlines()
    assert info[0] == "Kubernetes control plane is running at https://192.168.0.152:6443"


# -- the real kubectl on the same objects -----------------------------------------------------
SERVER_SET = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")


@pytest.fixture(scope="module")
def real(k):
    """The real kube-apiserver (netplane.testing.controlplane) holding copies of the lab's
    nodes and of namespace kctl's objects, statuses included (owner references follow the
    new uids), for the real kubectl to print."""
    from netplane.testing.controlplane import ControlPlane

    with ControlPlane(prefix="npkctl") as cp:
        cp.ensure_namespace(NS)
        cp.kubectl("create", "serviceaccount", "default", "-n", NS, check=False)
        uids: dict[str, str] = {}
        for kind in ("nodes", "deploy", "rs", "pods", "svc", "endpointslices"):
            args = ("get", kind, "-o", "json") + (() if kind == "nodes" else ("-n", NS))
            for obj in json.loads(k.np(*args))["items"]:
                meta = obj["metadata"]
                old_uid = meta.get("uid", "")
                for field in SERVER_SET:
                    meta.pop(field, None)
                for ref in meta.get("ownerReferences") or []:
                    ref["uid"] = uids[ref["uid"]]
                status = obj.pop("status", None)
                created = json.loads(cp.kubectl("create", "-o", "json", "-f", "-",
                                                input=json.dumps(obj)))  # fmt: skip
                uids[old_uid] = created["metadata"]["uid"]
                if status:
                    where = () if kind == "nodes" else ("-n", NS)
                    cp.kubectl("patch", kind, meta["name"], *where, "--subresource=status",
                               "--type=merge", "-p", json.dumps({"status": status}))  # fmt: skip
        yield cp


def same_table(ours: str, theirs: str) -> None:
    """Equal cell by cell (ages aside: the copies are younger), each laid out by the rule."""
    a, b = columns(ours.splitlines()), columns(theirs.splitlines())
    age = a[0].index("AGE") if "AGE" in a[0] else None
    for rows in (a, b):
        for r in rows[1:]:
            if age is not None:
                r[age] = "AGE"
    assert a == b, f"ours:\n{ours}\nkubectl:\n{theirs}"


@pytest.mark.parametrize(
    "args",
    [
        ("get", "pods", "-l", "app=web"),
        ("get", "pods", "-l", "app=web", "-o", "wide"),
        ("get", "pods", "-l", "app=web", "--show-labels"),
        ("get", "pods", "-l", "app=web", "-L", "app", "-L", "tier"),
        ("get", "deploy", "web", "-o", "wide"),
        ("get", "rs", "-l", "app=web", "-o", "wide"),
        ("get", "svc", "web", "-o", "wide"),
        ("get", "nodes", "-o", "wide"),
        ("get", "nodes", "--show-labels"),
    ],
)  # fmt: skip
def test_tables_match_the_real_kubectls(k, real, args):
    where = () if "nodes" in args else ("-n", NS)
    same_table(k.np(*args, *where), real.kubectl(*args, *where))


@pytest.mark.parametrize(
    "args",
    [
        ("get", "pods", "-l", "app=web", "-o",
         "custom-columns=NAME:.metadata.name,IP:.status.podIP,NODE:.spec.nodeName,"
         "IMAGES:.spec.containers[*].image,LABELS:.metadata.labels"),
        ("get", "svc", "web", "-o", "go-template={{.spec.clusterIP}}"),
        ("get", "svc", "web", "-o", "go-template={{range .spec.ports}}{{.port}}/{{.protocol}} "
         "{{end}}{{.spec}}"),
        ("get", "pods", "-l", "app=web", "-o",
         'jsonpath={range .items[*]}{.metadata.name}{"\\t"}{.status.conditions[?(@.type=="Ready")]'
         '.status}{"\\n"}{end}'),
        ("get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0]}"),
        ("get", "nodes", "-o", "jsonpath={.items[*].status.capacity}"),
        ("get", "deploy,svc", "-o", "name"),
    ],
)  # fmt: skip
def test_templates_match_the_real_kubectls(k, real, args):
    assert kc(k, *args) == real.kubectl(*args, "-n", NS)


def test_describe_matches_the_real_kubectls(k, real):
    stamp = re.compile(r"\w{3}, \d\d \w{3} \d{4} [\d:]{8} \+0000")
    pod = pod_names(k)[0]
    for args in (("svc", "web"), ("deploy", "web"), ("pod", pod)):
        ours = kc(k, "describe", *args).split("\nEvents:")[0]
        theirs = real.kubectl("describe", *args, "-n", NS).split("\nEvents:")[0]
        # the pod's ServiceAccount token volume included (the real API server keeps ours)
        assert stamp.sub("T", ours) == stamp.sub("T", theirs), (args, ours, theirs)
