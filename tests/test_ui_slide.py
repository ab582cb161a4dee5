"""The dock on a large image: multiscale layers, clicks on the crop window, Accept through the store.

A 3000 x 3000 pyramidal TIFF counts as large here (the threshold and the chunk side are
lowered); every read of the image is watched so that none reads it whole.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_hitl import io
from napari_hitl import project as store
from napari_hitl.io import WindowView
from napari_hitl.project import HUMAN, Project

from test_ui_session import WAIT, press, settle

N, CHUNK = 3000, 512


def make_slide(folder):
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:N, :N]
    rng = np.random.default_rng(0)
    img = (40 + rng.integers(0, 20, (N, N))).astype(np.uint8)
    img[(yy - 1500) ** 2 + (xx - 1530) ** 2 < 90 ** 2] = 220  # one bright disc across four chunks
    with tifffile.TiffWriter(folder / "slide.tif") as tw:
        tw.write(img, tile=(256, 256), subifds=3)
        for k in (2, 4, 8):
            tw.write(img[::k, ::k], tile=(256, 256), subfiletype=1)
    Image.fromarray(img[:64, :64]).save(folder / "a_small.png")
    return folder


@pytest.fixture
def slide_dock(dock, tmp_path, monkeypatch):
    monkeypatch.setattr(io, "LAZY_PIXELS", 1000 * 1000)
    monkeypatch.setattr(store, "SLIDE_CHUNK", CHUNK)
    reads = []
    real = io.LazyImage.read

    def watched(self, y0, x0, y1, x1, level=0):
        reads.append((level, (y1 - y0) * (x1 - x0)))
        return real(self, y0, x0, y1, x1, level)

    monkeypatch.setattr(io.LazyImage, "read", watched)
    project = Project.create(tmp_path / "proj", make_slide(tmp_path / "imgs"), classes=["background", "cell"])
    dock.open_project(project)
    return dock, project, reads


def test_the_dock_opens_a_large_image_and_saves_a_click_window(slide_dock, qtbot):
    dock, project, reads = slide_dock
    viewer = dock.viewer
    assert dock.current == "a_small"
    dock.show_image("slide")
    settle(qtbot, dock)
    assert dock.image_layer.multiscale and dock.labels_layer.multiscale
    assert all(isinstance(level, WindowView) for level in dock.labels_layer.data)
    assert dock.slide.active and not dock.labels_layer.editable
    dock.run_action("click")
    press(dock.labels_layer, 1500, 1530)
    qtbot.waitUntil(lambda: dock.slide.regions and dock.slide.regions[0].window is not None, timeout=WAIT)
    settle(qtbot, dock)
    pending = dock.slide.pending
    assert pending is not None and pending in viewer.layers and pending.data.max() > 0
    assert not project.objects("slide")  # nothing saved before Accept
    before = project.chunk_files("slide")
    dock.run_action("accept")
    settle(qtbot, dock)  # saved on the worker
    assert dock.status.text().startswith("Saved slide")
    assert not pending.visible and not pending.data.any()  # emptied and hidden, kept for the next regions
    (obj,) = project.objects("slide")
    assert obj["class"] == 1 and obj["provenance"] == HUMAN
    assert 0.7 < obj["area"] / (np.pi * 90 ** 2) < 1.3, obj
    assert abs(obj["cy"] - 1500) < 10 and abs(obj["cx"] - 1530) < 10
    # only the chunks under the disc were written: (2, 2), (2, 3), (3, 2), (3, 3) of 512 px
    assert not before and set(project.chunk_files("slide")) == {(2, 2), (2, 3), (3, 2), (3, 3)}
    # the lazily read labels layer shows it
    shown = np.asarray(dock.labels_layer.data[0][1490:1510, 1520:1540])
    assert (shown == obj["id"]).all()
    # no read of the image was anywhere near whole
    assert reads and max(area for level, area in reads if level == 0) < N * N // 4
    # the actions that need the whole image refuse, saying why
    dock.run_action("delete_object")
    assert "large image" in dock.status.text()
    with pytest.raises(store.InputError, match="only as zarr"):
        io.export_project(project, dock.project.root.parent / "out", "png")
    dock.show_image("a_small")  # back to a small image: the plane tools again
    assert not dock.slide.active and dock.tools.layer is dock.labels_layer
    dock.show_image("slide")
    labels = dock.labels_layer
    assert "large image" in dock.status.text() and (np.asarray(labels.data[0][1490:1510, 1520:1540]) > 0).all()
    dock.close_project()  # the layer reading the project goes with it
    assert labels not in viewer.layers and not dock.slide.active


def _answered(qtbot, dock, r):
    qtbot.waitUntil(lambda: r.window is not None, timeout=WAIT)
    settle(qtbot, dock)


def test_scribbles_extreme_points_and_corrections_on_a_large_image(slide_dock, qtbot, monkeypatch):
    from test_ui_session import drag

    dock, project, reads = slide_dock
    dock.show_image("slide")
    settle(qtbot, dock)
    layer = dock.labels_layer
    # a scribble across the disc makes an object
    dock.run_action("scribble")
    drag(layer, [(1480, 1500), (1500, 1530), (1520, 1560)])
    (r,) = dock.slide.regions
    assert len(r.prompts.scribbles) == 1 and not r.corrects
    _answered(qtbot, dock, r)
    assert len(dock.slide.shapes_layer.data) == 1 and dock.slide.pending.data.max() == r.oid
    dock.run_action("accept")
    settle(qtbot, dock)  # saved on the worker
    (obj,) = project.objects("slide")
    a = obj["id"]
    assert a == r.oid and 0.7 < obj["area"] / (np.pi * 90 ** 2) < 1.3, obj
    assert len(dock.slide.shapes_layer.data) == 0  # the prompts went with the accepted regions
    # extreme points around the saved disc make a new object, which never takes the disc's pixels
    dock.run_action("extreme")
    for y, x in ((1500, 1438), (1500, 1622), (1408, 1530)):
        press(layer, y, x)
    assert not dock.slide.regions and len(dock.slide.points_layer.data) == 3
    press(layer, 1592, 1530)
    (r,) = dock.slide.regions
    assert r.prompts.extreme is not None and r.oid != a
    _answered(qtbot, dock, r)
    saved = project.read_window("slide", *r.window.box)[0]
    assert not (r.window.data & (saved == a)).any()  # the pending answer leaves the saved object alone
    dock.run_action("accept")
    settle(qtbot, dock)  # saved on the worker
    assert project.object("slide", a)["area"] == obj["area"]
    # a negative click on the saved object corrects it: its saved pixels are the previous mask,
    # read from the store on the worker (never the UI thread) with the first answer
    seeds = []
    real_seed = dock.session.object_seed
    monkeypatch.setattr(dock.session, "object_seed",
                        lambda *a: seeds.append(threading.current_thread()) or real_seed(*a))
    dock.run_action("click")
    press(layer, 1500, 1600, button=2)
    (r,) = dock.slide.regions
    assert r.oid == a and r.corrects and threading.main_thread() not in seeds  # the click read no pixels
    _answered(qtbot, dock, r)
    assert r.seed.data.sum() == obj["area"] and seeds and threading.main_thread() not in seeds
    dock.run_action("undo")  # a correction without prompts is dropped
    assert not dock.slide.regions
    # picking the object as napari's selected label: the next prompt corrects it, wherever it lands
    layer.selected_label = a
    drag_to = [(1500, 1600), (1500, 1660), (1500, 1700)]
    dock.run_action("scribble")
    drag(layer, drag_to)
    (r,) = dock.slide.regions
    assert r.oid == a and r.corrects and not dock.slide.selected
    _answered(qtbot, dock, r)
    n = len(project.objects("slide"))
    dock.run_action("accept")
    settle(qtbot, dock)  # saved on the worker
    assert dock.status.text().startswith("Saved slide")
    ids = project.read_window("slide", *r.window.box)[0]
    np.testing.assert_array_equal(ids == a, r.window.data)  # what the pending layer showed is saved
    assert len(project.objects("slide")) == n and project.journal()[-1]["id"] == a
    # no read of the image was anywhere near whole
    assert max(area for level, area in reads if level == 0) < N * N // 4
    # a tool that needs the whole image says which ones work
    dock.run_action("suggest")
    press(layer, 100, 100)
    assert "scribble and extreme-point tools work" in dock.status.text()


def test_a_large_images_files_are_closed_when_it_is_left(slide_dock, qtbot, monkeypatch):
    """The image layer's file and the tool's own are closed when the dock shows another image or
    closes the project's layers; an image shown again is opened afresh (and its engine prepared again)."""
    dock, project, reads = slide_dock
    settle(qtbot, dock)  # the thumbnails (each read from a file opened and closed at once)
    opened, closed = [], []
    real_open, real_close = project.open_image, io.LazyImage.close
    monkeypatch.setattr(project, "open_image", lambda name: opened.append(real_open(name)) or opened[-1])
    monkeypatch.setattr(io.LazyImage, "close", lambda self: closed.append(self) or real_close(self))
    dock.show_image("slide")
    settle(qtbot, dock)
    assert len(opened) == 2 and not closed  # the image layer's and the click tool's
    dock.show_image("a_small")
    settle(qtbot, dock)
    assert all(any(c is o for c in closed) for o in opened)
    dock.show_image("slide")
    settle(qtbot, dock)
    tool_image = dock.slide.image
    assert tool_image is opened[-1] and not any(c is tool_image for c in closed)
    dock.run_action("click")
    press(dock.labels_layer, 1500, 1530)  # the engine reads the new file, not the closed one
    qtbot.waitUntil(lambda: dock.slide.regions and dock.slide.regions[0].window is not None, timeout=WAIT)
    image_layer = dock.image_layer
    dock.close_project()
    assert any(c is tool_image for c in closed)
    dock.viewer.layers.remove(image_layer)  # the person removes the image: its file is closed
    assert all(any(c is o for c in closed) for o in opened)


