"""Makes the shared helpers (cniutil) importable under pytest's importlib mode; fixtures."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from cniutil import data_dir, netns

__all__ = ["data_dir", "netns"]
