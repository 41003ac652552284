"""Support for netplane's tests and benchmarks (see README.md): the real peers (anchors) and
the control plane built from them, the namespace lab (`lab`), the fake API server whose
faults tests control (`fakeapi`), the kernel test doubles (`kernel`, `netlink`), a request
loop (`probe`) and the type check (`typecheck`). Nothing in the data plane imports this package."""
