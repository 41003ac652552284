"""Support for netplane's tests and benchmarks: the real peers (anchors) and the fixtures
that run them. Nothing in the data plane imports this package."""
