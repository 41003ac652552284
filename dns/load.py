"""The first load, started before the rest of the server is imported.

At 10,000 Services the API server needs ~0.2 s to encode each list (JSON from its watch
cache); the server's own imports (dnslib, the engine, the supervisor and its probes) and
the start of its workers run meanwhile instead of before the requests go out. Nothing
here imports the DNS engine.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass

from netplane.dns.options import ServeOptions, kinds_needed
from netplane.kube.options import source_from_options
from netplane.sources import ManifestSource, Source, start_source
from netplane.state import ClusterState


@dataclass(frozen=True)
class Loading:
    """A source running into `state` until `stop` is set."""

    state: ClusterState
    stop: threading.Event


def source(opts: ServeOptions) -> Source:
    """Manifests, or the API server read into DNS's own lean objects (`objects.py`), one
    unpaged list per kind from the API server's watch cache, as CoreDNS's informers do.
    Raises SourceChoiceError (a usage error) for a wrong choice or an unusable kubeconfig."""
    from netplane.dns.objects import ApiCodec
    from netplane.kube.source import Tuning

    kinds = kinds_needed(opts.zone.pods)
    chosen = source_from_options(opts.manifests, opts.kubeconfig, opts.in_cluster, kinds,
                                 ApiCodec, Tuning(page_size=0))  # fmt: skip
    if opts.manifests:  # polled faster than the default: answers follow within ~100 ms
        return ManifestSource(opts.manifests, poll_interval=opts.poll_interval)
    return chosen


def start(opts: ServeOptions, objects: Source | None = None) -> Loading:
    """Start OBJECTS (default: `source(opts)`) feeding a new state, now."""
    objects = objects or source(opts)
    # The first load allocates ~10^5 objects and makes no cycles: the collector would walk
    # them again and again for nothing (~0.1 s of CPU at 10k services, a tenth of the
    # start). The supervisor enables it once the first catalog is built (or after
    # sources.FIRST_LOAD_GC_PAUSE of waiting); forked workers enable it at once.
    gc.disable()
    state = ClusterState()
    _, stop = start_source(objects, state)
    return Loading(state, stop)
