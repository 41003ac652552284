"""GET requests to the API server without the `kubernetes` client: what a watcher needs.

The official client costs ~0.5 s of CPU and ~25 MB to import (its generated models, pydantic,
every API group): more than CoreDNS needs to be ready with 10,000 Services. A list/watch
source needs only authenticated GETs and a chunked stream, which the standard library does
(http.client, ssl). `load_config` reads the kubeconfig fields that need no code to run
(server, CA, client certificate, bearer token or token file, basic auth, skip-verify,
tls-server-name) and the in-cluster service account (the token re-read every minute, as
client-go does, for rotated projected tokens). Anything else (exec plugins, auth providers,
proxies) is loaded by the official client's loader and used through the same transport, so
every kubeconfig that works with the client works here.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD = 60.0  # seconds between reads of a token file (client-go: one minute)
_UNSUPPORTED_USER = ("exec", "auth-provider")
_UNSUPPORTED_CLUSTER = ("proxy-url",)


class ConfigError(ValueError):
    """The kubeconfig or service account cannot be used; the message says which and why."""


class ApiError(Exception):
    """The API server answered a request with a non-2xx status."""

    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status, self.reason, self.body = status, reason, body


@dataclass
class ApiConfig:
    """Where the API server is and how to authenticate to it."""

    server: str  # https://host:port (or http:// for a test server)
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    tls_server_name: str = ""
    authorization: Callable[[], str | None] = lambda: None  # the Authorization header
    _context: ssl.SSLContext | None = field(default=None, repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        if self._context is None:
            context = ssl.create_default_context(
                cafile=self.ca_file, cadata=self.ca_data.decode() if self.ca_data else None
            )
            if not self.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
            self._context = context
        return self._context


class _TokenFile:
    """A bearer token read from a file, re-read at most every TOKEN_REREAD seconds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._token = ""
        self._read_at = -TOKEN_REREAD
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= TOKEN_REREAD:
                with contextlib.suppress(OSError):  # keep the last one while it is rotated
                    self._token = self.path.read_text().strip()
                self._read_at = now
            return f"Bearer {self._token}" if self._token else None


def load_config(kubeconfig: str | None = None, in_cluster: bool = False) -> ApiConfig:
    """The API server and credentials from a kubeconfig file or the pod's service account."""
    if in_cluster:
        return _in_cluster()
    if not kubeconfig or not os.path.isfile(kubeconfig):
        raise ConfigError(f"--kubeconfig {kubeconfig}: no such file")
    import yaml

    try:
        doc = yaml.load(Path(kubeconfig).read_text(), Loader=getattr(yaml, "CSafeLoader", None)
                        or yaml.SafeLoader)  # fmt: skip
        return _from_kubeconfig(doc or {}, Path(kubeconfig).resolve().parent)
    except _NeedsClient:
        return _from_client(kubeconfig)
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise ConfigError(f"--kubeconfig {kubeconfig}: {e}") from e
        raise ConfigError(f"--kubeconfig {kubeconfig}: not a usable kubeconfig ({e})") from e


class _NeedsClient(Exception):
    """The kubeconfig uses something only the official client's loader runs."""


def _named(doc: dict, section: str, name: str) -> dict:
    for entry in doc.get(section) or ():
        if entry.get("name") == name:
            return entry.get(section[:-1]) or {}
    raise ConfigError(f"no {section[:-1]} named {name!r}")


def _from_kubeconfig(doc: dict, base: Path) -> ApiConfig:
    context_name = doc.get("current-context")
    if not context_name:
        raise ConfigError("no current-context")
    context = _named(doc, "contexts", context_name)
    cluster = _named(doc, "clusters", context.get("cluster", ""))
    user = _named(doc, "users", context["user"]) if context.get("user") else {}
    if any(k in user for k in _UNSUPPORTED_USER) or any(k in cluster for k in _UNSUPPORTED_CLUSTER):
        raise _NeedsClient()
    server = cluster.get("server")
    if not server:
        raise ConfigError(f"cluster {context.get('cluster')!r} has no server")

    def path(value: str | None) -> str | None:
        if not value:
            return None
        if not (base / value).is_file():
            raise ConfigError(f"{base / value}: no such file")
        return str(base / value)

    config = ApiConfig(
        server=server.rstrip("/"),
        ca_file=path(cluster.get("certificate-authority")),
        ca_data=_b64(cluster.get("certificate-authority-data")),
        verify=not cluster.get("insecure-skip-tls-verify", False),
        tls_server_name=cluster.get("tls-server-name", ""),
    )
    cert, key = path(user.get("client-certificate")), path(user.get("client-key"))
    cert_data = _b64(user.get("client-certificate-data"))
    key_data = _b64(user.get("client-key-data"))
    if cert_data or key_data:
        cert, key = _pem_files(cert_data or Path(cert or "").read_bytes(),
                               key_data or Path(key or "").read_bytes())  # fmt: skip
    config.cert_file, config.key_file = cert, key
    if config.server.startswith("https:"):
        config.ssl_context()  # load the files now: the temporary ones go away below
    if cert_data or key_data:
        for name in (cert, key):
            with contextlib.suppress(OSError):
                os.unlink(name or "")
        config.cert_file = config.key_file = None
    if user.get("token"):
        header = f"Bearer {user['token']}"
        config.authorization = lambda: header
    elif user.get("tokenFile"):
        config.authorization = _TokenFile(Path(path(user["tokenFile"]) or ""))
    elif user.get("username"):
        basic = base64.b64encode(f"{user['username']}:{user.get('password', '')}".encode())
        header = f"Basic {basic.decode()}"
        config.authorization = lambda: header
    return config


