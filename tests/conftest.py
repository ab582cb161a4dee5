"""Shared fixtures: the benchmark data folder (skips with a reason when absent)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# napari's settings (reader preferences that the plugin writes) go to a throwaway file, never the user's
os.environ.setdefault("NAPARI_CONFIG", str(Path(tempfile.mkdtemp(prefix="napari-hitl-tests-")) / "settings.yaml"))
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


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow (README's test command, which CI runs, passes it)")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` skip unless ``--run-slow``: a plain ``pytest`` stays quick."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (README's test command and CI do)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Use the virtual X display that pytest-xvfb starts; without one, Qt runs offscreen."""
    if not os.environ.get("DISPLAY") and not os.environ.get("QT_QPA_PLATFORM"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"


@pytest.fixture
def viewer_factory(request):
    """``make_napari_viewer``, skipped where napari's canvas has no OpenGL (Qt offscreen).

    The skip comes before napari's fixture is set up: its teardown fails on a skipped test.
    """
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        pytest.skip("napari's canvas needs OpenGL, which Qt offscreen lacks here: install Xvfb "
                    "(apt-get install xvfb) and pytest-xvfb runs the viewer tests on a virtual display")
    return request.getfixturevalue("make_napari_viewer")


@pytest.fixture
def dock(viewer_factory, tmp_path, monkeypatch):
    """The annotation dock in a fresh viewer, sample projects under ``tmp_path``; its worker stops after."""
    monkeypatch.setenv("NAPARI_HITL_HOME", str(tmp_path / "home"))
    viewer = viewer_factory()
    _, widget = viewer.window.add_plugin_dock_widget("napari-hitl", "Annotation dock")
    yield widget
    widget.queue.stop()
