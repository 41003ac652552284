"""Makes the shared helpers (cniutil) importable under pytest's importlib mode; fixtures."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest
from cniutil import data_dir, netns

__all__ = ["data_dir", "netns"]


@pytest.fixture(scope="session", autouse=True)
def private_state_dir(tmp_path_factory):
    """In-progress ADD markers in a private directory, not the host's /run/netplane."""
    old = os.environ.get("NETPLANE_CNI_STATE_DIR")
    os.environ["NETPLANE_CNI_STATE_DIR"] = str(tmp_path_factory.mktemp("cni-state"))
    yield
    if old is None:
        del os.environ["NETPLANE_CNI_STATE_DIR"]
    else:
        os.environ["NETPLANE_CNI_STATE_DIR"] = old
