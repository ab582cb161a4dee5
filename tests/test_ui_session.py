"""A whole annotation session driven through the dock in a viewer, with napari mouse events:
sample project, clicks, accept, a scribble across two regions, extreme points, undo, one short
training round, ranking re-sorts, superpixel suggestions, export."""

from __future__ import annotations

import json

import numpy as np
from napari.utils._test_utils import read_only_mouse_event
from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks
from skimage.measure import label as connected, regionprops

from napari_hitl.project import HUMAN, MACHINE
from napari_hitl.samples import sample_truth
from napari_hitl.simulate.extreme import extreme_points

WAIT = 60_000


def press(layer, y, x, button=1, modifiers=()):
    """A click on ``layer`` at data (y, x) through napari's own mouse-callback machinery."""
    ev = read_only_mouse_event(type="mouse_press", button=button, modifiers=list(modifiers), position=(y, x))
    mouse_press_callbacks(layer, ev)
    ev = read_only_mouse_event(type="mouse_release", button=button, modifiers=list(modifiers), position=(y, x))
    mouse_release_callbacks(layer, ev)


def drag(layer, points, button=1):
    """Press at the first point, move through the others, release at the last."""
    (y, x), rest = points[0], points[1:]
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", button=button, position=(y, x)))
    for y, x in rest:
        mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", button=button, is_dragging=True,
                                                          position=(y, x)))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", button=button, position=rest[-1]))


def nuclei(name):
    """Instances of the sample's true nuclei, largest first."""
    inst = connected(sample_truth("nuclei", name) > 0)
    return inst, sorted(regionprops(inst), key=lambda r: -r.area)


def settle(qtbot, dock, timeout=WAIT):
    qtbot.waitUntil(lambda: not dock.queue.busy, timeout=timeout)


