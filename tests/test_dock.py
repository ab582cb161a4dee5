"""The dock in a headless viewer: open the sample project, annotate, accept, move on."""

from __future__ import annotations

import numpy as np

from napari_hitl.project import HUMAN, Project


def test_dock_loads_sample_and_accepts_labels(dock):
    viewer = dock.viewer
    dock.sample_box.setCurrentIndex(dock.sample_box.findText("nuclei"))
    dock.sample_box.activated.emit(dock.sample_box.currentIndex())
    assert dock.project is not None and dock.image_list.count() == 4
    first = dock.current
    assert [layer.name for layer in viewer.layers] == [first, f"{first} labels"]
    labels = dock.labels_layer
    data = np.asarray(labels.data).copy()
    data[10:30, 10:30] = 1
    labels.data = data
    dock.annotate.accept_button.click()
    got, prov = dock.project.read_labels(first)
    assert (got[10:30, 10:30] == 1).all() and (prov == HUMAN).all()
    assert "done" in dock.image_list.item(0).text()
    dock.annotate.next_button.click()
    assert dock.current != first and len(viewer.layers) == 2
    root = dock.project.root
    dock.close_project()
    with Project.open(root, readonly=True) as again:  # persisted, and the lock was released
        assert again.counts(first).human == got.size


def test_dock_reports_errors_as_notifications(dock, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_hitl.napari._widget.show_error", shown.append)
    dock._guard(dock.open_project, str(tmp_path / "not-a-project"))
    assert shown and "does not exist" in shown[0]
    dock.accept_labels()
    assert "Open a project" in shown[-1]
