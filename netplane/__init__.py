"""netplane: a Kubernetes Service data plane (proxy, cluster DNS, bridge CNI) in Python."""

__version__ = "0.1.0"
