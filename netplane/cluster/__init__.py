"""The emulated cluster: `netplane up` builds a kind-like cluster out of network namespaces.

The folders follow the data flow, from the user to the kernel:
- client/: the kubectl-shaped CLI (commands, tables, templates) and `up`/`down`; it talks
  to the daemon over `<state>/api.sock`.
- daemon/: the cluster's daemon: the object store, the API requests, the controller loop,
  the pods' lifecycle, LoadBalancer routes.
- control/: the pure control plane: admission and validation, the controllers (Deployment,
  ReplicaSet, scheduler, garbage collector, namespaces, EndpointSlices), pod status, events.
  Objects in, objects out; unit-tested without root.
- node/: the side effects on the nodes: namespaces and routes, CNI sandboxes, the kubelet
  and the per-node runtime that runs the pods' applications and commands.
- statedir.py: the state directory's layout, shared by all of them.
"""
