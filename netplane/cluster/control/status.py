"""Pod status as kubelet reports it to the API (pure): phase, conditions, containerStatuses.

`kubectl get pods` derives READY, STATUS and RESTARTS from these fields, so they are
filled the way the API has them: a container waiting (ContainerCreating, CrashLoopBackOff),
running (startedAt) or terminated (exitCode, reason Completed/Error).
"""

from __future__ import annotations

import hashlib

from netplane.cluster.control.workloads import image_ref

_CONDITIONS = (
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
)


def _conditions(now: str, ready: bool, started: bool) -> list[dict]:
    out = []
    for kind in _CONDITIONS:
        ok = ready if kind in ("Ready", "ContainersReady") else (started or kind == "PodScheduled")
        out.append(
            {
                "type": kind,
                "status": "True" if ok else "False",
                "lastProbeTime": None,
                "lastTransitionTime": now,
                **(
                    {}
                    if ok or kind not in ("Ready", "ContainersReady")
                    else {
                        "reason": "ContainersNotReady",
                        "message": "containers with unready status",
                    }
                ),
            }
        )
    return out


def _container_id(uid: str, name: str, restarts: int | None = 0) -> str:
    return "containerd://" + hashlib.sha256(f"{uid}/{name}/{restarts}".encode()).hexdigest()


def running_status(pod: dict, host_ip: str, pod_ip: str, now: str) -> dict:
    """The sandbox exists and the containers were started (not Ready yet)."""
    uid = pod["metadata"]["uid"]
    return {
        "phase": "Running",
        "conditions": _conditions(now, ready=False, started=True),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "qosClass": "BestEffort",
        "containerStatuses": [
            {
                "containerID": _container_id(uid, c["name"]),
                "image": image_ref(c.get("image", "")),
                "imageID": image_ref(c.get("image", ""))
                + "@sha256:"
                + hashlib.sha256(c.get("image", "").encode()).hexdigest(),
                "lastState": {},
                "name": c["name"],
                "ready": False,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": now}},
            }
            for c in pod["spec"].get("containers", [])
        ],
    }


def with_ready(pod: dict, ready: bool, now: str) -> dict:
    status = dict(pod.get("status") or {})
    status["conditions"] = [
        {**c, "status": "True" if ready else "False", "lastTransitionTime": now}
        if c["type"] in ("Ready", "ContainersReady") and (c["status"] == "True") != ready
        else c
        for c in status.get("conditions") or _conditions(now, ready, True)
    ]
    for c in status["conditions"]:
        if ready:
            c.pop("reason", None)
            c.pop("message", None)
    status["containerStatuses"] = [
        {**cs, "ready": ready and "running" in cs.get("state", {})}
        for cs in status.get("containerStatuses") or []
    ]
    return {**pod, "status": status}


def with_container_state(pod: dict, change: dict, now: str) -> dict:
    """Apply one container's change from the runtime: {"container", "state": running |
    terminated | waiting, "exitCode", "reason", "restartCount"}."""
    status = dict(pod.get("status") or {})
    # the Ready report may come before the container's "running" one (two threads of the
    # node runtime): a running container of a Ready pod is ready, as kubelet reports it
    pod_ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    statuses = []
    for cs in status.get("containerStatuses") or []:
        if cs["name"] != change["container"]:
            statuses.append(cs)
            continue
        cs = dict(cs)
        restarts = change.get("restartCount", cs.get("restartCount", 0))
        if change["state"] == "running":
            if "terminated" in cs.get("state", {}):
                cs["lastState"] = {"terminated": cs["state"]["terminated"]}
            cs["state"] = {"running": {"startedAt": now}}
            cs["containerID"] = _container_id(pod["metadata"]["uid"], cs["name"], restarts)
        elif change["state"] == "terminated":
            code = change.get("exitCode", 0)
            started = cs.get("state", {}).get("running", {}).get("startedAt", now)
            cs["state"] = {
                "terminated": {
                    "containerID": cs.get("containerID", ""),
                    "exitCode": code,
                    "reason": change.get("reason") or ("Completed" if code == 0 else "Error"),
                    "startedAt": started,
                    "finishedAt": now,
                }
            }
        else:
            if "terminated" in cs.get("state", {}):
                cs["lastState"] = {"terminated": cs["state"]["terminated"]}
            cs["state"] = {
                "waiting": {
                    "reason": change.get("reason", "CrashLoopBackOff"),
                    **({"message": change["message"]} if change.get("message") else {}),
                }
            }
        cs["restartCount"] = restarts
        cs["ready"] = False
        statuses.append(cs)
    status["containerStatuses"] = statuses
    all_running = bool(statuses) and all("running" in cs["state"] for cs in statuses)
    done = bool(statuses) and all("terminated" in cs["state"] for cs in statuses)
    if done and change.get("final"):
        failed = any(cs["state"]["terminated"]["exitCode"] for cs in statuses)
        status["phase"] = "Failed" if failed else "Succeeded"
    pod = {**pod, "status": status}
    if not all_running:
        return with_ready(pod, False, now)
    if pod_ready:  # no readiness probes: a running container of a Ready pod is ready
        return with_ready(pod, True, now)
    return pod
