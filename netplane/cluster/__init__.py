"""The emulated cluster: `netplane up` builds a kind-like cluster out of network namespaces.

Layers, from pure to side effects:
- topology, naming, workloads, admission, controller, endpointslices, envvars: pure
  functions from desired objects to plans (unit-tested without root).
- store: the state directory (objects persisted as JSON, the manifests the proxies and
  DNS follow).
- plumbing, sandbox, runtime, responders: namespaces, CNI calls, pod processes.
- supervisor: the daemon that owns the store, runs the controller loop and its children.
- api, cli, tables: the kubectl-shaped client.
"""