def _b64(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value else None


def _pem_files(cert: bytes, key: bytes) -> tuple[str, str]:
    """ssl loads a client certificate from files only: private ones, removed once loaded."""
    names = []
    for data in (cert, key):
        fd, name = tempfile.mkstemp(prefix="netplane-kube-", suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        names.append(name)
    return names[0], names[1]


def _in_cluster() -> ApiConfig:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT")
    token = SERVICE_ACCOUNT / "token"
    if not host or not port:
        raise ConfigError("--in-cluster: KUBERNETES_SERVICE_HOST/PORT are not set (not in a pod?)")
    if not token.is_file():
        raise ConfigError(f"--in-cluster: {token} does not exist (no service account token?)")
    config = ApiConfig(
        server=f"https://{f'[{host}]' if ':' in host else host}:{port}",
        ca_file=str(SERVICE_ACCOUNT / "ca.crt"),
        authorization=_TokenFile(token),
    )
    try:
        config.ssl_context()
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"--in-cluster: {SERVICE_ACCOUNT / 'ca.crt'}: {e}") from e
    return config


def _from_client(kubeconfig: str) -> ApiConfig:
    """Exec plugins, auth providers: the official loader runs them; we keep the transport."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except config.ConfigException as e:
        raise ConfigError(f"--kubeconfig {kubeconfig}: {e}") from e

    def authorization() -> str | None:
        if configuration.refresh_api_key_hook is not None:
            configuration.refresh_api_key_hook(configuration)
        # the client's key: "BearerToken" (its generated auth_settings), older: "authorization"
        value = configuration.get_api_key_with_prefix(
            "BearerToken"
        ) or configuration.get_api_key_with_prefix("authorization")
        return str(value) if value else None

    return ApiConfig(
        server=configuration.host.rstrip("/"),
        ca_file=configuration.ssl_ca_cert,
        cert_file=configuration.cert_file,
        key_file=configuration.key_file,
        verify=configuration.verify_ssl,
        tls_server_name=getattr(configuration, "tls_server_name", None) or "",
        authorization=authorization,
    )


class _Connection(http.client.HTTPSConnection):
    """HTTPS with an SNI / verified name other than the host (kubeconfig tls-server-name)."""

    server_name = ""

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        context: ssl.SSLContext = self._context  # type: ignore[attr-defined]
        self.sock = context.wrap_socket(self.sock, server_hostname=self.server_name or self.host)


class Response:
    """One response: `data` reads it whole, `stream()` yields its chunks as they come."""

    def __init__(self, conn: http.client.HTTPConnection, raw: http.client.HTTPResponse) -> None:
        self._conn, self._raw = conn, raw
        self.status, self.reason = raw.status, raw.reason

    @property
    def data(self) -> bytes:
        return self._raw.read()

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Iterator[bytes]:
        """The body in blocks of AMT bytes, or without AMT each chunk as soon as it arrives
        (urllib3's signature; the body is never compressed here)."""
        read = self._raw.read1 if amt is None else self._raw.read
        while True:
            chunk = read(amt or 1 << 16)
            if not chunk:
                return
            yield chunk

    def release_conn(self) -> None:
        self._raw.close()
        self._conn.close()

    def shutdown(self) -> None:
        """Unblock a reader in another thread (a watch waiting for events)."""
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class HttpTransport:
    """Authenticated GETs; a connection per request (a watcher makes a few an hour)."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        parts = urlsplit(config.server)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")

    def get(self, path: str, query: dict[str, Any], timeout: tuple[float, float],
            accept: str = "application/json") -> Response:  # fmt: skip
        """GET path?query; timeout = (connect, read) seconds; ACCEPT: the media type asked
        for (the benchmark times the API server's protobuf too). Raises ApiError on
        non-2xx."""
        conn: http.client.HTTPConnection
        if self._https:
            conn = _Connection(self._host, self._port, timeout=timeout[0],
                               context=self.config.ssl_context())  # fmt: skip
            conn.server_name = self.config.tls_server_name
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout[0])
        headers = {"Accept": accept, "User-Agent": "netplane"}
        auth = self.config.authorization()
        if auth:
            headers["Authorization"] = auth
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(timeout[1])
            conn.request("GET", f"{self._prefix}{path}?{urlencode(query)}", headers=headers)
            raw = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        response = Response(conn, raw)
        if 200 <= raw.status < 300:
            return response
        try:
            body = raw.read()
        finally:
            response.release_conn()
        raise ApiError(raw.status, raw.reason, body)
