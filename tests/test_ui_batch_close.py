"""Closing the dock's project while Predict & rank is predicting a slide on the Dask cluster: the
UI thread returns at once, and the batch job ends without an error after the session closed.

A guard (issue 20, suspect 2): this passed before the batch's stop changes too. The batch's wait
for a stopping slide task runs on the queue's worker thread, never on the UI thread, and the
dock closes the client under it (the job's ClosedClientError was dropped unseen, the job being
cancelled); see test_batch_stop.py for what was wrong below the dock."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_hitl import io
from napari_hitl import project as store
from napari_hitl.app.slides import read_progress
from napari_hitl.project import Project

from test_batch_stop import _small_slide_sizes
from test_slide_rank import _slide

pytest.importorskip("torch")
pytest.importorskip("distributed")


def test_closing_the_project_during_a_slide_batch_returns_at_once_and_reports_no_error(dock, qtbot, tmp_path,
                                                                                      monkeypatch):
    from napari_hitl.app.batch import model_bytes

    monkeypatch.setattr(io, "LAZY_PIXELS", 300 * 300)
    monkeypatch.setattr(store, "SLIDE_CHUNK", 256)
    _small_slide_sizes(monkeypatch)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _slide(imgs / "slide.tif", (600, 700))
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(imgs / "a_small.png")
    project = Project.create(tmp_path / "p", imgs, classes=["background", "cell"])
    dock.open_project(project)
    failures = []
    dock.queue.failed.connect(failures.append)
    folder = project.cache_dir / "predictions" / model_bytes(dock.session.model)[1] / "slide.slide"
    dock.rank()
    qtbot.waitUntil(lambda: read_progress(folder) >= 3, timeout=120_000)
    closing = []
    monkeypatch.setattr("napari_hitl.app.session.Session.close",
                        lambda self, _close=dock.session.close.__func__, **kw: (closing.append(kw), _close(self, **kw)))
    dock.close_project()  # the UI thread: no wait for the slide task, the Dask cluster stops on a thread of its own
    assert closing == [{"dask_in_background": True}]
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=30_000)
    assert not failures, failures  # no ClosedClientError / closed-project error from the batch
    assert dock.session is None
