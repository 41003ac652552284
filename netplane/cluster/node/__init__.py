"""Side effects on the nodes: namespaces, CNI sandboxes, kubelet, runtime."""
