"""A small JSON client for the control plane's API server, for tests and benchmarks.

Deliberately not the product's client (netplane.kube): tests must not exercise the code
they check with itself. One keep-alive TLS connection per thread, so a benchmark creating
10,000 objects from a few threads does not pay a handshake per request.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any


class ApiError(RuntimeError):
    """A request the API server refused (status and its Status message) or never answered."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status


class Api:
    """JSON over HTTPS to HOST:PORT with a client certificate (or a bearer token)."""

    def __init__(
        self,
        host: str,
        port: int,
        ca: Path,
        cert: Path | None = None,
        key: Path | None = None,
        token: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.host, self.port, self.timeout, self.token = host, port, timeout, token
        self._ssl = ssl.create_default_context(cafile=str(ca))
        if cert and key:
            self._ssl.load_cert_chain(str(cert), str(key))
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPSConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, context=self._ssl, timeout=self.timeout
            )
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def raw(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        """(status, decoded JSON body or text); a dropped keep-alive connection is redialled
        once, anything else (refused, timeout) raises OSError."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, payload, headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (
                http.client.RemoteDisconnected,
                BrokenPipeError,
                ConnectionResetError,
                ssl.SSLEOFError,
            ):
                self.close()  # an idle keep-alive connection the server closed: redial once
                if attempt == 2:
                    raise
            except BaseException:
                self.close()  # a timeout or interrupt mid-request: never reuse that connection
                raise
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, data.decode(errors="replace")

    def request(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = ()) -> Any:
        """The decoded body of a 2xx answer (or of a status in OK), else ApiError."""
        status, doc = self.raw(method, path, body)
        if 200 <= status < 300 or status in ok:
            return doc
        message = doc.get("message", "") if isinstance(doc, dict) else str(doc)[:300]
        raise ApiError(method, path, status, message)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def wait(self, path: str, timeout: float, what: str) -> Any:
        """GET PATH until it answers 2xx (connection errors and 4xx/5xx are retried)."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                status, doc = self.raw("GET", path)
                if 200 <= status < 300:
                    return doc
                last = f"{status} {doc if isinstance(doc, str) else json.dumps(doc)[:300]}"
            except (OSError, http.client.HTTPException) as e:
                self.close()
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not ready after {timeout:.0f} s (last: {last})")
            time.sleep(0.2)
