"""A list response decoded in runs of whole items while it arrives.

The API server encodes a list as it sends it (~0.2-0.3 s for 10,000 EndpointSlices): the
list's metadata first, then the items, each `{"metadata":{...`. Inside a JSON string a quote
is escaped, so `},{"metadata":{` only ever appears between items or between objects nested
in one; a cut at a nested one leaves unbalanced brackets, which fail to decode, and the run
then waits for more data. Anything unexpected decodes the whole body, as a codec's `page`
does. A codec's optional `stream(response)` (netplane.kube.source) is this function with
the codec's own conversion of runs and `Decoders` of its typed view of a kind: the DNS
server's (dns/objects.py, where it was written first) and the proxy's (proxy/_codec.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec

ITEMS = b',"items":['
NEXT_ITEM = b'},{"metadata":{'  # where one list item ends and the next begins
BLOCK = 1 << 16

Page = tuple[Sequence[Any], str, str]  # (items, resourceVersion, continue token)


class ListMeta(msgspec.Struct, gc=False):
    resourceVersion: str = ""
    continue_: str = msgspec.field(name="continue", default="")  # `continue`: a keyword


class _ListHead(msgspec.Struct, gc=False):
    metadata: ListMeta = msgspec.field(default_factory=ListMeta)


class Decoders:
    """msgspec decoders for a list of WIRE structs (a codec's typed view of one kind):
    `list` for a whole body, `items` for a run `[item,...]`, `head` for `stream_list`."""

    def __init__(self, kind: str, wire: type) -> None:
        list_type = msgspec.defstruct(
            f"{kind}List",
            [("metadata", ListMeta, msgspec.field(default_factory=ListMeta)),
             ("items", list[wire], [])],  # type: ignore[valid-type]
        )  # fmt: skip
        self.list = msgspec.json.Decoder(list_type)
        self.items = msgspec.json.Decoder(list[wire])  # type: ignore[valid-type]
        self._head = msgspec.json.Decoder(_ListHead)

    def head(self, data: bytes) -> tuple[str, str]:
        meta = self._head.decode(data).metadata
        return meta.resourceVersion, meta.continue_


def stream_list(
    response: Any,
    head: Callable[[bytes], tuple[str, str]],
    run: Callable[[bytes], Sequence[Any] | None],
    page: Callable[[bytes], Page],
) -> Iterator[Page]:
    """(items, resourceVersion, continue) for each run of complete items of RESPONSE.

    HEAD: the list's `{"kind":...,"metadata":{...}}` -> (resourceVersion, continue), raising
    ValueError when it is not that; RUN: `[item,item,...]` -> the codec's items, or None when
    it does not parse (a cut inside an item: wait for more); PAGE: the codec's whole-body
    decoding, for any other layout."""
    buf = bytearray()
    chunks = response.stream(BLOCK)
    start = 0  # where the next undecoded item begins; 0: the head is not parsed yet
    rv = token = ""
    for chunk in chunks:
        scan = max(len(buf) - len(NEXT_ITEM), start)
        buf += chunk
        if not start:
            at = buf.find(ITEMS)
            if at < 0:
                continue
            try:
                rv, token = head(bytes(buf[:at]) + b"}")
            except ValueError:
                break  # not the layout expected: the whole body below
            start = scan = at + len(ITEMS)
        cut = buf.rfind(NEXT_ITEM, scan)
        if cut < 0:
            continue
        items = run(b"[" + buf[start : cut + 1] + b"]")
        if items is not None:
            start = cut + 2
            yield items, rv, token
    else:  # the whole body is here
        if start:
            tail = bytes(buf[start:]).rstrip()
            if tail.endswith(b"]}"):
                items = run(b"[" + tail[:-2] + b"]") if tail[:-2].strip() else []
                if items is not None:
                    yield items, rv, token
                    return
        # Decoded whole (raises for a malformed body); items yielded already come again,
        # the same objects: harmless.
        yield page(bytes(buf))
        return
    for chunk in chunks:  # the layout was not the expected one: read the rest
        buf += chunk
    yield page(bytes(buf))
