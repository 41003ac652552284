"""The API server stand-in behind `default/kubernetes` (10.96.0.1:443 -> the control-plane
node's :6443): HTTPS, answering an anonymous client as kube-apiserver v1.33 does.

The course shows `curl -k https://10.96.0.1` from a pod getting the API server's 403 Status:
without credentials a client is `system:anonymous`, which RBAC lets read only the public
info (`/version`, `/healthz`, `/livez`, `/readyz`); every other request is refused with a
Status whose message names the path, or the resource, verb and namespace. A request with a
bearer token is refused as an invalid token would be (401): no ServiceAccount tokens exist
here. The bodies are byte for byte what kube-apiserver writes (compared with the real one);
there is no API behind them.
"""

from __future__ import annotations

import datetime
import json
import ssl
import uuid
from pathlib import Path

from netplane.cluster.control.topology import KUBERNETES_IP

VERSION = "v1.33.2"
_PUBLIC = ("/healthz", "/livez", "/readyz")
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _status(code: int, reason: str, message: str, details: dict | None) -> str:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": code}  # fmt: skip
    if details is None:
        del body["details"]
    return json.dumps(body, indent=2)


def _version(platform: str) -> str:
    major, minor, _ = VERSION[1:].split(".")
    return json.dumps(
        {
            "major": major,
            "minor": minor,
            "emulationMajor": major,
            "emulationMinor": minor,
            "minCompatibilityMajor": major,
            "minCompatibilityMinor": str(int(minor) - 1),
            "gitVersion": VERSION,
            "gitCommit": "$Format:%H$",  # what a build from the Go module proxy reports
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "go1.24.4",
            "compiler": "gc",
            "platform": platform,
        },
        indent=2,
    )


def _resource(method: str, path: str, query: str) -> tuple[str, str, str, str, str] | None:
    """(verb, resource, group, namespace, name) of a resource request, None for other paths."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 2:  # a namespace is in its own namespace
        namespace = rest[1]
        rest = rest[2:] if len(rest) >= 3 else rest
    resource, name = rest[0], (rest[1] if len(rest) > 1 else "")
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"  # a subresource: pods/log, deployments/scale
    verb = _VERBS.get(method, method.lower())
    if not name:
        if method == "GET":
            verb = "watch" if "watch=true" in query or "watch=1" in query else "list"
        elif method == "DELETE":
            verb = "deletecollection"
    return verb, resource, group, namespace, name


def respond(method: str, target: str, headers: dict[str, str], platform: str) -> tuple[int, str]:
    """(status code, body) for one request; the body is JSON except for the health checks."""
    path, _, query = target.partition("?")
    if headers.get("authorization", "").lower().startswith("bearer "):
        return 401, _status(401, "Unauthorized", "Unauthorized", None)
    if method == "GET" and path.rstrip("/") == "/version":
        return 200, _version(platform)
    if method == "GET" and path in _PUBLIC:
        return 200, "ok"
    found = _resource(method, path, query)
    if found is None:
        verb = method.lower()
        message = f'forbidden: User "system:anonymous" cannot {verb} path "{path}"'
        return 403, _status(403, "Forbidden", message, {})
    verb, resource, group, namespace, name = found
    kind = resource.split("/", 1)[0]
    qualified = f"{kind}.{group}" if group else kind
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    message = (
        f"{qualified}{' ' + json.dumps(name) if name else ''} is forbidden: User "
        f'"system:anonymous" cannot {verb} resource "{resource}" in API group "{group}"{where}'
    )
    details = {"name": name} if name else {}
    details.update({"group": group} if group else {})
    details["kind"] = kind
    return 403, _status(403, "Forbidden", message, details)


def response_head(code: int, body: bytes, json_body: bool) -> bytes:
    """kube-apiserver's headers (its flow-control ones left out)."""
    reason = {200: "OK", 401: "Unauthorized", 403: "Forbidden"}[code]
    ctype = "application/json" if json_body else "text/plain; charset=utf-8"
    date = datetime.datetime.now(datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    return (
        f"HTTP/1.1 {code} {reason}\r\nAudit-Id: {uuid.uuid4()}\r\n"
        f"Cache-Control: no-cache, private\r\nContent-Type: {ctype}\r\n"
        f"X-Content-Type-Options: nosniff\r\nDate: {date}\r\n"
        f"Content-Length: {len(body)}\r\n"
    ).encode()


def tls_context(pki: Path, node_ip: str) -> ssl.SSLContext:
    """A server context with the API server's certificate (made once per cluster in PKI):
    for `kubernetes`, `kubernetes.default.svc.cluster.local`, 10.96.0.1 and the node's
    address, signed by the cluster's own CA, as kubeadm issues it."""
    cert, key = pki / "apiserver.crt", pki / "apiserver.key"
    if not cert.exists():
        _issue(pki, node_ip)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _issue(pki: Path, node_ip: str) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local"]  # fmt: skip
    ips = [KUBERNETES_IP, node_ip]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in names]
            + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pki.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (pki / "ca.crt").write_bytes(ca.public_bytes(pem))
    (pki / "apiserver.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (pki / "apiserver.key").chmod(0o600)
    (pki / "apiserver.crt").write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
