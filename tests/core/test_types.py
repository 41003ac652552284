"""The product code type-checks (mypy, settings in pyproject.toml's [tool.mypy])."""

from __future__ import annotations

import pytest

from netplane.testing import typecheck


def test_mypy_passes(capsys: pytest.CaptureFixture[str]) -> None:
    status = typecheck.main([])
    out = capsys.readouterr().out
    assert status == 0, out
