"""A TCP relay from 127.0.0.1 in the caller's namespace to an address inside another one.

The API server lives in its own network namespace; tests, benchmarks and kubectl run in the
root namespace, which must not be changed (no veth, no address, no route there). This
process binds its listening socket on the root namespace's loopback first, then enters the
API server's namespace with setns(2): every connection it makes from then on starts there.
Loopback traffic only, nothing in the root namespace changes.

    python -m netplane.testing.controlplane._relay NETNS HOST PORT   # prints the local port
"""

from __future__ import annotations

import asyncio
import socket
import sys

from netplane._setns import enter


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _serve(listener: socket.socket, host: str, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()  # the API server is stopped: the client sees a closed connection
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, sock=listener, limit=1 << 20)
    async with server:
        await server.serve_forever()


def main() -> None:
    netns, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    enter(netns)  # a single-threaded process: all of it moves
    print(listener.getsockname()[1], flush=True)
    asyncio.run(_serve(listener, host, port))


if __name__ == "__main__":
    main()
