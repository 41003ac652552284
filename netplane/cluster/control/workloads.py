"""Deployments as the controller needs them, validated with errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass

from netplane.model import InvalidField


@dataclass(frozen=True, slots=True)
class Deployment:
    namespace: str
    name: str
    replicas: int
    selector: tuple[tuple[str, str], ...]
    template: dict  # spec.template as written (metadata.labels + spec)

    @property
    def key(self) -> tuple[str, str, str]:
        return ("Deployment", self.namespace, self.name)


def parse_deployment(body: dict) -> Deployment:
    meta = body.get("metadata") or {}
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise InvalidField("spec", "required")
    replicas = spec.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= 1000:
        raise InvalidField("spec.replicas", f"expected an integer 0-1000, got {replicas!r}")
    template = spec.get("template")
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        raise InvalidField("spec.template.spec", "required")
    containers = template["spec"].get("containers")
    if not isinstance(containers, list) or not containers:
        raise InvalidField("spec.template.spec.containers", "at least one container is required")
    for i, c in enumerate(containers):
        if not isinstance(c, dict) or not c.get("image"):
            raise InvalidField(f"spec.template.spec.containers[{i}].image", "required")
    labels = (template.get("metadata") or {}).get("labels") or {}
    selector = (spec.get("selector") or {}).get("matchLabels")
    if not isinstance(selector, dict) or not selector:
        raise InvalidField("spec.selector.matchLabels", "required (apps/v1)")
    for k, v in selector.items():
        if labels.get(k) != v:
            raise InvalidField(
                "spec.template.metadata.labels",
                f"`selector` does not match template `labels` ({k}={v} missing)",
            )
    return Deployment(
        namespace=meta.get("namespace") or "default",
        name=meta["name"],
        replicas=replicas,
        selector=tuple(sorted(selector.items())),
        template=template,
    )


def deployment_manifest(
    name: str, image: str, replicas: int = 1, namespace: str = "default", port: int = 0
) -> dict:
    """What `kubectl create deployment NAME --image=I` sends."""
    container: dict = {"name": image.split("/")[-1].split(":")[0].split("@")[0], "image": image}
    if port:
        container["ports"] = [{"containerPort": port}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container]},
            },
        },
    }


def pod_manifest(name: str, image: str, namespace: str = "default", port: int = 0) -> dict:
    """What `kubectl run NAME --image=I` sends."""
    container: dict = {"name": name, "image": image}
    if port:
        container["ports"] = [{"containerPort": port}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"run": name}},
        "spec": {"containers": [container]},
    }


def service_manifest(
    name: str,
    namespace: str,
    selector: dict,
    port: int,
    target_port: int | str | None = None,
    svc_type: str = "ClusterIP",
    protocol: str = "TCP",
) -> dict:
    """What `kubectl expose` sends."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(selector)},
        "spec": {
            "type": svc_type,
            "selector": dict(selector),
            "ports": [
                {
                    "port": port,
                    "protocol": protocol,
                    "targetPort": target_port if target_port not in (None, "") else port,
                }
            ],
        },
    }


def image_ref(image: str) -> str:
    """The image as containerd reports it: `nginx` -> `docker.io/library/nginx:latest`."""
    if not image:
        return image
    name, _, digest = image.partition("@")
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    if ":" not in name.rsplit("/", 1)[-1] and not digest:
        name += ":latest"
    return f"{name}@{digest}" if digest else name
