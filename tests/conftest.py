"""Shared fixtures: the benchmark data folder (skips with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NAPARI_HITL_DATA", REPO.parent / "shared" / "data"))


def data_dir(name: str) -> Path:
    """Return ``../shared/data/<name>`` or skip the test with a clear reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"benchmark data {path} is absent (set NAPARI_HITL_DATA or provide ../shared/data)")
    return path


@pytest.fixture
def shared_data():
    """The folder ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark data {SHARED_DATA} is absent")
    return SHARED_DATA