def test_full_session_in_the_dock(dock, qtbot, tmp_path):
    viewer = dock.viewer
    dock.annotate.engine_box.setCurrentText("graph")  # no weights needed: the session does not depend on training
    dock.sample_box.setCurrentIndex(dock.sample_box.findText("nuclei"))
    dock.sample_box.activated.emit(dock.sample_box.currentIndex())
    name = dock.current
    layer = dock.labels_layer
    inst, props = nuclei(name)
    c, a, b = props[0], props[2], props[3]
    ya, xa = (int(v) for v in a.coords[len(a.coords) // 2])
    yb, xb = (int(v) for v in b.coords[len(b.coords) // 2])
    settle(qtbot, dock)  # the engine is prepared in the background as the image opens
    assert "clicks: graph on CPU" in dock.device_label.text()  # the graph engine always runs on the CPU

    # three clicks: positive on nucleus A, a new region on B, a negative click in the background
    dock.annotate.tool_buttons["click"].click()
    assert dock.tools.mode == "click" and layer.mode == "pan_zoom" and not layer.mouse_pan
    press(layer, ya, xa)
    dock.run_action("new_region")
    press(layer, yb, xb)
    bg = np.argwhere(inst == 0)[0]
    press(layer, *bg, button=2)  # right button: negative
    assert dock.tools.prompt_signs() == ["positive", "positive", "negative"]
    assert len(dock.tools.points_layer.data) == 3
    settle(qtbot, dock)
    data = np.asarray(layer.data)
    session = dock.tools.session()
    assert len(session.regions) == 2
    # each region is its own object (an id each, napari's colour each), both of class 1
    assert data[ya, xa] == session.regions[0].oid and data[yb, xb] == session.regions[1].oid
    assert data[ya, xa] != data[yb, xb] and dock.tools.object_classes() == {int(data[ya, xa]): 1,
                                                                             int(data[yb, xb]): 1}
    both = session.regions[0].mask | session.regions[1].mask
    precision = (both & (inst > 0)).sum() / both.sum()
    assert precision > 0.8, f"the clicked regions are mostly not nucleus (precision {precision:.2f})"

    # accept: saved at once as human labels
    dock.annotate.accept_button.click()
    semantic, prov = dock.project.read_labels(name)
    assert semantic[ya, xa] == 1 and (prov == HUMAN).all()
    saved, _, classes = dock.project.read_instances(name)
    assert saved[ya, xa] != saved[yb, xb] and classes[int(saved[ya, xa])] == 1 == classes[int(saved[yb, xb])]
    assert dock.tools.session().regions == []

    # scribble from inside A into B (full-image mode): A grows, B shrinks
    assert dock.annotate.full_image.isChecked()
    press(layer, ya, xa)  # on the saved object A: a region that corrects A (same id)
    dock.run_action("new_region")
    press(layer, yb, xb)
    settle(qtbot, dock)
    ra, rb = dock.tools.session().regions
    assert ra.oid == saved[ya, xa] and rb.oid not in classes
    before_a, before_b = ra.mask.copy(), rb.mask.copy()
    dock.annotate.tool_buttons["scribble"].click()
    line = [(ya + (yb - ya) * k / 10, xa + (xb - xa) * k / 10) for k in range(11)]
    drag(layer, line)
    settle(qtbot, dock)
    assert len(ra.prompts.scribbles) == 1 and not rb.prompts.scribbles
    assert ra.mask.sum() > before_a.sum() and rb.mask.sum() < before_b.sum()
    assert not (ra.mask & rb.mask).any()
    assert len(dock.tools.shapes_layer.data) == 1

    # extreme points on nucleus C create a region; undo removes the prompts one by one
    dock.annotate.tool_buttons["extreme"].click()
    ext = extreme_points(inst == c.label, jitter=0).points
    n_regions = len(dock.tools.session().regions)
    for y, x in ext[[2, 1, 3, 0]]:  # any order
        press(layer, y, x)
    settle(qtbot, dock)
    s = dock.tools.session()
    assert len(s.regions) == n_regions + 1
    rc = s.regions[-1]
    y0, x0, y1, x1 = rc.prompts.extreme.box
    ys, xs = np.nonzero(rc.mask)
    assert ys.min() >= y0 - 2 and ys.max() <= y1 + 2 and xs.min() >= x0 - 2 and xs.max() <= x1 + 2
    on_c = (rc.mask & (inst == c.label)).sum() / rc.mask.sum()
    assert on_c > 0.6, f"the extreme-point region is mostly not nucleus C ({on_c:.2f})"
    assert dock.tools.prompt_signs().count("extreme") == 4
    shown = np.asarray(layer.data)
    assert (shown[rc.mask] == rc.oid).all() and dock.tools.object_classes()[rc.oid] == 1
    dock.annotate.undo_button.click()  # the extreme points go as one prompt
    settle(qtbot, dock)
    assert len(dock.tools.session().regions) == n_regions
    assert "extreme" not in dock.tools.prompt_signs()
    dock.run_action("undo")  # the scribble
    settle(qtbot, dock)
    assert not ra.prompts.scribbles and len(dock.tools.shapes_layer.data) == 0
    dock.run_action("reset")
    assert dock.tools.session().regions == [] and len(dock.tools.points_layer.data) == 0
    np.testing.assert_array_equal(np.asarray(layer.data), saved)
    dock.annotate.tool_buttons["click"].click()
    press(layer, *bg)  # a positive click in the background paints something new...
    settle(qtbot, dock)
    assert (np.asarray(layer.data) != saved).any()
    layer.undo()  # ...and napari's own history (Ctrl+Z) takes the painted mask back in one step
    np.testing.assert_array_equal(np.asarray(layer.data), saved)
    dock.run_action("reset")

    # one short training round, then every image is predicted and ranked
    dock.tabs.setCurrentWidget(dock.training)
    dock.training.steps.setValue(3)
    dock.training.batch.setValue(1)
    dock.training.crop.setValue(64)
    dock.training.train_button.click()
    assert not dock.training.train_button.isEnabled()
    qtbot.waitUntil(lambda: dock.training.figures.text().startswith("Round"), timeout=120_000)
    settle(qtbot, dock, 120_000)
    assert len(dock.session.predictions) == 4
    assert (dock.project.checkpoint_dir / "segnet.pt").exists()
    assert dock.training.train_button.isEnabled()
    assert f"model: {dock.session.model.trainer.device_description}" in dock.device_label.text()
    # the model's prediction of the shown image is a layer of its own, under the person's labels,
    # and its uncertainty an optional (hidden) layer above the image
    names = [lay.name for lay in viewer.layers]
    pred_layer, unc_layer = viewer.layers[f"{name} prediction"], viewer.layers[f"{name} uncertainty"]
    assert names.index(f"{name} uncertainty") < names.index(f"{name} prediction") < names.index(layer.name)
    np.testing.assert_array_equal(pred_layer.data, dock.session.predictions[name][0].pred)
    assert pred_layer.visible and not unc_layer.visible and 0 <= float(unc_layer.data.min()) <= 1
    assert viewer.layers.selection.active.name == layer.name  # the person keeps editing their labels

    # the ranking panel re-sorts by each score
    orders = {}
    for choice, descending in (("entropy", True), ("margin", True), ("local consistency", False)):
        dock.ranking.set_choice(choice)
        vals = dock.ranking.values()
        assert len(vals) == 4 and not np.isnan(vals).any()
        orders[choice] = dock.ranking.order()
        assert orders[choice][-1] == name  # the image a human finished goes last
        vals = vals[:-1]
        assert vals == sorted(vals, reverse=descending), (choice, vals)
        assert sorted(orders[choice]) == sorted(r.name for r in dock.project.images)
    dock.ranking.set_choice("diversity")
    assert "★" in " ".join(dock.image_list.item(i).text() for i in range(4))
    dock.ranking.set_choice("coverage")  # picks among what the labelled image does not cover
    texts = [dock.image_list.item(i).text() for i in range(4)]
    assert sum("★" in t for t in texts) == 3 and not any(t.startswith(f"{name} ") and "★" in t for t in texts)
    pred_layer.visible, unc_layer.visible = False, True  # the person's eye toggles
    dock.open_next()
    assert dock.current != name and dock.project.counts(dock.current).status != "done"
    assert f"{name} prediction" not in [lay.name for lay in viewer.layers]  # the old image's went with it
    # the same two layers wait, renamed, empty and hidden, for the new image's prediction
    assert not pred_layer.data.any() and not pred_layer.visible and not unc_layer.visible
    settle(qtbot, dock)  # the new image's prediction is read from the cache on the worker
    names = [lay.name for lay in viewer.layers]
    assert names.index(f"{dock.current} uncertainty") < names.index(f"{dock.current} prediction") \
        < names.index(f"{dock.current} labels")  # under the person's labels again
    np.testing.assert_array_equal(pred_layer.data, dock.session.predictions[dock.current][0].pred)
    assert pred_layer.name == f"{dock.current} prediction" and not pred_layer.visible and unc_layer.visible
    pred_layer.visible, unc_layer.visible = True, False

    # superpixel suggestions of the open image: accept one, relabel another
    dock.suggest()
    settle(qtbot, dock)
    sug = dock.suggestions
    assert len(sug.items) == sug.count.value() and sug.layer is not None
    first, second = sug.items[0], sug.items[1]
    ranks = sug.layer.data if sug.layer.data.ndim == 2 else sug.layer.data[sug.frame]
    assert (ranks[sug.segments == second.segment] == 2).all()  # outlined by rank, nothing else marked
    assert np.count_nonzero(ranks) == sum(s.area for s in sug.items)
    answers = dock.session.answers_since_training
    sug.accept(0)
    _, prov = dock.project.read_labels(dock.current)
    assert (prov[sug.segments == first.segment] == MACHINE).all()
    dock.annotate.tool_buttons["suggest"].click()
    yy, xx = np.argwhere(sug.segments == second.segment)[0]
    press(dock.labels_layer, yy, xx, modifiers=["Control"])  # Ctrl+click: relabel as the selected class
    lab, prov = dock.project.read_labels(dock.current)
    assert (prov[sug.segments == second.segment] == HUMAN).all() and (lab[sug.segments == second.segment] == 1).all()
    assert len(sug.items) == sug.count.value() - 2
    rest = list(sug.items)
    sug.accept_all_button.click()  # the rest keep their predicted classes, in one click
    lab, prov = dock.project.read_labels(dock.current)
    for s in rest:
        inside = sug.segments == s.segment
        assert (prov[inside] == MACHINE).all() and (lab[inside] == s.predicted_class).all()
    assert sug.items == [] and not np.any(sug.layer.data)
    assert dock.session.answers_since_training == answers + 3  # each answer counts towards auto-training
    assert (prov[sug.segments == second.segment] == HUMAN).all()  # the relabelled one stays human
    # a finer cut is a new set of superpixels: none of it answered yet, ids of the old cut not excluded
    coarse = int(sug.segments.max()) + 1
    sug.size.setValue(2 * sug.size.value())
    dock.suggest()
    settle(qtbot, dock)
    assert int(sug.segments.max()) + 1 > coarse and sug.n_segments == sug.size.value()
    assert len(sug.items) == sug.count.value()

    # export: labels, provenance, manifest, model and a summary of human vs machine pixels
    out = tmp_path / "export"
    dock.export(out, "tiff")
    settle(qtbot, dock)
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "manifest.json").exists() and (out / "model" / "segnet.pt").exists()
    assert summary["pixels"]["human"] > 0 and summary["pixels"]["machine"] > 0
    assert len(list((out / "labels").glob("*.tif"))) == 4
    assert "human" in dock.exporter.summary.text()
    shown = [lay.name for lay in viewer.layers if not lay.name.endswith((" prediction", " uncertainty"))]
    assert shown[:2] == [dock.current, f"{dock.current} labels"]


def test_an_engine_error_becomes_a_notification(dock, qtbot, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_hitl.napari._worker.show_error", shown.append)

    from napari_hitl.napari._tools import EngineHost

    working = EngineHost.get

    def broken(self, name, key, image):
        if name == "clicknet":
            raise RuntimeError("the engine fell over")
        return working(self, name, key, image)

    monkeypatch.setattr("napari_hitl.napari._tools.EngineHost.get", broken)
    dock.sample_box.setCurrentIndex(dock.sample_box.findText("nuclei"))
    dock.sample_box.activated.emit(dock.sample_box.currentIndex())
    before = np.asarray(dock.labels_layer.data).copy()
    from napari.utils.key_bindings import KeyBinding

    keymap = dock.labels_layer.keymap  # the tools' shortcuts live on the labels layer
    keymap[KeyBinding.from_str("Shift-E")](dock.labels_layer)
    assert dock.tools.mode == "extreme" and dock.annotate.tool_buttons["extreme"].isChecked()
    keymap[KeyBinding.from_str("C")](dock.labels_layer)
    assert dock.tools.mode == "click"
    assert "Backspace: undo the last prompt" in dock.toolTip()
    press(dock.labels_layer, 20, 20)
    # the engine fails twice: preparing it as the image opens, and on the click
    qtbot.waitUntil(lambda: any("predict failed" in s and "the engine fell over" in s for s in shown), timeout=WAIT)
    np.testing.assert_array_equal(np.asarray(dock.labels_layer.data), before)  # nothing painted
    settle(qtbot, dock)
    dock.set_engine("graph")  # the person can switch engines and go on
    press(dock.labels_layer, 20, 20)
    settle(qtbot, dock)
    assert len(dock.tools.session().regions) == 1 and dock.tools.session().regions[0].mask is not None


def test_engines_prepare_again_after_another_project_opens(monkeypatch):
    """Images of two projects may share a name: after forget() the same key prepares again."""
    from napari_hitl.napari._tools import EngineHost

    class Counting:
        def __init__(self):
            self.seen = []

        def prepare(self, image):
            self.seen.append(int(image[0, 0]))

    engine = Counting()
    monkeypatch.setattr("napari_hitl.interactive.engine.get_engine", lambda name: engine)
    host = EngineHost()
    a, b = np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8)
    assert host.get("clicknet", ("img0", 0), a) is engine
    host.get("clicknet", ("img0", 0), a)
    assert engine.seen == [0]  # same image, same frame: prepared once
    host.forget()  # another project opened
    host.get("clicknet", ("img0", 0), b)
    assert engine.seen == [0, 1]
