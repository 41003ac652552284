"""A recording wrapper around the nftables backend's netlink socket (tests, benchmarks).

`RecordingNetlink(netns)` is the real socket (the namespace's kernel does the work); it
keeps every committed batch (`batches`, and their descriptions) and refuses the next
`refuse` commits with EINVAL, so tests can check what a sync sent and how a failure is
handled, and benchmarks can replay the very same transactions elsewhere (the floor).
"""

from __future__ import annotations

import errno

from netplane.proxy.nft._netlink import Batch, Netlink, NftError


class RecordingNetlink(Netlink):
    def __init__(self, netns: str | None = None) -> None:
        super().__init__(netns)
        self.batches: list[Batch] = []
        self.refuse = 0

    @property
    def described(self) -> list[list[str]]:
        """Each committed (or refused) batch as one line per message."""
        return [[b.describe(i) for i in range(len(b))] for b in self.batches]

    def take(self) -> list[Batch]:
        """The batches since the last take, forgotten."""
        out, self.batches = self.batches, []
        return out

    def commit(self, batch: Batch, genid: int = 0) -> int | None:
        self.batches.append(batch)
        if self.refuse:
            self.refuse -= 1
            raise NftError("refused by the test", errno.EINVAL)
        return super().commit(batch, genid)
