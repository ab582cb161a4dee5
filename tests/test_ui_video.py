"""The dock's time-lapse mode: units across frames, jump to one, accept a frame, Propagate."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hitl.project import HUMAN, PSEUDO


@pytest.fixture
def dock(dock, monkeypatch, qtbot):
    """The shared dock, whose worker thread ends before teardown."""
    monkeypatch.setattr("napari_hitl.napari._worker.IDLE_EXIT_S", 0.2)
    yield dock
    qtbot.waitUntil(lambda: not dock.queue.busy and not dock.queue._alive, timeout=30000)


def _open_timelapse(dock):
    """Open the time-lapse sample in the dock; returns its name."""
    dock.sample_box.setCurrentIndex(dock.sample_box.findText("timelapse"))
    dock.sample_box.activated.emit(dock.sample_box.currentIndex())
    return dock.current


def _accept(dock, t: int, rows: slice, labels: np.ndarray) -> None:
    """Paint ``labels`` into ``rows`` of frame ``t`` of the labels layer, show that frame, Accept."""
    dock.viewer.dims.set_current_step(0, t)
    data = np.asarray(dock.labels_layer.data).copy()
    data[t, rows] = labels
    dock.labels_layer.data = data
    dock.annotate.accept_button.click()


def test_timelapse_units_and_propagation(dock, qtbot):
    pytest.importorskip("torch")
    from napari_hitl.napari._video import OUTLINE_LAYER
    from napari_hitl.samples import sample_truth

    name, video = _open_timelapse(dock), dock.video
    assert dock.project.record(name).frames == 12 and video.isVisibleTo(dock)
    truth = sample_truth("timelapse", name)

    # accept part of the truth on frame 3: only that frame becomes human
    _accept(dock, 3, slice(0, 96), truth[3, :96])
    labels, prov = dock.project.read_labels(name)
    assert (prov[3] == HUMAN).all() and (prov[np.arange(12) != 3] == 0).all()
    assert np.array_equal(labels[3, :96], truth[3, :96]) and labels[3, :96].any()

    # units to label next, across frames; double-click jumps to one and outlines it
    video.count.setValue(6)
    video.find_button.click()
    qtbot.waitUntil(lambda: video.list.count() == 6, timeout=60000)
    assert all(r.score_kind == "motion" for r in video.rows)  # round one: no model yet
    frames = {r.frame for r in video.rows}
    assert len(frames) > 1 and all(0 <= f < 12 for f in frames)
    row = next(r for r in video.rows if r.frame != 3)
    video.list.itemDoubleClicked.emit(video.list.item(video.rows.index(row)))
    assert dock.viewer.dims.current_step[0] == row.frame and OUTLINE_LAYER in dock.viewer.layers
    assert dock.viewer.layers.selection.active.name == dock.labels_layer.name
    removed = []
    dock.viewer.layers.events.removed.connect(lambda e: removed.append(e.value.name))
    other = next(r for r in video.rows if r.frame != row.frame)  # the next jump moves the outline, same layer
    video.list.itemDoubleClicked.emit(video.list.item(video.rows.index(other)))
    outline = dock.viewer.layers[OUTLINE_LAYER]
    assert removed == [] and len(outline.data) == 1
    y0, x0, y1, x1 = other.bbox
    assert np.array_equal(outline.data[0][0], [other.frame, y0, x0])

    # one round of propagation with few steps fills every other frame with pseudo labels
    video.steps.setValue(4)
    video.propagate_button.click()
    assert not video.propagate_button.isEnabled() and video.progress.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: video.job is None, timeout=60000)
    assert "Propagation round 1" in video.figures.text()
    after, prov2 = dock.project.read_labels(name)
    others = np.arange(12) != 3
    assert (prov2[others] == PSEUDO).all()
    assert np.array_equal(after[3], labels[3]) and (prov2[3] == HUMAN).all()
    ids, _, classes = dock.project.read_instances(name)
    assert np.array_equal(np.asarray(dock.labels_layer.data), ids)  # the layer shows the saved objects
    assert dock.labels_layer.metadata["hitl_classes"] == classes
    assert after[others].any()  # some object predicted somewhere
    # the list is refreshed with units ranked by uncertainty from the new prediction
    qtbot.waitUntil(lambda: video.list.count() == 6 and video.rows[0].score_kind == "uncertainty", timeout=60000)
    assert all(r.frame != 3 for r in video.rows)  # the fully human frame has nothing left to label
    assert all(r.score > 0 and r.score_kind == "uncertainty" for r in video.rows)

    # whole frames as units: the list names frames, never the fully labelled one
    video.unit_box.setCurrentText("whole frames")
    video.find_button.click()
    h, w = truth.shape[1:]
    qtbot.waitUntil(lambda: video.list.count() == 6 and video.rows[0].bbox == (0, 0, h, w), timeout=60000)
    assert all(r.bbox == (0, 0, h, w) and r.frame != 3 for r in video.rows)
    assert len({r.frame for r in video.rows}) == 6 and video.host.unit == "frame"


def test_cancel_propagation_writes_nothing(dock, qtbot, monkeypatch):
    pytest.importorskip("torch")
    from napari_hitl.samples import sample_truth

    name, video = _open_timelapse(dock), dock.video
    shown = []
    monkeypatch.setattr("napari_hitl.napari._worker.show_error", shown.append)
    video.propagate_button.click()  # nothing accepted yet: a clear error, nothing written
    qtbot.waitUntil(lambda: video.job is None, timeout=60000)
    assert dock.project.counts(name).pseudo == 0 and "no human labels" in shown[0]
    assert video.propagate_button.isEnabled()
    _accept(dock, 0, slice(None), sample_truth("timelapse", name)[0])
    video.steps.setValue(5000)
    video.propagate_button.click()
    video.progress.cancel_button.click()
    assert video.propagate_button.isEnabled() and not video.progress.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=60000)
    assert dock.project.counts(name).pseudo == 0 and len(shown) == 1


def test_a_click_pauses_propagation_which_then_resumes(dock, qtbot):
    """Propagate is preemptible: a click waiting is answered between fine-tuning steps, then the
    round goes on from the step it reached (the steps add up to the asked number)."""
    pytest.importorskip("torch")
    from napari_hitl.samples import sample_truth

    name, video = _open_timelapse(dock), dock.video
    _accept(dock, 0, slice(None), sample_truth("timelapse", name)[0])
    video.steps.setValue(60)
    video.propagate_button.click()
    qtbot.waitUntil(lambda: video.progress.bar.format().startswith("fine-tune"), timeout=60000)
    answered = []
    dock.queue.submit("predict", lambda ctx: "click", lambda r: answered.append((r, video.job is not None)),
                      channel="predict", interactive=True)
    qtbot.waitUntil(lambda: bool(answered), timeout=60000)
    assert answered == [("click", True)]  # answered while the round was still running
    qtbot.waitUntil(lambda: video.job is None, timeout=120000)
    assert "Propagation round 1: 60 steps" in video.figures.text()
    assert dock.project.counts(name).pseudo > 0


def test_jumping_to_a_unit_shows_its_outline_in_the_reused_layer(dock, qtbot):
    """The outline layer is reused from jump to jump (not removed and made again): one the
    person hid is shown again by the next jump, as a new layer was, holding only that unit's box."""
    from napari_hitl.app.video import UnitRow
    from napari_hitl.napari._video import OUTLINE_LAYER

    _open_timelapse(dock)
    video = dock.video
    video.go_to(UnitRow(0, 2, (5, 6, 20, 30), 0.0))
    outline = dock.viewer.layers[OUTLINE_LAYER]
    assert outline.visible
    outline.visible = False  # the person hides it
    removed = []
    dock.viewer.layers.events.removed.connect(lambda e: removed.append(e.value.name))
    video.go_to(UnitRow(1, 4, (10, 12, 40, 50), 0.0))
    assert not removed and dock.viewer.layers[OUTLINE_LAYER].visible
    outline = dock.viewer.layers[OUTLINE_LAYER]
    assert len(outline.data) == 1 and np.array_equal(outline.data[0][0], [4, 10, 12])
    assert dock.viewer.dims.current_step[0] == 4
