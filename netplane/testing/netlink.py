"""A recording wrapper around the nftables backend's netlink socket (tests, benchmarks).

`RecordingNetlink(netns)` is the real socket (the namespace's kernel does the work); it
keeps every committed batch (`batches`, and their descriptions) and refuses the next
`refuse` commits (or every `fail_every`-th) with EINVAL before they reach the kernel, so
tests can check what a sync sent and how a failure is handled, and benchmarks can replay
the very same transactions elsewhere (the floor).
"""

from __future__ import annotations

import errno

from netplane.proxy.nft._netlink import Batch, Netlink, NftError


class RecordingNetlink(Netlink):
    def __init__(self, netns: str | None = None, fail_every: int = 0) -> None:
        super().__init__(netns)
        self.batches: list[Batch] = []
        self.refuse = 0
        self.fail_every = fail_every
        self.calls = 0  # commits, refused ones included
        self.refused = 0

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
        self.calls += 1
        if self.refuse or (self.fail_every and self.calls % self.fail_every == 0):
            self.refuse = max(0, self.refuse - 1)
            self.refused += 1
            raise NftError("refused by the test", errno.EINVAL)
        return super().commit(batch, genid)
