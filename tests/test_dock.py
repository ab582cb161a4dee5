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
    # the model's layers are made with the image's, hidden and empty (making them when the model
    # answers would stall the UI); the person's labels stay the active layer
    views = [f"{first} uncertainty", f"{first} prediction", f"{first} labels", f"{first} proposals"]
    assert [layer.name for layer in viewer.layers] == [first] + views
    assert not any(viewer.layers[v].visible for v in views if not v.endswith(" labels"))
    assert viewer.layers.selection.active.name == dock.labels_layer.name
    labels = dock.labels_layer
    data = np.asarray(labels.data).copy()
    data[10:30, 10:30] = 1
    labels.data = data
    dock.annotate.accept_button.click()
    got, prov = dock.project.read_labels(first)
    assert (got[10:30, 10:30] == 1).all() and (prov == HUMAN).all()
    assert "done" in dock.image_list.item(0).text()
    dock.annotate.next_button.click()
    after = dock.current  # the same proposals layer, renamed and on top again, no other layer left behind
    assert after != first and [layer.name for layer in viewer.layers] == [
        after, f"{after} uncertainty", f"{after} prediction", f"{after} labels", f"{after} proposals"]
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


def test_objects_are_deleted_merged_split_and_undone_in_the_dock(dock):
    from test_ui_session import press

    dock.sample_box.setCurrentIndex(dock.sample_box.findText("nuclei"))
    dock.sample_box.activated.emit(dock.sample_box.currentIndex())
    name, layer = dock.current, dock.labels_layer
    data = np.zeros(layer.data.shape, np.uint32)
    data[10:30, 10:30] = 100
    data[10:30, 30:50] = 200  # touches object 100: two objects, two ids
    layer.data = data
    dock.annotate.accept_button.click()
    ids, _, classes = dock.project.read_instances(name)
    assert classes == {100: 1, 200: 1} and (ids == data).all()

    layer.selected_label = 200
    layer.selected_label = 100  # picked 200, then 100: Merge joins 200 into 100
    dock.annotate.object_buttons["merge_objects"].click()
    ids, _, classes = dock.project.read_instances(name)
    assert classes == {100: 1} and (ids[10:30, 10:50] == 100).all() and (np.asarray(layer.data) == ids).all()
    dock.annotate.object_buttons["undo_edit"].click()
    ids, _, classes = dock.project.read_instances(name)
    assert classes == {100: 1, 200: 1} and (np.asarray(layer.data) == data).all()

    layer.selected_label = 100
    dock.annotate.object_buttons["split_object"].click()
    assert dock.tools.mode == "split"
    press(layer, 12, 12)
    press(layer, 27, 27)  # two clicks on the two parts of object 100
    ids, _, classes = dock.project.read_instances(name)
    assert len(classes) == 3 and ids[12, 12] != ids[27, 27] and dock.tools.mode == "off"

    layer.selected_label = 200
    dock.annotate.object_buttons["delete_object"].click()
    ids, prov, classes = dock.project.read_instances(name)
    assert 200 not in classes and (ids[10:30, 30:50] == 0).all() and (prov[10:30, 30:50] == HUMAN).all()
    events = [e["event"] for e in dock.project.journal()]
    assert events[-4:] == ["merge", "undo", "split", "delete"]
    layer.selected_label = 200  # no longer in the image: a clear message, nothing changes
    dock.annotate.object_buttons["delete_object"].click()
    assert "not in this image" in dock.status.text()
    assert [e["event"] for e in dock.project.journal()][-1] == "delete"


def test_the_objects_panel_lists_proposals_and_answers_them_in_one_click(dock, qtbot):
    from napari_hitl.app.objects import Proposal, Proposals

    dock.sample_box.setCurrentIndex(dock.sample_box.findText("nuclei"))
    dock.sample_box.activated.emit(dock.sample_box.currentIndex())
    name, layer, panel = dock.current, dock.labels_layer, dock.objects
    panel.find_button.click()  # the model's own proposals, on the worker queue
    qtbot.waitUntil(lambda: panel.proposals is not None, timeout=60_000)
    assert panel.layer is not None and panel.layer.name == f"{name} proposals"
    assert panel.list.count() == len(panel.proposals.items)
    # known proposals, so the answers are checked exactly
    ids = np.zeros(layer.data.shape, np.uint32)
    ids[5:15, 5:15], ids[30:40, 30:40] = 1, 2
    panel.show(Proposals(name, None, ids, [Proposal(2, 1, 0.3, 100, (30, 30, 40, 40), (34.5, 34.5)),
                                           Proposal(1, 1, 0.8, 100, (5, 5, 15, 15), (9.5, 9.5))]))
    assert panel.list.item(0).text().startswith("#2") and "30%" in panel.list.item(0).text()
    shown = np.asarray(panel.layer.data)  # outlines only, in a small dtype: no contour pass on the UI thread
    assert shown.dtype == np.uint8 and shown[5, 9] == 1 and shown[10, 10] == 0 and shown[30, 35] == 2
    unsaved = np.asarray(layer.data).copy()
    unsaved[50:55, 50:55] = 77  # something the person painted and has not saved
    layer.data = unsaved
    panel.list.setCurrentRow(1)
    panel.accept_button.click()
    saved, prov, classes = dock.project.read_instances(name)
    new = int(saved[10, 10])
    assert new and classes[new] == 1 and (np.asarray(layer.data)[5:15, 5:15] == new).all()
    panel.list.setCurrentRow(0)
    panel.reject_button.click()
    saved, prov, _ = dock.project.read_instances(name)
    assert (saved[30:40, 30:40] == 0).all() and (prov[30:40, 30:40] == HUMAN).all()
    assert (np.asarray(layer.data)[50:55, 50:55] == 77).all()  # the unsaved painting is still shown
    assert panel.list.count() == 0 and not panel.layer.data.any()
    assert [e["event"] for e in dock.project.journal()][-2:] == ["accept_object", "reject_object"]
    made = panel.layer
    panel.show(Proposals(name, None, ids, [Proposal(2, 1, 0.3, 100, (30, 30, 40, 40), (34.5, 34.5))]))
    dock.annotate.next_button.click()  # another image: the proposals go, their layer is kept, hidden and empty
    assert panel.proposals is None and panel.list.count() == 0
    assert panel.layer is made and not made.visible and not np.asarray(made.data).any()
    assert made.name == f"{dock.current} proposals" and dock.viewer.layers[-1].name == made.name


def test_brush_objects_keep_the_class_they_were_painted_with(dock):
    dock.sample_box.setCurrentIndex(dock.sample_box.findText("nuclei"))
    dock.sample_box.activated.emit(dock.sample_box.currentIndex())
    dock.project.add_class("debris")
    dock.annotate.set_classes(dock.project.classes[1:])
    layer = dock.labels_layer
    oid = int(layer.selected_label)  # a fresh id for napari's brush, of class 1 (nucleus)
    data = np.asarray(layer.data).copy()
    data[10:20, 10:20] = oid
    layer.data = data
    dock.annotate.class_box.setCurrentIndex(dock.annotate.class_box.findData(2))  # now debris
    assert dock.tools.cls == 2 and int(layer.selected_label) != oid  # the brush starts a new object
    other = int(layer.selected_label)
    data = np.asarray(layer.data).copy()
    data[30:40, 30:40] = other
    layer.data = data
    dock.annotate.accept_button.click()
    _, _, classes = dock.project.read_instances(dock.current)
    assert classes[oid] == 1 and classes[other] == 2
