"""A bounded HTTP request loop, run inside a node or pod namespace by tests and benchmarks
to watch a service through a pod deletion: one JSON line per request with the answer."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request


def probe(url: str, count: int, interval: float, timeout: float) -> None:
    start = time.monotonic()
    for i in range(count):
        t = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                line = {"t": t - start, "ok": True, "body": r.read().decode().strip()}
        except OSError as e:
            line = {"t": t - start, "ok": False, "error": str(e)}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        if i + 1 < count:
            time.sleep(max(0.0, interval - (time.monotonic() - t)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args()
    probe(args.url, min(args.count, 10000), args.interval, args.timeout)


if __name__ == "__main__":
    main()
