"""Docker-links-style service environment variables, as kubelet injects them (pure).

Only services that exist when the pod starts are included, from the pod's namespace plus
`default/kubernetes`; headless and ExternalName services get none.
"""

from __future__ import annotations

from netplane.model import Service


def _prefix(name: str) -> str:
    return name.upper().replace("-", "_")


def service_env(services: list[Service], namespace: str) -> dict[str, str]:
    env: dict[str, str] = {}
    chosen = [
        s
        for s in sorted(services, key=lambda s: (s.namespace, s.name))
        if s.namespace == namespace or (s.namespace, s.name) == ("default", "kubernetes")
    ]
    for svc in chosen:
        if svc.headless or not svc.cluster_ips or svc.type == "ExternalName" or not svc.ports:
            continue
        ip, name = svc.cluster_ips[0], _prefix(svc.name)
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(svc.ports[0].port)
        for p in svc.ports:
            if p.name:
                env[f"{name}_SERVICE_PORT_{_prefix(p.name)}"] = str(p.port)
        first = svc.ports[0]
        env[f"{name}_PORT"] = f"{first.protocol.lower()}://{ip}:{first.port}"
        for p in svc.ports:
            base = f"{name}_PORT_{p.port}_{p.protocol}"
            env[base] = f"{p.protocol.lower()}://{ip}:{p.port}"
            env[f"{base}_PROTO"] = p.protocol.lower()
            env[f"{base}_PORT"] = str(p.port)
            env[f"{base}_ADDR"] = ip
    return env
