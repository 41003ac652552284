"""The built-in applications pods run, chosen by image (what each answers is the contract).

- `jpetazzo/color` (any tag): HTTP on port 80, one line, exactly like the course's app:
  `This is pod default/blue-5c986bd7bf-2gf7d on linux/amd64, serving / for 10.244.0.1:54312.`
- coredns images: run `netplane dns serve` (a process, started by the supervisor).
- busybox/alpine-like images: nothing listens; a container's command and args run as a
  process in the pod's network namespace (see runtime.py); without them the image's own
  default command runs (`image_command`), which exits at once as it does in Kubernetes.
- any other image: an echo on each containerPort: TCP answers HTTP requests with one line
  naming the pod, method, path and client, and echoes other bytes; UDP echoes datagrams.
- the API server stand-in on the control-plane node: HTTPS on 6443, answering an
  anonymous client as kube-apiserver does (see apiserver.py).
"""

from __future__ import annotations

import asyncio
import platform
import socket
import ssl
from dataclasses import dataclass
from typing import Protocol, cast

from netplane.cluster.node import apiserver

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
PLATFORM = f"linux/{_ARCH.get(platform.machine(), platform.machine())}"
QUIET_IMAGES = ("busybox", "alpine", "ubuntu", "debian", "curlimages/curl", "nicolaka/netshoot")
DEFAULT_PORTS = {"nginx": 80, "httpd": 80}
# What those images run without a command (their ENTRYPOINT + CMD): a shell, which exits at
# once with no terminal attached (kubelet gives it no stdin), so Kubernetes shows the pod
# Completed, then CrashLoopBackOff; curl with no URL prints its usage hint and exits 2.
# ubuntu's bash and netshoot's zsh end the same way as the host's sh that stands in here.
_SHELL = ["sh"]
IMAGE_COMMANDS = {"curlimages/curl": ["curl"]}
_METHODS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI")


class Log(Protocol):
    """Where a container's requests are written (the node runtime's LogFile)."""

    def write(self, line: str, stream: str = "stdout") -> None: ...


@dataclass(frozen=True, slots=True)
class Listener:
    port: int
    protocol: str  # TCP | UDP
    app: str  # color | echo | apiserver


def image_base(image: str) -> str:
    name = image.split("@")[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    for registry in ("docker.io/library/", "docker.io/", "library/"):
        if name.startswith(registry):
            name = name[len(registry) :]
    return name


def is_dns_image(image: str) -> bool:
    return image_base(image).endswith("coredns")


def image_command(image: str) -> list[str]:
    """The command a quiet image runs when the container gives none ([] for the images whose
    application is built in)."""
    base = image_base(image)
    if base not in QUIET_IMAGES:
        return []
    return IMAGE_COMMANDS.get(base, _SHELL)


def listeners(containers: list[dict]) -> list[Listener]:
    """What a pod's containers listen on, from their images and containerPorts."""
    out: dict[tuple[int, str], Listener] = {}
    for c in containers:
        base = image_base(c.get("image", ""))
        if is_dns_image(base) or base in QUIET_IMAGES:
            continue
        app = "color" if base == "jpetazzo/color" else "echo"
        if app == "color":
            out[(80, "TCP")] = Listener(80, "TCP", "color")
        elif base in DEFAULT_PORTS:
            out[(DEFAULT_PORTS[base], "TCP")] = Listener(DEFAULT_PORTS[base], "TCP", app)
        for p in c.get("ports") or []:
            proto = p.get("protocol", "TCP")
            if proto in ("TCP", "UDP"):
                out.setdefault(
                    (p["containerPort"], proto), Listener(p["containerPort"], proto, app)
                )
    return list(out.values())


def _reply(app: str, pod: str, method: str, path: str, peer: tuple) -> bytes:
    client = f"{peer[0]}:{peer[1]}"
    if app == "color":
        return f"This is pod {pod} on {PLATFORM}, serving {path} for {client}.\n".encode()
    return f"pod {pod}: {method} {path} from {client}\n".encode()


async def serve_tcp(
    app: str, pod: str, log: Log | None, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    peer = writer.get_extra_info("peername") or ("?", 0)
    try:
        first = await asyncio.wait_for(reader.read(65536), 30)
        if not first.startswith(_METHODS) and app == "echo":
            while first:  # plain TCP echo
                writer.write(first)
                await writer.drain()
                first = await asyncio.wait_for(reader.read(65536), 30)
            return
        buf = first
        while buf:
            while b"\r\n\r\n" not in buf and len(buf) < 65536:
                more = await asyncio.wait_for(reader.read(65536), 30)
                if not more:
                    return
                buf += more
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            line = lines[0].split()
            method, path = (line[0], line[1]) if len(line) >= 2 else ("GET", "/")
            if app == "apiserver":
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (h.partition(":") for h in lines[1:])}  # fmt: skip
                code, text = apiserver.respond(method, path, headers, PLATFORM)
                body = text.encode()
                start_line = apiserver.response_head(code, body, text.startswith("{"))
            else:
                body = _reply(app, pod, method, path, peer)
                start_line = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    + f"Content-Length: {len(body)}\r\n".encode()
                )
            if log is not None:
                log.write(f"{method} {path} from {peer[0]}:{peer[1]}")
            close = b"connection: close" in head.lower() or head.endswith(b"HTTP/1.0")
            writer.write(
                start_line
                + (b"Connection: close\r\n" if close else b"")
                + b"\r\n"
                + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
            if close:
                return
            if not buf:
                buf = await asyncio.wait_for(reader.read(65536), 30)
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, log: Log | None) -> None:
        self.log = log

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a datagram endpoint's transport (whose class does not subclass DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)
        if self.log is not None:
            self.log.write(f"UDP {len(data)} bytes from {addr[0]}:{addr[1]}")


async def start(
    listener: Listener,
    pod: str,
    sock: socket.socket,
    log: Log | None = None,
    tls: ssl.SSLContext | None = None,
) -> asyncio.DatagramTransport | asyncio.Server:
    """Serve LISTENER on an already bound socket, writing one line per request to LOG (the
    container's log); returns what to close to stop it."""
    if listener.protocol == "UDP":
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: UdpEcho(log), sock=sock)
        return transport
    return await asyncio.start_server(
        lambda r, w: serve_tcp(listener.app, pod, log, r, w), sock=sock, ssl=tls
    )
