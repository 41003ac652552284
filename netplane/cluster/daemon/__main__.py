"""`python -m netplane.cluster.daemon STATE_DIR`: the cluster's daemon (started by `up`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from netplane import signals
from netplane.cluster.daemon.supervisor import Supervisor
from netplane.cluster.statedir import StateDir, write_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description="netplane cluster daemon (started by up)")
    parser.add_argument("state_dir")
    args = parser.parse_args()
    state = StateDir(args.state_dir)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    write_atomic(state.pids / "supervisor.pid", json.dumps({"pid": os.getpid(), "argv": sys.argv}))
    sup = Supervisor(state)
    signals.on_signals(lambda _: sup.shutdown(), signal.SIGTERM)
    sup.serve()
    (state.pids / "supervisor.pid").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