def test_closing_the_project_right_after_accept_keeps_what_was_accepted(slide_dock, qtbot):
    """Accept saves on the worker; closing the project at once (which cancels the queue) first
    waits for that save, so the person's region is in the project, not dropped with the queue."""
    dock, project, reads = slide_dock
    root = project.root
    dock.show_image("slide")
    settle(qtbot, dock)
    dock.run_action("click")
    press(dock.labels_layer, 1500, 1530)
    qtbot.waitUntil(lambda: dock.slide.regions and dock.slide.regions[0].window is not None, timeout=WAIT)
    settle(qtbot, dock)
    dock.run_action("accept")
    assert dock.slide.saving  # in flight (or queued) on the worker
    dock.close_project()
    assert dock.session is None
    with Project.open(root, readonly=True) as p:
        (obj,) = p.objects("slide")
        assert obj["provenance"] == HUMAN and obj["area"] > 0


def test_a_ranked_window_of_a_slide_opens_the_slide_there_at_full_resolution(slide_dock, qtbot):
    from napari_hitl.active.ranking import ImageScore
    from napari_hitl.app.rank import RankedRow

    dock, project, reads = slide_dock
    dock.ranking.rows = [RankedRow("slide", 0.2, False, ImageScore(0, "slide"), (1024, 2048, 2048, 3000)),
                         RankedRow("a_small", 0.5, False, ImageScore(1, "a_small")),
                         RankedRow("slide", 0.9, False, ImageScore(2, "slide"), (0, 0, 1024, 1024))]
    dock.ranking.refresh()
    items = [dock.image_list.item(i) for i in range(dock.image_list.count())]
    assert [i.text().split("  ")[0] for i in items] == ["slide, window (1024, 2048)", "a_small",
                                                        "slide, window (0, 0)"]
    dock.image_list.itemDoubleClicked.emit(items[0])
    settle(qtbot, dock)
    qtbot.waitUntil(lambda: dock.viewer.camera.zoom == 1.0, timeout=WAIT)
    assert dock.current == "slide" and dock.slide.active
    assert tuple(dock.viewer.camera.center[-2:]) == pytest.approx((1536, 2524))
    assert "window (1024, 2048)" in dock.status.text()
    # another window of the shown slide moves the view without opening it again
    layer = dock.image_layer
    items = [dock.image_list.item(i) for i in range(dock.image_list.count())]
    dock.image_list.itemDoubleClicked.emit(items[2])
    qtbot.waitUntil(lambda: tuple(dock.viewer.camera.center[-2:]) == pytest.approx((512, 512)), timeout=WAIT)
    assert dock.image_layer is layer
    # no read of the image was anywhere near whole
    assert max((area for level, area in reads if level == 0), default=0) < N * N // 4
